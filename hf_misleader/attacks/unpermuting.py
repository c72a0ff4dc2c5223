"""The un-permuting thief: a few labelled samples reveal a class permutation in the answers, which it then undoes."""

import torch

from ..blackbox import BlackBoxAPI
from ..inputs import as_input_dict, concat_rows, num_rows
from .common import (
    answered_classes,
    check_budget,
    check_build_clone,
    check_checkpoints,
    check_labels,
    draw_from_pool,
)
from .training import learning_curve

DESCRIPTION = "Un-permuting: queries a few labelled samples too, matches answered to true classes, undoes the mapping."
PAPER = "Adaptive thief against class-permuting defences (MISLEADER 'misinformation' objective; arXiv 2506.02362)"
NEEDS_POOL = True
NEEDS_LABELLED = True  # `labelled_inputs` and `labelled_labels`
MODALITIES = ("image", "text")
ANSWERS = "either"


def estimate_permutation(answered, true_labels, num_labels):
    """
    The class mapping that best explains the answers: `mapping[answered class] = true class`, the one-to-one
    assignment with the most agreeing samples on the confusion matrix (Hungarian algorithm; greedy, largest counts
    first, where scipy is not installed).
    """
    confusion = torch.zeros(num_labels, num_labels)
    confusion.index_put_((answered.long(), true_labels.long()), torch.ones(len(answered)), accumulate=True)
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:
        return _greedy_assignment(confusion)
    served, true = linear_sum_assignment(confusion.numpy(), maximize=True)
    mapping = torch.empty(num_labels, dtype=torch.long)
    mapping[torch.as_tensor(served)] = torch.as_tensor(true)
    return mapping


def _greedy_assignment(confusion):
    mapping = torch.full((len(confusion),), -1, dtype=torch.long)
    confusion = confusion.clone()
    for _ in range(len(confusion)):
        served, true = divmod(int(confusion.argmax()), len(confusion))
        mapping[served] = true
        confusion[served, :] = -1  # each answered class and each true class is used once
        confusion[:, true] = -1
    return mapping


def unpermute(answers, mapping):
    """Answers with class `a` moved to `mapping[a]`: labels relabelled, probability columns moved."""
    if answers.dim() == 1:
        return mapping[answers]
    restored = torch.empty_like(answers)
    restored[:, mapping] = answers
    return restored


def run(api: BlackBoxAPI, budget: int, *, pool, build_clone, labelled_inputs, labelled_labels, labels="soft",
        num_labels=None, evaluate=None, checkpoints=None, seed=0, progress=True, **train_kwargs):
    """
    Steal a victim that answers under a secret class permutation: query a few labelled samples (counted) and
    `budget - len(labelled_labels)` random pool inputs, estimate the permutation from the labelled samples' answers,
    undo it on every answer, train the clone (as KnockoffNets) on all of them.

    Args:
        api ([`BlackBoxAPI`]):
            The victim. Its `output` must match `labels`.
        budget (`int`):
            Total queries, the labelled samples included; spent exactly.
        pool (`torch.Tensor` or `dict[str, torch.Tensor]`):
            The thief's own unlabelled inputs (`pixel_values`, or tokenised text).
        build_clone (`Callable[[], nn.Module]`):
            Returns a fresh clone model, called once per checkpoint.
        labelled_inputs (`torch.Tensor` or `dict[str, torch.Tensor]`):
            A few real inputs whose true classes the thief knows (e.g. 100), processed like the pool.
        labelled_labels (`torch.Tensor`):
            Their true class indices.
        labels (`str`, *optional*, defaults to `"soft"`):
            `"soft"` trains on probabilities, `"label_only"` on top-1 labels.
        num_labels (`int`, *optional*):
            Number of classes; read from the answers' width, or for label answers from the largest class seen.
        evaluate, seed, progress, **train_kwargs:
            As in [`knockoff.run`].
        checkpoints (`list[int]`, *optional*, defaults to `[budget]`):
            Query counts for a learning curve (the labelled samples come first); at least the number of
            labelled samples, since the permutation is estimated from them.

    Returns:
        `(clone, history)`: the clone trained on all un-permuted answers, and one dict per checkpoint.
    """
    check_labels(labels, api)
    check_budget(budget)
    check_build_clone(build_clone)
    labelled_inputs = as_input_dict(labelled_inputs)
    labelled_labels = torch.as_tensor(labelled_labels).long()
    labelled = num_rows(labelled_inputs)
    if labelled == 0 or labelled != len(labelled_labels):
        raise ValueError(f"labelled_inputs ({labelled} rows) and labelled_labels ({len(labelled_labels)}) must be "
                         "non-empty and of the same length.")
    if labelled > budget:
        raise ValueError(f"The budget of {budget} queries cannot cover the {labelled} labelled samples, which are "
                         "queried too.")
    checkpoints = check_checkpoints(checkpoints, budget, smallest=labelled)
    pool_inputs = draw_from_pool(pool, budget - labelled, budget, seed) if budget > labelled else None

    labelled_answers = api.query(labelled_inputs)
    answers, inputs = labelled_answers, labelled_inputs
    if pool_inputs is not None:
        answers = torch.cat([answers, api.query(pool_inputs)])
        inputs = concat_rows(labelled_inputs, pool_inputs)
    if num_labels is None:
        num_labels = answers.shape[1] if answers.dim() == 2 else int(max(answers.max(), labelled_labels.max())) + 1
    mapping = estimate_permutation(answered_classes(labelled_answers), labelled_labels, num_labels)
    return learning_curve(build_clone, inputs, unpermute(answers, mapping), checkpoints, labels=labels,
                          evaluate=evaluate, seed=seed, progress=progress, desc="unpermuting", **train_kwargs)
