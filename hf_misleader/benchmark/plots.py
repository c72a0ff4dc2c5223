"""The benchmark's two plots: worst-case clone accuracy against queries, and utility against protection."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

# A bare Figure on an Agg canvas draws off-screen without switching the process's backend (see plotting.py).
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .schema import WORST_CASE


def _served_name(row) -> tuple[str, str]:
    """(victim, defence): a defence listed twice with other parameters keeps its parameters in the name."""
    defense = row["defense"] if row["defense_params"] == "{}" else f"{row['defense']} {row['defense_params']}"
    return row["victim"], defense


def strongest_attacker(rows: list[dict]) -> dict:
    """
    `{(pool, served model, budget): (clone accuracy, defended accuracy)}`: the worst case over attacks and ways of
    using answers, averaged over seeds (a defence is scored by its strongest attacker).
    """
    per_seed = defaultdict(dict)
    for row in rows:
        if row["answers"] != WORST_CASE:
            continue
        key = (row["pool"], _served_name(row), row["budget"])
        best = per_seed[key].get(row["seed"])
        if best is None or row["clone_accuracy"] > best[0]:
            per_seed[key][row["seed"]] = (row["clone_accuracy"], row["defended_accuracy"])
    return {key: tuple(sum(v[i] for v in seeds.values()) / len(seeds) for i in (0, 1))
            for key, seeds in per_seed.items()}


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">")
LINESTYLES = ("-", "--", ":", "-.")


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

    def legend_handles(self):
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=colour, marker="o", linestyle="", label=_short(defense))
                   for defense, colour in self.colours.items()]
        handles += [Line2D([], [], color="0.3", marker=marker, linestyle=self.lines[victim], label=victim)
                    for victim, marker in self.markers.items()]
        return handles


def _short(defense: str, width: int = 48) -> str:
    return defense if len(defense) <= width else defense[: width - 1] + "…"


def _panels(rows, title):
    """What both plots start from: the worst-case points, one panel per pool, the styles and the figure."""
    points = strongest_attacker(rows)
    pools = list(dict.fromkeys(pool for pool, _, _ in points)) or ["(no runs)"]
    styles = _Styles([name for _, name, _ in points])
    figure, axes = _figure(pools, title, len(styles.colours) + len(styles.markers))
    return points, pools, styles, figure, axes


def _figure(pools, title, entries):
    # Room under the panels for the legend, which grows with the number of defences and victims.
    legend_rows = -(-entries // 4)
    # At least 10 inches wide: a one-panel figure must still hold its four-column legend.
    figure = Figure(figsize=(max(5.5 * len(pools) + 1, 10), 4.6 + 0.28 * legend_rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(pools), sharey=True, squeeze=False)[0]
    figure.suptitle(title)
    return figure, axes


def _save(figure, styles, path):
    handles = styles.legend_handles()
    if handles:  # one legend under all panels: inside one it would cover what it explains
        figure.legend(handles=handles, loc="outside lower center", ncol=4, fontsize="small", frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    figure.clear()
    return path


def plot_worst_case_curves(rows: list[dict], path) -> Path:
    """
    Worst-case clone test accuracy against queries, one line per served model (victim + defence), one panel per
    query pool.

    Args:
        rows (`list[dict]`): benchmark rows, worst-case rows included (see `results.results_table`).
        path (`str` or `os.PathLike`): where to write the PNG.
    """
    points, pools, styles, figure, axes = _panels(
        rows, "Worst-case clone accuracy against queries: lower is a better defence")
    for ax, pool in zip(axes, pools):
        served = list(dict.fromkeys(name for p, name, _ in points if p == pool))
        for name in served:
            budgets = sorted(b for p, n, b in points if p == pool and n == name)
            ax.plot(budgets, [100 * points[(pool, name, b)][0] for b in budgets], linestyle=styles.lines[name[0]],
                    **styles.of(name))
        ax.set_title(f"{pool.replace('_', '-')} queries")
        ax.set_xlabel("queries")
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("worst-case clone test accuracy (%)")
    return _save(figure, styles, path)


def plot_utility_vs_extraction(rows: list[dict], path) -> Path:
    """
    Utility (defended test accuracy) against the worst-case clone accuracy at the largest budget, one point per
    served model, one panel per query pool: the better defences sit bottom right.

    Args:
        rows (`list[dict]`): benchmark rows, worst-case rows included.
        path (`str` or `os.PathLike`): where to write the PNG.
    """
    points, pools, styles, figure, axes = _panels(
        rows, "Utility against extraction at the largest budget: bottom right is best")
    for ax, pool in zip(axes, pools):
        largest = max((b for p, _, b in points if p == pool), default=None)
        for name in dict.fromkeys(n for p, n, b in points if p == pool and b == largest):
            clone, utility = points[(pool, name, largest)]
            ax.scatter([100 * utility], [100 * clone], s=45, alpha=0.85, **styles.of(name))
        ax.set_title(f"{pool.replace('_', '-')} queries, {largest} each")
        ax.set_xlabel("defended test accuracy (%)")
        ax.margins(0.08)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("worst-case clone test accuracy (%)")
    return _save(figure, styles, path)
