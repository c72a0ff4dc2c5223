"""One table row per served model, pooled over student seeds and clone seeds, from benchmark results folders.

The benchmark's own summary has one row per victim. Victims that differ only by a `-seedN` suffix are the same recipe
trained from other student seeds: this groups them, so a cell reads "mean (min-max; ways that reached the worst
case)" over every student seed x clone seed.

    python benchmarks/seed_table.py outputs/benchmark/objectives-resnets [more folders...]
"""

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path


def recipe_name(victim: str) -> str:
    return re.sub(r"-seed\d+$", "", victim)


def worst_case_rows(folders):
    for folder in folders:
        for row in json.loads((Path(folder) / "results.json").read_text()):
            if row["answers"] == "worst_case":
                yield row


def cell(rows, key, scale=100.0):
    values = [row[key] * scale for row in rows]
    ways = "/".join(sorted({row["worst_of"] for row in rows}))
    return f"{sum(values) / len(values):.1f} ({min(values):.1f}-{max(values):.1f}; {ways})"


def defence_label(row) -> str:
    """The defence, with its parameters when it has some (a row without the field is taken as unparameterised)."""
    params = row.get("defense_params", "{}")
    return row["defense"] if params == "{}" else f"{row['defense']} {params}"


def utility(rows):
    # One defended accuracy per student seed (the clone seed does not change it).
    by_victim = {row["victim"]: row["defended_accuracy"] * 100 for row in rows}
    values = sorted(by_victim.values())
    mean = sum(values) / len(values)
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ({values[0]:.1f}-{values[-1]:.1f})"


def seed_table(folders) -> str:
    groups = defaultdict(list)
    for row in worst_case_rows(folders):
        # The parameters belong to the served model: one defence at two settings is two rows.
        groups[(recipe_name(row["victim"]), defence_label(row), row["attack"], row["pool"])].append(row)
    budgets = sorted({row["budget"] for rows in groups.values() for row in rows})
    header = "| served model | defence | utility (test) | " + " | ".join(f"worst case {b:,}" for b in budgets) + " | runs |"
    lines = [header, "|" + "---|" * (4 + len(budgets))]
    for (recipe, defense, _, _), rows in sorted(groups.items()):
        cells = [cell([r for r in rows if r["budget"] == b], "clone_accuracy") if any(
            r["budget"] == b for r in rows) else "" for b in budgets]
        lines.append(f"| {recipe} | {defense} | {utility(rows)} | " + " | ".join(cells) + f" | {len(rows)} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="benchmark output folders (each holds results.json)")
    print(seed_table(parser.parse_args().folders))


if __name__ == "__main__":
    main()
