"""Plots of extraction benchmark results."""

from __future__ import annotations

from pathlib import Path

# A bare Figure on an Agg canvas draws off-screen without `matplotlib.use("Agg")`, which would
# switch the backend for the whole process (and break plots in a user's notebook).
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


POOLS = ("in_distribution", "out_of_distribution")
_VICTIM_STYLE = {"teacher": {"color": "tab:blue", "linestyle": "-"}, "defended": {"color": "tab:red", "linestyle": "--"}}
_LABELS_MARKER = {"soft": "o", "label_only": "s"}


def _curve(attack: dict) -> tuple[list[int], list[float]]:
    # Rows without a learning curve still show up, as their single final point.
    points = attack.get("curve") or [{"queries": attack["queries"], "clone_accuracy": attack["clone_accuracy"]}]
    points = sorted(points, key=lambda p: p["queries"])
    return [p["queries"] for p in points], [100 * p["clone_accuracy"] for p in points]


def plot_extraction_curves(results: dict, path: str | Path) -> Path:
    """
    Draw clone test accuracy against the number of queries, one panel per query pool.

    Each (victim, labels) pair is one line: the undefended teacher solid, the defended model dashed,
    soft-label and label-only thieves told apart by their markers. Dotted horizontal lines mark the
    test accuracy of the teacher and of the defended model, the ceiling a clone aims for.

    Args:
        results (`dict`):
            The demo's `results.json` contract: `attacks` rows with `victim`, `pool`, `labels`,
            `queries`, `clone_accuracy` and an optional `curve`, plus `teacher_accuracy` and
            `defended_accuracy`, as fractions in [0, 1].
        path (`str` or `os.PathLike`):
            Where to write the PNG; parent folders are created.

    Returns:
        `pathlib.Path`: the path of the written PNG.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    figure = Figure(figsize=(11, 5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(POOLS), sharey=True, squeeze=False)[0]
    lowest = min(
        [results["teacher_accuracy"] * 100, results["defended_accuracy"] * 100]
        + [y for attack in results["attacks"] for y in _curve(attack)[1]]
    )
    for ax, pool in zip(axes, POOLS):
        rows = [a for a in results["attacks"] if a["pool"] == pool]
        for victim in _VICTIM_STYLE:
            for labels in _LABELS_MARKER:
                for attack in (a for a in rows if a["victim"] == victim and a["labels"] == labels):
                    x, y = _curve(attack)
                    ax.plot(
                        x,
                        y,
                        marker=_LABELS_MARKER[labels],
                        label=f"clone of {victim}, {labels.replace('_', '-')}",
                        **_VICTIM_STYLE[victim],
                    )
        ax.axhline(
            100 * results["teacher_accuracy"],
            color=_VICTIM_STYLE["teacher"]["color"],
            linestyle=":",
            label=f"teacher accuracy ({100 * results['teacher_accuracy']:.1f}%)",
        )
        ax.axhline(
            100 * results["defended_accuracy"],
            color=_VICTIM_STYLE["defended"]["color"],
            linestyle=":",
            label=f"defended accuracy ({100 * results['defended_accuracy']:.1f}%)",
        )
        ax.set_title(f"{pool.replace('_', '-')} queries" + ("" if rows else " (not run)"))
        ax.set_xlabel("queries")
        ax.set_xlim(left=0)  # a clone starts from zero queries; also keeps single-point rows readable
        ax.grid(alpha=0.3)
    # One legend under both panels: inside a panel it would cover the curves it explains.
    legend = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    figure.legend(legend.values(), legend.keys(), loc="outside lower center", ncol=3, fontsize="small")
    axes[0].set_ylabel("clone test accuracy (%)")
    axes[0].set_ylim(max(0.0, lowest - 5), 100)
    figure.suptitle(f"Model extraction on {results['dataset']}: lower is a better defence")
    figure.savefig(path, dpi=120)
    # Never registered with pyplot, so there is nothing to plt.close(); clearing frees the artists now.
    figure.clear()
    return path
