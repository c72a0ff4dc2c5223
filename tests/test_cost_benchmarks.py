"""The cost benchmarks (benchmarks/training_cost.py, benchmarks/serving_cost.py) run end to end with tiny settings and
write the fields RESULTS.md quotes. Plumbing only: no timing is asserted (a shared CI machine would make it flaky)."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_positive_finite(row, keys):
    for key in keys:
        assert isinstance(row[key], (int, float)) and math.isfinite(row[key]) and row[key] > 0, (key, row[key])


def written(module, record, tmp_path):
    path = tmp_path / "out" / "record.json"
    module.save(record, str(path))
    return json.loads(path.read_text())


def test_training_cost_runs_and_writes_ratios(tmp_path):
    training_cost = load_script("training_cost")
    # Two configurations keep it fast (each is a fresh ~6 s subprocess); the others run the same code path.
    record = training_cost.measure(steps=2, repeats=1, train_size=128, configs=("kd", "unrolled"),
                                   progress=lambda _: None)
    record = written(training_cost, record, tmp_path)
    assert set(record["summary"]) == {"kd", "unrolled"} and len(record["runs"]["unrolled"]) == 1
    for row in record["summary"].values():
        assert_positive_finite(row, ["seconds_median", "peak_rss_mib_median", "train_increment_mib_median",
                                     "time_ratio_vs_kd", "memory_ratio_vs_kd", "increment_ratio_vs_kd"])
    assert record["summary"]["kd"]["time_ratio_vs_kd"] == 1.0
    assert "kd" in training_cost.table(record)
    with pytest.raises(ValueError, match="kd"):
        training_cost.measure(steps=1, repeats=1, configs=("unrolled",))


def test_serving_cost_runs_and_writes_ratios(tmp_path):
    serving_cost = load_script("serving_cost")
    # An empty model folder: the randomly initialised models of the demo's architectures.
    record = serving_cost.measure(calls=3, batch_calls=1, batch_size=4, warmup=1, model_dir=str(tmp_path),
                                  progress=lambda _: None)
    record = written(serving_cost, record, tmp_path)
    assert set(record["summary"]) == set(serving_cost.VARIANTS)
    assert record["models"]["defended"].startswith("random init")
    for row in record["summary"].values():
        assert_positive_finite(row, ["latency_ms_median", "latency_ms_p90", "throughput_images_per_s",
                                     "latency_ratio_vs_teacher", "batch_time_ratio_vs_teacher"])
    assert record["summary"][serving_cost.BASELINE]["latency_ratio_vs_teacher"] == 1.0
    assert "defended/protected" in serving_cost.table(record)
