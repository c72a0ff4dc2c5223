"""defend(): a teacher and member presets in, a trained MISLEADER ensemble out."""

import copy
import dataclasses
import os
import secrets

import numpy as np
import torch
from datasets import ClassLabel, Dataset
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    PreTrainedModel,
)
from transformers.utils import logging as transformers_logging

from .configuration_misleader import checked_output_defense
from .inputs import accepted_inputs, keep_accepted
from .members import image_member_config, member_name, text_member_config
from .modeling_misleader import MisleaderEnsembleForImageClassification, MisleaderEnsembleForSequenceClassification
from .objectives import derangement
from .trainer import TEACHER_LOGITS_COLUMN, MisleaderTrainer
from .training_args import MisleaderTrainingArguments

logger = transformers_logging.get_logger(__name__)

# Three ResNets of different widths and depths. Measured on 2,200 MNIST digits (benchmarks/RESULTS.md, issue 7):
# they converge in 8 epochs where MobileNetV2 and ConvNeXt presets do not (those cost 1.3 points of utility under
# plain distillation), and they serve faster than an ensemble with MobileNetV2 (2.1x the teacher's latency, not 3.3x).
DEFAULT_MEMBERS = ("resnet-tiny", "resnet-small", "resnet-deep")
DEFAULT_TEXT_MEMBERS = ("bert-tiny", "distilbert-tiny", "bert-small")
# What each modality's batches hold, and the ensemble class that serves it.
_MODALITIES = {
    "image": ("pixel_values", AutoModelForImageClassification, MisleaderEnsembleForImageClassification),
    "text": ("input_ids", AutoModelForSequenceClassification, MisleaderEnsembleForSequenceClassification),
}
# The reference recipe's per-member (lambda, T, alpha) on CIFAR-10 (ResNet18, MobileNetV2, DenseNet121),
# used in turn for the members. Its lambdas belong to the alternating objective; the other objectives keep T and
# alpha and take `args.misleader_lambda` (their own default unless set).
DEFAULT_MEMBER_HYPERPARAMETERS = (
    {"lambda": 0.001, "temperature": 6.0, "alpha": 0.3},
    {"lambda": 0.05, "temperature": 4.0, "alpha": 0.9},
    {"lambda": 0.01, "temperature": 2.0, "alpha": 0.3},
)


def _load_teacher(teacher) -> PreTrainedModel:
    if isinstance(teacher, (str, os.PathLike)):
        if not os.path.isdir(teacher):
            raise FileNotFoundError(f"No teacher model folder at {teacher!r}.")
        architectures = AutoConfig.from_pretrained(teacher).architectures or []
        text = any(name.endswith("ForSequenceClassification") for name in architectures)
        return (AutoModelForSequenceClassification if text else AutoModelForImageClassification).from_pretrained(teacher)
    if not isinstance(teacher, PreTrainedModel):
        raise TypeError(f"teacher must be a PreTrainedModel or a path to one, got {type(teacher).__name__}.")
    return teacher


def _modality(teacher) -> str:
    return "text" if teacher.main_input_name == "input_ids" else "image"


def _check_dataset(name, dataset, num_labels, input_column):
    if dataset is None:
        return
    if not isinstance(dataset, Dataset):
        raise TypeError(f"{name} must be a datasets.Dataset, got {type(dataset).__name__}.")
    if input_column not in dataset.column_names or "label" not in dataset.column_names:
        raise ValueError(
            f"{name} needs `{input_column}` and `label` columns, processed like the teacher's inputs (see "
            f"hf_misleader.data.prepare_image_dataset / prepare_text_dataset); it has {dataset.column_names}."
        )
    feature = dataset.features.get("label")
    if isinstance(feature, ClassLabel):
        if feature.num_classes != num_labels:
            raise ValueError(f"The teacher predicts {num_labels} classes but {name} has {feature.num_classes}.")
        return
    labels = np.asarray(dataset.with_format("numpy")[:]["label"])  # plain integers: must fall in the label space
    if labels.min() < 0 or labels.max() >= num_labels:
        raise ValueError(
            f"{name} has labels from {labels.min()} to {labels.max()} but the teacher predicts {num_labels} classes."
        )


def defend(
    teacher,
    train_dataset: Dataset,
    members=None,
    eval_dataset: Dataset = None,
    attacker_dataset: Dataset = None,
    args: MisleaderTrainingArguments = None,
    member_hyperparameters=None,
    attacker_model=None,
    callbacks=None,
    precompute_teacher_logits: bool = False,
    output_defense: dict = None,
) -> "MisleaderEnsembleForImageClassification | MisleaderEnsembleForSequenceClassification":
    """
    Distil `teacher` into an ensemble of heterogeneous students, each trained against its own simulated attacker.

    Args:
        teacher ([`~transformers.PreTrainedModel`] or `str`):
            The image or text classifier to defend, or a local folder holding it.
        train_dataset (`datasets.Dataset`):
            Benign training data processed like the teacher's inputs: `pixel_values` and `label` for images,
            `input_ids`, `attention_mask` (and `token_type_ids`) and `label` for text (padded to one length).
        members (`list`, *optional*):
            Member presets (see [`~hf_misleader.members.list_presets`]), config dicts or config objects. Defaults
            to `("resnet-tiny", "resnet-small", "resnet-deep")` for images and
            `("bert-tiny", "distilbert-tiny", "bert-small")` for text; text members use the teacher's tokenizer.
        eval_dataset (`datasets.Dataset`, *optional*):
            Validation data: each member's best epoch is chosen on it (never on the test split).
        attacker_dataset (`datasets.Dataset`, *optional*):
            A surrogate pool standing for a thief's own inputs, processed like `train_dataset` (labels unused).
            When given, each member's attacker-like queries are built from it instead of from the training batch.
        args ([`MisleaderTrainingArguments`], *optional*):
            Shared training arguments; `args.output_dir` gets one sub-folder per member.
        member_hyperparameters (`list[dict]`, *optional*):
            Per-member `lambda`, `temperature`, `alpha`. Defaults: for `"alternating"`, the reference recipe's, in
            turn; for the other objectives, `args.misleader_lambda`, `args.temperature` and `args.alpha` for every
            member.
        attacker_model (`str`, `dict` or config, *optional*):
            Architecture of each member's simulated attacker clone (a preset or a config); defaults to
            `args.attacker_model`, and when that is unset, to each member's own architecture.
        callbacks (`list`, *optional*):
            Extra [`~transformers.TrainerCallback`]s for every member's training.
        precompute_teacher_logits (`bool`, *optional*, defaults to `False`):
            Run the teacher once over `train_dataset` and reuse its logits, instead of a teacher forward at every
            step of every member. Worth it for a large teacher (e.g. a pretrained transformer) on the CPU.
        output_defense (`dict`, *optional*):
            A public output transform the served ensemble applies to its averaged probabilities, recorded in its
            config (e.g. `{"name": "reverse_sigmoid", "beta": 0.7, "gamma": 0.4}`; see [`MisleaderConfig`]). Checked
            before any training.

    Returns:
        [`MisleaderEnsembleForImageClassification`] or [`MisleaderEnsembleForSequenceClassification`]: the served
        ensemble, on the CPU, in eval mode.
    """
    checked_output_defense(output_defense)
    teacher = _load_teacher(teacher)
    modality = _modality(teacher)
    input_column, auto_class, ensemble_class = _MODALITIES[modality]
    num_labels = teacher.config.num_labels
    if members is None:
        members = DEFAULT_MEMBERS if modality == "image" else DEFAULT_TEXT_MEMBERS
    if isinstance(members, (str, dict)) or not members:
        raise ValueError(f"members must be a non-empty list of presets or configs, got {members!r}.")
    if train_dataset is None or len(train_dataset) == 0:
        raise ValueError("defend() needs a non-empty train_dataset.")
    if args is not None and not isinstance(args, MisleaderTrainingArguments):
        raise TypeError(f"args must be a MisleaderTrainingArguments, got {type(args).__name__}.")
    _check_dataset("train_dataset", train_dataset, num_labels, input_column)
    _check_dataset("eval_dataset", eval_dataset, num_labels, input_column)
    if attacker_dataset is not None:
        if not isinstance(attacker_dataset, Dataset) or input_column not in attacker_dataset.column_names:
            raise ValueError(f"attacker_dataset must be a datasets.Dataset with a `{input_column}` column.")
        if len(attacker_dataset) < (args.per_device_train_batch_size if args else 8):
            raise ValueError("attacker_dataset must hold at least one training batch of inputs.")
    args = args or MisleaderTrainingArguments(output_dir="misleader-defence", report_to="none")
    if member_hyperparameters is None:
        if args.objective == "alternating":
            member_hyperparameters = [dict(DEFAULT_MEMBER_HYPERPARAMETERS[i % 3]) for i in range(len(members))]
        else:
            # The reference's per-member cycle is the alternating recipe's. Under a lambda of 1 its weakest
            # distillation weight (alpha * T^2 = 0.3 * 2^2) is overpowered: measured, a ConvNeXt member of an
            # "unrolled" ensemble collapsed to 11% validation accuracy. Every member takes the arguments' T and alpha.
            member_hyperparameters = [
                {"lambda": args.misleader_lambda, "temperature": args.temperature, "alpha": args.alpha}
                for _ in members
            ]
    if len(member_hyperparameters) != len(members):
        raise ValueError(f"{len(member_hyperparameters)} hyper-parameter sets for {len(members)} members.")
    if eval_dataset is not None and args.eval_strategy == "no":
        args = dataclasses.replace(
            args, eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True,
            metric_for_best_model="accuracy", save_total_limit=1,
        )
    id2label = dict(teacher.config.id2label)
    # Resolve every member and the attacker first, so a bad preset fails before any training.
    first_input = np.asarray(train_dataset[0][input_column])
    if modality == "image":
        channels, height, _ = first_input.shape
        resolve = lambda member: image_member_config(member, num_labels, id2label, channels, height)  # noqa: E731
    else:
        resolve = lambda member: text_member_config(member, teacher.config, len(first_input))  # noqa: E731
    member_configs = [resolve(member) for member in members]
    attacker_model = attacker_model if attacker_model is not None else args.attacker_model
    attacker_configs = [resolve(attacker_model) if attacker_model is not None else copy.deepcopy(config)
                        for config in member_configs]
    # One secret class permutation for the whole ensemble (its members must agree on the lie). It lives only in this
    # call and in the members' private checkpoints, never in the served model or its card.
    class_permutation = None
    if args.objective == "misinformation" and args.misinformation_target == "permutation":
        class_permutation = derangement(num_labels, torch.Generator().manual_seed(secrets.randbits(63)))

    # Every member's arguments are built (and so validated) before the first one trains.
    member_args = [_member_args(args, index, member_name(m), hyper)
                   for index, (m, hyper) in enumerate(zip(members, member_hyperparameters))]

    if precompute_teacher_logits:
        train_dataset = with_teacher_logits(teacher, train_dataset, args.per_device_eval_batch_size)

    # The caller's teacher comes back where it was and as trainable as it was (the trainer moves and freezes it).
    teacher_device = next(teacher.parameters()).device
    teacher_trainable = [parameter.requires_grad for parameter in teacher.parameters()]
    try:
        teacher_accuracy = validation_accuracy(teacher, eval_dataset) if eval_dataset is not None else None
        students, records = [], []
        for index, member in enumerate(members):
            student, record = _train_member(
                teacher, auto_class.from_config(member_configs[index]), auto_class.from_config(attacker_configs[index]),
                member_args[index], train_dataset, eval_dataset, attacker_dataset, callbacks, class_permutation,
            )
            _warn_if_weak(index, member_name(member), record, teacher_accuracy, member_args[index])
            students.append(student)
            records.append({"name": member_name(member), **record, **member_hyperparameters[index]})
    finally:
        teacher.to(teacher_device)
        for parameter, trainable in zip(teacher.parameters(), teacher_trainable):
            parameter.requires_grad_(trainable)

    return ensemble_class.from_members(
        students,
        member_names=[record["name"] for record in records],
        member_hyperparameters=records,
        teacher_name_or_path=getattr(teacher, "name_or_path", None) or None,
        objective=args.objective,
        output_defense=output_defense,
        id2label=id2label,
        label2id={label: index for index, label in id2label.items()},
    )


@torch.no_grad()
def with_teacher_logits(teacher, dataset: Dataset, batch_size: int = 64) -> Dataset:
    """`dataset` plus a `teacher_logits` column: the teacher's logits for every row, in eval mode."""
    teacher.eval()
    inputs = [name for name in dataset.format["columns"] if name != "label"]
    device = next(teacher.parameters()).device
    accepted = accepted_inputs(teacher)
    logits = []
    show = transformers_logging.is_progress_bar_enabled()
    for start in tqdm(range(0, len(dataset), batch_size), desc="teacher logits", leave=False, disable=not show):
        batch = keep_accepted({name: dataset[start : start + batch_size][name].to(device) for name in inputs}, accepted)
        logits.append(teacher(**batch).logits.float().cpu())
    columns = dataset.format["columns"]
    dataset = dataset.add_column(TEACHER_LOGITS_COLUMN, torch.cat(logits).tolist())
    dataset.set_format("torch", columns=[*columns, TEACHER_LOGITS_COLUMN])
    return dataset


@torch.no_grad()
def validation_accuracy(model, dataset: Dataset, batch_size: int = 256) -> float:
    """Top-1 accuracy of `model` on a processed, labelled `dataset` (eval mode, on the model's device)."""
    model.eval()
    device = next(model.parameters()).device
    inputs = [name for name in dataset.format["columns"] if name not in ("label", TEACHER_LOGITS_COLUMN)]
    accepted, correct = accepted_inputs(model), 0
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start : start + batch_size]
        batch = keep_accepted({name: torch.as_tensor(rows[name]).to(device) for name in inputs}, accepted)
        correct += (model(**batch).logits.argmax(-1).cpu() == torch.as_tensor(rows["label"])).sum().item()
    return correct / len(dataset)


def _warn_if_weak(index, name, record, teacher_accuracy, args):
    """A member that never learnt (e.g. collapsed from its first epoch, which the trainer's relative guard cannot see)
    is named, with the likely cause, instead of silently weakening the ensemble."""
    accuracy = record.get("validation_accuracy")
    if accuracy is None or teacher_accuracy is None or not args.divergence_accuracy_ratio:
        return
    if accuracy < args.divergence_accuracy_ratio * teacher_accuracy:
        logger.warning(
            f"Member {index} ({name}) reached {accuracy:.1%} validation accuracy against the teacher's "
            f"{teacher_accuracy:.1%}: its objective term likely overpowers distillation. Lower misleader_lambda "
            f"(now {args.misleader_lambda}) or raise alpha * temperature^2 (now {args.alpha * args.temperature ** 2:g})."
        )


def _member_args(args, index, name, hyper):
    missing = {"lambda", "temperature", "alpha"} - set(hyper)
    if missing:
        raise ValueError(f"The hyper-parameters of member {index} ({name}) lack {sorted(missing)}: {hyper}")
    return dataclasses.replace(
        args, output_dir=os.path.join(args.output_dir, f"member-{index}-{name}"), misleader_lambda=hyper["lambda"],
        temperature=hyper["temperature"], alpha=hyper["alpha"], seed=args.seed + index,
    )


def _train_member(teacher, student, attacker, args, train_dataset, eval_dataset, attacker_dataset, callbacks,
                  class_permutation):
    trainer = MisleaderTrainer(
        model=student, teacher_model=teacher, attacker_model=attacker, args=args, train_dataset=train_dataset,
        eval_dataset=eval_dataset, attacker_dataset=attacker_dataset, callbacks=callbacks,
        class_permutation=class_permutation,
    )
    trainer.train()
    record = {"model_type": student.config.model_type}
    if eval_dataset is not None:
        record["validation_accuracy"] = trainer.evaluate()["eval_accuracy"]
    return trainer.model.cpu().eval(), record
