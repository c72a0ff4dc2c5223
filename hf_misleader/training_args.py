"""Training arguments of the MISLEADER trainer: the stock ones plus the defence's own."""

import math
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
from transformers import TrainingArguments

from .augment import IMAGE_POLICIES, TEXT_POLICIES

OBJECTIVES = ("alternating", "unrolled", "misinformation")
ATTACKER_OPTIMIZERS = ("adam", "sgd")
MISINFORMATION_TARGETS = ("permutation", "uniform")

# What an unset (None) field means, per objective. "alternating" is the reference recipe; the other two are the
# objectives that lowered real out-of-distribution thieves' clones in the measurements made before the library.
# Unrolled's lambda of 0.5: measured through the library (benchmarks/RESULTS.md), it kept utility within 1 point on
# MNIST-5k over three student seeds while its worst-case clone stayed far below the undefended teacher's and reverse sigmoid's.
OBJECTIVE_DEFAULTS = {
    "alternating": {"misleader_lambda": 0.01, "augmentation": "mild", "attacker_optimizer": "adam",
                    "attacker_learning_rate": 1e-3, "attacker_reset_epochs": 0.0},
    "unrolled": {"misleader_lambda": 0.5, "augmentation": "heavy", "attacker_optimizer": "sgd",
                 "attacker_learning_rate": 0.05, "attacker_reset_epochs": 2.0},
    "misinformation": {"misleader_lambda": 1.0, "augmentation": "heavy", "attacker_optimizer": "adam",
                       "attacker_learning_rate": 1e-3, "attacker_reset_epochs": 0.0},
}


@dataclass
class MisleaderTrainingArguments(TrainingArguments):
    """
    [`~transformers.TrainingArguments`] plus the MISLEADER defence's hyper-parameters. On a benign batch `(x, y)` with
    attacker-like queries `x'`, the student `d` minimises

        alpha * T^2 * KL(teacher(x)/T || d(x)/T) + (1 - alpha) * CE(d(x), y) + misleader_lambda * objective term

    while a simulated attacker clone `a` learns from `d`'s answers on `x'` with its own optimizer. Fields left at
    `None` take their objective's default (`OBJECTIVE_DEFAULTS`), resolved in `__post_init__`.

    Args:
        objective (`str`, *optional*, defaults to `"unrolled"`):
            The objective term:
            `"alternating"`: the reference recipe, `-KL(d(x') || a(x'))` with `a` detached: push the student away
            from what the current clone believes. Kept for reproduction: measured, it does not lower a real
            out-of-distribution thief's clone.
            `"unrolled"`: one-step unrolled bilevel, `-CE(a'(x), argmax teacher(x))`, where `a'` is the clone after
            one more differentiable step on the student's answers on `x'`, normalised to length
            `unrolled_step_size`: make a clone that learns from the student bad at the real task. The default: the
            objective that lowered real thieves' clones at no more than 1 point of utility (image classifiers).
            `"misinformation"`: `KL(pi(teacher(x')) || d(x'))`: on attacker-like queries the student answers the
            teacher's distribution under a secret class permutation `pi` (or the uniform distribution, see
            `misinformation_target`).
        misleader_lambda (`float`, *optional*):
            Weight of the objective term (alternating: 0.01, unrolled: 0.5, misinformation: 1.0).
        temperature (`float`, *optional*, defaults to 4.0):
            Distillation temperature `T`.
        alpha (`float`, *optional*, defaults to 0.5):
            Share of the distillation term against the cross-entropy on true labels.
        attacker_model (`str`, *optional*):
            Architecture of the simulated attacker clone when the trainer builds it: a member preset name (see
            [`~hf_misleader.list_presets`]; from Python also a config dict). Defaults to the student's own
            architecture, freshly initialised.
        attacker_steps (`int`, *optional*, defaults to 1):
            Attacker (inner) updates per student (outer) step, on the same attacker-like queries.
        attacker_optimizer (`str`, *optional*):
            `"adam"` or `"sgd"`: the attacker's own plain torch optimizer (alternating and misinformation: Adam;
            unrolled: SGD, the update its differentiable look-ahead step imitates).
        attacker_learning_rate (`float`, *optional*):
            Its learning rate (Adam: 1e-3, SGD: 0.05).
        attacker_batch_size (`int`, *optional*):
            Attacker-like queries per step and process; defaults to the per-device training batch size.
        attacker_reset_epochs (`float`, *optional*):
            Re-initialise the attacker every this many epochs, so it keeps following a fresh thief's trajectory
            rather than one clone trained for ever (unrolled: 2; 0 never).
        augmentation (`str`, *optional*):
            Attacker-query policy, `"mild"` or `"heavy"` (see [`~hf_misleader.augment.simulate_image_queries`] and
            [`~hf_misleader.augment.simulate_text_queries`]); alternating: mild, the others: heavy.
        augmentation_strength (`float`, *optional*, defaults to 1.0):
            Scales the policy's magnitudes (0 turns the random transforms off).
        unrolled_step_size (`float`, *optional*, defaults to 0.2):
            Length (global L2 norm over the clone's parameters) of the differentiable look-ahead step of the
            unrolled objective. The step is normalised: an unnormalised one lets the student win by making the
            clone's gradients explode instead of misleading it.
        misinformation_target (`str`, *optional*, defaults to `"permutation"`):
            `"permutation"`: the teacher's answer under a secret derangement of the classes; `"uniform"`: the uniform
            distribution (high entropy, no class information).
        divergence_accuracy_ratio (`float`, *optional*, defaults to 0.5):
            Stop training with a clear error when the student's validation accuracy falls below this fraction of
            its best so far (the objective term is overpowering distillation: lower `misleader_lambda`). 0 turns the
            check off. A non-finite loss always stops training.
    """

    objective: str = field(default="unrolled", metadata={"help": f"One of {OBJECTIVES}."})
    misleader_lambda: Optional[float] = field(default=None, metadata={"help": "Weight of the objective term."})
    temperature: float = field(default=4.0, metadata={"help": "Distillation temperature T."})
    alpha: float = field(default=0.5, metadata={"help": "Weight of distillation vs cross-entropy on labels."})
    attacker_model: Optional[str] = field(
        default=None, metadata={"help": "Preset of the simulated attacker clone (default: the student's architecture)."}
    )
    attacker_steps: int = field(default=1, metadata={"help": "Attacker updates per student step."})
    attacker_optimizer: Optional[str] = field(default=None, metadata={"help": f"One of {ATTACKER_OPTIMIZERS}."})
    attacker_learning_rate: Optional[float] = field(default=None, metadata={"help": "Learning rate of the attacker."})
    attacker_batch_size: Optional[int] = field(default=None, metadata={"help": "Attacker-like queries per step."})
    attacker_reset_epochs: Optional[float] = field(
        default=None, metadata={"help": "Re-initialise the attacker every this many epochs (0: never)."}
    )
    augmentation: Optional[str] = field(default=None, metadata={"help": f"Attacker-query policy, one of {IMAGE_POLICIES}."})
    augmentation_strength: float = field(default=1.0, metadata={"help": "Scales the augmentation magnitudes."})
    unrolled_step_size: float = field(default=0.2, metadata={"help": "Norm of the unrolled look-ahead step."})
    misinformation_target: str = field(default="permutation", metadata={"help": f"One of {MISINFORMATION_TARGETS}."})
    divergence_accuracy_ratio: float = field(
        default=0.5, metadata={"help": "Stop when validation accuracy falls below this fraction of its best (0: off)."}
    )

    def __post_init__(self):
        accelerator = torch.accelerator.is_available()
        if not self.use_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not accelerator:
            # Under torchrun on a machine without an accelerator, transformers 5 leaves the arguments NOT_PARALLEL
            # unless use_cpu is set: every process would train alone, as process 0, into the same files.
            self.use_cpu = True
        if not accelerator:
            # Pinned memory only speeds copies to an accelerator; without one each DataLoader just warns about it.
            self.dataloader_pin_memory = False
        super().__post_init__()
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}.")
        for name, value in OBJECTIVE_DEFAULTS[self.objective].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        # Inherited fields too: the stock arguments accept values that train nothing and "succeed", or that fail only
        # once training has started, inside torch, without the field's name.
        for name in ("misleader_lambda", "temperature", "alpha", "attacker_learning_rate", "augmentation_strength",
                     "attacker_reset_epochs", "unrolled_step_size", "divergence_accuracy_ratio", "learning_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}.")
        for name in ("attacker_steps", "attacker_batch_size", "per_device_train_batch_size",
                     "per_device_eval_batch_size", "gradient_accumulation_steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        checks = (
            ("misleader_lambda", self.misleader_lambda >= 0, ">= 0"),
            ("temperature", self.temperature > 0, "> 0"),
            ("alpha", 0.0 <= self.alpha <= 1.0, "in [0, 1]"),
            ("attacker_learning_rate", self.attacker_learning_rate > 0, "> 0"),
            ("augmentation_strength", self.augmentation_strength >= 0, ">= 0"),
            ("attacker_reset_epochs", self.attacker_reset_epochs >= 0, ">= 0"),
            ("unrolled_step_size", self.unrolled_step_size > 0, "> 0"),
            ("divergence_accuracy_ratio", 0.0 <= self.divergence_accuracy_ratio < 1.0, "in [0, 1)"),
            ("learning_rate", self.learning_rate > 0, "> 0"),
            ("num_train_epochs", self.max_steps > 0 or self.num_train_epochs > 0, "> 0 unless max_steps > 0"),
        )
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)}.")
        choices = (
            ("attacker_optimizer", ATTACKER_OPTIMIZERS),
            ("augmentation", tuple(sorted(set(IMAGE_POLICIES) | set(TEXT_POLICIES)))),
            ("misinformation_target", MISINFORMATION_TARGETS),
        )
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if self.attacker_model is not None and not isinstance(self.attacker_model, (str, dict)):
            raise ValueError(f"attacker_model must be a preset name or a config dict, got {self.attacker_model!r}.")
