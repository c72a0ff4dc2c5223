"""Named member presets: small heterogeneous classifiers to distil the teacher into.

A preset is `<family>-<size>`, e.g. `"resnet-tiny"` or `"vit-small"`. Image presets are sized for
small inputs (28x28 to 64x64); pass a config object instead for anything else.
"""

from transformers import AutoConfig, AutoModelForImageClassification, PretrainedConfig, PreTrainedModel

IMAGE_PRESETS = {
    "resnet-tiny": dict(
        model_type="resnet", embedding_size=16, hidden_sizes=[16, 32, 64], depths=[1, 1, 1], layer_type="basic"
    ),
    "resnet-small": dict(
        model_type="resnet", embedding_size=32, hidden_sizes=[32, 64, 128], depths=[1, 1, 1], layer_type="basic"
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

# Config fields that carry the input geometry, per architecture.
_IMAGE_SIZE_FIELD = {"vit": "image_size", "mobilenet_v2": "image_size"}


def list_presets() -> list[str]:
    """Names accepted wherever a member preset is expected."""
    return sorted(IMAGE_PRESETS)


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
    if isinstance(member, str):
        if member not in IMAGE_PRESETS:
            raise ValueError(f"Unknown member preset {member!r}. Available presets: {', '.join(list_presets())}.")
        member = dict(IMAGE_PRESETS[member])
        member["num_channels"] = num_channels
        if member["model_type"] in _IMAGE_SIZE_FIELD:
            member[_IMAGE_SIZE_FIELD[member["model_type"]]] = image_size
    if isinstance(member, PretrainedConfig):
        member = member.to_dict()
    if not isinstance(member, dict) or "model_type" not in member:
        raise TypeError(f"A member must be a preset name, a config or a dict with a `model_type`, got {member!r}.")
    member = dict(member)
    model_type = member.pop("model_type")
    for stale in ("id2label", "label2id", "num_labels", "transformers_version", "architectures"):
        member.pop(stale, None)
    labels = {"id2label": id2label} if id2label else {"num_labels": num_labels}
    return AutoConfig.for_model(model_type, **member, **labels)


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
