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
