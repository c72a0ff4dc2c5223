"""KnockoffNets (Orekondy et al., 2019), random strategy: query random pool inputs, train a clone on the answers."""

from ..blackbox import BlackBoxAPI
from .common import (
    LABEL_MODES,
    check_budget,
    check_build_clone,
    check_checkpoints,
    check_labels,
    draw_from_pool,
)
from .training import learning_curve, train_clone

DESCRIPTION = "KnockoffNets: random queries from the thief's own pool, clone trained on the answers."
PAPER = "Orekondy et al., Knockoff Nets: Stealing Functionality of Black-Box Models, CVPR 2019"
NEEDS_POOL = True
NEEDS_LABELLED = False
MODALITIES = ("image", "text")
ANSWERS = "either"  # soft labels from probabilities, or label-only


def run(api: BlackBoxAPI, budget: int, pool, build_clone, labels="soft", evaluate=None, checkpoints=None,
        seed=0, progress=True, **train_kwargs):
    """
    Steal `api` with `budget` random queries from `pool`.

    Args:
        api ([`BlackBoxAPI`]):
            The victim. Its `output` must match `labels` (probabilities for soft, `"label"` for label-only).
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
        progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar.
        **train_kwargs:
            Passed to [`train_clone`] (`epochs`, `min_steps`, `batch_size`, `learning_rate`).

    Returns:
        `(clone, history)`: the clone trained on all `budget` answers, and one dict per checkpoint with
        `queries` and whatever `evaluate` returned.
    """
    check_labels(labels, api)
    check_budget(budget)
    check_build_clone(build_clone)
    checkpoints = check_checkpoints(checkpoints, budget)
    inputs = draw_from_pool(pool, budget, budget, seed, why="KnockoffNets asks each pool input once")
    answers = api.query(inputs)
    return learning_curve(build_clone, inputs, answers, checkpoints, labels=labels, evaluate=evaluate, seed=seed,
                          progress=progress, desc=f"knockoff {labels}", **train_kwargs)
