"""MisleaderTrainer: a `transformers.Trainer` that distils one student from a teacher while a simulated
attacker clone learns from that student, and pushes the student away from what the clone believes."""

import os
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import Trainer

from .augment import simulate_image_queries, simulate_text_queries
from .inputs import accepted_inputs, keep_accepted
from .training_args import MisleaderTrainingArguments

ATTACKER_WEIGHTS_NAME = "attacker.safetensors"
ATTACKER_STATE_NAME = "attacker_state.pt"
# Optional dataset column with the teacher's logits for each row, computed once (see `defend`).
TEACHER_LOGITS_COLUMN = "teacher_logits"


def accuracy_metric(eval_prediction) -> dict:
    """Top-1 accuracy, the default model-selection metric (computed locally: no network)."""
    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    return {"accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())}


def _num_labels(model) -> int:
    return getattr(getattr(model, "config", None), "num_labels", None)


class MisleaderTrainer(Trainer):
    """
    A [`~transformers.Trainer`] for one MISLEADER student, plus an attacker. Each training step, on a benign batch
    `(x, y)`:

    1. builds attacker-like queries `x'` from `x` (`args.augmentation`);
    2. runs `args.attacker_steps` updates of the attacker clone towards the student's answers on `x'`
       (`KL(student(x') || attacker(x'))`, student detached), with the attacker's own plain torch optimizer;
    3. returns the student's loss `alpha*T^2*KD + (1-alpha)*CE - lambda*KL(student(x') || attacker(x'))`,
       attacker detached.

    The student's forward on `x'` is computed once and serves both steps; it runs in eval mode, as a thief sees
    the served model, which also keeps attacker queries out of batch-norm statistics. Evaluation scores the
    student alone, so `metric_for_best_model="accuracy"` selects on the validation split.

    Args:
        model ([`~transformers.PreTrainedModel`]):
            The student: an image classifier (`pixel_values`) or a text classifier (`input_ids`,
            `attention_mask`) with the teacher's label space and, for text, the teacher's tokenizer.
        teacher_model ([`~transformers.PreTrainedModel`]):
            The model being defended. Kept frozen, used under `no_grad`; never saved with the student.
        attacker_model ([`~transformers.PreTrainedModel`]):
            The simulated attacker clone. Trained here, saved in checkpoints, never part of the served model.
        args ([`MisleaderTrainingArguments`]):
            The stock training arguments plus the defence's hyper-parameters.
        compute_metrics (`Callable`, *optional*, defaults to top-1 accuracy):
            As in [`~transformers.Trainer`].
        attacker_dataset (`datasets.Dataset`, *optional*):
            A surrogate pool of unlabelled inputs like a thief's own (processed like the training inputs). When
            given, attacker-like queries are built from its batches instead of from the training batch.
        **kwargs:
            Passed on to [`~transformers.Trainer`] (`train_dataset`, `eval_dataset`, `callbacks`, ...).
    """

    def __init__(self, model=None, teacher_model=None, attacker_model=None, args=None, compute_metrics=None,
                 attacker_dataset=None, **kwargs):
        if not isinstance(args, MisleaderTrainingArguments):
            raise TypeError("MisleaderTrainer needs `args` to be a MisleaderTrainingArguments.")
        if model is None or teacher_model is None or attacker_model is None:
            raise ValueError("MisleaderTrainer needs a student `model`, a `teacher_model` and an `attacker_model`.")
        labels = {"student": _num_labels(model), "teacher": _num_labels(teacher_model), "attacker": _num_labels(attacker_model)}
        if len(set(labels.values())) != 1:
            raise ValueError(f"Student, teacher and attacker must share one label space; got num_labels {labels}.")
        super().__init__(model=model, args=args, compute_metrics=compute_metrics or accuracy_metric, **kwargs)
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError(
                "MisleaderTrainer trains a second model (the attacker clone) inside each step; DeepSpeed and FSDP "
                "are not supported with it. Use DDP (plain `accelerate launch` / `torchrun`)."
            )
        # compute_loss returns a per-batch mean: let the Trainer divide it for gradient accumulation.
        self.loss_is_scaled_for_ga = False
        teacher_model.requires_grad_(False)
        self.teacher = self.accelerator.prepare_model(teacher_model, evaluation_mode=True)
        self.teacher.eval()
        self.attacker = self.accelerator.prepare_model(attacker_model)  # DDP-wrapped when several processes
        self.attacker.train()
        # A plain optimizer: an accelerate-prepared one would skip steps under gradient accumulation.
        self.attacker_optimizer = torch.optim.Adam(self.attacker.parameters(), lr=args.attacker_learning_rate)
        # Its own scaler: the Trainer's fp16 scaler must only see the student's loss.
        self.attacker_scaler = torch.amp.GradScaler(self.args.device.type, enabled=bool(args.fp16))
        self.query_generator = torch.Generator(device=self.args.device)
        self.query_generator.manual_seed(args.seed + args.process_index)
        self._step_metrics = defaultdict(list)
        self._accepted_inputs = {}
        self.attacker_dataset = attacker_dataset
        self._surrogate_batches = None

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if TEACHER_LOGITS_COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, TEACHER_LOGITS_COLUMN]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        cached_teacher_logits = inputs.get(TEACHER_LOGITS_COLUMN)
        model_inputs = {name: value for name, value in inputs.items() if name not in ("labels", TEACHER_LOGITS_COLUMN)}
        if not model.training:  # evaluation: the student alone
            outputs = self._forward(model, {**model_inputs, "labels": inputs["labels"]})
            return (outputs.loss, outputs) if return_outputs else outputs.loss
        args = self.args
        queries = self._attacker_queries(model_inputs)
        if cached_teacher_logits is not None:
            teacher_logits = cached_teacher_logits
        else:
            with torch.no_grad():
                teacher_logits = self._forward(self.teacher, model_inputs).logits
        outputs = self._forward(model, model_inputs)
        student_logits = outputs.logits
        student_query_logits = self._student_on_queries(model, queries)

        self._attacker_update(queries, F.softmax(student_query_logits.detach().float(), dim=-1))
        with torch.no_grad():
            attacker_query_logits = self._forward(self.attacker, queries).logits

        temperature, alpha = args.temperature, args.alpha
        distillation = F.kl_div(
            F.log_softmax(student_logits / temperature, dim=-1),
            F.log_softmax(teacher_logits / temperature, dim=-1),
            log_target=True,
            reduction="batchmean",
        ) * (temperature**2)
        cross_entropy = F.cross_entropy(student_logits, inputs["labels"])
        # KL(student(x') || attacker(x')): large when the clone has learned the wrong thing from the student.
        adversarial_kl = F.kl_div(
            F.log_softmax(attacker_query_logits.float(), dim=-1),
            F.log_softmax(student_query_logits.float(), dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        loss = alpha * distillation + (1 - alpha) * cross_entropy - args.misleader_lambda * adversarial_kl

        agreement = (attacker_query_logits.argmax(-1) == student_query_logits.argmax(-1)).float().mean()
        for name, value in (
            ("distillation_loss", distillation),
            ("cross_entropy", cross_entropy),
            ("adversarial_kl", adversarial_kl),
            ("attacker_agreement", agreement),
        ):
            self._step_metrics[name].append(value.detach().item())
        return (loss, outputs) if return_outputs else loss

    def _forward(self, model, inputs):
        # Teacher, student and attacker may differ in architecture: pass each only the inputs it takes.
        if id(model) not in self._accepted_inputs:
            self._accepted_inputs[id(model)] = accepted_inputs(self.accelerator.unwrap_model(model))
        return model(**keep_accepted(inputs, self._accepted_inputs[id(model)]))

    def _surrogate_batch(self, like):
        """The next batch of the attacker pool (reshuffled at each pass), on the training batch's device."""
        if self._surrogate_batches is None:
            self._surrogate_batches = self._cycle_surrogate()
        batch = next(self._surrogate_batches)
        return {name: batch[name].to(value.device) for name, value in like.items() if name in batch}

    def _cycle_surrogate(self):
        generator = torch.Generator().manual_seed(self.args.seed + self.args.process_index)
        columns = [name for name in self.attacker_dataset.column_names if name not in ("label", "labels")]
        pool = self.attacker_dataset.with_format("torch", columns=columns)
        size = self.args.per_device_train_batch_size
        while True:
            order = torch.randperm(len(pool), generator=generator).tolist()
            for start in range(0, len(order) - size + 1, size):
                yield pool[order[start : start + size]]

    def _attacker_queries(self, model_inputs):
        args = self.args
        if self.attacker_dataset is not None:
            model_inputs = self._surrogate_batch(model_inputs)
        if "pixel_values" in model_inputs:
            pixel_values = simulate_image_queries(
                model_inputs["pixel_values"], self.query_generator, policy=args.augmentation,
                strength=args.augmentation_strength,
            )
            return {"pixel_values": pixel_values}
        if "input_ids" in model_inputs:
            input_ids = model_inputs["input_ids"]
            attention_mask = model_inputs.get("attention_mask", torch.ones_like(input_ids))
            input_ids, attention_mask = simulate_text_queries(
                input_ids, attention_mask, self.query_generator, policy=args.augmentation,
                strength=args.augmentation_strength,
            )
            return {"input_ids": input_ids, "attention_mask": attention_mask}
        raise ValueError(
            f"MisleaderTrainer needs `pixel_values` (images) or `input_ids` (text) in each batch; got {sorted(model_inputs)}."
        )

    def _student_on_queries(self, model, queries):
        # A thief queries the served, eval-mode student.
        model.eval()
        try:
            return self._forward(model, queries).logits
        finally:
            model.train()

    def _attacker_update(self, queries, student_probs):
        for _ in range(self.args.attacker_steps):
            attacker_log_probs = F.log_softmax(self._forward(self.attacker, queries).logits.float(), dim=-1)
            attacker_loss = F.kl_div(attacker_log_probs, student_probs, reduction="batchmean")
            self.attacker_optimizer.zero_grad(set_to_none=True)
            self.attacker_scaler.scale(attacker_loss).backward()
            self.attacker_scaler.step(self.attacker_optimizer)
            self.attacker_scaler.update()
            self._step_metrics["attacker_loss"].append(attacker_loss.detach().item())

    def log(self, logs, start_time=None):
        if "loss" in logs and self._step_metrics:  # a training log: add the defence's own running means
            logs.update({name: float(np.mean(values)) for name, values in self._step_metrics.items()})
            self._step_metrics.clear()
        super().log(logs, start_time)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if not self.args.should_save:
            return
        folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
        attacker = self.accelerator.unwrap_model(self.attacker)
        save_file({k: v.contiguous() for k, v in attacker.state_dict().items()}, os.path.join(folder, ATTACKER_WEIGHTS_NAME))
        state = {
            "optimizer": self.attacker_optimizer.state_dict(),
            "scaler": self.attacker_scaler.state_dict(),
            "query_generator": self.query_generator.get_state(),
        }
        torch.save(state, os.path.join(folder, ATTACKER_STATE_NAME))

    def _load_student(self, folder):
        # Through from_pretrained, which maps saved key names to the current ones: the stock loaders call
        # load_state_dict directly and silently miss renamed modules (ViT in transformers 5).
        student = self.accelerator.unwrap_model(self.model)
        student.load_state_dict(type(student).from_pretrained(folder).state_dict())

    def _load_best_model(self):
        self._load_student(self.state.best_model_checkpoint)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        self._load_student(resume_from_checkpoint)
        weights = os.path.join(resume_from_checkpoint, ATTACKER_WEIGHTS_NAME)
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"{resume_from_checkpoint} holds no attacker ({ATTACKER_WEIGHTS_NAME}); cannot resume.")
        self.accelerator.unwrap_model(self.attacker).load_state_dict(load_file(weights))
        # weights_only: tensors and plain containers, never arbitrary pickled objects.
        state = torch.load(os.path.join(resume_from_checkpoint, ATTACKER_STATE_NAME), weights_only=True)
        self.attacker_optimizer.load_state_dict(state["optimizer"])
        self.attacker_scaler.load_state_dict(state["scaler"])
        self.query_generator.set_state(state["query_generator"])
