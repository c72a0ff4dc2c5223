"""MisleaderTrainer: one real step on real digits, checkpoints, resume, evaluation, and the argument checks."""

import copy
import math
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from hf_misleader import MisleaderTrainer, MisleaderTrainingArguments
from hf_misleader.augment import simulate_image_queries
from hf_misleader import objectives
from hf_misleader.objectives import derangement
from hf_misleader.members import build_image_member
from hf_misleader.trainer import (
    ATTACKER_STATE_NAME,
    ATTACKER_WEIGHTS_NAME,
    QUERY_STATE_NAME,
    MisleaderDivergenceError,
    is_complete_checkpoint,
)

from .conftest import IMAGE_SIZE, build_member

def make_args(output_dir, **overrides):
    # The reference objective unless a test says otherwise: most tests here check its exact step.
    settings = dict(
        objective="alternating", output_dir=str(output_dir), max_steps=1, per_device_train_batch_size=8, per_device_eval_batch_size=32,
        learning_rate=1e-3, report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no",
        logging_strategy="no", seed=0, dataloader_num_workers=0,
    )
    settings.update(overrides)
    return MisleaderTrainingArguments(**settings)

def make_trainer(args, digits, student="vit-tiny", teacher="resnet-tiny", attacker="resnet-tiny", **kwargs):
    return MisleaderTrainer(
        model=build_member(student, seed=1).train(),
        teacher_model=build_member(teacher, seed=2),
        attacker_model=build_member(attacker, seed=3),
        args=args,
        train_dataset=digits["train"],
        eval_dataset=digits["validation"],
        **kwargs,
    )

def snapshot(model):
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}

def changed(before, model):
    after = model.state_dict()
    return [name for name, tensor in before.items() if not torch.equal(tensor, after[name])]

def test_one_step_trains_student_and_attacker_not_teacher(tmp_path, digits):
    trainer = make_trainer(make_args(tmp_path), digits, student="resnet-tiny", teacher="convnext-tiny")
    student, teacher, attacker = trainer.model, trainer.teacher, trainer.attacker
    student_before, teacher_before, attacker_before = snapshot(student), snapshot(teacher), snapshot(attacker)

    trainer.train()

    assert trainer.state.global_step == 1
    student_changed = changed(student_before, student)
    assert "classifier.1.weight" in student_changed, student_changed
    assert len(student_changed) > len(student_before) // 2
    attacker_changed = changed(attacker_before, attacker)
    assert "classifier.1.weight" in attacker_changed, attacker_changed
    # The teacher: bit-identical, buffers included, frozen and in eval mode.
    assert changed(teacher_before, teacher) == []
    assert all(not parameter.requires_grad for parameter in teacher.parameters())
    assert not teacher.training
    assert all(parameter.grad is None for parameter in teacher.parameters())

def test_step_logs_the_defence_metrics(tmp_path, digits):
    trainer = make_trainer(make_args(tmp_path, max_steps=2, logging_strategy="steps", logging_steps=1), digits)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    for entry in logs:
        for key in ("distillation_loss", "cross_entropy", "adversarial_kl", "attacker_agreement", "attacker_loss"):
            assert key in entry, entry
        assert entry["adversarial_kl"] >= 0
        assert 0.0 <= entry["attacker_agreement"] <= 1.0

def test_compute_loss_is_the_misleader_objective(tmp_path, digits):
    """loss = alpha*T^2*KL(teacher/T || student/T) + (1-alpha)*CE - lambda*KL(student(x') || attacker(x')), against the
    attacker as it was before the step; then the attacker takes its `attacker_steps` updates."""
    args = make_args(tmp_path, misleader_lambda=0.7, temperature=3.0, alpha=0.4, attacker_steps=2,
                     augmentation="heavy")
    trainer = make_trainer(args, digits, student="vit-tiny", teacher="resnet-tiny", attacker="resnet-tiny")
    student = trainer.model.train()
    batch = digits["train"][:8]
    inputs = {"pixel_values": batch["pixel_values"], "labels": batch["label"]}

    # Replay everything the step does with copies: the same queries, the same attacker updates.
    generator = torch.Generator().manual_seed(0)
    generator.set_state(trainer.query_generator.get_state())
    attacker = copy.deepcopy(trainer.attacker)
    optimizer = torch.optim.Adam(attacker.parameters(), lr=args.attacker_learning_rate)

    loss = trainer.compute_loss(student, inputs)
    assert student.training  # the eval-mode forward on the queries must hand the student back in train mode

    queries = simulate_image_queries(inputs["pixel_values"], generator, policy="heavy", strength=1.0)
    with torch.no_grad():
        teacher_logits = trainer.teacher(pixel_values=inputs["pixel_values"]).logits
        joint = student(pixel_values=torch.cat([inputs["pixel_values"], queries])).logits  # one train-mode forward
        student_logits, student_query_logits = joint[:8], joint[8:]
    with torch.no_grad():  # the loss plays against the clone as it was before this step's updates
        attacker_query_logits = attacker(pixel_values=queries).logits
    student_probs = F.softmax(student_query_logits, -1)
    for _ in range(args.attacker_steps):
        attacker_loss = F.kl_div(F.log_softmax(attacker(pixel_values=queries).logits, -1), student_probs,
                                 reduction="batchmean")
        optimizer.zero_grad()
        attacker_loss.backward()
        optimizer.step()
    # The trainer's attacker went through the same updates.
    for mine, theirs in zip(attacker.parameters(), trainer.attacker.parameters()):
        torch.testing.assert_close(mine, theirs)

    T = args.temperature
    teacher_probs = F.softmax(teacher_logits / T, -1)
    distillation = (teacher_probs * (teacher_probs.log() - F.log_softmax(student_logits / T, -1))).sum(-1).mean() * T**2
    cross_entropy = F.cross_entropy(student_logits, inputs["labels"])
    query_probs = F.softmax(student_query_logits, -1)
    adversarial = (query_probs * (query_probs.log() - F.log_softmax(attacker_query_logits, -1))).sum(-1).mean()
    expected = args.alpha * distillation + (1 - args.alpha) * cross_entropy - args.misleader_lambda * adversarial
    assert adversarial.item() > 0
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-5)

def test_student_runs_once_per_batch_and_attacker_step_leaves_it_alone(tmp_path, digits):
    """One forward over the benign batch and the queries together (serving both the attacker step and the loss);
    the attacker's own backward pass, inside compute_loss, must not leave gradients on the student or the teacher."""
    trainer = make_trainer(make_args(tmp_path, attacker_steps=3), digits)
    student = trainer.model.train()
    calls = []
    handle = student.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append((module.training, len(kwargs["pixel_values"]))), with_kwargs=True)
    batch = digits["train"][:8]
    try:
        trainer.compute_loss(student, {"pixel_values": batch["pixel_values"], "labels": batch["label"]})
    finally:
        handle.remove()
    assert calls == [(True, 16)]  # one forward, in train mode, over the 8 benign images and their 8 queries
    assert all(parameter.grad is None for parameter in student.parameters())
    assert all(parameter.grad is None for parameter in trainer.teacher.parameters())


def test_student_loss_does_not_reach_the_attacker(tmp_path, digits):
    trainer = make_trainer(make_args(tmp_path, misleader_lambda=1.0), digits)
    batch = digits["train"][:8]
    loss = trainer.compute_loss(trainer.model.train(), {"pixel_values": batch["pixel_values"], "labels": batch["label"]})
    trainer.attacker.zero_grad(set_to_none=True)
    loss.backward()
    assert all(parameter.grad is None for parameter in trainer.attacker.parameters())
    assert all(parameter.grad is None for parameter in trainer.teacher.parameters())
    assert any(parameter.grad is not None and parameter.grad.abs().sum() > 0 for parameter in trainer.model.parameters())

def test_checkpoint_holds_the_attacker(tmp_path, digits):
    trainer = make_trainer(make_args(tmp_path, save_strategy="steps", save_steps=1), digits)
    trainer.train()
    folder = tmp_path / "checkpoint-1"
    assert (folder / ATTACKER_WEIGHTS_NAME).is_file()
    assert (folder / ATTACKER_STATE_NAME).is_file()
    assert (folder / "model.safetensors").is_file()
    saved = load_file(folder / ATTACKER_WEIGHTS_NAME)
    current = trainer.attacker.state_dict()
    assert saved.keys() == current.keys()
    assert all(torch.equal(saved[name], current[name]) for name in saved)
    state = torch.load(folder / ATTACKER_STATE_NAME, weights_only=True)
    assert {"optimizer", "scaler", "attacker_period"} <= set(state)
    assert state["optimizer"]["state"], "the attacker optimizer took no step"
    query_state = torch.load(folder / QUERY_STATE_NAME.format(0), weights_only=True)
    assert torch.equal(query_state["generator"], trainer.query_generator.get_state())
    assert is_complete_checkpoint(folder)
    # The student's checkpoint is the student alone (transformers may save ViT under its legacy key names, so
    # compare counts and reload through from_pretrained): no teacher, no attacker weights inside it.
    assert len(load_file(folder / "model.safetensors")) == len(trainer.model.state_dict())
    reloaded = type(trainer.model).from_pretrained(folder).state_dict()
    assert all(torch.equal(reloaded[name], tensor) for name, tensor in trainer.model.state_dict().items())

def test_resume_restores_attacker_and_continues_identically(tmp_path, digits):
    """Two steps in one go == one step, checkpoint, resume into fresh models, one more step."""
    # A constant schedule: a linear one would end the one-step run at learning rate 0 and save that.
    constant = {"lr_scheduler_type": "constant"}
    straight = make_trainer(make_args(tmp_path / "straight", max_steps=2, **constant), digits)
    straight.train()

    first = make_trainer(
        make_args(tmp_path / "resumed", max_steps=1, save_strategy="steps", save_steps=1, **constant), digits
    )
    first.train()
    second = MisleaderTrainer(
        model=build_member("vit-tiny", seed=11).train(),  # other initialisations: everything must come from disk
        teacher_model=build_member("resnet-tiny", seed=2),
        attacker_model=build_member("resnet-tiny", seed=13),
        args=make_args(tmp_path / "resumed", max_steps=2, save_strategy="steps", save_steps=1, **constant),
        train_dataset=digits["train"],
    )
    second.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-1"))
    assert second.state.global_step == 2
    for name, tensor in straight.attacker.state_dict().items():
        torch.testing.assert_close(second.attacker.state_dict()[name], tensor, msg=f"attacker {name}")
    for name, tensor in straight.model.state_dict().items():
        torch.testing.assert_close(second.model.state_dict()[name], tensor, msg=f"student {name}")

def test_resume_without_attacker_files_fails(tmp_path, digits):
    first = make_trainer(make_args(tmp_path, save_strategy="steps", save_steps=1), digits)
    first.train()
    os.remove(tmp_path / "checkpoint-1" / ATTACKER_WEIGHTS_NAME)
    second = make_trainer(make_args(tmp_path, max_steps=2), digits)
    with pytest.raises(ValueError, match="not a complete MISLEADER checkpoint"):
        second.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))
    with pytest.raises(ValueError, match="No complete checkpoint"):
        second.train(resume_from_checkpoint=True)

def test_evaluate_scores_the_student(tmp_path, digits):
    trainer = make_trainer(make_args(tmp_path), digits)
    metrics = trainer.evaluate()
    assert "eval_accuracy" in metrics and "eval_loss" in metrics
    # The same number computed by hand on the student alone.
    validation = digits["validation"][:]
    with torch.no_grad():
        predictions = trainer.model.eval()(pixel_values=validation["pixel_values"]).logits.argmax(-1)
    assert metrics["eval_accuracy"] == pytest.approx((predictions == validation["label"]).float().mean().item())

@pytest.mark.parametrize(
    "bad",
    [
        {"misleader_lambda": -0.1},
        {"alpha": 1.5},
        {"alpha": -0.1},
        {"temperature": 0.0},
        {"temperature": -1.0},
        {"augmentation": "extreme"},
        {"attacker_steps": 0},
        {"attacker_learning_rate": 0.0},
        {"objective": "unknown"},
        {"augmentation_strength": -1.0},
    ],
    ids=lambda bad: "-".join(f"{k}={v}" for k, v in bad.items()),
)
def test_training_arguments_reject_bad_values(tmp_path, bad):
    (name,) = bad
    with pytest.raises(ValueError, match=name):
        MisleaderTrainingArguments(output_dir=str(tmp_path), report_to="none", **bad)

@pytest.mark.parametrize(
    "bad",
    [{"num_train_epochs": 0}, {"num_train_epochs": -1}, {"learning_rate": -1}, {"learning_rate": float("nan")},
     {"per_device_train_batch_size": 0}, {"per_device_eval_batch_size": 0}, {"gradient_accumulation_steps": 0}],
    ids=lambda bad: "-".join(f"{k}={v}" for k, v in bad.items()),
)
def test_training_arguments_reject_inherited_values_that_train_nothing_or_fail_later(tmp_path, bad):
    # The stock arguments accept these: zero epochs "succeed" with an untrained model, the others fail inside torch.
    (name,) = bad
    with pytest.raises(ValueError, match=f"^{name} must be"):
        MisleaderTrainingArguments(output_dir=str(tmp_path), report_to="none", **bad)
    assert MisleaderTrainingArguments(output_dir=str(tmp_path), report_to="none", num_train_epochs=0,
                                      max_steps=3).max_steps == 3  # max_steps counts instead of the epochs


@pytest.mark.parametrize("accelerator", [False, True])
def test_memory_is_pinned_only_with_an_accelerator(tmp_path, monkeypatch, accelerator):
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: accelerator)
    assert MisleaderTrainingArguments(output_dir=str(tmp_path), report_to="none").dataloader_pin_memory is accelerator


def test_training_arguments_accept_the_edges(tmp_path):
    args = MisleaderTrainingArguments(output_dir=str(tmp_path), report_to="none", misleader_lambda=0.0, alpha=1.0,
                                      augmentation="heavy")
    assert (args.misleader_lambda, args.alpha, args.augmentation) == (0.0, 1.0, "heavy")

def test_label_space_mismatch(tmp_path, digits):
    five = build_image_member("resnet-tiny", 5, None, 3, IMAGE_SIZE)
    with pytest.raises(ValueError, match="label space"):
        MisleaderTrainer(model=build_member("vit-tiny"), teacher_model=five, attacker_model=build_member("resnet-tiny"),
                         args=make_args(tmp_path), train_dataset=digits["train"])
    with pytest.raises(ValueError, match="label space"):
        MisleaderTrainer(model=build_member("vit-tiny"), teacher_model=build_member("resnet-tiny"),
                         attacker_model=build_image_member("resnet-tiny", 5, None, 3, IMAGE_SIZE),
                         args=make_args(tmp_path), train_dataset=digits["train"])

def test_needs_misleader_arguments_and_all_three_models(tmp_path, digits):
    from transformers import TrainingArguments

    with pytest.raises(TypeError, match="MisleaderTrainingArguments"):
        MisleaderTrainer(model=build_member("vit-tiny"), teacher_model=build_member("resnet-tiny"),
                         attacker_model=build_member("resnet-tiny"),
                         args=TrainingArguments(output_dir=str(tmp_path), report_to="none"))
    with pytest.raises(ValueError, match="teacher_model"):
        MisleaderTrainer(model=build_member("vit-tiny"), args=make_args(tmp_path))


def test_attacker_is_built_when_not_given(tmp_path, digits):
    """By default a fresh model of the student's architecture; with `attacker_model` the named preset."""
    student = build_member("vit-tiny", seed=1)
    same = MisleaderTrainer(model=student, teacher_model=build_member("resnet-tiny"), args=make_args(tmp_path),
                            train_dataset=digits["train"])
    assert type(same.attacker) is type(student)
    assert not torch.equal(same.attacker.classifier.weight, student.classifier.weight)  # its own initialisation
    preset = MisleaderTrainer(model=build_member("vit-tiny"), teacher_model=build_member("resnet-tiny"),
                              args=make_args(tmp_path, attacker_model="convnext-tiny"), train_dataset=digits["train"])
    assert preset.attacker.config.model_type == "convnext"
    assert preset.attacker.config.num_labels == 10
    preset.train()
    assert preset.state.global_step == 1


def test_precomputed_teacher_logits_give_the_same_step(tmp_path, digits):
    from hf_misleader.defend import with_teacher_logits

    teacher = build_member("convnext-tiny", seed=2)
    cached = with_teacher_logits(teacher, digits["train"], batch_size=32)
    with torch.no_grad():
        expected = teacher(pixel_values=digits["train"][:8]["pixel_values"]).logits
    assert torch.allclose(cached[:8]["teacher_logits"], expected, atol=1e-5)

    students = []
    for name, dataset in (("live", digits["train"]), ("cached", cached)):
        trainer = MisleaderTrainer(
            model=build_member("resnet-tiny", seed=1).train(), teacher_model=teacher,
            attacker_model=build_member("resnet-tiny", seed=3), args=make_args(tmp_path / name, max_steps=2),
            train_dataset=dataset,
        )
        trainer.train()
        students.append(trainer.model.state_dict())
    for key, value in students[0].items():
        assert torch.allclose(value.float(), students[1][key].float(), atol=1e-5), key


@pytest.mark.parametrize(
    "overrides",
    [{"misleader_lambda": float("nan")}, {"temperature": float("inf")}, {"attacker_steps": 1.5}, {"alpha": "0.5"}],
    ids=["nan-lambda", "inf-temperature", "fractional-steps", "string-alpha"],
)
def test_arguments_refuse_non_numbers(tmp_path, overrides):
    with pytest.raises(ValueError, match=next(iter(overrides))):
        make_args(tmp_path, **overrides)


def test_attacker_queries_come_from_the_surrogate_pool(tmp_path, digits):
    pool = digits["validation"]  # stands for a thief's own images
    trainer = make_trainer(make_args(tmp_path), digits, student="resnet-tiny", attacker_dataset=pool)
    batch = digits["train"][:8]
    queries = trainer._attacker_queries({"pixel_values": batch["pixel_values"]})["pixel_values"]
    assert queries.shape == batch["pixel_values"].shape
    # Built from pool images: each query lies nearer (mild augmentation) to some pool image than to the batch's.
    pool_images = pool[:]["pixel_values"].flatten(1)
    distance_to_pool = torch.cdist(queries.flatten(1), pool_images).min(1).values
    distance_to_batch = torch.cdist(queries.flatten(1), batch["pixel_values"].flatten(1)).min(1).values
    assert (distance_to_pool < distance_to_batch).float().mean() > 0.8
    trainer.train()  # and a step with it runs
    assert trainer.state.global_step == 1


# ----------------------------------------------------------------------------------------------------------------
# Objectives, precision, divergence guard, early stopping


def trained_member(preset, digits, steps=80, seed=0):
    """A member fitted to the real training digits with a plain loop (a teacher worth defending)."""
    model = build_member(preset, seed=seed).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = digits["train"][:]
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        index = torch.randint(0, len(data["label"]), (32,), generator=generator)
        loss = F.cross_entropy(model(pixel_values=data["pixel_values"][index]).logits, data["label"][index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize("objective", ["alternating", "unrolled", "misinformation"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_every_objective_trains_and_logs(tmp_path, digits, objective, precision):
    args = make_args(tmp_path, objective=objective, max_steps=2, logging_strategy="steps", logging_steps=1,
                     bf16=precision == "bf16")
    trainer = make_trainer(args, digits, student="resnet-tiny")
    before = snapshot(trainer.model)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    term = {"alternating": "adversarial_kl", "unrolled": "stepped_clone_ce", "misinformation": "misinformation_kl"}
    for entry in logs:
        assert math.isfinite(entry["loss"]) and math.isfinite(entry[term[objective]]), entry
        assert {"distillation_loss", "cross_entropy", "attacker_loss", "attacker_agreement"} <= set(entry)
    assert changed(before, trainer.model)


def test_objective_defaults_are_resolved_per_objective(tmp_path):
    unrolled = MisleaderTrainingArguments(output_dir=str(tmp_path), report_to="none")  # the default objective
    assert unrolled.objective == "unrolled"
    assert (unrolled.misleader_lambda, unrolled.augmentation, unrolled.attacker_optimizer) == (0.5, "heavy", "sgd")
    assert unrolled.attacker_reset_epochs == 2.0
    alternating = make_args(tmp_path, objective="alternating")
    assert (alternating.misleader_lambda, alternating.augmentation, alternating.attacker_optimizer) == (0.01, "mild", "adam")
    mine = make_args(tmp_path, objective="unrolled", misleader_lambda=0.3, augmentation="mild")
    assert (mine.misleader_lambda, mine.augmentation) == (0.3, "mild")  # what the user sets wins


def test_attacker_is_reset_every_few_epochs(tmp_path, digits):
    # 128 images / 8 = 16 steps an epoch; a reset every 0.25 epoch = every 4 steps.
    trainer = make_trainer(make_args(tmp_path, objective="unrolled", attacker_reset_epochs=0.25, max_steps=9), digits)
    seen = []
    original = trainer._maybe_reset_attacker

    def watch():
        period = trainer._attacker_period
        original()
        if trainer._attacker_period != period:
            seen.append((trainer.state.global_step, {k: v.clone() for k, v in trainer.attacker.state_dict().items()}))

    trainer._maybe_reset_attacker = watch
    trainer.train()
    assert [step for step, _ in seen] == [4, 8]
    # A fresh initialisation each time, and not a copy of an earlier one.
    first, second = seen[0][1], seen[1][1]
    assert not torch.equal(first["classifier.1.weight"], second["classifier.1.weight"])


def test_non_finite_loss_stops_training_and_says_why(tmp_path, digits):
    args = make_args(tmp_path, misleader_lambda=1e4, learning_rate=1e30, max_grad_norm=0.0, max_steps=10,
                     save_strategy="steps", save_steps=1)
    trainer = make_trainer(args, digits, student="resnet-tiny")
    with pytest.raises(MisleaderDivergenceError, match="not finite.*misleader_lambda") as error:
        trainer.train()
    assert "checkpoint-" in str(error.value)
    saved = sorted(name for name in os.listdir(tmp_path) if name.startswith("checkpoint-"))
    assert saved and all(is_complete_checkpoint(tmp_path / name) for name in saved)
    assert trainer.state.global_step < 10


def test_collapsing_validation_accuracy_stops_training_before_saving(tmp_path, digits):
    """A student that starts as good as its teacher, then is taught misinformation on the very images it is
    evaluated on (identity queries, lambda 10): its validation accuracy collapses and training stops."""
    teacher = trained_member("resnet-tiny", digits)
    student = copy.deepcopy(teacher).train()
    args = make_args(tmp_path, objective="misinformation", misleader_lambda=50.0, augmentation="mild",
                     augmentation_strength=0.0, learning_rate=1e-3, max_steps=40, eval_strategy="steps", eval_steps=1,
                     save_strategy="steps", save_steps=1, save_total_limit=2)
    trainer = MisleaderTrainer(model=student, teacher_model=teacher, attacker_model=build_member("resnet-tiny", 3),
                               args=args, train_dataset=digits["train"], eval_dataset=digits["validation"],
                               class_permutation=derangement(10, torch.Generator().manual_seed(0)))
    with pytest.raises(MisleaderDivergenceError, match="collapsed.*misleader_lambda"):
        trainer.train()
    evaluations = [entry["eval_accuracy"] for entry in trainer.state.log_history if "eval_accuracy" in entry]
    best = max(evaluations)
    assert best > 0.5  # it was a good student first
    stopped_at = trainer.state.global_step
    # The collapsed step was evaluated but never saved; every saved checkpoint is complete and was good.
    saved = sorted(int(name.split("-")[1]) for name in os.listdir(tmp_path) if name.startswith("checkpoint-"))
    assert saved and max(saved) == stopped_at - 1
    assert all(is_complete_checkpoint(tmp_path / f"checkpoint-{step}") for step in saved)


def test_early_stopping_on_validation(tmp_path, digits):
    from transformers import EarlyStoppingCallback

    args = make_args(tmp_path, max_steps=40, eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1,
                     load_best_model_at_end=True, metric_for_best_model="accuracy", save_total_limit=1,
                     learning_rate=1e-6)  # too small to improve: patience runs out
    trainer = make_trainer(args, digits, callbacks=[EarlyStoppingCallback(early_stopping_patience=2)])
    trainer.train()
    assert trainer.state.global_step < 40
    assert trainer.state.best_model_checkpoint is not None


@pytest.mark.parametrize("attacker", ["resnet-tiny", "vit-tiny"])
def test_the_look_ahead_gradient_gives_the_attackers_own_update(tmp_path, digits, attacker):
    # The unrolled objective takes the attacker's update from its look-ahead's gradient: it must be the same update
    # as the general path's own forward and backward, batch-norm statistics included.
    trainer = make_trainer(make_args(tmp_path, objective="unrolled"), digits, student="resnet-tiny", attacker=attacker)
    assert trainer._look_ahead_is_the_update()
    batch = next(iter(trainer.get_train_dataloader()))
    queries = trainer._attacker_queries({"pixel_values": batch["pixel_values"]})
    student_logits = trainer.model(**queries).logits
    before = snapshot(trainer.attacker)

    look_ahead = objectives.unrolled_step(trainer.attacker, queries, student_logits, 0.2, trainer._functional_forward)
    trainer._attacker_update_from(look_ahead)
    from_look_ahead = snapshot(trainer.attacker)
    trainer.attacker.load_state_dict(before)
    trainer._new_attacker_optimizer()
    trainer._attacker_update([(queries, F.softmax(student_logits.detach().float(), dim=-1))])

    assert len(changed(before, trainer.attacker)) > len(before) // 2
    for name, value in trainer.attacker.state_dict().items():  # SGD: the same gradient gives the same weights
        torch.testing.assert_close(from_look_ahead[name], value, rtol=1e-5, atol=1e-6)
    for name, parameter in trainer.attacker.named_parameters():  # any optimizer: the same gradient, unused included
        if parameter.grad is None:
            assert look_ahead.gradients[name] is None, name
        else:
            torch.testing.assert_close(look_ahead.gradients[name], parameter.grad, rtol=1e-4, atol=1e-7)


def test_the_general_attacker_update_runs_when_the_look_ahead_is_not_the_update(tmp_path, digits):
    args = make_args(tmp_path, objective="unrolled", gradient_accumulation_steps=2, max_steps=1)
    trainer = make_trainer(args, digits)
    assert not trainer._look_ahead_is_the_update()
    before = snapshot(trainer.attacker)
    trainer.train()
    assert "classifier.1.weight" in changed(before, trainer.attacker)
