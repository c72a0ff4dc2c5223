"""Jacobian-based dataset augmentation (Papernot et al., 2017): grow synthetic queries along the clone's gradients."""

import math

import torch
from tqdm.auto import tqdm

from ..blackbox import BlackBoxAPI
from ..inputs import as_input_dict
from .common import (
    answered_classes,
    check_budget,
    check_build_clone,
    check_checkpoints,
    check_labels,
    draw_from_pool,
    require_images,
)
from .training import MIN_BATCH, fresh_clone, learning_curve, train_clone

DESCRIPTION = "JBDA: a small seed set grown round by round along the clone's input gradients (synthetic queries)."
PAPER = "Papernot et al., Practical Black-Box Attacks against Machine Learning, AsiaCCS 2017"
NEEDS_POOL = True  # for the seed set only
NEEDS_LABELLED = False
MODALITIES = ("image",)
ANSWERS = "either"


def jacobian_step(clone, pixel_values, classes, step, batch_size=256):
    """`x + step * sign(d clone(x)[class] / dx)`: move each input along the clone's gradient for its answered class."""
    clone.eval()
    moved = []
    for start in range(0, len(pixel_values), batch_size):
        x = pixel_values[start:start + batch_size].clone().requires_grad_(True)
        scores = clone(pixel_values=x).logits.gather(1, classes[start:start + batch_size, None])
        (gradient,) = torch.autograd.grad(scores.sum(), x)
        moved.append(x.detach() + step * gradient.sign())
    return torch.cat(moved)


def run(api: BlackBoxAPI, budget: int, *, pool, build_clone, labels="soft", rounds=6, seed_size=None, step_size=0.1,
        flip_every=3, evaluate=None, checkpoints=None, seed=0, progress=True, **train_kwargs):
    """
    Steal an image classifier with Jacobian-based dataset augmentation: query a seed set, then, round after round,
    train a clone on everything answered so far and query one step `x + lambda * sign(grad_x clone(x)[answer])` away
    from each known input, doubling the set, until exactly `budget` queries are spent.

    Args:
        api ([`BlackBoxAPI`]):
            The victim (image-only). Its `output` must match `labels`.
        budget (`int`):
            Total queries, seed set and every synthetic input included; spent exactly.
        pool (`torch.Tensor`):
            The thief's own images (`pixel_values`); only the seed set is drawn from it.
        build_clone (`Callable[[], nn.Module]`):
            Returns a fresh clone model, called once per round and once per checkpoint.
        labels (`str`, *optional*, defaults to `"soft"`):
            `"soft"` trains on probabilities, `"label_only"` on top-1 labels (the paper's setting).
        rounds (`int`, *optional*, defaults to 6):
            Augmentation rounds the budget is split into: the seed set has `ceil(budget / 2**rounds)` inputs and
            each round doubles the set (the last one augments a random subset, to land on the budget). The seed
            set never has fewer than 2 inputs (the smallest batch a batch-norm clone trains on; 1 for a budget of
            1): where `budget / 2**rounds` would leave fewer, fewer rounds are run (e.g. 5 for a budget of 50).
        seed_size (`int`, *optional*):
            Overrides the seed set size; rounds then continue until the budget is spent.
        step_size (`float`, *optional*, defaults to 0.1):
            lambda, as a fraction of the pool's value range (0.1 of [0, 1] images in the paper). Synthetic inputs
            are clipped to that range.
        flip_every (`int`, *optional*, defaults to 3):
            The step's sign flips every this many rounds (the paper's periodic step size), so the set does not
            drift out of the input space.
        evaluate, checkpoints, seed, progress, **train_kwargs:
            As in [`knockoff.run`]: checkpoints train a fresh clone on the first answers, in query order.

    Returns:
        `(clone, history)`: the clone trained on all `budget` answers, and one dict per checkpoint.
    """
    check_labels(labels, api)
    check_budget(budget)
    check_build_clone(build_clone)
    require_images("JBDA", api, pool)
    checkpoints = check_checkpoints(checkpoints, budget)
    if seed_size is None:
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
            raise ValueError(f"rounds must be a non-negative integer, got {rounds!r}.")
        # Fewer rounds where the seed set would drop below the smallest trainable batch.
        seed_size = max(math.ceil(budget / 2 ** rounds), min(MIN_BATCH, budget))
    if not 1 <= seed_size <= budget:
        raise ValueError(f"seed_size must lie in [1, budget={budget}], got {seed_size}.")
    pool = as_input_dict(pool)["pixel_values"]
    inputs = draw_from_pool(pool, seed_size, budget, seed, why="the JBDA seed set")["pixel_values"]
    low, high = pool.min().item(), pool.max().item()
    step = step_size * (high - low)
    generator = torch.Generator().manual_seed(seed)

    answers = api.query(inputs)
    bar = tqdm(total=budget, initial=len(inputs), desc="jbda", unit="query", disable=not progress, leave=False)
    round_index = 0
    while len(inputs) < budget:
        clone = train_clone(fresh_clone(build_clone, seed), inputs, answers, labels=labels, seed=seed, **train_kwargs)
        count = min(len(inputs), budget - len(inputs))
        chosen = torch.randperm(len(inputs), generator=generator)[:count]
        sign = -1.0 if (round_index // flip_every) % 2 else 1.0
        synthetic = jacobian_step(clone, inputs[chosen], answered_classes(answers[chosen]), sign * step)
        synthetic = synthetic.clamp(low, high)
        answers = torch.cat([answers, api.query(synthetic)])
        inputs = torch.cat([inputs, synthetic])
        bar.update(len(synthetic))
        round_index += 1
    bar.close()
    return learning_curve(build_clone, inputs, answers, checkpoints, labels=labels, evaluate=evaluate, seed=seed,
                          progress=progress, desc=f"jbda {labels}", **train_kwargs)
