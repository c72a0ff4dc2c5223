"""The benchmark's two plots: worst-case clone accuracy against queries, and utility against protection."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

# A bare Figure on an Agg canvas draws off-screen without switching the process's backend (see plotting.py).
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .schema import NUM_LABELS, WORST_CASE


def _served_name(row) -> tuple[str, str]:
    """(victim, defence): a defence listed twice with other parameters keeps its parameters in the name."""
    defense = row["defense"] if row["defense_params"] == "{}" else f"{row['defense']} {row['defense_params']}"
    return row["victim"], defense


class Point(NamedTuple):
    """One served model's worst case at one budget: means over seeds, and the spread of clone accuracy over them."""

    clone: float
    utility: float
    clone_min: float
    clone_max: float
    seeds: int


def strongest_attacker(rows: list[dict]) -> dict:
    """
    `{(pool, served model, budget): Point}`: the worst case over attacks and ways of using answers, averaged over
    seeds (a defence is scored by its strongest attacker), with the lowest and highest seed's clone accuracy.
    """
    per_seed = defaultdict(dict)
    for row in rows:
        if row["answers"] != WORST_CASE:
            continue
        key = (row["pool"], _served_name(row), row["budget"])
        best = per_seed[key].get(row["seed"])
        if best is None or row["clone_accuracy"] > best[0]:
            per_seed[key][row["seed"]] = (row["clone_accuracy"], row["defended_accuracy"])
    points = {}
    for key, seeds in per_seed.items():
        clones = [clone for clone, _ in seeds.values()]
        points[key] = Point(sum(clones) / len(clones), sum(u for _, u in seeds.values()) / len(seeds), min(clones),
                            max(clones), len(seeds))
    return points


def chance_level(rows: list[dict], num_labels: int | None = None) -> float | None:
    """1 / number of classes: what a clone that guesses scores. From `num_labels`, else from the rows' data set
    (None when unknown, or when the rows mix data sets)."""
    if num_labels is None:
        datasets = {row.get("dataset") for row in rows}
        num_labels = NUM_LABELS.get(datasets.pop()) if len(datasets) == 1 else None
    return 1 / num_labels if num_labels else None


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">")
LINESTYLES = ("-", "--", ":", "-.")
# Grey, dashed and under the data: a reference, not a served model.
CHANCE_STYLE = {"color": "0.45", "linestyle": (0, (5, 3)), "linewidth": 1.0}
SPREAD_ALPHA = 0.18


class _Styles:
    """One colour per defence and one marker (and line style) per victim, so that a reader can find any served
    model in a crowded panel from a short two-part legend instead of a label per point."""

    def __init__(self, served):
        defenses = list(dict.fromkeys(defense for _, defense in served))
        victims = list(dict.fromkeys(victim for victim, _ in served))
        self.colours = {d: f"C{i % 10}" for i, d in enumerate(defenses)}
        self.markers = {v: MARKERS[i % len(MARKERS)] for i, v in enumerate(victims)}
        self.lines = {v: LINESTYLES[i % len(LINESTYLES)] for i, v in enumerate(victims)}

    def of(self, served):
        victim, defense = served
        return {"color": self.colours[defense], "marker": self.markers[victim]}

    def legend_handles(self, chance=None, spread=False):
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch

        handles = [Line2D([], [], color=colour, marker="o", linestyle="", label=_short(defense))
                   for defense, colour in self.colours.items()]
        handles += [Line2D([], [], color="0.3", marker=marker, linestyle=self.lines[victim], label=victim)
                    for victim, marker in self.markers.items()]
        if chance is not None:
            handles.append(Line2D([], [], **CHANCE_STYLE, label=f"chance ({100 * chance:.0f}%)"))
        if spread:
            handles.append(Patch(color="0.5", alpha=SPREAD_ALPHA, label="min-max over seeds"))
        return handles


def _short(defense: str, width: int = 48) -> str:
    return defense if len(defense) <= width else defense[: width - 1] + "…"


def _panels(rows, title, num_labels):
    """What both plots start from: the worst-case points, one panel per pool, the styles, the figure, the chance
    level and whether some point has several seeds (then its spread is drawn)."""
    points = strongest_attacker(rows)
    pools = list(dict.fromkeys(pool for pool, _, _ in points)) or ["(no runs)"]
    styles = _Styles([name for _, name, _ in points])
    chance = chance_level(rows, num_labels) if points else None
    spread = any(point.seeds > 1 for point in points.values())
    entries = len(styles.colours) + len(styles.markers) + (chance is not None) + spread
    figure, axes = _figure(pools, title, entries)
    return points, pools, styles, figure, axes, chance, spread


# Three columns: with four, long victim names pushed the legend past both edges of a one-panel figure.
LEGEND_COLUMNS = 3


def _figure(pools, title, entries):
    # Room under the panels for the legend, which grows with the number of defences and victims.
    legend_rows = -(-entries // LEGEND_COLUMNS)
    # At least 10 inches wide: a one-panel figure must still hold its legend.
    figure = Figure(figsize=(max(5.5 * len(pools) + 1, 10), 4.6 + 0.28 * legend_rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(pools), sharey=True, squeeze=False)[0]
    figure.suptitle(title)
    return figure, axes


def _draw_chance(axes, chance):
    # A clone at chance level learnt nothing: the floor that protection numbers are read against.
    if chance is not None:
        for ax in axes:
            ax.axhline(100 * chance, label="chance", zorder=0.5, **CHANCE_STYLE)


def _legend(figure, handles):
    if handles:  # one legend under all panels: inside one it would cover what it explains
        figure.legend(handles=handles, loc="outside lower center", ncol=LEGEND_COLUMNS, fontsize="small", frameon=False)
    return figure


def _save(figure, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")  # long victim names must not be cut off at the edges
    figure.clear()
    return path


def worst_case_figure(rows: list[dict], num_labels: int | None = None) -> Figure:
    """The figure of [`plot_worst_case_curves`], not saved (to show or inspect)."""
    points, pools, styles, figure, axes, chance, spread = _panels(
        rows, "Worst-case clone accuracy against queries: lower is a better defence", num_labels)
    for ax, pool in zip(axes, pools):
        served = list(dict.fromkeys(name for p, name, _ in points if p == pool))
        for name in served:
            budgets = sorted(b for p, n, b in points if p == pool and n == name)
            curve = [points[(pool, name, b)] for b in budgets]
            ax.plot(budgets, [100 * point.clone for point in curve], linestyle=styles.lines[name[0]],
                    **styles.of(name))
            if spread:  # one band per line, in its colour: how far apart the seeds landed
                ax.fill_between(budgets, [100 * point.clone_min for point in curve],
                                [100 * point.clone_max for point in curve], color=styles.of(name)["color"],
                                alpha=SPREAD_ALPHA, linewidth=0)
        ax.set_title(f"{pool.replace('_', '-')} queries")
        ax.set_xlabel("queries")
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
    _draw_chance(axes, chance)
    axes[0].set_ylabel("worst-case clone test accuracy (%)")
    return _legend(figure, styles.legend_handles(chance, spread))


def plot_worst_case_curves(rows: list[dict], path, num_labels: int | None = None) -> Path:
    """
    Worst-case clone test accuracy against queries, one line per served model (victim + defence), one panel per
    query pool; a dashed line at chance level, and with several seeds a band from the lowest to the highest seed.

    Args:
        rows (`list[dict]`): benchmark rows, worst-case rows included (see `results.results_table`).
        path (`str` or `os.PathLike`): where to write the PNG.
        num_labels (`int`, *optional*): number of classes, for the chance line (default: from the rows' data set).
    """
    return _save(worst_case_figure(rows, num_labels), path)


def utility_vs_extraction_figure(rows: list[dict], num_labels: int | None = None) -> Figure:
    """The figure of [`plot_utility_vs_extraction`], not saved (to show or inspect)."""
    points, pools, styles, figure, axes, chance, spread = _panels(
        rows, "Utility against extraction at the largest budget: bottom right is best", num_labels)
    for ax, pool in zip(axes, pools):
        largest = max((b for p, _, b in points if p == pool), default=None)
        for name in dict.fromkeys(n for p, n, b in points if p == pool and b == largest):
            point = points[(pool, name, largest)]
            ax.scatter([100 * point.utility], [100 * point.clone], s=45, alpha=0.85, **styles.of(name))
            if point.seeds > 1:  # min-max over seeds, in the point's colour
                ax.errorbar([100 * point.utility], [100 * point.clone],
                            yerr=[[100 * (point.clone - point.clone_min)], [100 * (point.clone_max - point.clone)]],
                            fmt="none", ecolor=styles.of(name)["color"], elinewidth=1, capsize=3, alpha=0.85)
        ax.set_title(f"{pool.replace('_', '-')} queries, {largest} each")
        ax.set_xlabel("defended test accuracy (%)")
        ax.margins(0.08)
        ax.grid(alpha=0.3)
    _draw_chance(axes, chance)
    axes[0].set_ylabel("worst-case clone test accuracy (%)")
    return _legend(figure, styles.legend_handles(chance, spread))


def plot_utility_vs_extraction(rows: list[dict], path, num_labels: int | None = None) -> Path:
    """
    Utility (defended test accuracy) against the worst-case clone accuracy at the largest budget, one point per
    served model, one panel per query pool: the better defences sit bottom right. A dashed line marks chance level;
    with several seeds, error bars span the lowest to the highest seed's clone accuracy.

    Args:
        rows (`list[dict]`): benchmark rows, worst-case rows included.
        path (`str` or `os.PathLike`): where to write the PNG.
        num_labels (`int`, *optional*): number of classes, for the chance line (default: from the rows' data set).
    """
    return _save(utility_vs_extraction_figure(rows, num_labels), path)
