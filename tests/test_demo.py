"""The `hf-misleader demo --quick` command, run once as a user runs it, and its outputs checked."""

import itertools
import json
import os
import subprocess
import sys

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

from hf_misleader import MisleaderEnsembleForImageClassification
from hf_misleader.cli import main as cli_main
from hf_misleader.data import load_mnist_5k, prepare_image_dataset, split_for_extraction
from hf_misleader.demo import SETTINGS

QUICK = SETTINGS["image"]["quick"]

FRACTIONS = (
    "teacher_accuracy", "defended_accuracy", "clone_of_teacher_accuracy", "clone_of_defended_accuracy",
    "clone_of_teacher_agreement", "clone_of_defended_agreement",
)


def cli(*arguments, cwd, timeout=600):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "hf_misleader.cli", *arguments], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    output_dir = root / "out"
    done = cli("demo", "--quick", "--output-dir", str(output_dir), "--no-progress", cwd=root)
    return done, output_dir


@pytest.fixture(scope="module")
def results(demo):
    done, output_dir = demo
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((output_dir / "results.json").read_text())


def test_demo_exits_cleanly(demo):
    done, output_dir = demo
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Traceback" not in done.stderr
    assert "worst-case clone" in done.stdout
    for name in ("results.json", "extraction.png", "README.md", "defended-model"):
        assert (output_dir / name).exists(), name


def test_results_headline(results):
    for key in (*FRACTIONS, "queries", "seconds", "seed", "attacks"):
        assert key in results, key
    for key in FRACTIONS:
        assert isinstance(results[key], float) and 0.0 <= results[key] <= 1.0, (key, results[key])
    assert results["queries"] == QUICK.budgets[-1]
    assert results["seed"] == 0 and results["quick"] is True
    assert results["seconds"] > 0
    assert results["splits"] == QUICK.splits


def test_results_attacks_cover_the_grid(results):
    attacks = results["attacks"]
    assert len(attacks) == 8
    grid = {(a["victim"], a["pool"], a["labels"]) for a in attacks}
    assert grid == set(itertools.product(("teacher", "defended"), ("in_distribution", "out_of_distribution"),
                                         ("soft", "label_only")))
    for attack in attacks:
        assert attack["queries"] == results["queries"]
        assert 0.0 <= attack["clone_accuracy"] <= 1.0 and 0.0 <= attack["clone_agreement"] <= 1.0
        assert [point["queries"] for point in attack["curve"]] == list(QUICK.budgets)
        assert attack["curve"][-1]["clone_accuracy"] == attack["clone_accuracy"]


@pytest.mark.parametrize("victim", ["teacher", "defended"])
def test_headline_is_the_worst_case_in_distribution(results, victim):
    rows = [a for a in results["attacks"] if a["victim"] == victim and a["pool"] == "in_distribution"]
    assert len(rows) == 2
    assert results[f"clone_of_{victim}_accuracy"] == max(row["clone_accuracy"] for row in rows)
    assert results[f"clone_of_{victim}_agreement"] == max(row["clone_agreement"] for row in rows)


def test_extraction_plot_is_a_png(demo):
    _, output_dir = demo
    path = output_dir / "extraction.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 400 and image.height > 200


def test_readme_is_a_model_card_with_eval_results(demo, results):
    _, output_dir = demo
    card = ModelCard.load(output_dir / "README.md")
    assert card.data.eval_results
    accuracy = [r for r in card.data.eval_results if r.metric_type == "accuracy"]
    assert len(accuracy) == 1 and accuracy[0].metric_value == pytest.approx(results["defended_accuracy"])
    clone = [r for r in card.data.eval_results if r.metric_type == "clone_accuracy"]
    assert len(clone) == 4
    for section in ("## Members", "## Usage", "## Extraction benchmark", "## Limitations"):
        assert section in card.text
    assert (output_dir / "defended-model" / "README.md").read_text() == (output_dir / "README.md").read_text()


def test_defended_model_loads_and_reproduces_its_accuracy(demo, results):
    _, output_dir = demo
    folder = output_dir / "defended-model"
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    assert isinstance(model, MisleaderEnsembleForImageClassification)
    assert len(model.members) == len(QUICK.members) == len(results["members"])
    assert model.config.member_names == list(QUICK.members)
    assert not [name for name in os.listdir(folder) if name.endswith(".bin")]
    # The saved processor and the saved weights give back the reported test accuracy.
    processor = AutoImageProcessor.from_pretrained(folder)
    test = prepare_image_dataset(split_for_extraction(load_mnist_5k(), QUICK.splits, seed=0)["test"], processor)[:]
    with torch.no_grad():
        predictions = model(pixel_values=test["pixel_values"]).logits.argmax(-1)
    assert (predictions == test["label"]).float().mean().item() == pytest.approx(results["defended_accuracy"])


def test_bad_seed_is_a_message_not_a_traceback(tmp_path):
    done = cli("demo", "--quick", "--seed", "notanumber", "--output-dir", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode != 0
    assert "--seed" in done.stderr and "notanumber" in done.stderr
    assert "invalid seed value" in done.stderr  # argparse names the type after its function: no private name
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_unusable_output_dir_is_a_message_not_a_traceback(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = cli("demo", "--quick", "--no-progress", "--output-dir", str(blocker / "out"), cwd=tmp_path)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert f"{blocker} is a file, not a folder" in done.stderr


def test_output_dir_that_cannot_be_created_is_named(capsys):
    # /proc refuses new folders even to root: the error names the folder, not only the errno text.
    assert cli_main(["demo", "--quick", "--output-dir", "/proc/hf-misleader-out"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hf-misleader demo: error: output directory /proc/hf-misleader-out cannot be created: ")
    assert "Errno" not in err


def test_output_dir_that_is_a_file_is_named(tmp_path, capsys):
    taken = tmp_path / "results.txt"
    taken.write_text("not a folder")
    assert cli_main(["demo", "--quick", "--output-dir", str(taken)]) == 2  # before any data is loaded
    assert capsys.readouterr().err == (f"hf-misleader demo: error: output directory {taken} is a file, not a folder: "
                                       "choose another output directory.\n")
    assert taken.read_text() == "not a folder"


@pytest.mark.slow
def test_text_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "text"
    completed = subprocess.run(
        [sys.executable, "-m", "hf_misleader.cli", "demo", "--task", "text", "--quick", "--no-progress",
         "--output-dir", str(out)], capture_output=True, text=True, timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "text" and results["pipeline_tag"] == "text-classification"
    assert len(results["attacks"]) == 8
    assert all(row["queries"] == results["queries"] for row in results["attacks"])
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "text-classification"
    assert (out / "defended-model" / "tokenizer.json").exists()
