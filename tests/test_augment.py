"""Attacker-query simulation on real processed digits."""

import pytest
import torch

from hf_misleader.augment import IMAGE_POLICIES, simulate_image_queries


def seeded(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("policy", IMAGE_POLICIES)
def test_shape_dtype_and_determinism(policy, pixel_batch):
    images, _ = pixel_batch
    first = simulate_image_queries(images, seeded(5), policy=policy)
    again = simulate_image_queries(images, seeded(5), policy=policy)
    other = simulate_image_queries(images, seeded(6), policy=policy)
    assert first.shape == images.shape and first.dtype == images.dtype
    assert torch.isfinite(first).all()
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("policy", IMAGE_POLICIES)
def test_queries_differ_from_every_input(policy, pixel_batch):
    images, _ = pixel_batch
    queries = simulate_image_queries(images, seeded(0), policy=policy)
    per_image_change = (queries - images).abs().flatten(1).mean(1)
    assert (per_image_change > 1e-3).all(), per_image_change
    assert not images.equal(queries)


def test_input_is_not_modified_in_place(pixel_batch):
    images, _ = pixel_batch
    before = images.clone()
    for policy in IMAGE_POLICIES:
        simulate_image_queries(images, seeded(0), policy=policy)
    assert torch.equal(images, before)


def test_heavy_departs_further_than_mild(pixel_batch):
    images, _ = pixel_batch
    mild = (simulate_image_queries(images, seeded(1), "mild") - images).abs().mean()
    heavy = (simulate_image_queries(images, seeded(1), "heavy") - images).abs().mean()
    assert heavy > mild


def test_strength_scales_the_change(pixel_batch):
    images, _ = pixel_batch
    weak = (simulate_image_queries(images, seeded(2), "mild", strength=0.2) - images).abs().mean()
    strong = (simulate_image_queries(images, seeded(2), "mild", strength=2.0) - images).abs().mean()
    assert strong > weak


def test_a_single_image_and_a_generator_advance(pixel_batch):
    images, _ = pixel_batch
    generator = seeded(3)
    one = simulate_image_queries(images[:1], generator, policy="heavy")
    two = simulate_image_queries(images[:1], generator, policy="heavy")
    assert one.shape == (1, *images.shape[1:])
    assert not torch.equal(one, two)  # the generator moves on: a new batch of queries every call


def test_unknown_policy(pixel_batch):
    images, _ = pixel_batch
    with pytest.raises(ValueError, match="policy"):
        simulate_image_queries(images, seeded(0), policy="extreme")


def test_three_dimensional_input(pixel_batch):
    images, _ = pixel_batch
    with pytest.raises(ValueError, match="shape"):
        simulate_image_queries(images[0], seeded(0))
