"""benchmarks/seed_table.py pools the student seeds of one recipe (victims named `<recipe>-seedN`) into one row."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "seed_table.py"


def load_seed_table():
    spec = importlib.util.spec_from_file_location("seed_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def worst_case(victim, budget, seed, clone, utility, way="soft"):
    return {"victim": victim, "defense": "none", "attack": "knockoff", "pool": "fashion_mnist", "answers": "worst_case",
            "worst_of": way, "budget": budget, "seed": seed, "clone_accuracy": clone, "defended_accuracy": utility}


def test_student_seeds_of_one_recipe_share_a_row(tmp_path):
    rows = [worst_case("unrolled-seed0", 1500, 0, 0.20, 0.960), worst_case("unrolled-seed0", 1500, 1, 0.30, 0.960),
            worst_case("unrolled-seed1", 1500, 0, 0.40, 0.970, way="label_only"),
            worst_case("teacher", 1500, 0, 0.55, 0.973),
            {**worst_case("teacher", 1500, 0, 0.99, 0.973), "answers": "soft"}]  # not a worst case: ignored
    (tmp_path / "results.json").write_text(json.dumps(rows))
    table = load_seed_table().seed_table([tmp_path]).splitlines()
    unrolled = next(line for line in table if line.startswith("| unrolled |"))
    assert "| 96.5 (96.0-97.0) |" in unrolled  # one utility per student seed, not per clone seed
    assert "30.0 (20.0-40.0; label_only/soft)" in unrolled and unrolled.endswith("| 3 |")
    teacher = next(line for line in table if line.startswith("| teacher |"))
    assert "55.0 (55.0-55.0; soft)" in teacher and teacher.endswith("| 1 |")


def test_two_settings_of_one_defence_are_two_rows(tmp_path):
    low, high = '{"beta": 0.3, "gamma": 0.4}', '{"beta": 1.5, "gamma": 0.4}'
    rows = [{**worst_case("teacher", 1500, 0, 0.50, 0.973), "defense": "reverse_sigmoid", "defense_params": low},
            {**worst_case("teacher", 1500, 0, 0.20, 0.960), "defense": "reverse_sigmoid", "defense_params": high},
            {**worst_case("teacher", 1500, 0, 0.60, 0.973), "defense_params": "{}"}]
    (tmp_path / "results.json").write_text(json.dumps(rows))
    table = load_seed_table().seed_table([tmp_path]).splitlines()
    assert table[2:] == ["| teacher | none | 97.3 | 60.0 (60.0-60.0; soft) | 1 |",
                         f"| teacher | reverse_sigmoid {low} | 97.3 | 50.0 (50.0-50.0; soft) | 1 |",
                         f"| teacher | reverse_sigmoid {high} | 96.0 | 20.0 (20.0-20.0; soft) | 1 |"]
