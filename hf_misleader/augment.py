"""Attacker-query simulation: what a thief's queries look like, generated on the training device.

The defence never sees the thief's real queries, so it trains against a stand-in distribution Q
built from the training batch. Every function takes a batch of `pixel_values` (any normalisation:
value ranges are read off the batch) and a `torch.Generator` on the same device, and returns a
batch of the same shape.
"""

import math

import torch
import torch.nn.functional as F

IMAGE_POLICIES = ("mild", "heavy")


def _uniform(shape, low, high, generator, device):
    return torch.rand(shape, generator=generator, device=device) * (high - low) + low


def _value_range(x):
    flat = x.flatten(1)
    return flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)


def random_affine(x, generator, degrees=15.0, scale=0.1, translate=0.1):
    """Rotate, scale and shift each image by its own random amount (border pixels fill the gaps)."""
    n, device = x.shape[0], x.device
    angle = _uniform(n, -degrees, degrees, generator, device) * math.pi / 180
    zoom = _uniform(n, 1 - scale, 1 + scale, generator, device)
    shift = _uniform((n, 2), -translate, translate, generator, device) * 2
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def cutout(x, generator, fraction=0.35):
    """Blank one random square per image (to the image's darkest value)."""
    n, _, height, width = x.shape
    side = max(1, int(fraction * min(height, width)))
    top = torch.randint(0, height - side + 1, (n,), generator=generator, device=x.device)
    left = torch.randint(0, width - side + 1, (n,), generator=generator, device=x.device)
    rows = torch.arange(height, device=x.device).view(1, -1, 1)
    cols = torch.arange(width, device=x.device).view(1, 1, -1)
    inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + side).view(-1, 1, 1))) & (
        (cols >= left.view(-1, 1, 1)) & (cols < (left + side).view(-1, 1, 1))
    )
    low, _ = _value_range(x)
    return torch.where(inside.unsqueeze(1), low, x)


def invert(x, generator, probability=0.3):
    """Swap dark and light on a random subset of images."""
    low, high = _value_range(x)
    flip = torch.rand(x.shape[0], generator=generator, device=x.device).view(-1, 1, 1, 1) < probability
    return torch.where(flip, low + high - x, x)


def contrast_brightness(x, generator, amount=0.4):
    low, high = _value_range(x)
    mid = (low + high) / 2
    contrast = _uniform((x.shape[0], 1, 1, 1), 1 - amount, 1 + amount, generator, x.device)
    brightness = _uniform((x.shape[0], 1, 1, 1), -amount / 2, amount / 2, generator, x.device) * (high - low)
    return ((x - mid) * contrast + mid + brightness).clamp(low, high)


def gaussian_noise(x, generator, std=0.1):
    low, high = _value_range(x)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + noise * std * (high - low)


def blend_pairs(x, generator):
    """Mixup or pixel-wise max of each image with another image of the batch."""
    n = x.shape[0]
    partner = x[torch.randperm(n, generator=generator, device=x.device)]
    weight = _uniform((n, 1, 1, 1), 0.3, 0.7, generator, x.device)
    use_max = torch.rand((n, 1, 1, 1), generator=generator, device=x.device) < 0.5
    return torch.where(use_max, torch.maximum(x, partner), weight * x + (1 - weight) * partner)


def smooth_blobs(x, generator, grid=4):
    """Smooth random textures spanning the data's value range: inputs from no real class at all."""
    n, channels, height, width = x.shape
    low, high = _value_range(x)
    coarse = torch.rand((n, 1, grid, grid), generator=generator, device=x.device, dtype=x.dtype)
    smooth = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)
    return (low + smooth * (high - low)).expand(n, channels, height, width).contiguous()


def simulate_image_queries(pixel_values: torch.Tensor, generator: torch.Generator, policy="mild", strength=1.0):
    """
    Attacker-like queries built from a batch of training images.

    Args:
        pixel_values (`torch.Tensor` of shape `(batch, channels, height, width)`):
            A batch of processed training images.
        generator (`torch.Generator`):
            Seeded generator on the batch's device; the same seed gives the same queries.
        policy (`str`, *optional*, defaults to `"mild"`):
            `"mild"`: random affine and noise, the reference recipe's augmentation.
            `"heavy"`: a per-image mix of strong affine + cutout + inversion + contrast (1/2), mixup or
            max-blend of two images (1/4), and smooth random blobs (1/4).
        strength (`float`, *optional*, defaults to 1.0):
            Scales the geometric and photometric magnitudes.
    """
    if policy not in IMAGE_POLICIES:
        raise ValueError(f"Unknown augmentation policy {policy!r}; choose one of {IMAGE_POLICIES}.")
    if pixel_values.dim() != 4:
        raise ValueError(f"Expected pixel_values of shape (batch, channels, height, width), got {tuple(pixel_values.shape)}.")
    x = pixel_values
    if policy == "mild":
        x = random_affine(x, generator, degrees=15 * strength, scale=0.1 * strength, translate=0.1 * strength)
        return gaussian_noise(x, generator, std=0.05 * strength)
    heavy = random_affine(x, generator, degrees=35 * strength, scale=0.25 * strength, translate=0.2 * strength)
    heavy = contrast_brightness(invert(cutout(heavy, generator), generator), generator, amount=0.4 * strength)
    choice = torch.rand((x.shape[0], 1, 1, 1), generator=generator, device=x.device)
    mixed = torch.where(choice < 0.75, blend_pairs(x, generator), smooth_blobs(x, generator))
    return torch.where(choice < 0.5, heavy, mixed)


TEXT_POLICIES = ("mild", "heavy")
_TEXT_RATES = {  # per-token corruption rates, the share of rows spliced with another sentence, of random rows
    "mild": {"drop": 0.1, "swap": 0.1, "replace": 0.1, "splice_rows": 0.0, "random_rows": 0.25},
    "heavy": {"drop": 0.2, "swap": 0.2, "replace": 0.3, "splice_rows": 0.4, "random_rows": 0.4},
}


def _inner_tokens(input_ids, attention_mask):
    """Real tokens between the first ([CLS]) and the last real one ([SEP]): the only ones corrupted."""
    lengths = attention_mask.sum(1, keepdim=True)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
    return (positions > 0) & (positions < lengths - 1) & attention_mask.bool()


def splice_pairs(input_ids, attention_mask, generator, rows):
    """
    Where `rows` (a `(batch,)` bool mask) is set, join the head of each sentence (up to a random cut) to the tail of
    another sentence of the batch (from a random cut): sentences that mix two real ones, truncated to the length.
    [CLS] and [SEP] stay where they belong.
    """
    count, length = input_ids.shape
    device = input_ids.device
    inner = attention_mask.sum(1) - 2  # real tokens between [CLS] and [SEP]
    partner = torch.randperm(count, generator=generator, device=device)
    head = (torch.rand(count, generator=generator, device=device) * (inner + 1)).long().clamp(max=inner)
    start = (torch.rand(count, generator=generator, device=device) * (inner[partner] + 1)).long().clamp(max=inner[partner])
    total = (head + inner[partner] - start).clamp(max=length - 2)
    positions = torch.arange(length, device=device).expand(count, length)
    from_partner = (positions - head.unsqueeze(1) + start.unsqueeze(1)).clamp(0, length - 1)
    partner_ids = input_ids[partner].gather(1, from_partner)
    sep = input_ids.gather(1, (attention_mask.sum(1) - 1).clamp(min=0).unsqueeze(1))
    pad = torch.zeros_like(input_ids)
    spliced = torch.where(positions <= head.unsqueeze(1), input_ids, partner_ids)
    spliced = torch.where(positions == (total + 1).unsqueeze(1), sep.expand(count, length), spliced)
    new_mask = (positions <= (total + 1).unsqueeze(1)).to(attention_mask.dtype)
    spliced = torch.where(new_mask.bool(), spliced, pad)
    keep = ~rows.unsqueeze(1) | (inner < 1).unsqueeze(1)  # rows not chosen, and empty sentences, stay as they are
    return torch.where(keep, input_ids, spliced), torch.where(keep, attention_mask, new_mask)


def simulate_text_queries(input_ids, attention_mask, generator, policy="mild", strength=1.0):
    """
    Attacker-like text queries built from a batch of tokenised training sentences: splices of two sentences (the
    head of one, the tail of another), word dropout, swaps of neighbouring tokens, replacement by other tokens, and
    whole rows of random tokens (RANDOM-style thieves).

    Replacement tokens are drawn from the batch's own real tokens, so they are genuine word pieces of the
    teacher's vocabulary and no tokenizer is needed. The first and last real tokens ([CLS], [SEP]) are kept.

    Args:
        input_ids (`torch.LongTensor` of shape `(batch, length)`):
            Token ids, right-padded.
        attention_mask (`torch.LongTensor` of shape `(batch, length)`):
            1 for real tokens.
        generator (`torch.Generator`):
            Seeded generator on the batch's device.
        policy (`str`, *optional*, defaults to `"mild"`):
            `"mild"`: light token corruption, a quarter of the rows random tokens. `"heavy"`: 40% of the rows spliced
            with another sentence, heavier corruption on every row, 40% random rows.
        strength (`float`, *optional*, defaults to 1.0):
            Scales every rate (capped at 1).

    Returns:
        `(input_ids, attention_mask)` of the same shape.
    """
    if policy not in TEXT_POLICIES:
        raise ValueError(f"Unknown augmentation policy {policy!r}; choose one of {TEXT_POLICIES}.")
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError("Expected input_ids and attention_mask of the same shape (batch, length).")
    rates = {name: min(1.0, rate * strength) for name, rate in _TEXT_RATES[policy].items()}
    device, (rows, length) = input_ids.device, input_ids.shape
    inner = _inner_tokens(input_ids, attention_mask)
    if not inner.any():
        return input_ids.clone(), attention_mask.clone()
    vocabulary = input_ids[inner]
    pad = input_ids[~attention_mask.bool()]
    pad_id = pad[0] if len(pad) else torch.zeros((), dtype=input_ids.dtype, device=device)

    def draw(shape):
        return vocabulary[torch.randint(0, len(vocabulary), shape, generator=generator, device=device)]

    def chance(rate, shape):
        return torch.rand(shape, generator=generator, device=device) < rate

    if rates["splice_rows"] > 0:
        input_ids, attention_mask = splice_pairs(input_ids, attention_mask, generator,
                                                 chance(rates["splice_rows"], (rows,)))
        input_ids = torch.where(attention_mask.bool(), input_ids, pad_id)
        inner = _inner_tokens(input_ids, attention_mask)
    ids = input_ids.clone()
    random_rows = chance(rates["random_rows"], (rows, 1))
    ids = torch.where(inner & (random_rows | chance(rates["replace"], ids.shape)), draw(ids.shape), ids)
    # Swap each selected token with its right neighbour when both are inner tokens.
    swap = chance(rates["swap"], ids.shape) & inner & torch.roll(inner, -1, dims=1)
    swap[:, -1] = False
    swap &= ~torch.roll(swap, 1, dims=1)  # no token takes part in two swaps
    source = torch.arange(length, device=device).expand(rows, length).clone()
    source[swap] += 1
    source[torch.roll(swap, 1, dims=1)] -= 1
    ids = ids.gather(1, source)
    # Drop tokens, then pack the kept ones to the left so the sentence stays contiguous.
    keep = attention_mask.bool() & ~(inner & chance(rates["drop"], ids.shape))
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    ids = torch.where(keep, ids, torch.zeros_like(ids)).gather(1, order)
    new_mask = keep.gather(1, order).to(attention_mask.dtype)
    return torch.where(new_mask.bool(), ids, pad_id), new_mask
