"""Repeated-query averaging: the adaptive thief against randomised output defences."""

import torch

from ..blackbox import BlackBoxAPI
from ..inputs import as_input_dict, select_rows
from .common import check_budget, check_build_clone, check_checkpoints, check_labels, draw_from_pool
from .training import learning_curve

DESCRIPTION = "Averaging: KnockoffNets asking each pool input several times and averaging the (randomised) answers."
PAPER = "Orekondy et al., Prediction Poisoning, ICLR 2020 (adaptive attacker); Knockoff Nets, CVPR 2019"
NEEDS_POOL = True
NEEDS_LABELLED = False
MODALITIES = ("image", "text")
ANSWERS = "either"  # probabilities are averaged; labels are put to a majority vote


def repeat_counts(budget, repeats):
    """How often each distinct input is asked: `repeats` times each, the remainder of the budget spread one
    extra ask over the first inputs, so the counts add up to the budget exactly."""
    counts = torch.full((budget // repeats,), repeats, dtype=torch.long)
    counts[: budget % repeats] += 1
    return counts


def query_averaged(api, inputs, counts):
    """
    Ask row `i` of `inputs` `counts[i]` times (each ask a query) and combine its answers: the mean probabilities,
    or for label answers the majority vote (ties to the smallest class).
    """
    owners = torch.arange(len(counts)).repeat_interleave(counts)  # the input each ask repeats
    answers = api.query(select_rows(as_input_dict(inputs), owners))
    if answers.dim() == 1:  # labels
        votes = torch.zeros(len(counts), int(answers.max()) + 1).index_put_((owners, answers), torch.ones(len(answers)),
                                                                           accumulate=True)
        return votes.argmax(-1)
    totals = torch.zeros(len(counts), answers.shape[1]).index_add_(0, owners, answers.float())
    return totals / counts[:, None]


def run(api: BlackBoxAPI, budget: int, *, pool, build_clone, repeats=5, labels="soft", evaluate=None,
        checkpoints=None, seed=0, progress=True, **train_kwargs):
    """
    Steal a victim that randomises its answers: ask each of `budget // repeats` random pool inputs `repeats` times,
    average the answers (noise that is fresh at every ask averages out), train the clone as KnockoffNets does.

    Args:
        api ([`BlackBoxAPI`]):
            The victim, usually behind a randomised defence. Its `output` must match `labels`.
        budget (`int`):
            Total queries, every repeat included; spent exactly (the remainder of `budget / repeats` gives the first
            inputs one extra ask).
        pool (`torch.Tensor` or `dict[str, torch.Tensor]`):
            The thief's own inputs (`pixel_values`, or tokenised text); needs `budget // repeats` of them.
        build_clone (`Callable[[], nn.Module]`):
            Returns a fresh clone model, called once per checkpoint.
        repeats (`int`, *optional*, defaults to 5):
            Asks per input.
        labels (`str`, *optional*, defaults to `"soft"`):
            `"soft"` trains on averaged probabilities, `"label_only"` on majority-vote labels.
        evaluate, seed, progress, **train_kwargs:
            As in [`knockoff.run`].
        checkpoints (`list[int]`, *optional*, defaults to `[budget]`):
            Query counts for a learning curve; each trains on the inputs whose asks all fit within it, so the
            smallest is at least `repeats` (+1 where the budget's remainder applies).

    Returns:
        `(clone, history)`: the clone trained on all averaged answers, and one dict per checkpoint.
    """
    check_labels(labels, api)
    check_budget(budget)
    check_build_clone(build_clone)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or not 1 <= repeats <= budget:
        raise ValueError(f"repeats must be an integer in [1, budget={budget}], got {repeats!r}.")
    counts = repeat_counts(budget, repeats)
    asked = counts.cumsum(0)  # queries spent once input i is fully answered
    checkpoints = check_checkpoints(checkpoints, budget, smallest=int(asked[0]))
    inputs = draw_from_pool(pool, len(counts), budget, seed, why=f"each of {len(counts)} inputs asked {repeats} times")
    answers = query_averaged(api, inputs, counts)
    return learning_curve(build_clone, inputs, answers, checkpoints, labels=labels, evaluate=evaluate, seed=seed,
                          progress=progress, desc=f"averaging x{repeats}",
                          rows_at=lambda count: int(torch.searchsorted(asked, count, right=True)), **train_kwargs)
