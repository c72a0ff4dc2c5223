"""defend(): input checks that fail fast, and a tiny real end-to-end defence."""

import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, TrainerCallback

from hf_misleader import MisleaderEnsembleForImageClassification, MisleaderTrainingArguments, list_presets
from hf_misleader.defend import defend
from hf_misleader.members import build_image_member
from hf_misleader.training_args import OBJECTIVE_DEFAULTS

from .conftest import IMAGE_SIZE, build_member


class RecordTraining(TrainerCallback):
    """Records every training run that starts."""

    def __init__(self):
        self.started = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started += 1


def tiny_args(output_dir, **overrides):
    settings = dict(output_dir=str(output_dir), max_steps=2, per_device_train_batch_size=16,
                    per_device_eval_batch_size=64, learning_rate=1e-3, report_to="none", use_cpu=True,
                    disable_tqdm=True, logging_strategy="no", save_strategy="no", seed=0)
    settings.update(overrides)
    return MisleaderTrainingArguments(**settings)


def test_public_defend_is_the_function():
    """`from hf_misleader import defend` is the README's first line: it must give the function, not the module."""
    import subprocess
    import sys

    script = (
        "import hf_misleader, types\n"
        "from hf_misleader import defend\n"
        "assert callable(defend) and not isinstance(defend, types.ModuleType), defend\n"
        "assert callable(hf_misleader.defend), hf_misleader.defend\n"
        "print('OK')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr[-2000:]


def test_teacher_with_other_label_count(tmp_path, digits):
    teacher = build_image_member("resnet-tiny", 5, None, 3, IMAGE_SIZE)
    recorder = RecordTraining()
    with pytest.raises(ValueError, match="5 classes"):
        defend(teacher, digits["train"], members=["resnet-tiny"], args=tiny_args(tmp_path), callbacks=[recorder])
    assert recorder.started == 0


def test_eval_dataset_with_other_label_count(tmp_path, digits):
    teacher = build_member("resnet-tiny")
    few_classes = digits["validation"].filter(lambda row: row["label"] < 5)
    few_classes = few_classes.cast_column("label", few_classes.features["label"].__class__(names=list("01234")))
    with pytest.raises(ValueError, match="eval_dataset"):
        defend(teacher, digits["train"], members=["resnet-tiny"], eval_dataset=few_classes, args=tiny_args(tmp_path))


def test_dataset_without_pixel_values(tmp_path, raw_digits):
    with pytest.raises(ValueError, match="pixel_values"):
        defend(build_member("resnet-tiny"), raw_digits["train"], members=["resnet-tiny"], args=tiny_args(tmp_path))


@pytest.mark.parametrize("members", [["no-such-net"], ["resnet-tiny", "no-such-net"]], ids=["first", "second"])
def test_unknown_member_preset_fails_before_any_training(tmp_path, digits, members):
    recorder = RecordTraining()
    with pytest.raises(ValueError, match="no-such-net") as error:
        defend(build_member("resnet-tiny"), digits["train"], members=members, args=tiny_args(tmp_path),
               callbacks=[recorder])
    for preset in list_presets("image"):
        assert preset in str(error.value)
    # Nothing is trained before every member is known to exist.
    assert recorder.started == 0, f"{recorder.started} member(s) trained before the bad preset was rejected"
    assert not os.path.exists(tmp_path / "member-0-resnet-tiny")


def test_hyperparameters_must_match_members(tmp_path, digits):
    with pytest.raises(ValueError, match="hyper-parameter"):
        defend(build_member("resnet-tiny"), digits["train"], members=["resnet-tiny", "vit-tiny"],
               member_hyperparameters=[{"lambda": 0.1, "temperature": 2.0, "alpha": 0.5}], args=tiny_args(tmp_path))


def test_no_members(tmp_path, digits):
    with pytest.raises(ValueError, match="member"):
        defend(build_member("resnet-tiny"), digits["train"], members=[], args=tiny_args(tmp_path))


def test_missing_teacher_folder(tmp_path, digits):
    with pytest.raises(FileNotFoundError):
        defend(str(tmp_path / "nowhere"), digits["train"], args=tiny_args(tmp_path))


@pytest.fixture(scope="module")
def defended(tmp_path_factory, digits):
    output_dir = tmp_path_factory.mktemp("defend")
    torch.manual_seed(0)
    teacher = build_member("resnet-tiny", seed=0)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    hyper = [{"lambda": 0.2, "temperature": 3.0, "alpha": 0.6}, {"lambda": 0.0, "temperature": 1.5, "alpha": 0.1}]
    recorder = RecordTraining()
    ensemble = defend(teacher, digits["train"], members=["convnext-tiny", "vit-tiny"], eval_dataset=digits["validation"],
                      args=tiny_args(output_dir), member_hyperparameters=hyper, callbacks=[recorder])
    return {"ensemble": ensemble, "output_dir": output_dir, "hyper": hyper, "teacher": teacher,
            "teacher_before": teacher_before, "recorder": recorder}


def test_defend_returns_a_recorded_ensemble(defended):
    ensemble = defended["ensemble"]
    assert isinstance(ensemble, MisleaderEnsembleForImageClassification)
    assert not ensemble.training
    assert next(ensemble.parameters()).device.type == "cpu"
    assert defended["recorder"].started == 2
    config = ensemble.config
    assert config.member_names == ["convnext-tiny", "vit-tiny"]
    assert [m["model_type"] for m in config.members] == ["convnext", "vit"]
    assert config.num_labels == 10 and config.id2label[3] == "3"
    assert config.objective == "unrolled"  # the default objective
    for record, hyper, name in zip(config.member_hyperparameters, defended["hyper"], config.member_names):
        assert record["name"] == name
        assert (record["lambda"], record["temperature"], record["alpha"]) == (
            hyper["lambda"], hyper["temperature"], hyper["alpha"])
        assert 0.0 <= record["validation_accuracy"] <= 1.0


def test_defend_members_are_the_trained_students(defended, digits):
    """Each ensemble member carries the weights of its member's selected checkpoint."""
    ensemble, output_dir = defended["ensemble"], defended["output_dir"]
    for index, (name, slot) in enumerate(zip(ensemble.config.member_names, ensemble.members)):
        folder = output_dir / f"member-{index}-{name}"
        checkpoints = sorted(p for p in folder.iterdir() if p.name.startswith("checkpoint-"))
        assert checkpoints, f"no checkpoint for {name}"
        saved = AutoModelForImageClassification.from_pretrained(checkpoints[-1]).eval()
        pixel_values = digits["validation"][:8]["pixel_values"]
        with torch.no_grad():
            assert torch.equal(saved(pixel_values=pixel_values).logits, slot(pixel_values=pixel_values).logits)
        # The member's checkpoint holds the student alone, the attacker beside it, never inside the ensemble.
        assert len(load_file(checkpoints[-1] / "model.safetensors")) == len(slot.state_dict())
        assert (checkpoints[-1] / "attacker.safetensors").is_file()
    assert len(load_file_of(ensemble)) == sum(len(slot.state_dict()) for slot in ensemble.members)


def load_file_of(model):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        return load_file(os.path.join(folder, "model.safetensors"))


def test_defend_leaves_the_teacher_unchanged(defended):
    after = defended["teacher"].state_dict()
    assert all(torch.equal(tensor, after[name]) for name, tensor in defended["teacher_before"].items())


def test_defended_round_trip(defended, tmp_path, digits):
    ensemble = defended["ensemble"]
    ensemble.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.member_hyperparameters == ensemble.config.member_hyperparameters
    assert loaded.config.member_names == ["convnext-tiny", "vit-tiny"]
    pixel_values = digits["validation"][:8]["pixel_values"]
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=pixel_values).logits, ensemble(pixel_values=pixel_values).logits)


def test_defend_gives_the_teacher_back_trainable(defended):
    # The trainer freezes the teacher while it distils it; the caller's model is handed back as it came.
    assert all(parameter.requires_grad for parameter in defended["teacher"].parameters())


@pytest.mark.parametrize(
    "hyper, message",
    [({"lambda": 0.01}, "temperature"), ({"lambda": 0.01, "temperature": 2.0, "alpha": 2.0}, "alpha")],
    ids=["missing-key", "bad-value"],
)
def test_bad_member_hyperparameters_fail_before_any_training(tmp_path, digits, hyper, message):
    recorder = RecordTraining()
    good = {"lambda": 0.01, "temperature": 2.0, "alpha": 0.5}
    with pytest.raises(ValueError, match=message):
        defend(build_member("resnet-tiny"), digits["train"], members=["resnet-tiny", "convnext-tiny"],
               member_hyperparameters=[good, hyper], args=tiny_args(tmp_path), callbacks=[recorder])
    assert recorder.started == 0


def test_members_as_a_bare_string_and_stock_arguments_are_refused(tmp_path, digits):
    from transformers import TrainingArguments

    with pytest.raises(ValueError, match="list"):
        defend(build_member("resnet-tiny"), digits["train"], members="resnet-tiny", args=tiny_args(tmp_path))
    with pytest.raises(TypeError, match="MisleaderTrainingArguments"):
        defend(build_member("resnet-tiny"), digits["train"], members=["resnet-tiny"],
               args=TrainingArguments(output_dir=str(tmp_path), report_to="none"))
    with pytest.raises(ValueError, match="non-empty"):
        defend(build_member("resnet-tiny"), digits["train"].select([]), members=["resnet-tiny"], args=tiny_args(tmp_path))


def test_plain_integer_labels_need_only_fall_in_the_label_space(tmp_path, digits):
    from datasets import Value

    plain = digits["train"].cast_column("label", Value("int64"))
    subset = plain.filter(lambda row: row["label"] < 9)  # no 9s: still a valid 10-class problem
    subset.set_format("torch", columns=["pixel_values", "label"])
    ensemble = defend(build_member("resnet-tiny"), subset, members=["resnet-tiny"], args=tiny_args(tmp_path, max_steps=1))
    assert ensemble.config.num_labels == 10
    beyond = plain.map(lambda row: {"label": row["label"] + 5})
    beyond.set_format("torch", columns=["pixel_values", "label"])
    with pytest.raises(ValueError, match="labels from"):
        defend(build_member("resnet-tiny"), beyond, members=["resnet-tiny"], args=tiny_args(tmp_path))


def test_defend_with_a_surrogate_attacker_pool(tmp_path, digits, raw_digits):
    ensemble = defend(build_member("resnet-tiny"), digits["train"], members=["resnet-tiny"],
                      attacker_dataset=digits["validation"], args=tiny_args(tmp_path, max_steps=1))
    assert len(ensemble.members) == 1
    with pytest.raises(ValueError, match="attacker_dataset"):
        defend(build_member("resnet-tiny"), digits["train"], members=["resnet-tiny"],
               attacker_dataset=raw_digits["validation"], args=tiny_args(tmp_path))


class RecordPermutation(TrainerCallback):
    """Reads the secret permutation each member's trainer plays with (through the trainer the model belongs to)."""

    def __init__(self):
        self.permutations = []

    def on_train_begin(self, args, state, control, **kwargs):
        import gc

        from hf_misleader import MisleaderTrainer

        trainers = [o for o in gc.get_objects() if isinstance(o, MisleaderTrainer) and o.model is kwargs["model"]]
        self.permutations.append(trainers[0].class_permutation.clone())


@pytest.mark.parametrize("objective", ["unrolled", "misinformation"])
def test_defend_with_each_objective(tmp_path, digits, objective):
    recorder = RecordPermutation()
    defended = defend(build_member("resnet-tiny"), digits["train"], members=["resnet-tiny", "vit-tiny"],
                      args=tiny_args(tmp_path, objective=objective), callbacks=[recorder] if objective ==
                      "misinformation" else None)
    assert defended.config.objective == objective
    # The other objectives give every member the arguments' lambda, T and alpha (the reference cycle's weakest
    # distillation weight is overpowered by their lambda).
    default_lambda = OBJECTIVE_DEFAULTS[objective]["misleader_lambda"]
    assert [(m["lambda"], m["temperature"], m["alpha"]) for m in defended.config.member_hyperparameters] == [
        (default_lambda, 4.0, 0.5), (default_lambda, 4.0, 0.5)]
    defended.save_pretrained(tmp_path / "saved")
    for name in os.listdir(tmp_path / "saved"):
        if name.endswith((".json", ".py")):
            assert "permutation" not in (tmp_path / "saved" / name).read_text(), name
    if objective == "misinformation":
        first, second = recorder.permutations
        assert torch.equal(first, second)  # the members tell the same lie
        assert not (first == torch.arange(10)).any()


def test_defend_composes_an_output_defense(tmp_path, digits):
    with pytest.raises(ValueError, match="output_defense"):
        defend(build_member("resnet-tiny"), digits["train"], members=["resnet-tiny"], args=tiny_args(tmp_path),
               output_defense={"name": "reverse_sigmoid", "beta": -1})
    defended = defend(build_member("resnet-tiny"), digits["train"], members=["resnet-tiny"], args=tiny_args(tmp_path),
                      output_defense={"name": "reverse_sigmoid", "beta": 0.7, "gamma": 0.4})
    assert defended.config.output_defense == {"name": "reverse_sigmoid", "beta": 0.7, "gamma": 0.4}


def test_a_member_that_never_learnt_is_named_with_its_likely_cause(caplog):
    from transformers.utils import logging as transformers_logging

    from hf_misleader.defend import _warn_if_weak

    args = MisleaderTrainingArguments(output_dir="unused", objective="unrolled", report_to="none")
    transformers_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            _warn_if_weak(2, "convnext-tiny", {"validation_accuracy": 0.113}, 0.99, args)
            _warn_if_weak(0, "resnet-tiny", {"validation_accuracy": 0.96}, 0.99, args)
    finally:
        transformers_logging.disable_propagation()
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "Member 2 (convnext-tiny) reached 11.3%" in message and "misleader_lambda (now 0.5)" in message
