"""The Pareto front of utility against protection, per budget, for one thief (attack and query pool).

A served model is a recipe (victims `<recipe>-seedN` pooled over their student seeds, as in seed_table.py) behind
one output defence at one setting of its parameters. Its utility is the defended test accuracy averaged over student
seeds; its protection at a budget is the worst-case clone accuracy over every student seed x clone seed (mean, and
min-max). A served model is on the front when no other has at least its utility and at most its clone accuracy,
one of the two strictly.

    python benchmarks/pareto.py FOLDER [FOLDER ...] --pool fashion_mnist --attack knockoff [--output DIR]
        [--max-utility-loss 1.0]
"""

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

from hf_misleader.benchmark.plots import (CHANCE_STYLE, MARKERS, _figure, _legend, _save, _served_name, chance_level,
                                          strongest_attacker)
from hf_misleader.benchmark.schema import WORST_CASE

sys.path.insert(0, str(Path(__file__).resolve().parent))  # seed_table.py sits next to this script
from seed_table import recipe_name  # noqa: E402

REFERENCE_VICTIM = "teacher"  # with defence none: the undefended model that utility losses are counted from


class Served(NamedTuple):
    recipe: str
    defense: str
    params: str  # the defence's parameters as the benchmark wrote them (JSON), "{}" when it has none

    @property
    def label(self) -> str:
        return self.defense if self.params == "{}" else f"{self.defense} {self.params}"


REFERENCE = Served(REFERENCE_VICTIM, "none", "{}")


class ParetoError(ValueError):
    """A problem with the command's input: reported as one line on stderr, exit code 2."""


def served_of(row) -> Served:
    return Served(recipe_name(row["victim"]), row["defense"], row["defense_params"])


def read_rows(folders, pool, attack) -> list[dict]:
    """The worst-case rows of one thief, each (served model, budget, student seed, clone seed) once. Where folders
    share one (the teacher's rows are copied into several; another folder may hold another way of using the answers,
    e.g. the un-permuting thief), the highest clone accuracy wins, as a defence is scored by its strongest attacker;
    stderr says what was dropped."""
    kept, dropped, thieves = {}, defaultdict(lambda: [0, 0]), set()
    for folder in folders:
        path = Path(folder) / "results.json"
        if not path.is_file():
            raise ParetoError(f"{folder}: no results.json")
        try:
            rows = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ParetoError(f"{path}: not JSON ({error})") from None
        for row in rows:
            if row["answers"] != WORST_CASE:
                continue
            thieves.add((row["pool"], row["attack"]))
            if (row["pool"], row["attack"]) != (pool, attack):
                continue
            key = (served_of(row), row["budget"], row["victim"], row["seed"])
            if key in kept:
                (first, other), served = kept[key], served_of(row)
                counts = dropped[(served.recipe, served.label)]
                counts[0] += 1
                counts[1] += row["clone_accuracy"] != other["clone_accuracy"]
                if row["clone_accuracy"] > other["clone_accuracy"]:
                    kept[key] = (folder, row)
            else:
                kept[key] = (folder, row)
    for (recipe, label), (count, differ) in dropped.items():
        print(f"pareto.py: {count} rows of {recipe} {label} are in more than one folder; kept the strongest thief's"
              + (f" ({differ} differed)" if differ else " (all equal)"), file=sys.stderr)
    rows = [row for _, row in kept.values()]
    if not rows:
        raise ParetoError(f"no worst-case rows for pool {pool} and attack {attack} in {', '.join(map(str, folders))}; "
                          f"pools: {', '.join(sorted({p for p, _ in thieves})) or '-'}; "
                          f"attacks: {', '.join(sorted({a for _, a in thieves})) or '-'}")
    datasets = sorted({row["dataset"] for row in rows})
    if len(datasets) > 1:  # utilities measured on other test sets cannot sit on one front
        raise ParetoError(f"the rows mix data sets ({', '.join(datasets)}): give folders of one data set")
    return rows


def served_points(rows) -> dict:
    """`{budget: {Served: Point}}` (fractions, as in plots.py): clone accuracy over student x clone seeds, utility
    averaged over student seeds (each weighs the same, however many clone seeds it has)."""
    # strongest_attacker pools over `seed`: make it (student victim, clone seed) and name the victim by its recipe.
    pooled = [{**row, "victim": recipe_name(row["victim"]), "seed": (row["victim"], row["seed"])} for row in rows]
    served = {_served_name(p): served_of(row) for p, row in zip(pooled, rows)}
    per_student = defaultdict(dict)
    for row in rows:  # the defended accuracy does not depend on the clone seed nor on the budget
        per_student[served_of(row)][row["victim"]] = row["defended_accuracy"]
    utility = {s: sum(values.values()) / len(values) for s, values in per_student.items()}
    points = defaultdict(dict)
    for (_, name, budget), point in strongest_attacker(pooled).items():
        points[budget][served[name]] = point._replace(utility=utility[served[name]])
    return dict(sorted(points.items()))


def load_points(folders, pool, attack) -> dict:
    return served_points(read_rows(folders, pool, attack))


def pareto_front(points) -> set:
    """The keys of `{key: (utility, clone accuracy)}` that no other point dominates (utility >= and clone <=, one of
    them strictly). Equal points do not dominate each other: both stay on the front."""
    return {key for key, (utility, clone) in points.items()
            if not any(u >= utility and c <= clone and (u > utility or c < clone) for u, c in points.values())}


def _params_order(params: str):
    # Numbers in numeric order (beta 0.3 < 1.5 < 10), everything else as text after them.
    return [(k, (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))) for k, v in json.loads(params).items()]


def order(served: Served):
    """Defence families (recipe, defence) in turn, each along its parameters; the reference and no defence first."""
    return (served.recipe != REFERENCE_VICTIM, served.recipe, served.defense != "none", served.defense,
            _params_order(served.params))


def _fronts(points):
    return {budget: pareto_front({s: (p.utility, p.clone) for s, p in at.items()}) for budget, at in points.items()}


def table(points, max_utility_loss=1.0) -> str:
    """The markdown table: one row per served model, a worst case and a front marker per budget."""
    fronts = _fronts(points)
    everyone = sorted({s for at in points.values() for s in at}, key=order)
    utility = {s: 100 * at[s].utility for at in points.values() for s in at}
    reference = utility.get(REFERENCE)
    lines = ["| served model | defence | utility | utility loss | "
             + "".join(f"worst case {b:,} (min-max) | front {b:,} | " for b in points)
             + f"within {max_utility_loss:g} pt | runs |",
             "|" + "---|" * (6 + 2 * len(points))]
    for served in everyone:
        # Rounded first: 96.2 - 95.2 is 1.0000000000000142 in floats, a loss within 1.0 all the same (and no "-0.0").
        loss = None if reference is None else round(reference - utility[served], 6) + 0.0
        cells = [served.recipe, served.label, f"{utility[served]:.1f}", "" if loss is None else f"{loss:.1f}"]
        for budget, at in points.items():
            point = at.get(served)
            cells += ["", ""] if point is None else [
                f"{100 * point.clone:.1f} ({100 * point.clone_min:.1f}-{100 * point.clone_max:.1f})",
                "yes" if served in fronts[budget] else ""]
        cells.append("" if loss is None else "yes" if loss <= max_utility_loss else "no")
        cells.append(str(sum(at[served].seeds for at in points.values() if served in at)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _settings(members):
    """A family's parameters as "k=v" text: (what its settings share, {served model: what sets it apart}). The
    legend names the first, each point is labelled with the second."""
    params = {s: json.loads(s.params) for s in members}
    keys = list(dict.fromkeys(k for p in params.values() for k in p))
    varies = {k for k in keys if len({json.dumps(p.get(k)) for p in params.values()}) > 1}
    first = next(iter(params.values()))
    shared = ", ".join(f"{k}={first.get(k)}" for k in keys if k not in varies)
    return shared, {s: ", ".join(f"{k}={p.get(k)}" for k in keys if k in varies) for s, p in params.items()}


# Grey (C7) left out: it is the front's colour. 9 colours and 11 markers cycle apart: 99 families told apart.
COLOURS = [f"C{i}" for i in range(10) if i != 7]


UNDRAWN_BELOW_FLOOR = 10.0  # points of utility under the floor below which a served model is listed, not drawn


def undrawn_models(points, floor) -> list:
    """The served models whose utility is more than `UNDRAWN_BELOW_FLOOR` points under `floor` (percent), in table
    order: drawn, they would squash every other point into a line at the top of the panel."""
    if floor is None:
        return []
    utility = {s: 100 * p.utility for at in points.values() for s, p in at.items()}
    return sorted((s for s, u in utility.items() if u < floor - UNDRAWN_BELOW_FLOOR), key=order)


def plot(points, path, title, chance=None, floor=None):
    """One panel per budget, worst-case clone accuracy across and utility up (top left is best): a line per defence
    family through its settings, the front as a grey step line. `chance` is a fraction, `floor` in percent. Served
    models far below the floor (a setting that wrecks utility) are named in the legend instead of squashing the axis."""
    from matplotlib.lines import Line2D

    undrawn = undrawn_models(points, floor)
    points = {budget: {s: p for s, p in at.items() if s not in undrawn} for budget, at in points.items()}
    everyone = sorted({s for at in points.values() for s in at}, key=order)
    families = defaultdict(list)
    for served in everyone:
        families[(served.recipe, served.defense)].append(served)
    style = {f: {"color": COLOURS[i % len(COLOURS)], "marker": MARKERS[i % len(MARKERS)]}
             for i, f in enumerate(families)}
    settings = {f: _settings(members) for f, members in families.items()}
    extra = [Line2D([], [], color="0.55", linewidth=3, alpha=0.6, drawstyle="steps-post", label="Pareto front")]
    if chance is not None:
        extra.append(Line2D([], [], **CHANCE_STYLE, label=f"chance ({100 * chance:.0f}%)"))
    if floor is not None:
        extra.append(Line2D([], [], color="0.3", linestyle=":", linewidth=1.2, label=f"utility floor ({floor:.1f}%)"))
    if undrawn:
        listed = "; ".join(f"{s.recipe} {s.label}" for s in undrawn)
        extra.append(Line2D([], [], linestyle="none",
                            label=f"not drawn, utility below {floor - UNDRAWN_BELOW_FLOOR:.0f}%: {listed}"))
    figure, axes = _figure(list(points), title, len(families) + len(extra))
    fronts = _fronts(points)
    for ax, (budget, at) in zip(axes, points.items()):
        for family, members in families.items():
            curve = sorted((s for s in members if s in at), key=lambda s: at[s].clone)
            if not curve:
                continue
            xs, ys = [100 * at[s].clone for s in curve], [100 * at[s].utility for s in curve]
            # Error bars: the spread of clone accuracy over student x clone seeds.
            ax.errorbar(xs, ys, xerr=[[x - 100 * at[s].clone_min for x, s in zip(xs, curve)],
                                      [100 * at[s].clone_max - x for x, s in zip(xs, curve)]],
                        linestyle="-", markersize=6, elinewidth=0.8, capsize=2, alpha=0.9, **style[family])
            for s in curve:
                if text := settings[family][1][s]:
                    ax.annotate(text, (100 * at[s].clone, 100 * at[s].utility), xytext=(4, 4),
                                textcoords="offset points", fontsize="x-small", color=style[family]["color"])
        front = sorted((at[s].clone, at[s].utility) for s in fronts[budget])
        ax.plot([100 * c for c, _ in front], [100 * u for _, u in front], drawstyle="steps-post", color="0.55",
                linewidth=3, alpha=0.6, zorder=0.8)
        if chance is not None:  # a clone at chance level learnt nothing from the answers
            ax.axvline(100 * chance, zorder=0.5, **CHANCE_STYLE)
        if floor is not None:  # below it, a served model costs more utility than allowed
            ax.axhline(floor, color="0.3", linestyle=":", linewidth=1.2, zorder=0.5)
        ax.set_title(f"{budget:,} queries")
        ax.set_xlabel("worst-case clone test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("utility: defended test accuracy (%)")
    handles = [Line2D([], [], label=f"{recipe} {defense}" + (f" ({shared})" if shared else ""),
                      **style[(recipe, defense)]) for (recipe, defense), (shared, _) in settings.items()]
    return _save(_legend(figure, handles + extra), path)


def max_loss(text) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ParetoError(f"--max-utility-loss: expected a number of points >= 0, got {text!r}")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="benchmark output folders (each holds results.json)")
    parser.add_argument("--pool", required=True, help="the thief's query pool, e.g. fashion_mnist")
    parser.add_argument("--attack", required=True, help="the thief's attack, e.g. knockoff")
    parser.add_argument("--output", help="folder to write pareto.md and pareto.png into")
    parser.add_argument("--max-utility-loss", default="1.0", help="points of utility a defence may cost (default 1.0)")
    args = parser.parse_args(argv)
    try:
        limit = max_loss(args.max_utility_loss)
        rows = read_rows(args.folders, args.pool, args.attack)
    except ParetoError as error:
        print(f"pareto.py: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    points = served_points(rows)
    text = table(points, limit)
    print(text)
    if args.output:
        output = Path(args.output)
        output.mkdir(parents=True, exist_ok=True)
        where = f"{args.attack} thief, {args.pool} pool, from {', '.join(map(str, args.folders))}"
        (output / "pareto.md").write_text(f"Pareto front of utility against worst-case clone accuracy: {where}.\n\n"
                                          + text + "\n")
        reference = next((at[REFERENCE].utility for at in points.values() if REFERENCE in at), None)
        plot(points, output / "pareto.png", f"Utility against extraction, {args.attack} thief, {args.pool} pool",
             chance_level(rows), None if reference is None else 100 * reference - limit)


if __name__ == "__main__":
    main()
