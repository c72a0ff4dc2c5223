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

from .pipeline_misleader import (  # noqa: E402
    ProtectedImageClassificationPipeline,
    ProtectedTextClassificationPipeline,
    QueryBudget,
    register_pipelines,
)

register_pipelines()  # tasks "protected-image-classification" and "protected-text-classification"

# The training side (imported after the registration above, which it relies on).
from .blackbox import BlackBoxAPI, QueryBudgetExceeded  # noqa: E402
from .defend import defend  # noqa: E402
from .defenses import build_defense  # noqa: E402
from .hub import push_benchmark_to_hub, push_to_hub  # noqa: E402
from .members import build_image_member, list_presets  # noqa: E402
from .trainer import MisleaderTrainer  # noqa: E402
from .training_args import MisleaderTrainingArguments  # noqa: E402


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
    "ProtectedImageClassificationPipeline",
    "ProtectedTextClassificationPipeline",
    "QueryBudget",
    "register_pipelines",
    "build_defense",
    "push_to_hub",
    "push_benchmark_to_hub",
]
