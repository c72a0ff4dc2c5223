"""The launchable recipe (trainers/*_classification.py, `hf-misleader defend --config`): configs, errors, a real run."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from transformers import AutoModelForImageClassification, BertConfig, pipeline

from hf_misleader import recipe
from hf_misleader.cli import main as cli_main
from hf_misleader.data import load_sklearn_digits
from hf_misleader.members import image_member_config
from hf_misleader.recipe import load_config, parse_arguments

from .test_distributed import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {
    "task": "image", "dataset_name": "sklearn-digits", "image_size": 16, "train_size": 96, "validation_size": 48,
    "teacher_name_or_path": "resnet-tiny", "teacher_epochs": 1, "members": ["resnet-tiny", "convnext-tiny"],
    "attacker_pool": "mnist-5k", "attacker_pool_size": 48, "objective": "unrolled", "num_train_epochs": 1,
    "per_device_train_batch_size": 16, "eval_strategy": "epoch", "save_strategy": "no", "report_to": "none",
    "use_cpu": True, "disable_tqdm": True, "seed": 0,
}


def write_config(folder, **changes):
    config = {**TINY, "output_dir": str(folder / "run"), **changes}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("name", ["image_classification.yaml", "text_classification.yaml"])
def test_shipped_configs_parse(name):
    arguments, training_args = load_config(os.path.join(ROOT, "trainers", "configs", name))
    assert arguments.task == name.split("_")[0]
    assert training_args.load_best_model_at_end and training_args.metric_for_best_model == "accuracy"


def test_unknown_key_is_an_error_not_a_silent_default(tmp_path):
    with pytest.raises(ValueError, match="'misleader_lamda' \\(did you mean 'misleader_lambda'\\?\\)"):
        load_config(write_config(tmp_path, misleader_lamda=0.5))


def test_numbers_yaml_reads_as_text_are_numbers(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(write_config(tmp_path).read_text() + "learning_rate: 2e-3\nteacher_epochs: '1'\n")
    arguments, training_args = load_config(path)
    assert training_args.learning_rate == 0.002 and arguments.teacher_epochs == 1
    path.write_text(write_config(tmp_path).read_text() + "num_train_epochs: one\n")
    with pytest.raises(ValueError, match="num_train_epochs must be a number, got the text 'one'"):
        load_config(path)


@pytest.mark.parametrize("text, message", [("", "must hold a mapping"), ("- task: image\n", "must hold a mapping"),
                                           ("members: [a: b\n", "is not valid YAML")])
def test_malformed_files_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(path)


@pytest.mark.parametrize(
    "changes, message",
    [({"members": ["resnet-huge"]}, "members must be a non-empty list of image presets"),
     ({"members": []}, "members must be a non-empty list"), ({"members": ["bert-tiny"]}, "image presets"),
     ({"members": [{"hidden_sizes": [8, 16]}]}, "config mappings with a model_type"),
     ({"attacker_pool": "cifar"}, "attacker_pool must be one of"), ({"output_defense": "top1"}, "output_defense"),
     ({"attacker_model": "resnet-huge"}, "attacker_model must be one of the image presets"),
     ({"attacker_model": "bert-tiny"}, "attacker_model must be one of the image presets")],
)
def test_what_defend_would_refuse_is_refused_before_the_teacher_trains(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        load_config(write_config(tmp_path, **changes))


def test_a_member_may_be_a_config_mapping(tmp_path):
    custom = {"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8, 16], "depths": [2, 2], "layer_type": "basic"}
    arguments, _ = load_config(write_config(tmp_path, members=["resnet-tiny", custom]))
    assert arguments.members == ["resnet-tiny", custom]


def test_a_typo_in_a_member_mapping_is_refused_before_any_training(tmp_path):
    # Checked when the recipe is read: the teacher would otherwise train first.
    typo = {"model_type": "resnet", "hidden_sizez": [8]}
    with pytest.raises(ValueError, match="no setting 'hidden_sizez'. Did you mean 'hidden_sizes'"):
        load_config(write_config(tmp_path, members=["resnet-tiny", typo]))


def test_output_defense_by_name_or_mapping(tmp_path):
    arguments, _ = load_config(write_config(tmp_path, output_defense="reverse_sigmoid"))
    assert arguments.output_defense == {"name": "reverse_sigmoid"}
    arguments, _ = load_config(write_config(tmp_path, output_defense={"name": "reverse_sigmoid", "beta": 0.5}))
    assert arguments.output_defense == {"name": "reverse_sigmoid", "beta": 0.5}


@pytest.mark.parametrize(
    "changes, message",
    [({"task": "audio"}, "task must be one of"), ({"train_size": 0}, "train_size must be a positive integer"),
     ({"output_defense": "{not json"}, "output_defense must be a name or a JSON object"), ({"misleader_lambda": -1}, "misleader_lambda"),
     ({"teacher_learning_rate": 0}, "teacher_learning_rate must be a finite number > 0"),
     ({"teacher_learning_rate": -2e-3}, "teacher_learning_rate must be"), ({"teacher_epochs": -1}, "teacher_epochs must be"),
     ({"teacher_epochs": float("nan")}, "teacher_epochs must be a finite number >= 0, got nan"),
     ({"num_train_epochs": 0}, "num_train_epochs must be > 0 unless max_steps > 0"),
     ({"per_device_train_batch_size": 0}, "per_device_train_batch_size must be a positive integer")],
)
def test_bad_values_are_named(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        load_config(write_config(tmp_path, **changes))


def test_flags_work_like_the_file(tmp_path):
    arguments, training_args = parse_arguments(
        ["--teacher_name_or_path", "resnet-tiny", "--teacher_epochs", "1", "--output_dir", str(tmp_path),
         "--objective", "misinformation", "--members", "resnet-tiny", "vit-tiny"]
    )
    assert arguments.members == ["resnet-tiny", "vit-tiny"] and training_args.objective == "misinformation"
    with pytest.raises(ValueError, match="attacker_model must be one of the image presets .* got 'resnet-huge'"):
        parse_arguments(["--teacher_name_or_path", "resnet-tiny", "--teacher_epochs", "1", "--output_dir",
                         str(tmp_path), "--attacker_model", "resnet-huge"])


def _saved_config(folder, config):
    config.save_pretrained(folder)  # what tells a folder's modality: its config.json
    return str(folder)


@pytest.mark.parametrize("task, other", [("text", "image"), ("image", "text")])
def test_a_teacher_folder_of_the_other_modality_is_refused_before_training(tmp_path, task, other):
    teacher = image_member_config("resnet-tiny", 10) if other == "image" else BertConfig(num_labels=2)
    changes = {"task": "text", "dataset_name": "rotten-tomatoes", "members": ["bert-tiny"],
               "attacker_pool": "random-words"} if task == "text" else {}
    config = write_config(tmp_path, teacher_name_or_path=_saved_config(tmp_path / "teacher", teacher), **changes)
    with pytest.raises(ValueError, match=f"^teacher_name_or_path .* classifies {other} inputs, but task is '{task}'"):
        load_config(config)


def test_cli_errors_before_any_training(tmp_path, capsys):
    config = write_config(tmp_path, teacher_epochs=0)  # an untrained preset cannot be the teacher
    assert cli_main(["defend", "--config", str(config)]) == 2
    assert "teacher_epochs > 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert cli_main(["defend", "--config", str(tmp_path / "missing.yaml")]) == 2
    config = write_config(tmp_path, train_size=2000)
    assert cli_main(["defend", "--config", str(config)]) == 2
    assert "more than the 1797 rows" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["output_dir", "save_directory"])
def test_cli_refuses_an_output_folder_that_is_a_file(tmp_path, capsys, key):
    taken = tmp_path / "notes.txt"
    taken.write_text("not a folder")
    assert cli_main(["defend", "--config", str(write_config(tmp_path, **{key: str(taken)}))]) == 2
    assert capsys.readouterr().err == (f"hf-misleader defend: error: {key} {taken} is a file, not a folder: choose "
                                       f"another {key}.\n")
    assert cli_main(["defend", "--config", str(write_config(tmp_path, **{key: str(taken / "run")}))]) == 2
    assert f"{key} {taken / 'run'} cannot be created: {taken} is a file" in capsys.readouterr().err
    assert taken.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml",
                                                                                                "notes.txt"]


def test_teacher_training_pins_memory_only_with_an_accelerator(tmp_path, monkeypatch):
    # Pinning without an accelerator does nothing but warn, once per DataLoader. Without use_cpu, as in the shipped
    # configs (with it, the stock arguments already turn pinning off).
    seen = []

    class Recorder:
        def __init__(self, model, args, **kwargs):
            seen.append(args)
            self.model = model

        def train(self):
            pass

    monkeypatch.setattr(recipe, "Trainer", Recorder)
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace("use_cpu: true\n", ""))
    arguments, training_args = load_config(config)
    recipe._train_teacher(torch.nn.Linear(1, 1), {"train": None, "validation": None}, arguments, training_args)
    assert seen[0].dataloader_pin_memory is torch.accelerator.is_available()


def test_defend_config_trains_and_saves_a_servable_ensemble(tmp_path):
    config = write_config(tmp_path, output_defense=json.dumps({"name": "reverse_sigmoid"}))
    assert cli_main(["defend", "--config", str(config)]) == 0
    folder = tmp_path / "run" / "defended-model"
    summary = json.loads((folder / "defence_summary.json").read_text())
    # Training checkpoints are removed once the ensemble is saved; the reusable teacher stays.
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["defended-model", "teacher-model"]
    assert summary["members"] == ["resnet-tiny", "convnext-tiny"] and summary["processes"] == 1
    assert 0.0 <= summary["defended_validation_accuracy"] <= 1.0
    model = AutoModelForImageClassification.from_pretrained(folder)
    assert model.config.objective == "unrolled" and model.config.output_defense["name"] == "reverse_sigmoid"
    classify = pipeline("image-classification", model=str(folder), device="cpu")
    scores = classify(load_sklearn_digits(16)[0]["image"].convert("RGB"), top_k=10)
    assert abs(sum(row["score"] for row in scores) - 1.0) < 1e-4


@pytest.mark.slow
def test_recipe_under_torchrun_two_processes(tmp_path):
    # Checkpoints every epoch, the best one loaded at the end, then removed by process 0: every process must have
    # finished with a checkpoint before another reads or deletes it (this raced: "no file named model.safetensors").
    # Without use_cpu, as in the shipped configs: on a machine with no GPU the processes must still form one DDP job.
    config = write_config(tmp_path, num_train_epochs=2, save_strategy="epoch", save_total_limit=1,
                          load_best_model_at_end=True, metric_for_best_model="accuracy")
    config.write_text(config.read_text().replace("use_cpu: true\n", ""))
    assert "use_cpu" not in config.read_text()
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               os.path.join(ROOT, "trainers", "image_classification.py"), str(config)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "run" / "defended-model"
    assert json.loads((folder / "defence_summary.json").read_text())["processes"] == 2
    assert not list((tmp_path / "run").glob("member-*"))  # training checkpoints removed once the ensemble is saved
    model = AutoModelForImageClassification.from_pretrained(folder)
    with torch.no_grad():
        probabilities = model(pixel_values=torch.zeros(2, 3, 16, 16)).logits.softmax(-1)
    assert torch.allclose(probabilities.sum(-1), torch.ones(2))


def test_recipe_scripts_refuse_the_other_task(tmp_path):
    config = write_config(tmp_path)
    done = subprocess.run([sys.executable, os.path.join(ROOT, "trainers", "text_classification.py"), str(config)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.endswith("text_classification.py: error: This recipe defends text classifiers; the config says "
                                "task='image'.\n")


@pytest.mark.parametrize("text, message", [(None, "No config file at"), ("members: [a: b\n", "is not valid YAML")],
                         ids=["missing", "malformed"])
def test_recipe_scripts_report_a_bad_config_in_one_line(tmp_path, text, message):
    config = tmp_path / "config.yaml"
    if text is not None:
        config.write_text(text)
    done = subprocess.run([sys.executable, os.path.join(ROOT, "trainers", "image_classification.py"), str(config)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith("image_classification.py: error: ") and message in last


def test_a_refused_config_still_closes_the_process_group(tmp_path, monkeypatch):
    # Under torchrun the arguments open the process group: a config refused afterwards must close it too.
    closed = []
    monkeypatch.setattr(recipe, "end_distributed_run", lambda wait=True: closed.append(wait))
    with pytest.raises(ValueError, match="defends text classifiers"):
        recipe.main([str(write_config(tmp_path))], task="text")
    assert closed == [False]
