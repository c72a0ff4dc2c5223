"""Named member presets: small heterogeneous classifiers to distil the teacher into.

A preset is `<family>-<size>`, e.g. `"resnet-tiny"` or `"bert-small"`. Image presets are sized for
small inputs (28x28 to 64x64); text presets take the teacher's vocabulary and maximum length, so they
share its tokenizer. Pass a config object instead for anything else.
"""

import difflib
import json
from pathlib import Path

from transformers import AutoConfig, AutoModelForImageClassification, PretrainedConfig, PreTrainedModel
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
)

# Keys a member dict may carry (a saved config.json does) that the label space and the library overwrite.
LABEL_KEYS = ("id2label", "label2id", "num_labels", "transformers_version", "architectures")

IMAGE_PRESETS = {
    "resnet-tiny": dict(
        model_type="resnet", embedding_size=16, hidden_sizes=[16, 32, 64], depths=[1, 1, 1], layer_type="basic"
    ),
    "resnet-small": dict(
        model_type="resnet", embedding_size=32, hidden_sizes=[32, 64, 128], depths=[1, 1, 1], layer_type="basic"
    ),
    # Deeper and narrower than resnet-small: a third shape for an all-ResNet ensemble.
    "resnet-deep": dict(
        model_type="resnet", embedding_size=24, hidden_sizes=[24, 48, 96], depths=[2, 2, 2], layer_type="basic"
    ),
    "mobilenet_v2-tiny": dict(model_type="mobilenet_v2", depth_multiplier=0.35, min_depth=8),
    "mobilenet_v2-small": dict(model_type="mobilenet_v2", depth_multiplier=0.5, min_depth=8),
    "convnext-tiny": dict(
        model_type="convnext", patch_size=2, hidden_sizes=[16, 32, 64], depths=[1, 1, 1], num_stages=3
    ),
    "convnext-small": dict(
        model_type="convnext", patch_size=2, hidden_sizes=[32, 64, 128], depths=[1, 2, 1], num_stages=3
    ),
    "vit-tiny": dict(
        model_type="vit", patch_size=4, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
    ),
    "vit-small": dict(
        model_type="vit", patch_size=4, hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256
    ),
}

TEXT_PRESETS = {
    "bert-tiny": dict(model_type="bert", hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
    "bert-small": dict(model_type="bert", hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "distilbert-tiny": dict(model_type="distilbert", dim=128, n_layers=2, n_heads=2, hidden_dim=512),
    "distilbert-small": dict(model_type="distilbert", dim=256, n_layers=4, n_heads=4, hidden_dim=1024),
}

# Config fields that carry the input geometry, per architecture.
_IMAGE_SIZE_FIELD = {"vit": "image_size", "mobilenet_v2": "image_size"}


def list_presets(modality: str = None) -> list[str]:
    """Names accepted wherever a member preset is expected, for `"image"`, `"text"` or both."""
    presets = {"image": IMAGE_PRESETS, "text": TEXT_PRESETS}
    if modality is not None and modality not in presets:
        raise ValueError(f"modality must be 'image' or 'text', got {modality!r}.")
    return sorted(name for kind, table in presets.items() if modality in (None, kind) for name in table)


def saved_model_modality(path) -> str | None:
    """`"image"` or `"text"`: what the classifier saved in folder `path` reads, from its `config.json` (a MISLEADER
    ensemble's from its members); None where that cannot be told (no readable config, an unknown `model_type`)."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return _config_modality(config)


def _config_modality(config):
    if not isinstance(config, dict):
        return None
    if config.get("model_type") == "misleader":
        found = {_config_modality(member) for member in config.get("members") or []}
        return found.pop() if len(found) == 1 else None
    # Which Auto class maps the model type: image or sequence classification (a few types, e.g. perceiver, are both).
    image = config.get("model_type") in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
    text = config.get("model_type") in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    return "image" if image and not text else "text" if text and not image else None


def _plain_member(member, presets, modality):
    """A member given as a preset name, a config or a dict -> a plain dict with a `model_type`."""
    if isinstance(member, str):
        if member not in presets:
            raise ValueError(
                f"Unknown {modality} member preset {member!r}. Available presets: {', '.join(list_presets(modality))}."
            )
        return dict(presets[member]), True
    if isinstance(member, PretrainedConfig):
        member = member.to_dict()
    if not isinstance(member, dict) or "model_type" not in member:
        raise TypeError(f"A member must be a preset name, a config or a dict with a `model_type`, got {member!r}.")
    check_member_keys(member)
    return dict(member), False


def check_member_keys(member):
    """A typo in a member's dict would otherwise become a stray config attribute and a default-sized model."""
    known = set(AutoConfig.for_model(member["model_type"]).to_dict()) | {"model_type", *LABEL_KEYS}
    for key in member:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"Member {member['model_type']!r} has no setting {key!r}.{hint}")


def _finish(member, num_labels, id2label):
    model_type = member.pop("model_type")
    for stale in LABEL_KEYS:
        member.pop(stale, None)
    labels = {"id2label": id2label} if id2label else {"num_labels": num_labels}
    return AutoConfig.for_model(model_type, **member, **labels)


def image_member_config(
    member: "str | dict | PretrainedConfig",
    num_labels: int,
    id2label: dict | None = None,
    num_channels: int = 3,
    image_size: int = 28,
) -> PretrainedConfig:
    """
    Resolve a member given as a preset name, a plain config dict or a config object into a config with the
    right label space and input geometry.

    Args:
        member (`str`, `dict` or [`PretrainedConfig`]):
            A preset name from [`list_presets`], a dict with a `model_type`, or a config.
        num_labels (`int`):
            Number of classes of the teacher.
        id2label (`dict`, *optional*):
            Class names, copied into the member so its pipeline output is readable.
        num_channels (`int`, *optional*, defaults to 3):
            Channels of `pixel_values` (stock image processors produce RGB).
        image_size (`int`, *optional*, defaults to 28):
            Side of the square input, for the architectures whose config needs it.
    """
    member, is_preset = _plain_member(member, IMAGE_PRESETS, "image")
    if is_preset:
        member["num_channels"] = num_channels
        if member["model_type"] in _IMAGE_SIZE_FIELD:
            member[_IMAGE_SIZE_FIELD[member["model_type"]]] = image_size
    return _finish(member, num_labels, id2label)


def build_image_member(member, num_labels, id2label=None, num_channels=3, image_size=28) -> PreTrainedModel:
    """A freshly initialised image classifier for `member` (see [`image_member_config`])."""
    config = image_member_config(member, num_labels, id2label, num_channels, image_size)
    return AutoModelForImageClassification.from_config(config)


def member_name(member) -> str:
    """A short readable name for a member given in any accepted form."""
    if isinstance(member, str):
        return member
    if isinstance(member, PretrainedConfig):
        return member.model_type
    return str(dict(member).get("model_type", "member"))


def _max_positions(config) -> int:
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 0


def text_member_config(member, teacher_config: PretrainedConfig, sequence_length: int = None) -> PretrainedConfig:
    """
    Resolve a text member so it reads the teacher's tokenizer: a preset takes the teacher's vocabulary size,
    maximum length and padding id; a given config must already fit them.

    Args:
        member (`str`, `dict` or [`PretrainedConfig`]):
            A text preset name from [`list_presets`], a dict with a `model_type`, or a config.
        teacher_config ([`PretrainedConfig`]):
            The teacher's config: label space, vocabulary size and maximum length.
        sequence_length (`int`, *optional*):
            Length of the tokenised training inputs; a member with fewer positions is refused.
    """
    member, is_preset = _plain_member(member, TEXT_PRESETS, "text")
    vocab_size, positions = teacher_config.vocab_size, _max_positions(teacher_config)
    if is_preset:
        member.update(vocab_size=vocab_size, max_position_embeddings=positions, pad_token_id=teacher_config.pad_token_id)
    config = _finish(member, teacher_config.num_labels, dict(teacher_config.id2label))
    if getattr(config, "vocab_size", None) is None or config.vocab_size < vocab_size:
        raise ValueError(
            f"Member {config.model_type!r} has a vocabulary of {getattr(config, 'vocab_size', None)} tokens but the "
            f"teacher's tokenizer produces ids up to {vocab_size - 1}: set vocab_size >= {vocab_size}."
        )
    needed = sequence_length or positions
    if _max_positions(config) < needed:
        raise ValueError(
            f"Member {config.model_type!r} takes at most {_max_positions(config)} positions but the inputs are "
            f"{needed} tokens long: set max_position_embeddings >= {needed}."
        )
    return config


def attacker_config_for(student: PreTrainedModel, preset=None, train_dataset=None) -> PretrainedConfig:
    """
    The config of a simulated attacker clone for `student`: `preset` (a preset name or config dict) sized to the
    student's inputs and label space, or, when `preset` is None, a copy of the student's own architecture.

    Args:
        student ([`PreTrainedModel`]): the student being defended.
        preset (`str`, `dict` or [`PretrainedConfig`], *optional*): the attacker's architecture.
        train_dataset (`datasets.Dataset`, *optional*): training data, to read the image size from.
    """
    config = student.config
    if preset is None:
        return type(config).from_dict(config.to_dict())
    if student.main_input_name == "input_ids":
        return text_member_config(preset, config)
    image_size = getattr(config, "image_size", None)
    if train_dataset is not None and "pixel_values" in train_dataset.column_names:
        image_size = int(train_dataset[0]["pixel_values"].shape[-1])
    return image_member_config(preset, config.num_labels, dict(config.id2label), getattr(config, "num_channels", 3),
                               image_size or 28)
