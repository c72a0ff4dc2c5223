"""The benchmark's two plots: worst-case clone accuracy against queries, and utility against protection."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

# A bare Figure on an Agg canvas draws off-screen without switching the process's backend (see plotting.py).
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .schema import WORST_CASE


def _served_name(row) -> str:
    defense = row["defense"] if row["defense_params"] == "{}" else f"{row['defense']} {row['defense_params']}"
    return f"{row['victim']} + {defense}"


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


def _figure(pools, title):
    figure = Figure(figsize=(5.5 * len(pools) + 1, 5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(pools), sharey=True, squeeze=False)[0]
    figure.suptitle(title)
    return figure, axes


def _save(figure, axes, path):
    legend = {}
    for ax in axes:  # one legend under all panels: inside one it would cover what it explains
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    if legend:
        figure.legend(legend.values(), legend.keys(), loc="outside lower center", ncol=3, fontsize="small")
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
    points = strongest_attacker(rows)
    pools = list(dict.fromkeys(pool for pool, _, _ in points)) or ["(no runs)"]
    figure, axes = _figure(pools, "Worst-case clone accuracy against queries: lower is a better defence")
    for ax, pool in zip(axes, pools):
        served = list(dict.fromkeys(name for p, name, _ in points if p == pool))
        for name in served:
            budgets = sorted(b for p, n, b in points if p == pool and n == name)
            ax.plot(budgets, [100 * points[(pool, name, b)][0] for b in budgets], marker="o", label=name)
        ax.set_title(f"{pool.replace('_', '-')} queries")
        ax.set_xlabel("queries")
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("worst-case clone test accuracy (%)")
    return _save(figure, axes, path)


def plot_utility_vs_extraction(rows: list[dict], path) -> Path:
    """
    Utility (defended test accuracy) against the worst-case clone accuracy at the largest budget, one point per
    served model, one panel per query pool: the better defences sit bottom right.

    Args:
        rows (`list[dict]`): benchmark rows, worst-case rows included.
        path (`str` or `os.PathLike`): where to write the PNG.
    """
    points = strongest_attacker(rows)
    pools = list(dict.fromkeys(pool for pool, _, _ in points)) or ["(no runs)"]
    figure, axes = _figure(pools, "Utility against extraction at the largest budget: bottom right is best")
    for ax, pool in zip(axes, pools):
        largest = max((b for p, _, b in points if p == pool), default=None)
        for name in dict.fromkeys(n for p, n, b in points if p == pool and b == largest):
            clone, utility = points[(pool, name, largest)]
            ax.scatter([100 * utility], [100 * clone], label=name, s=40)
            ax.annotate(name, (100 * utility, 100 * clone), fontsize="x-small", xytext=(4, 4),
                        textcoords="offset points")
        ax.set_title(f"{pool.replace('_', '-')} queries, {largest} each")
        ax.set_xlabel("defended test accuracy (%)")
        ax.margins(0.2)  # room for the labels
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("worst-case clone test accuracy (%)")
    return _save(figure, axes, path)
