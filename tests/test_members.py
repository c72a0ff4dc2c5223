"""Every image preset builds and classifies the inputs the library feeds it (3-channel squares)."""

import pytest
import torch

from hf_misleader.members import build_image_member, image_member_config, list_presets


@pytest.mark.parametrize("preset", list_presets("image"))
@pytest.mark.parametrize("image_size", [16, 28])
def test_every_image_preset_classifies_small_images(preset, image_size):
    torch.manual_seed(0)
    model = build_image_member(preset, 10, {i: str(i) for i in range(10)}, 3, image_size).eval()
    with torch.no_grad():
        logits = model(pixel_values=torch.randn(2, 3, image_size, image_size)).logits
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    assert model.config.id2label[3] == "3"


def test_a_typo_in_a_member_dict_is_an_error_with_a_suggestion():
    with pytest.raises(ValueError, match=r"Member 'resnet' has no setting 'hidden_sizez'\. Did you mean 'hidden_sizes'\?"):
        image_member_config({"model_type": "resnet", "hidden_sizez": [8]}, 10)
    # Every key of a saved config is accepted: a member can be given as another model's config.json.
    saved = image_member_config("vit-tiny", 10).to_dict()
    assert image_member_config(saved, 10).hidden_size == saved["hidden_size"]
