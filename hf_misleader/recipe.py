"""The launchable defence recipe behind `trainers/*_classification.py` and `hf-misleader defend --config FILE`:
YAML (or command-line) arguments in, a saved defended ensemble out. Runs as one process or under `accelerate launch`
/ `torchrun` (every process runs it; the stock Trainer shards the batches, only the main process writes)."""

import dataclasses
import difflib
import json
import math
import os
import shutil
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import yaml
from datasets import Dataset, load_from_disk
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
)

from . import data as builtin_data
from .configuration_misleader import checked_output_defense
from .defend import defend, validation_accuracy
from .members import IMAGE_PRESETS, build_image_member, check_member_keys, list_presets, saved_model_modality
from .paths import output_folder
from .trainer import accuracy_metric, end_distributed_run, wait_for_every_process
from .training_args import MisleaderTrainingArguments

TASKS = ("image", "text")
# Real data that works offline (shipped in PyPI or Debian packages); anything else is a folder written by `Dataset.save_to_disk`.
BUILTIN_DATASETS = {
    "mnist-5k": ("image", builtin_data.load_mnist_5k),
    "fashion-mnist": ("image", builtin_data.load_fashion_mnist),
    "sklearn-digits": ("image", builtin_data.load_sklearn_digits),
    "rotten-tomatoes": ("text", builtin_data.load_rotten_tomatoes),
}
# Surrogate pools for the attacker-like queries (`attacker_pool`), drawn from another real data set.
BUILTIN_POOLS = {"image": ("sklearn-digits", "fashion-mnist", "mnist-5k"), "text": ("random-words", "fortunes")}
# The pretrained text encoder shipped in a PyPI package (`make setup`), usable as a teacher to fine-tune.
MINILM = "all-MiniLM-L6-v2"


@dataclass
class DefendArguments:
    """What to defend and on which data; the training itself is configured by [`MisleaderTrainingArguments`]."""

    task: str = field(default="image", metadata={"help": f"One of {TASKS}."})
    teacher_name_or_path: str = field(
        default=None,
        metadata={
            "help": "The classifier to defend: a saved model folder (with its processor or tokenizer). With "
            "teacher_epochs > 0 also an image member preset (e.g. resnet-small) or all-MiniLM-L6-v2, "
            "trained or fine-tuned first."
        },
    )
    teacher_epochs: float = field(
        default=0, metadata={"help": "Train/fine-tune the teacher first for this many epochs."}
    )
    teacher_learning_rate: float = field(default=2e-3, metadata={"help": "Learning rate of that teacher training."})
    dataset_name: str = field(
        default="mnist-5k",
        metadata={"help": f"One of {sorted(BUILTIN_DATASETS)} or a folder saved with Dataset.save_to_disk."},
    )
    image_column: str = field(default="image", metadata={"help": "Column of the images (image task)."})
    text_column: str = field(default="text", metadata={"help": "Column of the texts (text task)."})
    label_column: str = field(default="label", metadata={"help": "Column of the integer class labels."})
    train_size: int = field(default=2200, metadata={"help": "Training examples (a seeded split of the data set)."})
    validation_size: int = field(default=300, metadata={"help": "Validation examples (model selection only)."})
    split_seed: int = field(
        default=0, metadata={"help": "Seed of the train/validation split (fixed across training seeds)."}
    )
    image_size: int = field(default=28, metadata={"help": "Image side when the teacher is built from a preset."})
    max_length: int = field(default=48, metadata={"help": "Tokens per text (padded and truncated)."})
    # A list of preset names on the command line; a config file may also give mappings with a model_type.
    members: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Member presets, or config mappings with a model_type (default: defend()'s)."},
    )
    attacker_pool: Optional[str] = field(
        default=None, metadata={"help": f"Surrogate pool for attacker-like queries: {BUILTIN_POOLS} or a saved folder."}
    )
    attacker_pool_size: int = field(default=1500, metadata={"help": "Rows of the surrogate pool used."})
    output_defense: Optional[str] = field(
        default=None,
        metadata={"help": "Output transform the served ensemble applies itself (recorded in its config): "
                          'reverse_sigmoid, or JSON with its parameters, e.g. {"name": "reverse_sigmoid", "beta": 0.7}. '
                          "The benchmark's other output defences are served by a BlackBoxAPI, not by the model."},
    )
    precompute_teacher_logits: bool = field(default=False, metadata={"help": "Run the teacher once over the data."})
    save_directory: Optional[str] = field(
        default=None, metadata={"help": "Where the ensemble goes (default: OUTPUT_DIR/defended-model)."}
    )

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}.")
        if not self.teacher_name_or_path:
            raise ValueError(
                "teacher_name_or_path is required: a saved classifier folder, or a preset with teacher_epochs > 0."
            )
        for name in ("train_size", "validation_size", "image_size", "max_length", "attacker_pool_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        checks = (  # else the teacher's training fails inside torch, or trains nothing, once the data is loaded
            ("teacher_epochs", math.isfinite(self.teacher_epochs) and self.teacher_epochs >= 0, "a finite number >= 0"),
            ("teacher_learning_rate", math.isfinite(self.teacher_learning_rate) and self.teacher_learning_rate > 0,
             "a finite number > 0"),
        )
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)}.")
        # A saved model of the other modality would fail to load as this task's classifier, after the data is read.
        found = saved_model_modality(self.teacher_name_or_path) if os.path.isdir(self.teacher_name_or_path) else None
        if found not in (None, self.task):
            raise ValueError(f"teacher_name_or_path {self.teacher_name_or_path!r} classifies {found} inputs, but task "
                             f"is {self.task!r}.")
        self.output_defense = _output_defense(self.output_defense)
        if self.members is not None:
            known = list_presets(self.task)
            if not self.members or not isinstance(self.members, list) or not all(
                _is_member(member, known) for member in self.members
            ):
                raise ValueError(
                    f"members must be a non-empty list of {self.task} presets {known} or config mappings with a "
                    f"model_type, got {self.members}."
                )
            for member in self.members:  # a typo'd setting is reported now, not after the teacher has trained
                if isinstance(member, dict):
                    check_member_keys(member)
        pools = BUILTIN_POOLS[self.task]
        if self.attacker_pool is not None and self.attacker_pool not in pools and not os.path.isdir(self.attacker_pool):
            raise ValueError(f"attacker_pool must be one of {pools} or a saved data set folder, got {self.attacker_pool!r}.")


def _is_member(member, known) -> bool:
    """A member as a config may give it: one of the task's presets `known`, or a config mapping with a model_type."""
    return member in known if isinstance(member, str) else isinstance(member, dict) and "model_type" in member


def _checked(arguments, training_args) -> tuple[DefendArguments, MisleaderTrainingArguments]:
    """What needs both argument groups: the simulated attacker is one of the task's member presets (or a config
    mapping), checked as the members are, not once the teacher has trained."""
    attacker, known = training_args.attacker_model, list_presets(arguments.task)
    if attacker is not None and not _is_member(attacker, known):
        raise ValueError(f"attacker_model must be one of the {arguments.task} presets {known} or a config mapping with "
                         f"a model_type, got {attacker!r}.")
    return arguments, training_args


def _output_defense(value):
    """The served output transform as a dict (from a name, a mapping or JSON text), checked now, or None."""
    if value is None or isinstance(value, dict):
        return checked_output_defense(value)
    text = str(value).strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except ValueError as error:
            raise ValueError(f"output_defense must be a name or a JSON object, got {text!r}: {error}") from None
    else:
        value = {"name": text}
    return checked_output_defense(value)


def parse_arguments(argv=None) -> tuple[DefendArguments, MisleaderTrainingArguments]:
    """Both argument groups from one YAML/JSON file (`recipe.py config.yaml`) or from `--flags`."""
    parser = HfArgumentParser((DefendArguments, MisleaderTrainingArguments))
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml", ".json")):
        return load_config(argv[0])
    return _checked(*parser.parse_args_into_dataclasses(args=argv))


def load_config(path) -> tuple[DefendArguments, MisleaderTrainingArguments]:
    """Parse a recipe config file (YAML or JSON mapping). Unknown keys are an error (a typo must not silently fall back
    to a default), and so are values of the wrong type, before anything runs."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No config file at {path}.")
    text = Path(path).read_text()
    try:
        config = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        reason = " ".join(str(error).split())
        raise ValueError(f"{path} is not valid {'JSON' if str(path).endswith('.json') else 'YAML'}: {reason}") from None
    if not isinstance(config, dict) or not config:
        raise ValueError(f"{path} must hold a mapping of argument names to values, got {type(config).__name__}.")
    fields = _field_types()
    unknown = [key for key in config if key not in fields]
    if unknown:
        hints = [f"{key!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(key, fields, 1)) else
                 repr(key) for key in unknown]
        raise ValueError(f"{path}: unknown argument(s) {', '.join(hints)}.")
    config = {key: _as_field_type(key, value, fields[key]) for key, value in config.items()}
    parser = HfArgumentParser((DefendArguments, MisleaderTrainingArguments))
    return _checked(*parser.parse_dict(config, allow_extra_keys=False))


def _field_types() -> dict:
    types = {}
    for cls in (DefendArguments, MisleaderTrainingArguments):
        hints = typing.get_type_hints(cls)
        types.update({f.name: hints.get(f.name) for f in dataclasses.fields(cls) if f.init})
    return types


def _as_field_type(name, value, annotation):
    """YAML reads `2e-3` as text and a user may write "8" for a number: convert what is meant to be a number, and name
    the field when it is not one (the optimizer would otherwise fail deep inside torch, after the teacher trained)."""
    wanted = [t for t in (typing.get_args(annotation) or (annotation,)) if t in (int, float)]
    if not wanted or not isinstance(value, str) or isinstance(value, bool):
        return value
    for kind in (int, float) if int in wanted else (float,):
        try:
            return kind(value)
        except ValueError:
            continue
    raise ValueError(f"{name} must be a number, got the text {value!r}.")


def _load_dataset(name, task, **loader_options) -> Dataset:
    if name in BUILTIN_DATASETS:
        modality, loader = BUILTIN_DATASETS[name]
        if modality != task:
            raise ValueError(f"{name} is a data set for the {modality} task, not {task}.")
        return loader(**loader_options)
    if os.path.isdir(name):
        return load_from_disk(name)
    raise ValueError(
        f"Unknown data set {name!r}: use one of {sorted(BUILTIN_DATASETS)} or a folder saved with Dataset.save_to_disk."
    )


def _prepare(dataset, task, processor, arguments) -> Dataset:
    if task == "image":
        return builtin_data.prepare_image_dataset(dataset, processor, image_column=arguments.image_column)
    return builtin_data.prepare_text_dataset(
        dataset, processor, arguments.max_length, text_column=arguments.text_column
    )


def _build_teacher(arguments, raw_train, seed):
    """The teacher and its processor: loaded from a folder, or built from a preset / the MiniLM encoder."""
    name = arguments.teacher_name_or_path
    if arguments.task == "image" and name in IMAGE_PRESETS:
        if not arguments.teacher_epochs:
            raise ValueError(f"{name} is an untrained preset: set teacher_epochs > 0 to train it first.")
        size = arguments.image_size
        processor = builtin_data.image_processor(size)
        names = getattr(raw_train.features["label"], "names", None)
        id2label = dict(enumerate(names)) if names else None
        torch.manual_seed(seed)
        return build_image_member(name, builtin_data.num_classes(raw_train), id2label, 3, size), processor
    path = builtin_data.minilm_path() if name == MINILM else name
    if not os.path.isdir(path):
        raise ValueError(f"teacher_name_or_path {name!r} is neither a saved model folder nor a known preset.")
    if arguments.task == "image":
        return AutoModelForImageClassification.from_pretrained(path), AutoImageProcessor.from_pretrained(path)
    label_feature = raw_train.features["label"]
    id2label = dict(enumerate(label_feature.names)) if hasattr(label_feature, "names") else None
    extra = {"id2label": id2label} if name == MINILM and id2label else {}
    return AutoModelForSequenceClassification.from_pretrained(path, **extra), AutoTokenizer.from_pretrained(path)


def _train_teacher(teacher, data, arguments, training_args):
    """Train or fine-tune the teacher with the stock Trainer (selected on validation), under the same launcher."""
    stock = TrainingArguments(
        output_dir=os.path.join(training_args.output_dir, "teacher"),
        num_train_epochs=arguments.teacher_epochs,
        learning_rate=arguments.teacher_learning_rate,
        per_device_train_batch_size=training_args.per_device_train_batch_size,
        per_device_eval_batch_size=training_args.per_device_eval_batch_size,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        logging_strategy="epoch",
        report_to="none",
        seed=training_args.seed,
        disable_tqdm=training_args.disable_tqdm,
        use_cpu=training_args.use_cpu,
        dataloader_pin_memory=training_args.dataloader_pin_memory,  # off without an accelerator (it only warns)
        dataloader_num_workers=training_args.dataloader_num_workers,
    )
    trainer = Trainer(
        model=teacher,
        args=stock,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        compute_metrics=accuracy_metric,
    )
    trainer.train()
    return trainer.model.eval()


def _attacker_pool(arguments, processor, seed):
    name = arguments.attacker_pool
    if name is None:
        return None
    size = arguments.attacker_pool_size
    if name == "random-words":
        lengths = torch.randint(4, 30, (size,), generator=torch.Generator().manual_seed(seed)).tolist()
        pool = Dataset.from_dict(
            {"text": builtin_data.random_word_texts(processor, lengths, seed), "label": [0] * size}
        )
    elif name == "fortunes":
        pool = builtin_data.load_fortunes()
    elif name == "sklearn-digits":
        pool = builtin_data.load_sklearn_digits(arguments.image_size)
    elif name in BUILTIN_DATASETS or os.path.isdir(name):
        pool = _load_dataset(name, arguments.task)
    else:
        raise ValueError(
            f"Unknown attacker_pool {name!r}: use one of {BUILTIN_POOLS[arguments.task]} or a saved folder."
        )
    pool = pool.shuffle(seed=seed).select(range(min(size, len(pool))))
    if "label" not in pool.column_names:
        pool = pool.add_column("label", [0] * len(pool))
    return _prepare(pool, arguments.task, processor, arguments).remove_columns("label")


def run_recipe(arguments: DefendArguments, training_args: MisleaderTrainingArguments) -> Path:
    """Load the data, (train and) load the teacher, defend it, save the ensemble with its processor and a summary.
    Returns the folder the ensemble was saved to."""
    # A file where a folder must go fails now, not once the teacher and the members have trained; nothing is written
    # yet (a refused config leaves no folder behind).
    output_folder(training_args.output_dir, "output_dir", create=False)
    if arguments.save_directory:
        output_folder(arguments.save_directory, "save_directory", create=False)
    seed = training_args.seed
    raw = _load_dataset(arguments.dataset_name, arguments.task)
    if arguments.label_column not in raw.column_names:
        raise ValueError(f"The data set has no {arguments.label_column!r} column; it has {raw.column_names}.")
    if arguments.label_column != "label":
        raw = raw.rename_column(arguments.label_column, "label")
    needed = arguments.train_size + arguments.validation_size
    if needed > len(raw):
        raise ValueError(
            f"train_size + validation_size = {needed} is more than the {len(raw)} rows of {arguments.dataset_name}."
        )
    splits = builtin_data.split_for_extraction(
        raw, {"train": arguments.train_size, "validation": arguments.validation_size}, seed=arguments.split_seed
    )
    teacher, processor = _build_teacher(arguments, splits["train"], seed)
    data = {name: _prepare(split, arguments.task, processor, arguments) for name, split in splits.items()}
    if arguments.teacher_epochs:
        teacher = _train_teacher(teacher, data, arguments, training_args)
        if training_args.process_index == 0:  # reusable as teacher_name_or_path by later runs (other seeds)
            teacher.save_pretrained(os.path.join(training_args.output_dir, "teacher-model"))
            processor.save_pretrained(os.path.join(training_args.output_dir, "teacher-model"))
    pool = _attacker_pool(arguments, processor, seed)
    output_defense = arguments.output_defense
    defended = defend(
        teacher,
        data["train"],
        members=arguments.members,
        eval_dataset=data["validation"],
        attacker_dataset=pool,
        args=training_args,
        precompute_teacher_logits=arguments.precompute_teacher_logits,
        output_defense=output_defense,
    )
    defended.config.teacher_name_or_path = arguments.teacher_name_or_path
    save_directory = Path(arguments.save_directory or os.path.join(training_args.output_dir, "defended-model"))
    wait_for_every_process()  # process 0 deletes the training checkpoints below: no other may still be reading them
    if training_args.process_index == 0:  # every process holds the same ensemble; one writes it
        defended.save_pretrained(save_directory)
        processor.save_pretrained(save_directory)
        summary = {
            "teacher_validation_accuracy": validation_accuracy(teacher.cpu(), data["validation"]),
            "defended_validation_accuracy": validation_accuracy(defended, data["validation"]),
            "members": defended.config.member_names,
            "objective": defended.config.objective,
            "processes": training_args.world_size,
        }
        (save_directory / "defence_summary.json").write_text(json.dumps(summary, indent=2))
        _remove_training_checkpoints(Path(training_args.output_dir))
        print(
            f"teacher validation accuracy {summary['teacher_validation_accuracy']:.1%}, defended "
            f"{summary['defended_validation_accuracy']:.1%}; saved to {save_directory}/"
        )
    return save_directory


def _remove_training_checkpoints(output_dir: Path):
    """Once the ensemble is saved, the per-member and teacher checkpoints (optimizer states included, hundreds of MB
    for text) are only clutter, as in the demo; a failed run keeps them."""
    for folder in [*output_dir.glob("member-*"), output_dir / "teacher"]:
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)


def main(argv=None, task=None):
    """Entry point of `trainers/*_classification.py`: `python trainers/image_classification.py CONFIG.yaml`."""
    try:  # a refused config too: under torchrun, the arguments may already have opened the process group
        arguments, training_args = parse_arguments(argv)
        if task is not None and arguments.task != task:
            raise ValueError(f"This recipe defends {task} classifiers; the config says task={arguments.task!r}.")
        saved = run_recipe(arguments, training_args)
    except BaseException:
        end_distributed_run(wait=False)
        raise
    end_distributed_run()
    return saved
