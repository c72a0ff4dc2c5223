"""The inverting thief: it knows the victim's public output transform and learns to undo it before training."""

import functools

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..blackbox import BlackBoxAPI
from ..modeling_misleader import OUTPUT_DEFENSES
from .common import (
    check_budget,
    check_build_clone,
    check_checkpoints,
    clamped_log,
    draw_from_pool,
    require_probabilities,
)
from .training import learning_curve

DESCRIPTION = "Inverting: learns to undo a public output transform (e.g. reverse sigmoid) from simulated pairs."
PAPER = "Lee et al., Defending against NN Model Stealing Attacks using Deceptive Perturbations, S&P Workshops 2019"
NEEDS_POOL = True
NEEDS_LABELLED = False
MODALITIES = ("image", "text")
ANSWERS = "probabilities"


def resolve_transform(transform):
    """A callable probabilities -> probabilities: itself, a name in `OUTPUT_DEFENSES` or `{"name": ..., **params}`."""
    if callable(transform):
        return transform
    spec = {"name": transform} if isinstance(transform, str) else dict(transform or {})
    name = spec.pop("name", None)
    if name not in OUTPUT_DEFENSES:
        raise ValueError(f"transform must be a callable or one of {sorted(OUTPUT_DEFENSES)}, got {transform!r}.")
    return functools.partial(OUTPUT_DEFENSES[name], **spec)


def simulate_probabilities(count, num_labels, generator):
    """
    Probability rows like a classifier's, from near one-hot to near uniform: half softmax of scaled random logits
    (scale log-uniform in [0.3, 30]), half Dirichlet (concentration log-uniform in [0.03, 3]).
    """
    half = count // 2
    scales = torch.exp(torch.empty(half, 1).uniform_(-1.2, 3.4, generator=generator))
    peaked = torch.softmax(scales * torch.randn(half, num_labels, generator=generator), -1)
    concentration = torch.exp(torch.empty(count - half, 1).uniform_(-3.5, 1.1, generator=generator))
    gammas = torch._standard_gamma(concentration.expand(-1, num_labels).contiguous(), generator=generator)
    dirichlet = gammas.clamp_min(1e-30) / gammas.clamp_min(1e-30).sum(-1, keepdim=True)
    return torch.cat([peaked, dirichlet])


class InverseTransform(nn.Module):
    """
    Maps transformed answers back to the victim's probabilities. Each class's logit is a small MLP of that class's
    transformed log-probability and summaries of its row, so one network serves any number and order of classes.
    """

    def __init__(self, hidden=64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(5, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, transformed):
        log_q = clamped_log(transformed)
        row = lambda value: value.expand_as(log_q)
        q = transformed.float()
        features = [log_q, q, log_q - row(log_q.max(-1, keepdim=True).values), row(log_q.mean(-1, keepdim=True)),
                    row(q.max(-1, keepdim=True).values)]
        return self.mlp(torch.stack(features, dim=-1)).squeeze(-1)  # logits of the recovered distribution

    @torch.no_grad()
    def invert(self, transformed):
        return torch.softmax(self(transformed), -1)


def fit_inverter(transform, num_labels, simulations=20_000, steps=800, batch_size=256, learning_rate=3e-3, seed=0,
                 progress=True):
    """
    Learn to invert `transform` from simulated pairs (random probability rows, their transform): minimise the
    cross-entropy of the true rows under the inverter's output. Costs no query: the transform is public.

    Returns:
        [`InverseTransform`] in eval mode; `.invert(answers)` gives the recovered probabilities.
    """
    generator = torch.Generator().manual_seed(seed)
    targets = simulate_probabilities(simulations, num_labels, generator)
    with torch.no_grad():
        transformed = transform(targets).float()
    torch.manual_seed(seed)
    inverter = InverseTransform()
    optimizer = torch.optim.Adam(inverter.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in tqdm(range(steps), desc="fit inverter", disable=not progress, leave=False):
        batch = torch.randint(simulations, (batch_size,), generator=generator)
        loss = -(targets[batch] * F.log_softmax(inverter(transformed[batch]), -1)).sum(-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return inverter.eval()


def run(api: BlackBoxAPI, budget: int, *, pool, build_clone, transform, simulations=20_000, inverter_steps=800,
        evaluate=None, checkpoints=None, seed=0, progress=True, **train_kwargs):
    """
    Steal a victim behind a public output transform: query `budget` random pool inputs (as KnockoffNets), undo the
    transform with an inverter learnt from simulated pairs, train the clone on the recovered probabilities.

    Args:
        api ([`BlackBoxAPI`]):
            The victim, answering transformed probabilities.
        budget (`int`):
            Number of queries, spent exactly; must not exceed the pool.
        pool (`torch.Tensor` or `dict[str, torch.Tensor]`):
            The thief's own inputs (`pixel_values`, or tokenised text).
        build_clone (`Callable[[], nn.Module]`):
            Returns a fresh clone model, called once per checkpoint.
        transform (`Callable`, `str` or `dict`):
            The public transform, probabilities -> probabilities: a callable, a name (`"reverse_sigmoid"`) or
            `{"name": "reverse_sigmoid", "beta": ..., "gamma": ...}`.
        simulations, inverter_steps (`int`, *optional*, defaults to 20,000 and 800):
            Simulated pairs and training steps of the inverter.
        evaluate, checkpoints, seed, progress, **train_kwargs:
            As in [`knockoff.run`].

    Returns:
        `(clone, history)`: the clone trained on all recovered answers, and one dict per checkpoint.
    """
    require_probabilities("The inverting thief", api)
    check_budget(budget)
    check_build_clone(build_clone)
    transform = resolve_transform(transform)
    checkpoints = check_checkpoints(checkpoints, budget)
    inputs = draw_from_pool(pool, budget, budget, seed)
    answers = api.query(inputs)
    inverter = fit_inverter(transform, answers.shape[1], simulations, inverter_steps, seed=seed, progress=progress)
    return learning_curve(build_clone, inputs, inverter.invert(answers), checkpoints, labels="soft", evaluate=evaluate,
                          seed=seed, progress=progress, desc="inverting", **train_kwargs)
