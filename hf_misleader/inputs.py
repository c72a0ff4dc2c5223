"""
Model inputs as either a tensor of `pixel_values` or a dict of tensors (`input_ids`, `attention_mask`, ...), and
running a classifier module on them.
"""

import inspect

import torch


def as_input_dict(inputs) -> dict:
    """A batch given as a bare tensor is `pixel_values`; a dict is taken as it is."""
    if torch.is_tensor(inputs):
        return {"pixel_values": inputs}
    if isinstance(inputs, dict) and inputs and all(torch.is_tensor(v) for v in inputs.values()):
        return dict(inputs)
    raise TypeError("Inputs must be a tensor of pixel_values or a non-empty dict of tensors.")


def num_rows(inputs: dict) -> int:
    lengths = {len(value) for value in inputs.values()}
    if len(lengths) != 1:
        raise ValueError(f"All input tensors must have the same number of rows, got {sorted(lengths)}.")
    return lengths.pop()


def select_rows(inputs: dict, index) -> dict:
    return {name: value[index] for name, value in inputs.items()}


def accepted_inputs(model):
    """Names `model.forward` takes, or None when it takes any keyword."""
    parameters = inspect.signature(model.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return set(parameters)


def keep_accepted(inputs: dict, accepted) -> dict:
    # Models of different architectures take different inputs (DistilBERT has no token_type_ids).
    return {name: value for name, value in inputs.items() if accepted is None or name in accepted}


def concat_rows(first: dict, second: dict) -> dict:
    """Two batches of the same inputs as one: rows of `first`, then rows of `second`. Token sequences of different
    lengths are right-padded with 0 (masked out by a 0 attention mask) to the longer one."""
    if set(first) != set(second):
        raise ValueError(f"Cannot join batches with inputs {sorted(first)} and {sorted(second)}.")
    joined = {}
    for name, a in first.items():
        b = second[name]
        if a.dim() == 2 and a.shape[1] != b.shape[1]:  # (batch, sequence): pad the shorter
            width = max(a.shape[1], b.shape[1])
            a, b = (torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in (a, b))
        joined[name] = torch.cat([a, b.to(a.dtype)])
    return joined


def classifier_logits(model: torch.nn.Module, inputs, accepted=None) -> torch.Tensor:
    """
    A classifier module's `(n, C)` logits on a batch of query inputs (a tensor of `pixel_values` or a dict of
    tensors), on the model's device. Inputs `model.forward` does not name are dropped (`accepted`: the names it
    takes, if known); a bare module with a `forward(x)` gets the one input tensor. Outputs with `logits` and bare
    logits tensors are both accepted.
    """
    batch = as_input_dict(inputs)
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    named = keep_accepted(batch, accepted_inputs(model) if accepted is None else accepted)
    if named:
        output = model(**{name: value.to(device) for name, value in named.items()})
    elif len(batch) == 1:
        output = model(next(iter(batch.values())).to(device))
    else:
        raise ValueError(f"The model takes none of the inputs {sorted(batch)}.")
    logits = output if torch.is_tensor(output) else output.logits
    if logits.dim() != 2 or len(logits) != num_rows(batch):
        raise ValueError(f"A classifier answers (batch, num_labels) logits, got shape {tuple(logits.shape)}.")
    return logits


def model_probabilities(model: torch.nn.Module, inputs) -> torch.Tensor:
    """The float64 softmax of a classifier module's logits on a batch of query inputs."""
    with torch.no_grad():
        return torch.softmax(classifier_logits(model, inputs).double(), dim=-1)
