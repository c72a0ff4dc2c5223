"""The extraction benchmark: the tiny config end to end, resuming, the worst case, config checks and the CLI hook."""

import argparse
import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml
from datasets import Dataset
from transformers import BertConfig

from hf_misleader import benchmark
from hf_misleader.benchmark import data as benchmark_data
from hf_misleader.benchmark import runs as benchmark_runs
from hf_misleader.benchmark import add_benchmark_command, run_benchmark
from hf_misleader.benchmark.config import BenchmarkConfigError, load_config
from hf_misleader.benchmark.plots import utility_vs_extraction_figure, worst_case_figure
from hf_misleader.benchmark.results import COLUMNS, worst_case_rows
from hf_misleader.benchmark.runs import RUN_KEY, plan_runs
from hf_misleader.benchmark.schema import DATASETS, NUM_LABELS
from hf_misleader.cli import main as cli_main
from hf_misleader.configuration_misleader import MisleaderConfig
from hf_misleader.data import image_processor
from hf_misleader.members import image_member_config

CONFIGS = Path(__file__).resolve().parent.parent / "benchmarks" / "configs"
TINY = CONFIGS / "tiny.yaml"
OUTPUTS = ("results.json", "results.parquet", "config.json", "summary.md", "worst_case_vs_queries.png",
           "utility_vs_extraction.png")


def tiny_config():
    return yaml.safe_load(TINY.read_text())


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny benchmark, run once: its output folder and the returned Dataset."""
    output_dir = tmp_path_factory.mktemp("benchmark") / "tiny"
    return output_dir, run_benchmark(TINY, output_dir, progress=False)


def _runs(rows):
    return [row for row in rows if row["answers"] != "worst_case"]


def test_tiny_benchmark_end_to_end(finished):
    output_dir, table = finished
    for name in OUTPUTS:
        assert (output_dir / name).is_file(), name
    assert table.column_names == list(COLUMNS)
    rows = table.to_list()
    planned = plan_runs(load_config(TINY))
    assert {tuple(row[k] for k in RUN_KEY) for row in _runs(rows)} == {run.key for run in planned}
    # soft + label-only for both defences, averaging for the randomised one only; 2 pools x 2 budgets each.
    assert len(_runs(rows)) == (2 + 3) * 2 * 2
    assert sum(row["answers"] == "averaging" for row in rows) == 4
    assert all(row["defense"] == "gaussian_noise" for row in rows if row["answers"] == "averaging")
    for row in _runs(rows):
        assert row["queries"] == row["budget"]
        assert row["output"] == ("label" if row["answers"] == "label_only" else "probabilities")
        for key in ("victim_accuracy", "defended_accuracy", "clone_accuracy", "clone_agreement"):
            assert 0.0 <= row[key] <= 1.0, (key, row)
    undefended = {row["defended_accuracy"] for row in rows if row["defense"] == "none"}
    assert undefended == {rows[0]["victim_accuracy"]}  # no defence: utility is the victim's own accuracy
    assert Dataset.from_parquet(str(output_dir / "results.parquet")).to_list() == rows
    assert json.loads((output_dir / "results.json").read_text()) == rows
    assert "worst-case clone" in (output_dir / "summary.md").read_text()


def test_worst_case_is_the_max_over_answers(finished):
    rows = finished[1].to_list()
    def group(row):
        return tuple(row[k] for k in RUN_KEY if k != "answers")

    worst = [row for row in rows if row["answers"] == "worst_case"]
    assert len(worst) == len({group(row) for row in _runs(rows)}) == 2 * 2 * 2
    for row in worst:
        members = [r for r in _runs(rows) if group(r) == group(row)]
        assert row["clone_accuracy"] == max(r["clone_accuracy"] for r in members)
        reached = next(r for r in members if r["answers"] == row["worst_of"])
        assert reached["clone_accuracy"] == row["clone_accuracy"]
        assert rows.index(row) < min(rows.index(r) for r in members)  # tables lead with the worst case


def test_label_only_floor_is_the_in_distribution_label_only_clone(finished):
    rows = finished[1].to_list()
    for row in rows:
        floor = next(r["clone_accuracy"] for r in rows if r["answers"] == "label_only" and r["pool"] == "in_distribution"
                     and all(r[k] == row[k] for k in ("victim", "defense", "budget", "seed")))
        assert row["label_only_floor"] == floor


def test_adaptive_thieves_and_synthetic_attacks_run(finished, tmp_path):
    """Inverting, un-permuting, JBDA, DFME and MAD's trained surrogate, each through its own attack module."""
    config = tiny_config()
    config["defenses"] = [{"name": "reverse_sigmoid"}, {"name": "mad", "surrogate": "resnet-tiny"}]
    config["attacks"] = [
        {"name": "knockoff", "answers": ["soft", "inverting", "unpermuting"],
         "inverting": {"simulations": 1000, "inverter_steps": 20}, "unpermuting": {"labelled": 20}},
        {"name": "jbda", "answers": ["label_only"], "rounds": 2},
        {"name": "dfme", "batch_size": 16},
    ]
    config["pools"], config["budgets"] = ["in_distribution"], [60]
    shutil.copytree(finished[0] / "victims", tmp_path / "victims")  # the same teacher, not trained again
    rows = run_benchmark(config, tmp_path, progress=False).to_list()

    ran = {(row["defense"], row["attack"], row["answers"]) for row in _runs(rows)}
    assert ran == {("reverse_sigmoid", "knockoff", "soft"), ("reverse_sigmoid", "knockoff", "inverting"),
                   ("reverse_sigmoid", "knockoff", "unpermuting"), ("mad", "knockoff", "soft"),
                   ("mad", "knockoff", "unpermuting"), ("reverse_sigmoid", "jbda", "label_only"),
                   ("mad", "jbda", "label_only"), ("reverse_sigmoid", "dfme", "soft"), ("mad", "dfme", "soft")}
    assert all(row["queries"] == 60 for row in rows)  # the labelled samples are queries too
    assert {row["pool"] for row in rows if row["attack"] == "dfme"} == {"synthetic"}
    mad = next(row for row in rows if row["defense"] == "mad")
    assert json.loads(mad["defense_params"]) == {"epsilon": 0.5, "surrogate": "resnet-tiny"}


def test_worst_case_ties_go_to_the_simplest_answers():
    base = {"dataset": "d", "victim": "v", "defense": "none", "defense_params": "{}", "attack": "knockoff",
            "pool": "in_distribution", "budget": 10, "seed": 0}
    runs = [{**base, "answers": "label_only", "clone_accuracy": 0.5}, {**base, "answers": "soft", "clone_accuracy": 0.5},
            {**base, "answers": "averaging", "clone_accuracy": 0.25}, {**base, "budget": 20, "answers": "soft",
                                                                         "clone_accuracy": 0.75}]
    worst = worst_case_rows(runs)
    assert [(w["budget"], w["worst_of"], w["clone_accuracy"]) for w in worst] == [(10, "soft", 0.5), (20, "soft", 0.75)]


def test_finished_benchmark_is_not_run_again(finished, tmp_path, monkeypatch):
    output_dir = tmp_path / "again"
    shutil.copytree(finished[0], output_dir)

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr(benchmark, "_prepare", refuse)  # no data, no victim: nothing is left to do
    monkeypatch.setattr(benchmark_runs, "execute_run", refuse)
    assert run_benchmark(TINY, output_dir, progress=False).to_list() == finished[1].to_list()


def test_interrupted_benchmark_runs_only_the_missing_rows(finished, tmp_path, monkeypatch):
    output_dir = tmp_path / "interrupted"
    shutil.copytree(finished[0], output_dir)
    rows = json.loads((output_dir / "results.json").read_text())
    lost = [row for row in _runs(rows) if row["budget"] == 100 and row["pool"] == "sklearn_digits"
            and row["defense"] == "none"]
    kept = [row for row in rows if row not in lost]
    (output_dir / "results.json").write_text(json.dumps(kept))
    (output_dir / ".results.json.tmp").write_text("half a file, as a crash mid-write leaves it")

    ran, real_execute = [], benchmark_runs.execute_run
    monkeypatch.setattr(benchmark_runs, "execute_run", lambda run, context: ran.append(run.key) or real_execute(run, context))
    monkeypatch.setattr(benchmark_data, "train_teacher", lambda *a, **k: pytest.fail("the saved teacher is reused"))
    resumed = run_benchmark(TINY, output_dir, progress=False).to_list()

    assert sorted(ran) == sorted(tuple(row[k] for k in RUN_KEY) for row in lost)
    finished_at = {tuple(r[k] for k in RUN_KEY): r["finished_at"] for r in _runs(resumed)}
    for row in _runs(kept):
        assert finished_at[tuple(row[k] for k in RUN_KEY)] == row["finished_at"]
    again = {tuple(r[k] for k in RUN_KEY): r["clone_accuracy"] for r in _runs(resumed)}
    for row in lost:  # deterministic: the rerun reproduces what was lost
        assert again[tuple(row[k] for k in RUN_KEY)] == pytest.approx(row["clone_accuracy"])


def test_resuming_with_other_settings_is_refused(finished, tmp_path):
    output_dir = tmp_path / "other"
    shutil.copytree(finished[0], output_dir)
    config = tiny_config()
    config["clone"]["training"]["epochs"] = 1
    with pytest.raises(ValueError, match="other settings.*clone"):
        run_benchmark(config, output_dir, progress=False)


def _with(path, value):
    """A copy of the tiny config with the value at `path` (keys and list indices) replaced."""
    config = copy.deepcopy(tiny_config())
    target = config
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return config


INVALID = [
    (_with(["defences"], ["none"]), r"defences: unknown key. Did you mean 'defenses'"),
    (_with(["dataset", "name"], "cifar10"), r"dataset\.name: expected one of"),
    (_with(["dataset", "splits", "train"], 5000), r"dataset\.splits: ask for"),
    (_with(["dataset", "splits"], {"train": 10}), r"dataset\.splits: expected exactly"),
    (_with(["budgets"], [50, 400]), r"budgets: .*pool 'in_distribution', which has 300"),
    (_with(["budgets"], [0]), r"budgets\[0\]: expected an integer >= 1"),
    (_with(["teacher", "learning_rate"], float("nan")), r"teacher\.learning_rate: expected a positive finite number"),
    (_with(["seeds"], [-1]), r"seeds\[0\]"),
    (_with(["defenses", 1], {"name": "gaussian_noise", "sigma": -1}), r"defenses\[1\]: sigma must be >= 0"),
    (_with(["defenses", 1], {"name": "blur"}), r"defenses\[1\]\.name: expected one of"),
    (_with(["defenses", 1], {"name": "mad"}), r"defenses\[1\]\.surrogate: MAD needs a surrogate"),
    (_with(["defenses", 1], "none"), r"defenses: .* listed twice"),
    (_with(["attacks", 0, "name"], "averaging"), r"attacks\[0\]\.name: .*list them in its `answers`"),
    (_with(["attacks", 0, "answers"], ["soft", "guessing"]), r"attacks\[0\]\.answers\[1\]: knockoff takes answers"),
    (_with(["attacks", 0, "epochs"], 3), r"attacks\[0\]\.epochs: set by the benchmark itself"),
    (_with(["attacks", 0, "averaging"], {"repeat": 5}), r"attacks\[0\]\.averaging\.repeat: not an argument"),
    (_with(["attacks", 0, "averaging"], {"repeats": 0}), r"attacks\[0\]\.averaging\.repeats: expected an integer >= 1"),
    (_with(["attacks", 0, "averaging"], {"repeats": 60}),
     r"attacks\.knockoff\.averaging\.repeats: 60 repeats .* exceed the smallest budget \(50\)"),
    (_with(["attacks", 0], {"name": "knockoff", "answers": ["inverting"], "inverting": {"simulations": 0}}),
     r"attacks\[0\]\.inverting\.simulations: expected an integer >= 1"),
    (_with(["attacks"], [{"name": "jbda", "answers": ["averaging"]}]), r"attacks\[0\]\.answers\[0\]: jbda takes"),
    (_with(["pools", 1], "random_words"), r"pools\[1\]\.name: expected 'in_distribution' or one of the image surrogate"),
    (_with(["pools", 1], "mnist_5k"), r"pools\[1\]\.name: mnist_5k is the victim's own data"),
    (_with(["pools", 1], {"name": "sklearn_digits", "size": 5000}), r"pools\[1\]\.size: sklearn_digits has 1797"),
    (_with(["victims", 0], {"name": "defended", "path": "/nonexistent/model"}), r"victims\[0\]\.path: .*`hf-misleader demo`"),
    (_with(["clone", "model"], "bert-tiny"), r"clone\.model: expected one of the image presets"),
    (_with(["clone", "training", "epoch"], 3), r"clone\.training\.epoch: unknown key. Did you mean 'epochs'"),
    (_with(["teacher", "model"], "resnet-huge"), r"teacher\.model: expected one of"),
]


@pytest.mark.parametrize("config, message", INVALID, ids=[message.split(":")[0].replace("\\", "") for _, message in INVALID])
def test_invalid_config_names_the_bad_key(config, message, tmp_path):
    with pytest.raises(BenchmarkConfigError, match=message):
        run_benchmark(config, tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()  # checked before anything is written or run


@pytest.mark.parametrize("path, text, message", [
    (["teacher", "learning_rate"], "3e-3",
     r"teacher\.learning_rate: expected a positive finite number, got the text '3e-3' \(YAML reads 3e-3 as a string: "
     r"write 3\.0e-3\)"),
    (["clone", "training", "learning_rate"], "1e3", r"clone\.training\.learning_rate: .*write 1\.0e\+3\)"),
    (["teacher", "epochs"], "1e1", r"teacher\.epochs: expected an integer >= 1, got the text '1e1' .*write 10\)"),
    (["teacher", "learning_rate"], "fast", r"teacher\.learning_rate: expected a positive finite number, got 'fast'\.$"),
])
def test_numbers_yaml_reads_as_text_are_explained(path, text, message, tmp_path):
    """PyYAML reads `3e-3` (no dot, unsigned exponent) as a string: the check says so, and how to write it."""
    assert yaml.safe_load(f"x: {text}")["x"] == text
    with pytest.raises(BenchmarkConfigError, match=message):
        run_benchmark(_with(path, text), tmp_path / "never", progress=False)
    for advice in ("3.0e-3", "1.0e+3"):  # what the messages advise reads as a number
        assert isinstance(yaml.safe_load(f"x: {advice}")["x"], float)


@pytest.mark.parametrize("text", ["a: b: c\n", "name: tiny\n\tdataset: {}\n"], ids=["mapping", "tab"])
def test_malformed_yaml_is_a_one_line_error(text, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(BenchmarkConfigError, match=f"{path} is not valid YAML: .* line \\d+, column \\d+"):
        load_config(path)
    assert cli_main(["benchmark", "--config", str(path), "--output-dir", str(tmp_path / "never")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("hf-misleader benchmark: error: ") and error.count("\n") == 1


def _saved_victim(folder, config, image_size=None):
    """A victim folder as the checks read it: its config (and image processor), no weights needed."""
    config.save_pretrained(folder)
    if image_size:
        image_processor(image_size).save_pretrained(folder)
    return {"name": "saved", "path": str(folder)}


def test_a_victim_processing_other_image_sizes_is_refused_at_load(tmp_path):
    victim = _saved_victim(tmp_path / "victim", image_member_config("resnet-tiny", 10), image_size=32)
    with pytest.raises(BenchmarkConfigError, match=r"victims\[1\]\.path: victim .* processes images differently from "
                       r"the benchmark \(\['size'\]\); set dataset.image_size to match it"):
        load_config(_with(["victims"], ["teacher", victim]))
    config = _with(["victims"], ["teacher", victim])
    config["dataset"]["image_size"] = 32
    assert load_config(config).victims[1]["path"] == victim["path"]


def test_a_victim_of_the_other_modality_is_refused_at_load(tmp_path):
    text_victim = _saved_victim(tmp_path / "bert", BertConfig(num_labels=10))
    with pytest.raises(BenchmarkConfigError, match=r"victims\[1\]\.path: victim 'saved' \(.*\) classifies text inputs, "
                       r"but mnist_5k holds image data\.$"):
        load_config(_with(["victims"], ["teacher", text_victim]))
    # An ensemble's modality is its members'.
    ensemble = MisleaderConfig(members=[image_member_config("resnet-tiny", 2)])
    image_victim = _saved_victim(tmp_path / "ensemble", ensemble, image_size=16)
    with pytest.raises(BenchmarkConfigError, match=r"victims\[0\]\.path: .* classifies image inputs, but rotten_tomatoes "
                       r"holds text data"):
        load_config({**TINY_TEXT, "victims": [image_victim]})


def test_missing_fashion_mnist_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("hf_misleader.data.FASHION_MNIST_DIR", "/nonexistent/fashion-mnist")
    with pytest.raises(BenchmarkConfigError, match=r"pools\[1\]\.name: .*apt-get install dataset-fashion-mnist"):
        load_config(_with(["pools", 1], "fashion_mnist"))


def test_recorded_mnist_config_is_valid(tmp_path):
    config = yaml.safe_load((CONFIGS / "mnist.yaml").read_text())
    (tmp_path / "config.json").write_text("{}")  # stands in for the demo's outputs/demo/defended-model
    config["victims"][1]["path"] = str(tmp_path)
    runs = plan_runs(load_config(config))
    assert {run.defense for run in runs} == {"none", "top1", "rounding", "reverse_sigmoid", "gaussian_noise",
                                             "adaptive_misinformation", "mad", "mad_argmax"}
    assert {run.pool for run in runs} == {"in_distribution", "sklearn_digits", "fashion_mnist"}
    inverted = {run.defense for run in runs if run.answers == "inverting"}
    assert inverted == {"rounding", "reverse_sigmoid", "adaptive_misinformation"}  # public transforms only
    assert {run.defense for run in runs if run.answers == "averaging"} == {"gaussian_noise"}


def test_missing_splits_are_named_as_required():
    config = yaml.safe_load((CONFIGS / "tiny.yaml").read_text())
    del config["dataset"]["splits"]
    with pytest.raises(BenchmarkConfigError, match=r"dataset\.splits: missing \(required\)"):
        load_config(config)


def test_averaging_repeats_only_bound_budgets_where_averaging_runs():
    config = yaml.safe_load((CONFIGS / "tiny.yaml").read_text())
    config["budgets"] = [3]  # below the default 5 repeats: averaging, run only against a randomised defence, cannot
    with pytest.raises(BenchmarkConfigError, match="exceed the smallest budget"):
        load_config(config)
    config["defenses"] = ["none", "top1"]  # nothing randomised: averaging never runs, so small budgets are fine
    assert {run.answers for run in plan_runs(load_config(config))} == {"soft", "label_only"}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.name)
def test_every_shipped_config_is_valid(path, tmp_path):
    config = yaml.safe_load(path.read_text())
    (tmp_path / "config.json").write_text("{}")  # stands in for the victims the recorded runs trained first
    for victim in config["victims"]:
        if isinstance(victim, dict) and "path" in victim:
            victim["path"] = str(tmp_path)
    runs = plan_runs(load_config(config))
    assert runs and all(run.budget in config["budgets"] for run in runs)


def test_the_readme_config_is_valid(tmp_path):
    readme = (CONFIGS.parents[1] / "README.md").read_text()
    block = readme.split("### The config", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    config = yaml.safe_load(block)
    (tmp_path / "config.json").write_text("{}")  # stands in for the demo's outputs/demo/defended-model
    config["victims"][1]["path"] = str(tmp_path)
    runs = plan_runs(load_config(config))
    assert {run.attack for run in runs} == {"knockoff", "jbda"} and {run.victim for run in runs} == {"teacher", "defended"}


def test_missing_recorded_victim_names_the_make_target():
    config = yaml.safe_load((CONFIGS / "objectives_resnets.yaml").read_text())
    config["victims"] = [{"name": "gone", "path": "outputs/issue7/nowhere/defended-model"}]
    with pytest.raises(BenchmarkConfigError, match=r"victims\[0\]\.path: .*make objectives-victims"):
        load_config(config)


def test_extraction_metric_is_a_local_evaluate_module():
    from hf_misleader.metrics import load_extraction_metric

    scores = load_extraction_metric().compute(predictions=[0, 1, 2, 2], references=[0, 1, 1, 2],
                                              victim_predictions=[0, 0, 2, 2])
    assert scores == {"clone_accuracy": 0.75, "clone_agreement": 0.75}


def test_cli_command(finished, tmp_path, monkeypatch, capsys):
    parser = argparse.ArgumentParser(prog="hf-misleader")
    add_benchmark_command(parser.add_subparsers(dest="command", required=True))
    output_dir = tmp_path / "cli"
    shutil.copytree(finished[0], output_dir)
    arguments = parser.parse_args(["benchmark", "--config", str(TINY), "--output-dir", str(output_dir), "--no-progress"])
    monkeypatch.setattr(benchmark, "_prepare", lambda *a: pytest.fail("nothing is left to run"))
    try:
        arguments.handler(arguments)
    finally:  # --no-progress switched the library-wide bars off
        import datasets
        import transformers

        datasets.enable_progress_bars()
        transformers.utils.logging.enable_progress_bar()
    assert (output_dir / "results.parquet").is_file()
    printed = capsys.readouterr().out
    assert f"wrote {output_dir}/" in printed  # --no-progress hides the bars, not the summary
    assert (output_dir / "summary.md").read_text().split("\n\n", 1)[1].strip() in printed
    with pytest.raises(SystemExit):
        parser.parse_args(["benchmark"])  # --config is required


def test_cli_refuses_an_output_dir_that_is_a_file(tmp_path, capsys):
    taken = tmp_path / "results.txt"
    taken.write_text("someone's notes")
    assert cli_main(["benchmark", "--config", str(TINY), "--output-dir", str(taken)]) == 2
    assert capsys.readouterr().err == (f"hf-misleader benchmark: error: output directory {taken} is a file, not a "
                                       "folder: choose another output directory.\n")
    assert cli_main(["benchmark", "--config", str(TINY), "--output-dir", str(taken / "run")]) == 2
    assert f"{taken} is a file, not a folder" in capsys.readouterr().err  # "Not a directory" named, not errno text
    assert taken.read_text() == "someone's notes"


# ----------------------------------------------------------------------------------------------------------------
# The text path: a tiny BERT teacher on real Rotten Tomatoes snippets, thieves with real, random-word and fortune
# queries. Its figures mean nothing (the teacher barely learns in one epoch); the plumbing is what is checked.

TINY_TEXT = {
    "name": "tiny-text",
    "dataset": {"name": "rotten_tomatoes", "max_length": 16,
                "splits": {"train": 128, "validation": 32, "attacker_pool": 64, "test": 96}},
    "victims": ["teacher"],
    "teacher": {"model": "bert-tiny", "epochs": 1, "learning_rate": 3.0e-3, "batch_size": 32},
    "defenses": ["none", {"name": "gaussian_noise", "sigma": 0.2}],
    "attacks": [{"name": "knockoff", "answers": ["soft", "label_only", "averaging"], "averaging": {"repeats": 2}}],
    "pools": ["in_distribution", {"name": "random_words", "size": 32}, {"name": "fortunes", "size": 32}],
    "budgets": [16, 32],
    "seeds": [0],
    "clone": {"model": "bert-tiny",
              "training": {"epochs": 1, "min_steps": 2, "batch_size": 16, "learning_rate": 3.0e-3}},
}


@pytest.fixture(scope="module")
def finished_text(tmp_path_factory):
    """The tiny text benchmark, run once from a YAML file as `hf-misleader benchmark --config` reads it (~10 s)."""
    folder = tmp_path_factory.mktemp("text-benchmark")
    config = folder / "tiny-text.yaml"
    config.write_text(yaml.safe_dump(TINY_TEXT))
    return config, folder / "out", run_benchmark(config, folder / "out", progress=False).to_list()


def test_tiny_text_benchmark_end_to_end(finished_text):
    config, output_dir, rows = finished_text
    for name in OUTPUTS:
        assert (output_dir / name).is_file(), name
    assert (output_dir / "victims" / "teacher" / "tokenizer.json").is_file()  # the teacher is saved with its tokenizer
    planned = plan_runs(load_config(config))
    # soft + label-only for both defences, averaging for the randomised one only; 3 pools x 2 budgets each.
    assert len(planned) == (2 + 3) * 3 * 2
    assert sorted(tuple(row[k] for k in RUN_KEY) for row in _runs(rows)) == sorted(run.key for run in planned)
    assert {row["pool"] for row in rows} == {"in_distribution", "random_words", "fortunes"}
    for row in _runs(rows):
        assert row["dataset"] == "rotten_tomatoes" and row["clone"] == "bert-tiny"
        assert row["queries"] == row["budget"]  # every input counted, averaging's repeats included
        assert row["output"] == ("label" if row["answers"] == "label_only" else "probabilities")
        for key in ("victim_accuracy", "defended_accuracy", "clone_accuracy", "clone_agreement", "label_only_floor"):
            assert 0.0 <= row[key] <= 1.0, (key, row)
    assert {row["defense"] for row in rows if row["answers"] == "averaging"} == {"gaussian_noise"}
    undefended = {row["defended_accuracy"] for row in rows if row["defense"] == "none"}
    assert undefended == {rows[0]["victim_accuracy"]}


def test_tiny_text_benchmark_worst_cases(finished_text):
    rows = finished_text[2]
    def group(row):
        return tuple(row[k] for k in RUN_KEY if k != "answers")

    worst = [row for row in rows if row["answers"] == "worst_case"]
    assert len(worst) == len({group(row) for row in _runs(rows)}) == 2 * 3 * 2
    for row in worst:
        members = [r for r in _runs(rows) if group(r) == group(row)]
        assert row["clone_accuracy"] == max(r["clone_accuracy"] for r in members)
        assert row["worst_of"] in {r["answers"] for r in members}
    # Two classes: the plots' chance line sits at 50%.
    assert 50.0 in _chance_lines(worst_case_figure(rows))


# ----------------------------------------------------------------------------------------------------------------
# The plots: chance level, and the spread over seeds


def _chance_lines(figure):
    """The height of every line labelled "chance", over all panels."""
    heights = []
    for ax in figure.axes:
        for line in ax.get_lines():
            if line.get_label() == "chance":
                assert len(set(line.get_ydata())) == 1  # horizontal
                heights.append(float(line.get_ydata()[0]))
    return heights


def _worst_case_rows(seeds, dataset="mnist_5k"):
    rows = []
    for seed in seeds:
        for defense, base in (("none", 0.6), ("top1", 0.4)):
            for pool in ("in_distribution", "sklearn_digits"):
                for budget in (50, 100):
                    rows.append({"dataset": dataset, "victim": "teacher", "defense": defense, "defense_params": "{}",
                                 "answers": "worst_case", "pool": pool, "budget": budget, "seed": seed,
                                 "clone_accuracy": base + budget / 1000 + 0.05 * seed, "defended_accuracy": 0.9})
    return rows


@pytest.mark.parametrize("draw", [worst_case_figure, utility_vs_extraction_figure])
def test_plots_draw_chance_level_on_the_clone_axis(draw):
    figure = draw(_worst_case_rows([0]))  # one seed: still plots, no spread
    panels = [ax for ax in figure.axes if ax.get_lines() or ax.collections]
    assert len(panels) == 2 and _chance_lines(figure) == [10.0, 10.0]  # 1 / 10 classes, one line per panel
    for ax in panels:
        low, high = ax.get_ylim()
        assert low < 10.0 < high  # in view, not clipped away
        assert not [c for c in ax.collections if type(c).__name__ in ("FillBetweenPolyCollection", "PolyCollection",
                                                                      "LineCollection")]
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert "chance (10%)" in legend and "min-max over seeds" not in legend
    assert _chance_lines(draw(_worst_case_rows([0]), num_labels=4)) == [25.0, 25.0]
    assert _chance_lines(draw(_worst_case_rows([0], dataset="somewhere_else"))) == []  # unknown classes: no line


def test_several_seeds_show_their_spread():
    rows = _worst_case_rows([0, 1, 2])
    curves = worst_case_figure(rows)
    panel = curves.axes[0]
    bands = [c for c in panel.collections if type(c).__name__ in ("FillBetweenPolyCollection", "PolyCollection")]
    assert len(bands) == 2  # one per defence
    low, high = bands[0].get_paths()[0].vertices[:, 1].min(), bands[0].get_paths()[0].vertices[:, 1].max()
    # The first defence (none) at 50 queries: seeds 0.65, 0.70, 0.75 around a mean of 0.70; at 100: 0.70 to 0.80.
    assert (low, high) == pytest.approx((65.0, 80.0))
    mean = panel.get_lines()[0]
    assert list(mean.get_ydata()) == pytest.approx([70.0, 75.0])

    points = utility_vs_extraction_figure(rows)
    bars = [c for c in points.axes[0].collections if type(c).__name__ == "LineCollection"]
    assert len(bars) == 2  # one error bar per served model, at the largest budget
    segment = bars[0].get_segments()[0]
    assert sorted(segment[:, 1]) == pytest.approx([70.0, 80.0])
    assert "min-max over seeds" in [text.get_text() for text in points.legends[0].get_texts()]


def test_every_data_set_has_a_number_of_classes():
    assert set(NUM_LABELS) == set(DATASETS)


def _fashion(splits):
    return _with(["dataset"], {"name": "fashion_mnist", "image_size": 16, "splits": splits, "split_seed": 0})


def test_official_test_split_is_the_data_sets_own():
    from hf_misleader.data import load_fashion_mnist

    config = load_config(_fashion({"train": 300, "validation": 50, "attacker_pool": 100, "test": "official"}))
    assert config.dataset["splits"]["test"] == "official"
    data = benchmark_data.load_benchmark_data(config)
    official = load_fashion_mnist("test")
    assert data.test_labels.tolist() == official["label"]  # all 10,000, in file order
    assert {name: len(split) for name, split in data.splits.items()} == {
        "train": 300, "validation": 50, "attacker_pool": 100, "test": 10000}
    # The other splits come from the training file: none of their images is a test image.
    test_images = {image.tobytes() for image in official["image"]}
    training = load_fashion_mnist("train")
    drawn = benchmark_data._image_splits(config.dataset, 0)
    assert all(image.tobytes() not in test_images for image in drawn["attacker_pool"]["image"])
    assert drawn["train"]["label"] != training.select(range(300))["label"]  # shuffled with the split seed


@pytest.mark.parametrize("dataset, splits, message", [
    ("mnist_5k", {"train": 300, "validation": 50, "attacker_pool": 100, "test": "official"},
     r"dataset\.splits\.test: mnist_5k has no official test split"),
    ("fashion_mnist", {"train": 45000, "validation": 5000, "attacker_pool": 10001, "test": "official"},
     r"dataset\.splits: ask for 60001 rows but fashion_mnist's training split .* has 60000"),
    ("fashion_mnist", {"train": 300, "validation": 50, "attacker_pool": 100, "test": "held-out"},
     r"dataset\.splits\.test"),
])
def test_official_test_split_errors(dataset, splits, message):
    config = _fashion(splits)
    config["dataset"]["name"] = dataset
    with pytest.raises(BenchmarkConfigError, match=message):
        load_config(config)
