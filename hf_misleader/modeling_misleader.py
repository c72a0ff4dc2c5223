"""The served MISLEADER model: an ensemble of heterogeneous students with soft voting.

Shared with the model on the Hub (``trust_remote_code``): imports only torch, transformers and
the configuration file next to it.
"""

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    PreTrainedModel,
)
from transformers.utils import ModelOutput

from .configuration_misleader import MisleaderConfig


@dataclass
class MisleaderClassifierOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `(1,)`, *optional*):
            Negative log-likelihood of the ensemble's averaged probabilities, when `labels` are given.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
            `log(mean_i softmax(member_logits_i))`: a softmax of these gives exactly the averaged probabilities.
        member_logits (`torch.FloatTensor` of shape `(batch_size, num_members, num_labels)`, *optional*):
            Each member's raw logits; only returned when `output_member_logits=True` (training, analysis).
            Never serve them: they let a thief query the members one by one.
    """

    loss: Optional[torch.FloatTensor] = None
    logits: Optional[torch.FloatTensor] = None
    member_logits: Optional[torch.FloatTensor] = None


def soft_vote(member_logits: torch.Tensor) -> torch.Tensor:
    """`log(mean_i softmax(member_logits[:, i]))`, computed stably in log space."""
    log_probs = torch.log_softmax(member_logits.float(), dim=-1)
    return torch.logsumexp(log_probs, dim=1) - math.log(member_logits.shape[1])


def reverse_sigmoid(probabilities: torch.Tensor, beta: float = 0.7, gamma: float = 0.4, eps: float = 1e-6) -> torch.Tensor:
    """
    The reverse-sigmoid output perturbation (Lee et al., 2019): `y' = normalise(max(0, y - beta * (sigmoid(gamma *
    logit(y)) - 1/2)))`, row by row. It is deterministic and public (a thief may know it), squashes confident answers
    and can change the top-1 class of uncertain ones.

    Rows that the clamp would empty keep their original probabilities, so the output is always a finite
    distribution.
    """
    y = probabilities.float().clamp(eps, 1 - eps)
    perturbed = (y - beta * (torch.sigmoid(gamma * torch.logit(y)) - 0.5)).clamp_min(0)
    total = perturbed.sum(-1, keepdim=True)
    fallback = total <= eps
    perturbed = torch.where(fallback, y, perturbed)
    return perturbed / perturbed.sum(-1, keepdim=True)


# Deterministic output transforms a served ensemble may apply to its averaged probabilities (`config.output_defense`).
OUTPUT_DEFENSES = {"reverse_sigmoid": reverse_sigmoid}


def apply_output_defense(log_probabilities: torch.Tensor, output_defense) -> torch.Tensor:
    """The served log-probabilities after `output_defense` (`{"name": ..., **parameters}`, or None for none)."""
    if not output_defense:
        return log_probabilities
    parameters = dict(output_defense)
    transform = OUTPUT_DEFENSES[parameters.pop("name")]
    return torch.log(transform(log_probabilities.exp(), **parameters).clamp_min(1e-12))


class MisleaderPreTrainedModel(PreTrainedModel):
    config_class = MisleaderConfig
    base_model_prefix = "misleader"
    # Each member initialises itself when it is built from its own config.
    _supports_param_buffer_assignment = False

    def _init_weights(self, module):
        pass

    @classmethod
    def from_members(cls, members, **config_kwargs):
        """
        An ensemble holding copies of trained `members` (each a classifier with its own config).

        Args:
            members (`list[PreTrainedModel]`):
                The trained members; their configs become the ensemble's `members`.
            **config_kwargs:
                Further [`MisleaderConfig`] fields (`member_names`, `id2label`, ...).
        """
        ensemble = cls(MisleaderConfig(members=[member.config.to_dict() for member in members], **config_kwargs))
        for slot, member in zip(ensemble.members, members):
            slot.load_state_dict(member.state_dict())
        return ensemble.eval()

    def _build_members(self, config: MisleaderConfig, auto_class) -> nn.ModuleList:
        if not config.members:
            raise ValueError("A MisleaderConfig needs at least one member.")
        members = []
        for member in config.members:
            member = dict(member)
            member_config = AutoConfig.for_model(member.pop("model_type"), **member)
            if member_config.num_labels != config.num_labels:
                raise ValueError(
                    f"Member {member_config.model_type!r} has {member_config.num_labels} labels, "
                    f"the ensemble {config.num_labels}."
                )
            members.append(auto_class.from_config(member_config))
        return nn.ModuleList(members)

    def _require_main_input(self, value, kwargs):
        """A missing main input is named here: `**kwargs` takes any other one (e.g. `input_ids` for an image
        ensemble), which would otherwise fail deep inside a member on `None`."""
        if value is None:
            raise ValueError(f"{type(self).__name__} needs `{self.main_input_name}`; got "
                             f"{', '.join(f'`{name}`' for name in kwargs) or 'no input'}.")

    def _aggregate(self, member_logits, labels, output_member_logits):
        logits = apply_output_defense(soft_vote(member_logits), self.config.output_defense)
        loss = None
        if labels is not None:
            loss = nn.functional.nll_loss(logits, labels.to(logits.device))
        return MisleaderClassifierOutput(
            loss=loss, logits=logits, member_logits=member_logits if output_member_logits else None
        )


class MisleaderEnsembleForImageClassification(MisleaderPreTrainedModel):
    main_input_name = "pixel_values"

    def __init__(self, config: MisleaderConfig):
        super().__init__(config)
        self.members = self._build_members(config, AutoModelForImageClassification)
        self.post_init()

    def forward(self, pixel_values=None, labels=None, output_member_logits=False, return_dict=None, **kwargs):
        self._require_main_input(pixel_values, kwargs)
        member_logits = torch.stack([member(pixel_values=pixel_values).logits for member in self.members], dim=1)
        return self._aggregate(member_logits, labels, output_member_logits)


class MisleaderEnsembleForSequenceClassification(MisleaderPreTrainedModel):
    main_input_name = "input_ids"

    def __init__(self, config: MisleaderConfig):
        super().__init__(config)
        self.members = self._build_members(config, AutoModelForSequenceClassification)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        labels=None,
        output_member_logits=False,
        return_dict=None,
        **kwargs,
    ):
        self._require_main_input(input_ids, kwargs)
        member_logits = []
        for member in self.members:
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
            # Not every architecture has segment embeddings (DistilBERT has none).
            if token_type_ids is not None and getattr(member.config, "type_vocab_size", 0):
                inputs["token_type_ids"] = token_type_ids
            member_logits.append(member(**inputs).logits)
        return self._aggregate(torch.stack(member_logits, dim=1), labels, output_member_logits)
