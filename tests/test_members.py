"""Every image preset builds and classifies the inputs the library feeds it (3-channel squares)."""

import pytest
import torch

from hf_misleader.members import build_image_member, list_presets


@pytest.mark.parametrize("preset", list_presets("image"))
@pytest.mark.parametrize("image_size", [16, 28])
def test_every_image_preset_classifies_small_images(preset, image_size):
    torch.manual_seed(0)
    model = build_image_member(preset, 10, {i: str(i) for i in range(10)}, 3, image_size).eval()
    with torch.no_grad():
        logits = model(pixel_values=torch.randn(2, 3, image_size, image_size)).logits
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    assert model.config.id2label[3] == "3"
