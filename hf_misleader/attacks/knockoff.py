"""KnockoffNets (Orekondy et al., 2019), random strategy: query random pool inputs, train a clone on the answers."""

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..blackbox import BlackBoxAPI
from ..inputs import accepted_inputs, as_input_dict, keep_accepted, num_rows, select_rows

LABEL_MODES = ("soft", "label_only")


def train_clone(clone, inputs, answers, labels="soft", epochs=20, min_steps=200, batch_size=64, learning_rate=1e-3, seed=0):
    """Fit `clone` to the victim's answers: soft labels by KL to the probabilities, label-only by cross-entropy."""
    generator = torch.Generator().manual_seed(seed)
    inputs = keep_accepted(as_input_dict(inputs), accepted_inputs(clone))
    rows = num_rows(inputs)
    steps = max(min_steps, epochs * math.ceil(rows / batch_size))
    optimizer = torch.optim.Adam(clone.parameters(), lr=learning_rate)
    clone.train()
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) < batch_size:  # reshuffle each epoch; the tail of an epoch rolls into the next
            order = torch.cat([order, torch.randperm(rows, generator=generator)])
        batch, order = order[:batch_size], order[batch_size:]
        log_probs = F.log_softmax(clone(**select_rows(inputs, batch)).logits, dim=-1)
        if labels == "soft":
            loss = F.kl_div(log_probs, answers[batch], reduction="batchmean")
        else:
            loss = F.nll_loss(log_probs, answers[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return clone.eval()


def run(api: BlackBoxAPI, budget: int, pool: torch.Tensor, build_clone, labels="soft", evaluate=None, checkpoints=None,
        seed=0, progress=True, **train_kwargs):
    """
    Steal `api` with `budget` random queries from `pool`.

    Args:
        api ([`BlackBoxAPI`]):
            The victim. Its `output` must match `labels` (`"probabilities"` for soft, `"label"` for label-only).
        budget (`int`):
            Number of queries; must not exceed the pool (each pool input is asked once).
        pool (`torch.Tensor` or `dict[str, torch.Tensor]`):
            The thief's own unlabelled inputs, processed like the victim's: `pixel_values`, or a dict of
            tokenised text (`input_ids`, `attention_mask`, ...).
        build_clone (`Callable[[], nn.Module]`):
            Returns a fresh clone model (the thief's architecture), called once per checkpoint.
        labels (`str`, *optional*, defaults to `"soft"`):
            `"soft"` trains on the returned probabilities, `"label_only"` on the top-1 labels.
        evaluate (`Callable[[nn.Module], dict]`, *optional*):
            Scores a trained clone (e.g. test accuracy, agreement with the victim); recorded in the history.
        checkpoints (`list[int]`, *optional*, defaults to `[budget]`):
            Query counts at which a fresh clone is trained on the first answers, for a learning curve.
        seed (`int`, *optional*, defaults to 0):
            Seeds the choice of queries and the clones' training.

    Returns:
        `(clone, history)`: the clone trained on all `budget` answers, and one dict per checkpoint with
        `queries` and whatever `evaluate` returned.
    """
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {LABEL_MODES}, got {labels!r}.")
    expected_output = "probabilities" if labels == "soft" else "label"
    if api.output != expected_output:
        raise ValueError(f"A {labels!r} attack needs an API with output={expected_output!r}, got {api.output!r}.")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be a positive integer, got {budget!r}.")
    if not callable(build_clone) or isinstance(build_clone, torch.nn.Module):
        raise TypeError("build_clone must be a function returning a fresh clone model, not a model.")
    pool = as_input_dict(pool)
    pool_size = num_rows(pool)
    if budget > pool_size:
        raise ValueError(
            f"A budget of {budget} queries is larger than the pool of {pool_size} inputs; KnockoffNets asks each "
            "pool input once. Use a larger pool or a smaller budget."
        )
    checkpoints = sorted(set(checkpoints or [budget]))
    if checkpoints[-1] != budget or checkpoints[0] < 1:
        raise ValueError(f"checkpoints must lie in [1, budget] and end at the budget; got {checkpoints}.")
    chosen = torch.randperm(pool_size, generator=torch.Generator().manual_seed(seed))[:budget]
    inputs = select_rows(pool, chosen)
    answers = api.query(inputs)
    history, clone = [], None
    for count in tqdm(checkpoints, desc=f"knockoff {labels}", disable=not progress, leave=False):
        torch.manual_seed(seed)  # same clone initialisation for every victim
        clone = train_clone(
            build_clone(), select_rows(inputs, slice(0, count)), answers[:count], labels=labels, seed=seed, **train_kwargs
        )
        history.append({"queries": count, **(evaluate(clone) if evaluate else {})})
    return clone, history
