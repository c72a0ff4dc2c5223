"""The stock image-classification pipeline serves a saved ensemble's averaged probabilities."""

import pytest
import torch
from transformers import pipeline

from hf_misleader import MisleaderConfig, MisleaderEnsembleForImageClassification

from .conftest import ID2LABEL, NUM_LABELS, build_member


@pytest.fixture(scope="module")
def saved_ensemble(tmp_path_factory, processor):
    members = [build_member(preset, seed=index) for index, preset in enumerate(("resnet-tiny", "convnext-tiny", "vit-tiny"))]
    # Confident members that disagree, so averaging probabilities is told apart from averaging logits.
    with torch.no_grad():
        for member in members:
            head = [module for module in member.modules() if isinstance(module, torch.nn.Linear)][-1]
            head.weight.mul_(40.0)
    config = MisleaderConfig(
        members=[member.config.to_dict() for member in members],
        id2label=ID2LABEL,
        label2id={label: index for index, label in ID2LABEL.items()},
    )
    ensemble = MisleaderEnsembleForImageClassification(config)
    for slot, member in zip(ensemble.members, members):
        slot.load_state_dict(member.state_dict())
    folder = tmp_path_factory.mktemp("pipeline") / "defended"
    ensemble.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, members


def test_pipeline_scores_are_mean_of_member_softmax(saved_ensemble, raw_digits, processor):
    folder, members = saved_ensemble
    images = list(raw_digits["validation"]["image"][:6])  # real grayscale PIL digits
    classify = pipeline("image-classification", model=str(folder), device="cpu")
    assert isinstance(classify.model, MisleaderEnsembleForImageClassification)
    served = classify(images, top_k=NUM_LABELS)
    assert len(served) == len(images)

    pixel_values = processor(images=[image.convert("RGB") for image in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = torch.stack([torch.softmax(m(pixel_values=pixel_values).logits, -1) for m in members]).mean(0)
        mean_logits = torch.stack([m(pixel_values=pixel_values).logits for m in members]).mean(0)
    # The check below can tell the right aggregation from the usual wrong one.
    assert (torch.softmax(mean_logits, -1) - expected).abs().max() > 1e-2
    for row, answers in enumerate(served):
        assert len(answers) == NUM_LABELS
        assert {answer["label"] for answer in answers} == set(ID2LABEL.values())
        scores = [answer["score"] for answer in answers]
        assert scores == sorted(scores, reverse=True)
        for answer in answers:
            assert answer["score"] == pytest.approx(expected[row, int(answer["label"])].item(), abs=1e-5)
        assert sum(scores) == pytest.approx(1.0, abs=1e-5)


def test_pipeline_top1_is_the_ensemble_argmax(saved_ensemble, raw_digits, processor):
    folder, members = saved_ensemble
    images = list(raw_digits["validation"]["image"][6:12])
    classify = pipeline("image-classification", model=str(folder), device="cpu")
    top1 = [answers[0] for answers in classify(images, top_k=1)]
    pixel_values = processor(images=[image.convert("RGB") for image in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probabilities = torch.stack([torch.softmax(m(pixel_values=pixel_values).logits, -1) for m in members]).mean(0)
    assert [int(answer["label"]) for answer in top1] == probabilities.argmax(-1).tolist()
    for answer, row in zip(top1, probabilities):
        assert answer["score"] == pytest.approx(row.max().item(), abs=1e-5)
