"""Benchmark results: the rows on disk (resumable, written atomically after every run), the worst case over the
thief's ways of using answers, the in-distribution label-only floor, and the summary table."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet
from datasets import Dataset, Features, Value

from ..paths import output_folder
from .config import BenchmarkConfig
from .runs import RUN_KEY
from .schema import ANSWERS_ORDER, IN_DISTRIBUTION, WORST_CASE

RESULTS_JSON = "results.json"
RESULTS_PARQUET = "results.parquet"
CONFIG_JSON = "config.json"
SUMMARY_MD = "summary.md"

# Column -> (type, meaning); the order of the saved table. Accuracies are fractions in [0, 1].
COLUMNS = {
    "dataset": ("string", "the victim's data set"),
    "victim": ("string", "the served model: `teacher` (trained by the benchmark) or a saved model folder's name"),
    "defense": ("string", "output defence in front of the victim (`none`: undefended)"),
    "defense_params": ("string", "the defence's parameters, JSON"),
    "attack": ("string", "attack family (knockoff, jbda, dfme)"),
    "answers": ("string", ("how the thief used the answers: soft, label_only, averaging, inverting, unpermuting, "
                           "or worst_case (the strongest of them, see worst_of)")),
    "worst_of": ("string", "worst_case rows: the answers mode that reached it; empty otherwise"),
    "output": ("string", "what the black box answered: probabilities or label"),
    "pool": ("string", "the thief's query pool: in_distribution, a surrogate data set, or synthetic"),
    "budget": ("int64", "queries the thief was allowed"),
    "seed": ("int64", "seed of the thief (query choice, clone initialisation) and of a randomised defence"),
    "clone": ("string", "the clone's architecture (member preset)"),
    "victim_accuracy": ("float64", "the victim's test accuracy, undefended"),
    "defended_accuracy": ("float64", "test accuracy of the victim's defended answers' top-1 (utility)"),
    "clone_accuracy": ("float64", "the clone's test accuracy (lower is a better defence)"),
    "clone_agreement": ("float64", "share of test inputs where clone and undefended victim agree"),
    "label_only_floor": ("float64", ("clone accuracy of the in-distribution label-only KnockoffNets thief, same "
                                     "victim, defence, budget and seed; no defence that keeps utility goes much below it")),
    "queries": ("int64", "queries the black box answered (every synthetic or repeated input counts)"),
    "seconds": ("float64", "wall seconds of the run (worst_case: of the run that reached it)"),
    "finished_at": ("string", "when the run finished (UTC, ISO 8601)"),
}
FEATURES = Features({name: Value(dtype) for name, (dtype, _) in COLUMNS.items()})
# A worst case is taken over the answers modes of one group: these columns, all but `answers`.
GROUP_KEY = tuple(name for name in ("dataset",) + RUN_KEY if name != "answers")


def _group(row) -> tuple:
    return tuple(row[name] for name in GROUP_KEY)


def _answers_order(row) -> int:
    return ANSWERS_ORDER.index(row["answers"]) if row["answers"] in ANSWERS_ORDER else len(ANSWERS_ORDER)


def worst_case_rows(runs: list[dict]) -> list[dict]:
    """
    For each (victim, defence, attack, pool, budget, seed), the run whose clone is most accurate, as a row with
    `answers="worst_case"` and `worst_of` naming the way of using answers that reached it (ties: the first of
    `ANSWERS_ORDER`). A defence is scored by its strongest attacker.
    """
    best = {}
    for row in sorted(runs, key=_answers_order):
        if _group(row) not in best or row["clone_accuracy"] > best[_group(row)]["clone_accuracy"]:
            best[_group(row)] = row
    return [{**row, "answers": WORST_CASE, "worst_of": row["answers"]} for row in best.values()]


def with_floors(rows: list[dict]) -> list[dict]:
    """Fill `label_only_floor` from the in-distribution label-only KnockoffNets run of the same victim, defence,
    budget and seed (None where none ran): its labels are as right as the served model's."""
    def floor_key(row):
        return row["victim"], row["defense"], row["defense_params"], row["budget"], row["seed"]

    floors = {floor_key(r): r["clone_accuracy"] for r in rows
              if r["attack"] == "knockoff" and r["pool"] == IN_DISTRIBUTION and r["answers"] == "label_only"}
    return [{**r, "label_only_floor": floors.get(floor_key(r))} for r in rows]


def results_table(runs: list[dict]) -> list[dict]:
    """The runs and their worst cases, floors filled: groups in the order they were run, each led by its worst case."""
    groups = defaultdict(list)
    for row in runs:
        groups[_group(row)].append(row)
    rows = [row for group in groups.values() for row in worst_case_rows(group) + sorted(group, key=_answers_order)]
    return with_floors(rows)


def _atomic_write(path: Path, write):
    """Write through a temporary file and rename it: a crash leaves the old file or the new one, never half."""
    temporary = path.with_name(f".{path.name}.tmp")
    write(temporary)
    os.replace(temporary, path)


class ResultStore:
    """
    The benchmark's rows in `output_dir`: `results.json` and `results.parquet` (runs and worst cases), rewritten
    after every run; `config.json`, the settings the rows were made with.

    Args:
        output_dir (`str` or `os.PathLike`): where the results live; finished runs found there are not run again.
        config ([`BenchmarkConfig`]): the configuration; its settings (everything but the axes) must match those of
            the rows found, or resuming would mix incomparable runs.
    """

    def __init__(self, output_dir, config: BenchmarkConfig):
        self.output_dir = output_folder(output_dir)
        self._check_settings(config)
        path = self.output_dir / RESULTS_JSON
        rows = json.loads(path.read_text()) if path.is_file() else []
        self.runs = [row for row in rows if row["answers"] != WORST_CASE]
        self.done = {tuple(row[name] for name in RUN_KEY) for row in self.runs}

    def _check_settings(self, config):
        path = self.output_dir / CONFIG_JSON
        settings = json.loads(json.dumps(config.settings()))  # as it reads back (tuples become lists)
        if path.is_file():
            saved = json.loads(path.read_text())
            changed = _changed_settings(saved.get("settings", {}), settings)
            if changed:
                raise ValueError(f"{self.output_dir} holds results made with other settings ({', '.join(changed)}); "
                                 "use another output directory, or delete it to start again.")
            # Axes may grow: remember every shared name's settings, old and new.
            settings = _merged(saved["settings"], settings)
        content = json.dumps({"settings": settings, "config": config.to_dict()}, indent=2)
        _atomic_write(path, lambda p: p.write_text(content))

    def add(self, row: dict):
        """Record a finished run and rewrite the results files."""
        self.runs.append(row)
        self.done.add(tuple(row[name] for name in RUN_KEY))
        self.write()

    def rows(self) -> list[dict]:
        return [{name: row.get(name) for name in COLUMNS} for row in results_table(self.runs)]

    def dataset(self) -> Dataset:
        return Dataset.from_list(self.rows(), features=FEATURES)

    def write(self):
        rows = self.rows()
        _atomic_write(self.output_dir / RESULTS_JSON, lambda p: p.write_text(json.dumps(rows, indent=1)))
        # pyarrow directly: Dataset.to_parquet shows a progress bar per call. The schema keeps the features.
        table = Dataset.from_list(rows, features=FEATURES).data.table
        _atomic_write(self.output_dir / RESULTS_PARQUET, lambda p: pyarrow.parquet.write_table(table, str(p)))


def _changed_settings(saved: dict, current: dict) -> list[str]:
    changed = []
    for section, value in current.items():
        old = saved.get(section)
        if isinstance(value, dict) and section in ("victims", "attacks", "pools"):
            changed += [f"{section}.{name}" for name in value if name in (old or {}) and old[name] != value[name]]
        elif old is not None and old != value:
            changed.append(section)
    return changed


def _merged(saved: dict, current: dict) -> dict:
    merged = dict(current)
    for section in ("victims", "attacks", "pools"):
        merged[section] = {**saved.get(section, {}), **current.get(section, {})}
    return merged


def _mean(rows, key):
    return sum(row[key] for row in rows) / len(rows)


def format_summary(rows: list[dict]) -> str:
    """
    The headline table, worst case first: per victim, defence, attack, pool and budget (mean over seeds), utility,
    the worst-case clone accuracy and which answers reached it, and the in-distribution label-only floor.
    """
    groups = defaultdict(list)
    for row in rows:
        if row["answers"] == WORST_CASE:
            key = (row["victim"], row["defense"], row["defense_params"], row["attack"], row["pool"], row["budget"])
            groups[key].append(row)
    lines = ["| victim | defence | attack | pool | queries | utility | worst-case clone | reached by | agreement | floor |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (victim, defense, params, attack, pool, budget), group in groups.items():
        floors = [r["label_only_floor"] for r in group if r["label_only_floor"] is not None]
        utility = _mean(group, "defended_accuracy")
        change = 100 * (utility - _mean(group, "victim_accuracy"))
        name = defense if params == "{}" else f"{defense} {params}"
        floor = f"{sum(floors) / len(floors):.1%}" if floors else "-"
        lines.append(f"| {victim} | {name} | {attack} | {pool} | {budget} | {utility:.1%} ({change:+.1f}) | "
                     f"**{_mean(group, 'clone_accuracy'):.1%}** | {', '.join(sorted({r['worst_of'] for r in group}))} | "
                     f"{_mean(group, 'clone_agreement'):.1%} | {floor} |")
    return "\n".join(lines)
