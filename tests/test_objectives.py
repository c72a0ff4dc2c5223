"""The MISLEADER losses on tiny real batches: values, where gradients go, the normalised step, the permutation."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

from hf_misleader import objectives
from hf_misleader.inputs import accepted_inputs, keep_accepted

from .conftest import NUM_LABELS, build_member
from .test_trainer import make_args, make_trainer


def forward(module, state, inputs):
    return objectives.call_with(module, state, keep_accepted(inputs, accepted_inputs(module)))


@pytest.fixture()
def batch(pixel_batch):
    images, labels = pixel_batch
    return {"pixel_values": images[:8]}, labels[:8]


@pytest.mark.parametrize("attacker_preset", ["resnet-tiny", "convnext-tiny", "vit-tiny"])
def test_unrolled_step_has_the_stated_norm_and_leaves_the_attacker_alone(batch, attacker_preset):
    inputs, _ = batch
    student, attacker = build_member("vit-tiny", seed=1).train(), build_member(attacker_preset, seed=2).train()
    before = {name: value.clone() for name, value in attacker.state_dict().items()}
    student_logits = student(**inputs).logits
    parameters = objectives.unrolled_step(attacker, inputs, student_logits, 0.2, forward).parameters
    step = torch.cat([(parameters[name] - p).reshape(-1) for name, p in attacker.named_parameters()])
    assert step.norm().item() == pytest.approx(0.2, rel=1e-4)
    # The look-ahead changes neither the attacker's weights nor its batch-norm statistics.
    for name, value in attacker.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_unrolled_term_sends_gradients_to_the_student_only(batch):
    inputs, labels = batch
    student, attacker = build_member("vit-tiny", seed=1).train(), build_member("resnet-tiny", seed=2).train()
    teacher = build_member("convnext-tiny", seed=3)
    with torch.no_grad():
        teacher_labels = teacher(**inputs).logits.argmax(-1)
    queries = {"pixel_values": torch.flip(inputs["pixel_values"], dims=[-1])}
    student_logits = student(**queries).logits
    stepped = objectives.unrolled_step(attacker, queries, student_logits, 0.2, forward)
    term = objectives.unrolled_term(attacker, stepped, inputs, teacher_labels, forward)
    assert torch.isfinite(term)
    term.backward()
    assert all(p.grad is None for p in attacker.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert sum(p.grad.abs().sum() for p in student.parameters() if p.grad is not None) > 0


def test_unrolled_term_is_the_stepped_clones_cross_entropy(batch):
    inputs, labels = batch
    student, attacker = build_member("vit-tiny", seed=1), build_member("convnext-tiny", seed=2)
    student_logits = student(**inputs).logits
    # By hand: one normalised SGD step of the clone on KL(student || clone), then CE on the real batch.
    clone = build_member("convnext-tiny", seed=2)
    imitation = objectives.kl_divergence(student_logits.detach(), clone(**inputs).logits)
    gradients = torch.autograd.grad(imitation, list(clone.parameters()))
    norm = torch.sqrt(sum((g**2).sum() for g in gradients))
    with torch.no_grad():
        for p, g in zip(clone.parameters(), gradients):
            p -= 0.3 * g / norm
        expected = F.cross_entropy(clone(**inputs).logits, labels)
    stepped = objectives.unrolled_step(attacker, inputs, student_logits, 0.3, forward)
    term = objectives.unrolled_term(attacker, stepped, inputs, labels, forward)
    torch.testing.assert_close(term, expected,
                               rtol=1e-4, atol=1e-5)


def unrollable(attacker):
    """The attacker in train mode with eager attention, as `MisleaderTrainer` sets it up for the unrolled objective."""
    if getattr(attacker.config, "_attn_implementation", "eager") != "eager":
        attacker.set_attn_implementation("eager")
    return attacker.train()


def second_order_unrolled_gradient(student, attacker, queries, inputs, labels, step_size, query_randomness=None,
                                   stepped_randomness=None):
    """
    The student's gradient of the stepped clone's CE by plain autograd through the step (a second-order backward);
    the attacker's forwards on the queries and on the real batch run from the given random states, if any.
    """
    student.zero_grad()
    student_logits = student(**queries).logits
    start = {name: p.detach().clone().requires_grad_(True) for name, p in attacker.named_parameters()}
    buffers = {name: b.clone() for name, b in attacker.named_buffers()}
    with query_randomness or contextlib.nullcontext():
        query_logits = forward(attacker, {**start, **buffers}, queries)
    imitation = objectives.kl_divergence(student_logits, query_logits)
    gradients = torch.autograd.grad(imitation, list(start.values()), create_graph=True, allow_unused=True)
    gradients = [torch.zeros_like(p) if g is None else g for p, g in zip(start.values(), gradients)]
    norm = torch.sqrt(sum((g**2).sum() for g in gradients) + 1e-12)
    stepped = {name: p - step_size * g / norm for (name, p), g in zip(start.items(), gradients)}
    if stepped_randomness is not None:
        torch.set_rng_state(stepped_randomness)
    F.cross_entropy(forward(attacker, {**stepped, **buffers}, inputs), labels).backward()
    return {name: p.grad.clone() for name, p in student.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attacker_preset", ["resnet-tiny", "vit-tiny", "convnext-tiny"])
def test_unrolled_term_gradient_is_the_exact_second_order_one(batch, attacker_preset):
    # The term's closed form (one Jacobian-vector product) must give the student the same gradient as
    # differentiating through the clone's step with autograd.
    inputs, labels = batch
    student, attacker = build_member("resnet-tiny", seed=1).train(), unrollable(build_member(attacker_preset, seed=2))
    queries = {"pixel_values": torch.flip(inputs["pixel_values"], dims=[-1])}
    expected = second_order_unrolled_gradient(student, attacker, queries, inputs, labels, 0.2)
    student.zero_grad()
    student_logits = student(**queries).logits
    look_ahead = objectives.unrolled_step(attacker, queries, student_logits, 0.2, forward)
    objectives.unrolled_term(attacker, look_ahead, inputs, labels, forward).backward()
    got = {name: p.grad for name, p in student.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys() and expected
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-3, atol=1e-6, msg=name)
    assert sum(g.abs().sum() for g in got.values()) > 0


def test_the_look_ahead_replays_dropout_masks(batch):
    # With dropout on, the term's Jacobian-vector product must see the look-ahead's masks: its gradient then matches
    # the second-order one whose forwards draw the same masks.
    inputs, labels = batch
    student, attacker = build_member("resnet-tiny", seed=1).train(), unrollable(build_member("vit-tiny", seed=2))
    dropouts = [module for module in attacker.modules() if isinstance(module, torch.nn.Dropout)]
    assert dropouts
    for module in dropouts:
        module.p = 0.3
    queries = {"pixel_values": torch.flip(inputs["pixel_values"], dims=[-1])}
    student_logits = student(**queries).logits
    look_ahead = objectives.unrolled_step(attacker, queries, student_logits, 0.2, forward)
    stepped_randomness = torch.get_rng_state()
    objectives.unrolled_term(attacker, look_ahead, inputs, labels, forward).backward()
    got = {name: p.grad.clone() for name, p in student.named_parameters() if p.grad is not None}
    expected = second_order_unrolled_gradient(
        student, attacker, queries, inputs, labels, 0.2,
        query_randomness=objectives.replayed_randomness(look_ahead.random_state, student_logits.device),
        stepped_randomness=stepped_randomness,
    )
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-3, atol=1e-6, msg=name)
    # Without the replay the masks differ, and so would the gradient: the test can tell.
    unreplayed = second_order_unrolled_gradient(student, attacker, queries, inputs, labels, 0.2,
                                                stepped_randomness=stepped_randomness)
    assert any(not torch.allclose(got[name], unreplayed[name], rtol=1e-3, atol=1e-6) for name in expected)


def test_derangement_moves_every_class():
    seen = set()
    for seed in range(20):
        permutation = objectives.derangement(NUM_LABELS, torch.Generator().manual_seed(seed))
        assert sorted(permutation.tolist()) == list(range(NUM_LABELS))
        assert not (permutation == torch.arange(NUM_LABELS)).any()
        seen.add(tuple(permutation.tolist()))
    assert len(seen) > 15  # seeds give different secrets
    assert objectives.derangement(2, torch.Generator().manual_seed(0)).tolist() == [1, 0]
    with pytest.raises(ValueError, match="2 classes"):
        objectives.derangement(1, torch.Generator())


def test_misinformation_term_is_zero_at_the_permuted_teacher(batch):
    teacher_logits = torch.randn(8, NUM_LABELS, generator=torch.Generator().manual_seed(0)) * 3
    permutation = objectives.derangement(NUM_LABELS, torch.Generator().manual_seed(1))
    permuted = torch.empty_like(teacher_logits)
    permuted[:, permutation] = teacher_logits  # class c's score moves to class permutation[c]
    assert objectives.misinformation_term(permuted, teacher_logits, permutation).item() == pytest.approx(0, abs=1e-5)
    assert objectives.misinformation_term(teacher_logits, teacher_logits, permutation).item() > 0.1
    # The student's answer then names the permuted class.
    assert torch.equal(permuted.argmax(-1), permutation[teacher_logits.argmax(-1)])
    # Uniform target: zero for a flat answer.
    assert objectives.misinformation_term(torch.zeros(8, NUM_LABELS), teacher_logits).item() == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("objective", ["alternating", "unrolled", "misinformation"])
def test_student_loss_reaches_only_the_student(tmp_path, digits, objective):
    trainer = make_trainer(make_args(tmp_path, objective=objective), digits, student="resnet-tiny")
    batch = digits["train"][:8]
    loss = trainer.compute_loss(trainer.model.train(), {"pixel_values": batch["pixel_values"], "labels": batch["label"]})
    assert torch.isfinite(loss)
    trainer.attacker.zero_grad(set_to_none=True)
    loss.backward()
    assert all(p.grad is None for p in trainer.attacker.parameters())
    assert all(p.grad is None for p in trainer.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.parameters())


def test_misinformation_permutation_is_kept_out_of_the_student(tmp_path, digits):
    permutation = objectives.derangement(NUM_LABELS, torch.Generator().manual_seed(4))
    args = make_args(tmp_path, objective="misinformation", save_strategy="steps", save_steps=1)
    trainer = make_trainer(args, digits, class_permutation=permutation)
    trainer.train()
    folder = tmp_path / "checkpoint-1"
    config_text = (folder / "config.json").read_text()
    assert "permutation" not in config_text
    assert "permutation" not in trainer.model.config.to_json_string()
    # Only the checkpoint's private attacker state keeps it, to resume.
    state = torch.load(folder / "attacker_state.pt", weights_only=True)
    assert torch.equal(state["class_permutation"], permutation)


@pytest.mark.parametrize(
    "bad", [torch.arange(NUM_LABELS - 1), torch.zeros(NUM_LABELS, dtype=torch.long), torch.arange(NUM_LABELS).float()],
    ids=["short", "not-a-permutation", "float"],
)
def test_bad_permutation_is_refused(tmp_path, digits, bad):
    with pytest.raises(ValueError, match="class_permutation"):
        make_trainer(make_args(tmp_path, objective="misinformation"), digits, class_permutation=bad)
