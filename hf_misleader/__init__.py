"""hf-misleader: defend Hugging Face classifiers against model extraction (MISLEADER)."""

from transformers import AutoConfig, AutoModelForImageClassification, AutoModelForSequenceClassification

from .configuration_misleader import MisleaderConfig
from .modeling_misleader import (
    MisleaderClassifierOutput,
    MisleaderEnsembleForImageClassification,
    MisleaderEnsembleForSequenceClassification,
)

__version__ = "0.1.0.dev0"

AutoConfig.register(MisleaderConfig.model_type, MisleaderConfig, exist_ok=True)
AutoModelForImageClassification.register(MisleaderConfig, MisleaderEnsembleForImageClassification, exist_ok=True)
AutoModelForSequenceClassification.register(MisleaderConfig, MisleaderEnsembleForSequenceClassification, exist_ok=True)
# save_pretrained then writes `auto_map` and the self-contained code for trust_remote_code.
MisleaderConfig.register_for_auto_class()
MisleaderEnsembleForImageClassification.register_for_auto_class("AutoModelForImageClassification")
MisleaderEnsembleForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")


def __getattr__(name):
    # The training side pulls in datasets/accelerate: load it only when asked for.
    lazy = {
        "MisleaderTrainer": ".trainer",
        "MisleaderTrainingArguments": ".training_args",
        "defend": ".defend",
        "BlackBoxAPI": ".blackbox",
        "QueryBudgetExceeded": ".blackbox",
        "build_image_member": ".members",
        "list_presets": ".members",
    }
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(lazy[name], __name__), name)
    raise AttributeError(f"module 'hf_misleader' has no attribute {name!r}")


__all__ = [
    "MisleaderConfig",
    "MisleaderClassifierOutput",
    "MisleaderEnsembleForImageClassification",
    "MisleaderEnsembleForSequenceClassification",
    "MisleaderTrainer",
    "MisleaderTrainingArguments",
    "defend",
    "BlackBoxAPI",
    "QueryBudgetExceeded",
    "build_image_member",
    "list_presets",
]
