"""MisleaderConfig and the served ensembles: soft voting, outputs, save/load round trips, config errors."""

import itertools
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
)

from hf_misleader import (
    MisleaderConfig,
    MisleaderEnsembleForImageClassification,
    MisleaderEnsembleForSequenceClassification,
)
from hf_misleader.modeling_misleader import soft_vote

from .conftest import ID2LABEL, IMAGE_PRESETS, IMAGE_SIZE, NUM_LABELS, build_member

# Every preset alone, every pair, and all four together.
COMBINATIONS = (
    [(preset,) for preset in IMAGE_PRESETS]
    + list(itertools.combinations(IMAGE_PRESETS, 2))
    + [IMAGE_PRESETS]
)
COMBINATION_IDS = ["+".join(combo) for combo in COMBINATIONS]


def make_ensemble(presets, seed=0):
    """Members built on their own, then copied into an ensemble built from their configs alone."""
    members = [build_member(preset, seed=seed + index) for index, preset in enumerate(presets)]
    ensemble = MisleaderEnsembleForImageClassification.from_members(
        members, member_names=list(presets), id2label=ID2LABEL,
        label2id={label: index for index, label in ID2LABEL.items()},
    )
    return ensemble, members


@pytest.fixture(scope="module")
def images():
    return torch.randn(5, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------------------------------------------
# The matrix: one ensemble per member combination


@pytest.mark.parametrize("presets", COMBINATIONS, ids=COMBINATION_IDS)
def test_logits_are_log_of_mean_member_probabilities(presets, images):
    ensemble, members = make_ensemble(presets)
    with torch.no_grad():
        output = ensemble(pixel_values=images, output_member_logits=True)
        separate = torch.stack([member(pixel_values=images).logits for member in members], dim=1)
    assert output.member_logits.shape == (len(images), len(presets), NUM_LABELS)
    # The ensemble's members compute exactly what the stand-alone members compute.
    assert torch.equal(output.member_logits, separate)
    expected = torch.log(torch.softmax(separate, dim=-1).mean(dim=1))
    assert output.logits.shape == (len(images), NUM_LABELS)
    torch.testing.assert_close(output.logits, expected, atol=1e-6, rtol=1e-5)
    # So a downstream softmax gives back exactly the averaged probabilities.
    torch.testing.assert_close(
        torch.softmax(output.logits, -1), torch.softmax(separate, -1).mean(1), atol=1e-6, rtol=1e-5
    )
    torch.testing.assert_close(torch.exp(output.logits).sum(-1), torch.ones(len(images)))


@pytest.mark.parametrize("presets", COMBINATIONS, ids=COMBINATION_IDS)
def test_member_logits_only_when_asked_and_loss_with_labels(presets, images):
    ensemble, _ = make_ensemble(presets)
    labels = torch.tensor([0, 3, 9, 1, 1])
    with torch.no_grad():
        plain = ensemble(pixel_values=images)
        with_labels = ensemble(pixel_values=images, labels=labels)
    assert plain.member_logits is None
    assert plain.loss is None
    assert "member_logits" not in plain.keys()
    assert with_labels.member_logits is None
    assert torch.equal(plain.logits, with_labels.logits)
    assert with_labels.loss is not None and with_labels.loss.dim() == 0
    expected = torch.nn.functional.nll_loss(torch.log(torch.softmax(plain.logits, -1)), labels)
    torch.testing.assert_close(with_labels.loss, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("presets", COMBINATIONS, ids=COMBINATION_IDS)
def test_save_pretrained_round_trip(presets, images, tmp_path):
    ensemble, _ = make_ensemble(presets)
    ensemble.save_pretrained(tmp_path)

    files = sorted(os.listdir(tmp_path))
    assert "model.safetensors" in files
    assert not [name for name in files if name.endswith(".bin")], files
    # One file with `members.N.*` keys: no teacher, no attacker.
    keys = load_file(tmp_path / "model.safetensors").keys()
    assert {key.split(".")[1] for key in keys} == {str(i) for i in range(len(presets))}
    assert all(key.startswith("members.") for key in keys)

    reloaded = MisleaderEnsembleForImageClassification.from_pretrained(tmp_path).eval()
    auto = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert isinstance(auto, MisleaderEnsembleForImageClassification)
    assert auto.config.member_names == list(presets)
    assert [m.config.model_type for m in auto.members] == [m.config.model_type for m in ensemble.members]
    with torch.no_grad():
        expected = ensemble(pixel_values=images, output_member_logits=True)
        for loaded in (reloaded, auto):
            got = loaded(pixel_values=images, output_member_logits=True)
            assert torch.equal(got.logits, expected.logits)
            # Weights loaded from the safetensors file can sit at other memory alignments, and oneDNN then may
            # pick kernels that round differently in the last bit: an untrained MobileNetV2 (activations that
            # shrink to ~1e-26 in eval mode) differs around 1e-32. Member logits are compared to float precision.
            torch.testing.assert_close(got.member_logits, expected.member_logits, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Saved folder contents and code sharing


def test_saved_config_and_code_for_remote_loading(tmp_path):
    ensemble, _ = make_ensemble(("resnet-tiny", "vit-tiny"))
    ensemble.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, MisleaderConfig)
    assert config.model_type == "misleader"
    assert config.num_labels == NUM_LABELS
    assert [m["model_type"] for m in config.members] == ["resnet", "vit"]
    assert config.members[1]["image_size"] == IMAGE_SIZE
    assert config.auto_map["AutoModelForImageClassification"].endswith("MisleaderEnsembleForImageClassification")
    assert (tmp_path / "modeling_misleader.py").is_file()
    assert (tmp_path / "configuration_misleader.py").is_file()


@pytest.mark.parametrize("presets", [("resnet-tiny", "vit-tiny")])
def test_trust_remote_code_loads_without_the_library(presets, tmp_path, images):
    """The saved folder's own code loads the model in a process that never imports hf_misleader."""
    ensemble, _ = make_ensemble(presets)
    ensemble.save_pretrained(tmp_path / "model")
    torch.save(images, tmp_path / "images.pt")
    with torch.no_grad():
        torch.save(ensemble(pixel_values=images).logits, tmp_path / "expected.pt")
    script = textwrap.dedent(
        """
        import sys, torch
        sys.modules["hf_misleader"] = None  # the library cannot be imported here
        torch.set_num_threads(1)
        from transformers import AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
        assert sys.modules["hf_misleader"] is None, "the library was imported"
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            logits = model(pixel_values=torch.load(sys.argv[2])).logits
        assert torch.equal(logits, torch.load(sys.argv[3])), (logits, torch.load(sys.argv[3]))
        print("REMOTE-CODE-OK")
        """
    )
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "model"), str(tmp_path / "images.pt"), str(tmp_path / "expected.pt")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "REMOTE-CODE-OK" in done.stdout


# ----------------------------------------------------------------------------------------------------------------
# soft_vote on its own


def test_soft_vote_is_stable_for_large_logits():
    member_logits = torch.tensor([[[1000.0, 0.0], [0.0, 1000.0]]])  # two confident members that disagree
    vote = soft_vote(member_logits)
    assert torch.isfinite(vote).all()
    torch.testing.assert_close(torch.exp(vote), torch.tensor([[0.5, 0.5]]))


def test_soft_vote_of_one_member_is_its_log_softmax():
    logits = torch.randn(4, 1, 7, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(soft_vote(logits), torch.log_softmax(logits[:, 0], -1))


# ----------------------------------------------------------------------------------------------------------------
# Config errors


def test_config_member_without_model_type():
    with pytest.raises(ValueError, match="model_type"):
        MisleaderConfig(members=[{"hidden_size": 16}])


def test_config_unknown_aggregation():
    member = build_member("resnet-tiny").config
    with pytest.raises(ValueError, match="aggregation"):
        MisleaderConfig(members=[member], aggregation="median", id2label=ID2LABEL)


def test_config_member_names_must_match_members():
    member = build_member("resnet-tiny").config
    with pytest.raises(ValueError, match="member names"):
        MisleaderConfig(members=[member], member_names=["a", "b"], id2label=ID2LABEL)


def test_config_accepts_config_objects_and_round_trips(tmp_path):
    member = build_member("convnext-tiny").config
    config = MisleaderConfig(members=[member], member_names=["convnext-tiny"], id2label=ID2LABEL,
                             member_hyperparameters=[{"lambda": 0.1, "temperature": 2.0, "alpha": 0.3}])
    assert isinstance(config.members[0], dict) and config.members[0]["model_type"] == "convnext"
    config.save_pretrained(tmp_path)
    loaded = MisleaderConfig.from_pretrained(tmp_path)
    assert loaded.members[0]["hidden_sizes"] == [16, 32, 64]
    assert loaded.member_names == ["convnext-tiny"]
    assert loaded.member_hyperparameters == [{"lambda": 0.1, "temperature": 2.0, "alpha": 0.3}]
    assert loaded.num_labels == NUM_LABELS


def test_member_with_different_num_labels():
    five_labels = build_member("resnet-tiny").config.to_dict()
    five_labels.pop("id2label"), five_labels.pop("label2id")
    five_labels["num_labels"] = 5
    config = MisleaderConfig(members=[build_member("vit-tiny").config, five_labels], id2label=ID2LABEL)
    with pytest.raises(ValueError, match="5 labels"):
        MisleaderEnsembleForImageClassification(config)


def test_ensemble_without_members():
    with pytest.raises(ValueError, match="at least one member"):
        MisleaderEnsembleForImageClassification(MisleaderConfig(members=[], id2label=ID2LABEL))


# ----------------------------------------------------------------------------------------------------------------
# Text: BERT and DistilBERT members


TEXT_LABELS = 3


def text_members():
    torch.manual_seed(0)
    bert = BertForSequenceClassification(
        BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                   max_position_embeddings=32, num_labels=TEXT_LABELS)
    ).eval()
    distilbert = DistilBertForSequenceClassification(
        DistilBertConfig(vocab_size=100, dim=16, n_layers=1, n_heads=2, hidden_dim=32, max_position_embeddings=32,
                         num_labels=TEXT_LABELS)
    ).eval()
    return [bert, distilbert]


def text_ensemble():
    members = text_members()
    ensemble = MisleaderEnsembleForSequenceClassification.from_members(
        members, member_names=["bert", "distilbert"], num_labels=TEXT_LABELS
    )
    return ensemble, members


@pytest.fixture(scope="module")
def text_inputs():
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, 100, (4, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    attention_mask[3, 4:] = 0
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, 5:] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


def test_sequence_ensemble_passes_each_member_what_it_takes(text_inputs):
    ensemble, (bert, distilbert) = text_ensemble()
    with torch.no_grad():
        output = ensemble(**text_inputs, output_member_logits=True)
        bert_logits = bert(**text_inputs).logits
        distilbert_logits = distilbert(input_ids=text_inputs["input_ids"],
                                       attention_mask=text_inputs["attention_mask"]).logits
        bert_without_segments = bert(input_ids=text_inputs["input_ids"],
                                     attention_mask=text_inputs["attention_mask"]).logits
    # token_type_ids really reach BERT (they change its answer), and DistilBERT runs without them.
    assert not torch.equal(bert_logits, bert_without_segments)
    assert torch.equal(output.member_logits[:, 0], bert_logits)
    assert torch.equal(output.member_logits[:, 1], distilbert_logits)
    expected = torch.log(torch.softmax(torch.stack([bert_logits, distilbert_logits], 1), -1).mean(1))
    torch.testing.assert_close(output.logits, expected, atol=1e-6, rtol=1e-5)
    # The attention mask matters too: padding positions are ignored only through it.
    with torch.no_grad():
        unmasked = ensemble(input_ids=text_inputs["input_ids"], token_type_ids=text_inputs["token_type_ids"]).logits
    assert not torch.equal(unmasked, output.logits)


def test_missing_main_input_is_named(images, text_inputs):
    # Any other input lands in **kwargs: without the check, a member fails on None ("'NoneType' object has no
    # attribute 'shape'").
    image_ensemble, _ = make_ensemble(("resnet-tiny",))
    with pytest.raises(ValueError, match="MisleaderEnsembleForImageClassification needs `pixel_values`; got `input_ids`"):
        image_ensemble(input_ids=text_inputs["input_ids"])
    with pytest.raises(ValueError, match="needs `pixel_values`; got no input"):
        image_ensemble()
    text_ensemble_, _ = text_ensemble()
    with pytest.raises(ValueError, match="MisleaderEnsembleForSequenceClassification needs `input_ids`; got "
                                         "`pixel_values`"):
        text_ensemble_(pixel_values=images, attention_mask=text_inputs["attention_mask"])


def test_sequence_ensemble_round_trip(tmp_path, text_inputs):
    ensemble, _ = text_ensemble()
    ensemble.save_pretrained(tmp_path)
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".bin")]
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, MisleaderEnsembleForSequenceClassification)
    labels = torch.tensor([0, 2, 1, 1])
    with torch.no_grad():
        before = ensemble(**text_inputs, labels=labels)
        after = loaded(**text_inputs, labels=labels)
    assert torch.equal(before.logits, after.logits)
    assert torch.equal(before.loss, after.loss)
    assert after.member_logits is None
    assert before.logits.shape == (4, TEXT_LABELS)
    assert math.isfinite(after.loss.item())


def test_config_refuses_preset_names_with_a_pointer():
    with pytest.raises(TypeError, match="image_member_config"):
        MisleaderConfig(members=["resnet-tiny"])
    with pytest.raises(TypeError, match="list"):
        MisleaderConfig(members="resnet-tiny")


# ----------------------------------------------------------------------------------------------------------------
# A served output defence, applied by the model itself


def test_output_defense_is_applied_by_the_model_and_survives_a_round_trip(tmp_path, images):
    from hf_misleader.modeling_misleader import reverse_sigmoid

    ensemble, members = make_ensemble(("resnet-tiny", "vit-tiny"))
    ensemble.config.output_defense = {"name": "reverse_sigmoid", "beta": 0.7, "gamma": 0.4}
    with torch.no_grad():
        averaged = torch.softmax(torch.stack([m(pixel_values=images).logits for m in members], 1), -1).mean(1)
        served = torch.softmax(ensemble(pixel_values=images).logits, -1)
    torch.testing.assert_close(served, reverse_sigmoid(averaged, 0.7, 0.4), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(served, averaged, atol=1e-3)  # the transform did something
    ensemble.save_pretrained(tmp_path)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert reloaded.config.output_defense == {"name": "reverse_sigmoid", "beta": 0.7, "gamma": 0.4}
    with torch.no_grad():
        torch.testing.assert_close(torch.softmax(reloaded(pixel_values=images).logits, -1), served)


@pytest.mark.parametrize(
    "bad", [{"name": "noise"}, {"name": "reverse_sigmoid", "beta": -1}, {"name": "reverse_sigmoid", "delta": 1},
            "reverse_sigmoid", {"name": "reverse_sigmoid", "gamma": float("inf")}],
    ids=["unknown", "negative", "unknown-parameter", "string", "infinite"],
)
def test_output_defense_refuses_bad_settings(bad):
    with pytest.raises(ValueError, match="output_defense|parameters"):
        MisleaderConfig(members=[build_member("resnet-tiny").config.to_dict()], output_defense=bad)


def test_reverse_sigmoid_is_finite_on_extreme_inputs():
    from hf_misleader.modeling_misleader import reverse_sigmoid

    logits = torch.randn(64, 10, generator=torch.Generator().manual_seed(0)) * 1e4
    for probabilities in (torch.softmax(logits, -1), torch.full((3, 10), 0.1), torch.eye(10)):
        out = reverse_sigmoid(probabilities, beta=5.0, gamma=0.4)
        assert torch.isfinite(out).all() and (out >= 0).all()
        torch.testing.assert_close(out.sum(-1), torch.ones(len(out)))
