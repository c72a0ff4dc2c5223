"""defend(): a teacher and member presets in, a trained MISLEADER ensemble out."""

import dataclasses
import os

import numpy as np
from datasets import Dataset
from transformers import AutoModelForImageClassification, PreTrainedModel

from .configuration_misleader import MisleaderConfig
from .data import num_classes
from .members import image_member_config, member_name
from .modeling_misleader import MisleaderEnsembleForImageClassification
from .trainer import MisleaderTrainer
from .training_args import MisleaderTrainingArguments

DEFAULT_MEMBERS = ("resnet-tiny", "mobilenet_v2-tiny", "convnext-tiny")
# The reference recipe's per-member (lambda, T, alpha) on CIFAR-10 (ResNet18, MobileNetV2, DenseNet121),
# used in turn for the members.
DEFAULT_MEMBER_HYPERPARAMETERS = (
    {"lambda": 0.001, "temperature": 6.0, "alpha": 0.3},
    {"lambda": 0.05, "temperature": 4.0, "alpha": 0.9},
    {"lambda": 0.01, "temperature": 2.0, "alpha": 0.3},
)


def _load_teacher(teacher) -> PreTrainedModel:
    if isinstance(teacher, (str, os.PathLike)):
        if not os.path.isdir(teacher):
            raise FileNotFoundError(f"No teacher model folder at {teacher!r}.")
        return AutoModelForImageClassification.from_pretrained(teacher)
    if not isinstance(teacher, PreTrainedModel):
        raise TypeError(f"teacher must be a PreTrainedModel or a path to one, got {type(teacher).__name__}.")
    return teacher


def _check_dataset(name, dataset, num_labels):
    if dataset is None:
        return
    if not isinstance(dataset, Dataset):
        raise TypeError(f"{name} must be a datasets.Dataset, got {type(dataset).__name__}.")
    if "pixel_values" not in dataset.column_names or "label" not in dataset.column_names:
        raise ValueError(
            f"{name} needs `pixel_values` and `label` columns (see hf_misleader.data.prepare_image_dataset); "
            f"it has {dataset.column_names}."
        )
    classes = num_classes(dataset)
    if classes != num_labels:
        raise ValueError(f"The teacher predicts {num_labels} classes but {name} has {classes}.")


def defend(
    teacher,
    train_dataset: Dataset,
    members=DEFAULT_MEMBERS,
    eval_dataset: Dataset = None,
    args: MisleaderTrainingArguments = None,
    member_hyperparameters=None,
    attacker_model="resnet-tiny",
    callbacks=None,
) -> MisleaderEnsembleForImageClassification:
    """
    Distil `teacher` into an ensemble of heterogeneous students, each trained against its own simulated attacker.

    Args:
        teacher ([`~transformers.PreTrainedModel`] or `str`):
            The image classifier to defend, or a local folder holding it.
        train_dataset (`datasets.Dataset`):
            Benign training data with `pixel_values` and `label` columns, processed like the teacher's inputs.
        members (`list`, *optional*, defaults to `("resnet-tiny", "mobilenet_v2-tiny", "convnext-tiny")`):
            Member presets (see [`~hf_misleader.members.list_presets`]), config dicts or config objects.
        eval_dataset (`datasets.Dataset`, *optional*):
            Validation data: each member's best epoch is chosen on it (never on the test split).
        args ([`MisleaderTrainingArguments`], *optional*):
            Shared training arguments; `args.output_dir` gets one sub-folder per member.
        member_hyperparameters (`list[dict]`, *optional*):
            Per-member `lambda`, `temperature`, `alpha`; defaults to the reference recipe's, in turn.
        attacker_model (`str`, `dict` or config, *optional*, defaults to `"resnet-tiny"`):
            Architecture of each member's simulated attacker clone.
        callbacks (`list`, *optional*):
            Extra [`~transformers.TrainerCallback`]s for every member's training.

    Returns:
        [`MisleaderEnsembleForImageClassification`]: the served ensemble, on the CPU, in eval mode.
    """
    teacher = _load_teacher(teacher)
    num_labels = teacher.config.num_labels
    if not members:
        raise ValueError("defend() needs at least one member.")
    _check_dataset("train_dataset", train_dataset, num_labels)
    _check_dataset("eval_dataset", eval_dataset, num_labels)
    if member_hyperparameters is None:
        member_hyperparameters = [DEFAULT_MEMBER_HYPERPARAMETERS[i % 3] for i in range(len(members))]
    if len(member_hyperparameters) != len(members):
        raise ValueError(f"{len(member_hyperparameters)} hyper-parameter sets for {len(members)} members.")
    args = args or MisleaderTrainingArguments(output_dir="misleader-defence", report_to="none")
    if eval_dataset is not None and args.eval_strategy == "no":
        args = dataclasses.replace(
            args, eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True,
            metric_for_best_model="accuracy", save_total_limit=1,
        )
    channels, height, _ = np.asarray(train_dataset[0]["pixel_values"]).shape
    id2label = dict(teacher.config.id2label)

    # Resolve every member and the attacker first, so a bad preset fails before any training.
    member_configs = [image_member_config(m, num_labels, id2label, channels, height) for m in members]
    attacker_config = image_member_config(attacker_model, num_labels, id2label, channels, height)

    students, records = [], []
    for index, (member, member_config, hyper) in enumerate(zip(members, member_configs, member_hyperparameters)):
        name = member_name(member)
        student = AutoModelForImageClassification.from_config(member_config)
        attacker = AutoModelForImageClassification.from_config(attacker_config)
        member_args = dataclasses.replace(
            args,
            output_dir=os.path.join(args.output_dir, f"member-{index}-{name}"),
            misleader_lambda=hyper["lambda"],
            temperature=hyper["temperature"],
            alpha=hyper["alpha"],
            seed=args.seed + index,
        )
        trainer = MisleaderTrainer(
            model=student, teacher_model=teacher, attacker_model=attacker, args=member_args,
            train_dataset=train_dataset, eval_dataset=eval_dataset, callbacks=callbacks,
        )
        trainer.train()
        record = {"name": name, "model_type": student.config.model_type, **hyper}
        if eval_dataset is not None:
            record["validation_accuracy"] = trainer.evaluate()["eval_accuracy"]
        students.append(trainer.model.cpu().eval())
        records.append(record)

    config = MisleaderConfig(
        members=[student.config.to_dict() for student in students],
        member_names=[record["name"] for record in records],
        member_hyperparameters=records,
        teacher_name_or_path=getattr(teacher, "name_or_path", None) or None,
        objective=args.objective,
        id2label=id2label,
        label2id={label: index for index, label in id2label.items()},
    )
    ensemble = MisleaderEnsembleForImageClassification(config)
    for slot, student in zip(ensemble.members, students):
        slot.load_state_dict(student.state_dict())
    return ensemble.eval()
