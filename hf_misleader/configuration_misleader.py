"""Configuration of a MISLEADER ensemble.

Shared with the model on the Hub (``trust_remote_code``): imports only transformers.
"""

from transformers import PretrainedConfig

AGGREGATIONS = ("mean",)
# Output transforms the served ensemble may apply to its averaged probabilities, and their parameters.
OUTPUT_DEFENSE_PARAMETERS = {"reverse_sigmoid": ("beta", "gamma")}


class MisleaderConfig(PretrainedConfig):
    r"""
    Configuration of a [`MisleaderEnsembleForImageClassification`] or
    [`MisleaderEnsembleForSequenceClassification`]: the members' own configurations plus what the
    defence was trained with.

    Args:
        members (`list[dict]`, *optional*):
            One plain config dict per member, each with its `model_type` (e.g. `member_config.to_dict()`).
            [`PretrainedConfig`] objects are accepted and converted.
        aggregation (`str`, *optional*, defaults to `"mean"`):
            How member answers are combined. `"mean"` averages the members' probabilities (soft voting);
            the ensemble's `logits` are `log(mean_i softmax(logits_i))`.
        member_names (`list[str]`, *optional*):
            Human-readable member names (preset names), for cards and logs.
        member_hyperparameters (`list[dict]`, *optional*):
            Per-member training hyper-parameters (`lambda`, `temperature`, `alpha`), recorded for the card.
        teacher_name_or_path (`str`, *optional*):
            Where the defended teacher came from. The teacher itself is never stored in the ensemble.
        objective (`str`, *optional*):
            The training objective the members were trained with (e.g. `"alternating"`).
        output_defense (`dict`, *optional*):
            A deterministic, public transform of the averaged probabilities applied by the model itself, so every way
            of serving it (stock and protected pipelines, any API) answers with it: `{"name": "reverse_sigmoid",
            "beta": 0.7, "gamma": 0.4}`. The `logits` are then the log of the transformed probabilities.
    """

    model_type = "misleader"

    def __init__(
        self,
        members=None,
        aggregation="mean",
        member_names=None,
        member_hyperparameters=None,
        teacher_name_or_path=None,
        objective=None,
        output_defense=None,
        **kwargs,
    ):
        if isinstance(members, (str, dict)):
            raise TypeError("members must be a list of member configs (dicts or config objects).")
        for member in members or []:
            if not isinstance(member, (dict, PretrainedConfig)):
                raise TypeError(
                    f"Each member must be a config dict or a config object, got {member!r}; to build members from "
                    "preset names use hf_misleader.members.image_member_config / text_member_config."
                )
        members = [m.to_dict() if isinstance(m, PretrainedConfig) else dict(m) for m in (members or [])]
        if members and "id2label" not in kwargs and "num_labels" not in kwargs:
            # The label space is the members': take it from the first one rather than the 2-label default.
            kwargs["id2label"] = {int(i): label for i, label in members[0].get("id2label", {}).items()} or None
            if kwargs["id2label"] is None:
                del kwargs["id2label"]
                kwargs["num_labels"] = members[0].get("num_labels", 2)
        super().__init__(**kwargs)
        if self.id2label and not getattr(self, "label2id", None):
            self.label2id = {label: int(index) for index, label in self.id2label.items()}
        for index, member in enumerate(members):
            if "model_type" not in member:
                raise ValueError(f"Member {index} of the MisleaderConfig has no `model_type`: {sorted(member)}")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"Unknown aggregation {aggregation!r}; choose one of {AGGREGATIONS}.")
        if member_names is not None and len(member_names) != len(members):
            raise ValueError(f"{len(member_names)} member names for {len(members)} members.")
        self.members = members
        self.aggregation = aggregation
        self.member_names = list(member_names) if member_names is not None else None
        self.member_hyperparameters = member_hyperparameters
        self.teacher_name_or_path = teacher_name_or_path
        self.objective = objective
        self.output_defense = checked_output_defense(output_defense)


def checked_output_defense(output_defense):
    """`output_defense` validated (a copy), or None; raises ValueError naming what is wrong."""
    if output_defense is None:
        return None
    if not isinstance(output_defense, dict) or output_defense.get("name") not in OUTPUT_DEFENSE_PARAMETERS:
        raise ValueError(
            f"output_defense must be None or a dict whose `name` is one of {sorted(OUTPUT_DEFENSE_PARAMETERS)}, got "
            f"{output_defense!r}."
        )
    allowed = set(OUTPUT_DEFENSE_PARAMETERS[output_defense["name"]])
    unknown = set(output_defense) - allowed - {"name"}
    if unknown:
        raise ValueError(f"Unknown {output_defense['name']} parameters {sorted(unknown)}; it takes {sorted(allowed)}.")
    for key in allowed & set(output_defense):
        value = output_defense[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
            raise ValueError(f"output_defense {key} must be a finite number > 0, got {value!r}.")
    return dict(output_defense)
