"""Data-free model extraction (Truong et al., 2021): a generator searches for inputs where clone and victim disagree."""

import math

import torch
from torch import nn
from tqdm.auto import tqdm

from ..blackbox import BlackBoxAPI
from ..inputs import as_input_dict
from .common import (
    check_budget,
    check_build_clone,
    check_checkpoints,
    clamped_log,
    require_images,
    require_probabilities,
)
from .training import fresh_clone

DESCRIPTION = "DFME: no data; a generator proposes images where the clone disagrees with the victim (zeroth-order)."
PAPER = "Truong et al., Data-Free Model Extraction, CVPR 2021"
NEEDS_POOL = False  # a pool, when given, only sets the image shape and value range
NEEDS_LABELLED = False
MODALITIES = ("image",)
ANSWERS = "probabilities"


class Generator(nn.Module):
    """
    DFME's generator, scaled down: a latent vector is projected to a quarter-size feature map, upsampled twice by
    conv blocks and squashed by tanh into the inputs' value range. Any `(channels, height, width)`.
    """

    def __init__(self, shape, latent_dim=100, width=32, value_range=(-1.0, 1.0)):
        super().__init__()
        channels, self.height, self.width = shape
        self.latent_dim = latent_dim
        self.start = (math.ceil(self.height / 4), math.ceil(self.width / 4))
        self.project = nn.Linear(latent_dim, 2 * width * self.start[0] * self.start[1])
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * width),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, channels, 3, padding=1),
            nn.Tanh(),
        )
        self.low, self.high = value_range

    def forward(self, latent):
        features = self.project(latent).view(len(latent), -1, *self.start)
        images = self.body(features)[..., : self.height, : self.width]  # quarter sizes were rounded up
        return self.low + (images + 1) * (self.high - self.low) / 2


def logits_like(probabilities, eps=1e-6):
    """The paper's logit recovery from probabilities: log-probabilities centred per row (logits up to a shift)."""
    log_probs = clamped_log(probabilities, eps)
    return log_probs - log_probs.mean(-1, keepdim=True)


def disagreement(clone_logits, answers):
    """Per-input l1 distance between the clone's centred logits and the victim's recovered ones."""
    centred = clone_logits - clone_logits.mean(-1, keepdim=True)
    return (centred - logits_like(answers)).abs().mean(-1)


def estimate_input_gradient(api, clone, images, directions, epsilon, generator):
    """
    Zeroth-order estimate of d disagreement / d images, by forward differences along `directions` random unit
    directions per image: `d/m * sum_i (L(x + eps u_i) - L(x)) / eps * u_i`. Costs `len(images) * (directions + 1)`
    queries, all counted by the API.
    """
    count, shape, dimension = len(images), images.shape[1:], images[0].numel()
    with torch.no_grad():
        units = torch.randn(count, directions, dimension, generator=generator)
        units = (units / units.norm(dim=-1, keepdim=True)).view(count, directions, *shape)
        batch = torch.cat([images, (images[:, None] + epsilon * units).flatten(0, 1)])
        losses = disagreement(clone(pixel_values=batch).logits.float(), api.query(batch))
        base, moved = losses[:count], losses[count:].view(count, directions)
        slopes = (moved - base[:, None]) / epsilon
        gradient = dimension / directions * (slopes.view(count, directions, *[1] * len(shape)) * units).sum(1)
    return gradient / count  # of the batch mean


def run(api: BlackBoxAPI, budget: int, *, build_clone, pool=None, shape=None, value_range=None, batch_size=64,
        directions=1, epsilon=1e-3, generator_steps=1, clone_steps=5, clone_learning_rate=1e-3,
        generator_learning_rate=5e-4, latent_dim=100, generator_width=32, evaluate=None, checkpoints=None, seed=0,
        progress=True):
    """
    Steal an image classifier without data. Each iteration, the generator takes `generator_steps` steps to make
    images where clone and victim disagree most (l1 between the clone's logits and the victim's log-probabilities,
    both centred), its gradient estimated from `batch_size * (directions + 1)` queries; then the clone takes
    `clone_steps` steps towards the victim's answers on `batch_size` fresh generated images each. Iterations are
    derived from the budget; what is left of it when no full iteration fits goes to clone steps, so exactly
    `budget` queries are spent.

    Args:
        api ([`BlackBoxAPI`]):
            The victim (image-only), answering probabilities.
        budget (`int`):
            Total queries, gradient-estimation queries included; spent exactly.
        build_clone (`Callable[[], nn.Module]`):
            Returns a fresh clone model (called once).
        pool (`torch.Tensor`, *optional*):
            Never queried: only its image shape and value range are used (when `shape` / `value_range` are unset).
        shape (`tuple[int, int, int]`, *optional*):
            `(channels, height, width)` of the victim's `pixel_values`; needed when there is no pool.
        value_range (`tuple[float, float]`, *optional*):
            Range of generated pixel values; the pool's, else `(-1, 1)`.
        batch_size (`int`, *optional*, defaults to 64):
            Generated images per step.
        directions (`int`, *optional*, defaults to 1):
            Random directions per image for the gradient estimate (the paper's m).
        epsilon (`float`, *optional*, defaults to 1e-3):
            Step of the forward differences.
        generator_steps, clone_steps (`int`, *optional*, defaults to 1 and 5):
            Steps of each per iteration (the paper's n_G and n_S).
        clone_learning_rate, generator_learning_rate (`float`, *optional*, defaults to 1e-3 and 5e-4):
            Adam learning rates.
        latent_dim, generator_width (`int`, *optional*, defaults to 100 and 32):
            Size of the generator.
        evaluate (`Callable[[nn.Module], dict]`, *optional*):
            Scores the clone; called when the queries spent first reach each checkpoint.
        checkpoints (`list[int]`, *optional*, defaults to `[budget]`):
            Query counts at which the clone (trained online) is scored; `queries` in the history is the count
            actually spent by then (a step may pass a checkpoint).
        seed (`int`, *optional*, defaults to 0):
            Seeds the generator, the clone and every random draw.
        progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar.

    Returns:
        `(clone, history)`: the clone after the whole budget, and one dict per checkpoint.
    """
    require_probabilities("DFME", api)
    check_budget(budget)
    check_build_clone(build_clone)
    require_images("DFME", api, pool)
    checkpoints = check_checkpoints(checkpoints, budget)
    for name, value in {"batch_size": batch_size, "directions": directions, "generator_steps": generator_steps,
                        "clone_steps": clone_steps}.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if pool is not None:
        pool = as_input_dict(pool)["pixel_values"]
        shape = shape or tuple(pool.shape[1:])
        value_range = value_range or (pool.min().item(), pool.max().item())
    if shape is None or len(shape) != 3:
        raise ValueError(f"DFME needs the image shape (channels, height, width), or a pool to read it from; "
                         f"got {shape}.")

    torch.manual_seed(seed)
    generator_model = Generator(shape, latent_dim, generator_width, value_range or (-1.0, 1.0)).train()
    clone = fresh_clone(build_clone, seed).train()
    clone_optimizer = torch.optim.Adam(clone.parameters(), lr=clone_learning_rate)
    generator_optimizer = torch.optim.Adam(generator_model.parameters(), lr=generator_learning_rate)
    random = torch.Generator().manual_seed(seed)

    def latent(count):
        return torch.randn(count, latent_dim, generator=random)

    def clone_step(count):
        images = generator_model(latent(count)).detach()
        answers = api.query(images)
        clone.train(count > 1)  # batch norm cannot train on a single input
        loss = disagreement(clone(pixel_values=images).logits.float(), answers).mean()
        clone_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clone_optimizer.step()
        clone.train()

    def generator_step():
        images = generator_model(latent(batch_size))
        gradient = estimate_input_gradient(api, clone, images.detach(), directions, epsilon, random)
        generator_optimizer.zero_grad(set_to_none=True)
        images.backward(-gradient)  # ascend the disagreement
        generator_optimizer.step()

    # The schedule: whole iterations while they fit, then clone steps on what is left of the budget.
    iteration_cost = generator_steps * batch_size * (directions + 1) + clone_steps * batch_size
    schedule = []
    for _ in range(budget // iteration_cost):
        schedule += ["generator"] * generator_steps + [batch_size] * clone_steps
    left = budget % iteration_cost
    pieces = math.ceil(left / batch_size)
    schedule += [left // pieces + (piece < left % pieces) for piece in range(pieces)]  # even pieces

    history, start = [], api.queries_used
    pending = list(checkpoints)
    with tqdm(total=budget, desc="dfme", unit="query", disable=not progress, leave=False) as bar:
        for step in schedule:
            before = api.queries_used
            generator_step() if step == "generator" else clone_step(step)
            bar.update(api.queries_used - before)
            spent = api.queries_used - start
            if pending and spent >= pending[0]:
                while pending and spent >= pending[0]:
                    pending.pop(0)
                history.append({"queries": spent, **(evaluate(clone.eval()) if evaluate else {})})
                clone.train()
    return clone.eval(), history
