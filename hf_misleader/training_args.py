"""Training arguments of the MISLEADER trainer: the stock ones plus the defence's own."""

import math
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .augment import IMAGE_POLICIES

OBJECTIVES = ("alternating",)


@dataclass
class MisleaderTrainingArguments(TrainingArguments):
    """
    [`~transformers.TrainingArguments`] plus the MISLEADER defence's hyper-parameters. The student's loss on a
    benign batch `(x, y)` with attacker-like queries `x'` is

        alpha * T^2 * KL(teacher(x)/T || student(x)/T) + (1 - alpha) * CE(student(x), y)
            - misleader_lambda * KL(student(x') || attacker(x'))

    Args:
        objective (`str`, *optional*, defaults to `"alternating"`):
            `"alternating"`: the reference recipe (attacker steps, then the loss above).
        misleader_lambda (`float`, *optional*, defaults to 0.01):
            Weight of the term that pushes the student away from its simulated attacker clone.
        temperature (`float`, *optional*, defaults to 4.0):
            Distillation temperature `T`.
        alpha (`float`, *optional*, defaults to 0.5):
            Share of the distillation term against the cross-entropy on true labels.
        attacker_steps (`int`, *optional*, defaults to 1):
            Attacker (inner) updates per student (outer) step, on the same attacker-like queries.
        attacker_learning_rate (`float`, *optional*, defaults to 1e-3):
            Learning rate of the attacker's own Adam optimizer.
        augmentation (`str`, *optional*, defaults to `"mild"`):
            Attacker-query policy, see [`~hf_misleader.augment.simulate_image_queries`].
        augmentation_strength (`float`, *optional*, defaults to 1.0):
            Scales the policy's magnitudes.
    """

    objective: str = field(default="alternating", metadata={"help": f"One of {OBJECTIVES}."})
    misleader_lambda: float = field(default=0.01, metadata={"help": "Weight of the push away from the attacker clone."})
    temperature: float = field(default=4.0, metadata={"help": "Distillation temperature T."})
    alpha: float = field(default=0.5, metadata={"help": "Weight of distillation vs cross-entropy on labels."})
    attacker_steps: int = field(default=1, metadata={"help": "Attacker updates per student step."})
    attacker_learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate of the attacker clone."})
    augmentation: str = field(default="mild", metadata={"help": f"Attacker-query policy, one of {IMAGE_POLICIES}."})
    augmentation_strength: float = field(default=1.0, metadata={"help": "Scales the augmentation magnitudes."})

    def __post_init__(self):
        super().__post_init__()
        for name in ("misleader_lambda", "temperature", "alpha", "attacker_learning_rate", "augmentation_strength"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}.")
        if isinstance(self.attacker_steps, bool) or not isinstance(self.attacker_steps, int):
            raise ValueError(f"attacker_steps must be an integer, got {self.attacker_steps!r}.")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}.")
        if self.misleader_lambda < 0:
            raise ValueError(f"misleader_lambda must be >= 0, got {self.misleader_lambda}.")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}.")
        if self.attacker_steps < 1:
            raise ValueError(f"attacker_steps must be >= 1, got {self.attacker_steps}.")
        if self.attacker_learning_rate <= 0:
            raise ValueError(f"attacker_learning_rate must be > 0, got {self.attacker_learning_rate}.")
        if self.augmentation not in IMAGE_POLICIES:
            raise ValueError(f"augmentation must be one of {IMAGE_POLICIES}, got {self.augmentation!r}.")
        if self.augmentation_strength < 0:
            raise ValueError(f"augmentation_strength must be >= 0, got {self.augmentation_strength}.")
