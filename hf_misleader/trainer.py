"""MisleaderTrainer: a `transformers.Trainer` that distils one student from a teacher while a simulated attacker
clone learns from that student, and trains the student so that such clones learn the wrong thing."""

import contextlib
import json
import os
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from . import objectives
from .augment import simulate_image_queries, simulate_text_queries
from .inputs import accepted_inputs, concat_rows, keep_accepted
from .members import attacker_config_for
from .training_args import MisleaderTrainingArguments

logger = logging.get_logger(__name__)

ATTACKER_WEIGHTS_NAME = "attacker.safetensors"
ATTACKER_STATE_NAME = "attacker_state.pt"
# Each process's own query-generation state (its generator and its place in the surrogate pool).
QUERY_STATE_NAME = "query_state_{}.pt"
TRAINER_STATE_NAME = "trainer_state.json"
# Optional dataset column with the teacher's logits for each row, computed once (see `defend`).
TEACHER_LOGITS_COLUMN = "teacher_logits"
# The name each objective's term is logged under.
OBJECTIVE_TERM_NAMES = {"alternating": "adversarial_kl", "unrolled": "stepped_clone_ce", "misinformation": "misinformation_kl"}


class MisleaderDivergenceError(RuntimeError):
    """Training stopped because the student diverged; the last good checkpoint is left as it was."""


def accuracy_metric(eval_prediction) -> dict:
    """Top-1 accuracy, the default model-selection metric (computed locally: no network)."""
    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    return {"accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())}


def _num_labels(model) -> int:
    return getattr(getattr(model, "config", None), "num_labels", None)


def is_complete_checkpoint(folder) -> bool:
    """A checkpoint is complete when its attacker files and, written last by the stock Trainer, a readable
    `trainer_state.json` are there: a run killed while saving leaves a folder that fails this."""
    if not all(os.path.isfile(os.path.join(folder, name)) for name in (ATTACKER_WEIGHTS_NAME, ATTACKER_STATE_NAME)):
        return False
    try:
        with open(os.path.join(folder, TRAINER_STATE_NAME)) as handle:
            json.load(handle)
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(output_dir):
    """The highest-numbered complete `checkpoint-N` in `output_dir`, or None."""
    if not os.path.isdir(output_dir):
        return None
    steps = []
    for name in os.listdir(output_dir):
        prefix, _, step = name.partition("-")
        if prefix == PREFIX_CHECKPOINT_DIR and step.isdigit() and is_complete_checkpoint(os.path.join(output_dir, name)):
            steps.append(int(step))
    return os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{max(steps)}") if steps else None


class MisleaderTrainer(Trainer):
    """
    A [`~transformers.Trainer`] for one MISLEADER student, plus an attacker. Each training step, on a benign batch
    `(x, y)`:

    1. builds attacker-like queries `x'` (`args.augmentation`, from the batch or from `attacker_dataset`);
    2. runs `args.attacker_steps` updates of the attacker clone towards the student's answers on `x'`
       (`KL(student(x') || attacker(x'))`, student detached), with the attacker's own plain torch optimizer;
    3. returns the student's loss: distillation on `(x, y)` plus `args.misleader_lambda` times the objective term
       (`args.objective`, see [`MisleaderTrainingArguments`]).

    The student runs once per step, over `x` and `x'` together (in train mode: batch norm sees both with the same
    statistics, so the student cannot learn to answer queries in one mode and benign inputs in another); its answers
    on `x'` serve both the attacker's update and the loss.
    Evaluation scores the student alone, so `metric_for_best_model="accuracy"` selects on the validation split.
    Checkpoints hold the attacker (weights, optimizer, each process's query generator) and resuming restores it; a
    checkpoint left incomplete by a killed run is never resumed from. A non-finite loss or a collapse of validation
    accuracy stops training with a [`MisleaderDivergenceError`] before anything bad is saved.

    Under several processes (DDP) the attacker is DDP-wrapped too, so its parameters stay identical on every rank;
    each rank draws its own queries. DeepSpeed and FSDP are refused.

    Args:
        model ([`~transformers.PreTrainedModel`]):
            The student: an image classifier (`pixel_values`) or a text classifier (`input_ids`,
            `attention_mask`) with the teacher's label space and, for text, the teacher's tokenizer.
        teacher_model ([`~transformers.PreTrainedModel`]):
            The model being defended. Kept frozen, used under `no_grad`; never saved with the student.
        attacker_model ([`~transformers.PreTrainedModel`], *optional*):
            The simulated attacker clone, trained here, saved in checkpoints, never part of the served model.
            Built from `args.attacker_model` (a preset), or as a fresh copy of the student's architecture, when not
            given.
        args ([`MisleaderTrainingArguments`]):
            The stock training arguments plus the defence's hyper-parameters.
        compute_metrics (`Callable`, *optional*, defaults to top-1 accuracy):
            As in [`~transformers.Trainer`].
        attacker_dataset (`datasets.Dataset`, *optional*):
            A surrogate pool of unlabelled inputs like a thief's own (processed like the training inputs). When
            given, attacker-like queries are built from its batches instead of from the training batch.
        class_permutation (`torch.LongTensor`, *optional*):
            The secret class permutation of `objective="misinformation"` (see
            [`~hf_misleader.objectives.derangement`]); drawn from the operating system's randomness when not given.
            It is kept in checkpoints (to resume), never in the student or its config.
        **kwargs:
            Passed on to [`~transformers.Trainer`] (`train_dataset`, `eval_dataset`, `callbacks`, ...).
    """

    def __init__(self, model=None, teacher_model=None, attacker_model=None, args=None, compute_metrics=None,
                 attacker_dataset=None, class_permutation=None, **kwargs):
        if not isinstance(args, MisleaderTrainingArguments):
            raise TypeError("MisleaderTrainer needs `args` to be a MisleaderTrainingArguments.")
        if model is None or teacher_model is None:
            raise ValueError("MisleaderTrainer needs a student `model` and a `teacher_model`.")
        if attacker_model is None:
            attacker_model = self._build_attacker(model, args, kwargs.get("train_dataset"))
        labels = {"student": _num_labels(model), "teacher": _num_labels(teacher_model), "attacker": _num_labels(attacker_model)}
        if len(set(labels.values())) != 1:
            raise ValueError(f"Student, teacher and attacker must share one label space; got num_labels {labels}.")
        refusal = ("MisleaderTrainer trains a second model (the attacker clone) inside each step; DeepSpeed and FSDP "
                   "are not supported with it. Use DDP (plain `accelerate launch` / `torchrun`).")
        if args.deepspeed or args.fsdp:  # before the stock Trainer sets either up
            raise ValueError(refusal)
        super().__init__(model=model, args=args, compute_metrics=compute_metrics or accuracy_metric, **kwargs)
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:  # e.g. enabled by an accelerate config file
            raise ValueError(refusal)
        # compute_loss returns a per-batch mean: let the Trainer divide it for gradient accumulation.
        self.loss_is_scaled_for_ga = False
        if args.objective == "unrolled" and getattr(attacker_model.config, "_attn_implementation", "eager") != "eager":
            # The unrolled term takes a forward-mode derivative (a Jacobian-vector product) of the attacker: fused
            # attention kernels have none (SDPA on the CPU), the eager one does.
            attacker_model.set_attn_implementation("eager")
        teacher_model.requires_grad_(False)
        self.teacher = self.accelerator.prepare_model(teacher_model, evaluation_mode=True)
        self.teacher.eval()
        self.attacker = self.accelerator.prepare_model(attacker_model)  # DDP-wrapped when several processes
        self.attacker.train()
        self._new_attacker_optimizer()
        # Its own scaler: the Trainer's fp16 scaler must only see the student's loss.
        self.attacker_scaler = torch.amp.GradScaler(self.args.device.type, enabled=bool(args.fp16))
        self.query_generator = torch.Generator(device=self.args.device)
        self.query_generator.manual_seed(args.seed + args.process_index)
        self._attacker_period = 0  # how many times the attacker has been re-initialised
        self._surrogate_draws = 0  # batches taken from attacker_dataset so far, by this process
        self._surrogate_order = None
        self.attacker_dataset = attacker_dataset
        if attacker_dataset is not None and len(attacker_dataset) < args.per_device_train_batch_size:
            raise ValueError("attacker_dataset must hold at least one training batch of inputs.")
        if args.objective == "misinformation" and args.misinformation_target == "permutation":
            if class_permutation is None:
                class_permutation = objectives.derangement(
                    labels["student"], torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
                )
            self._check_permutation(class_permutation, labels["student"])
        self.class_permutation = class_permutation
        self._step_metrics = defaultdict(list)
        self._pending_attacker_batches = []  # this optimizer step's (queries, student answers), for the attacker
        self._accepted_inputs = {}
        self._best_eval_accuracy = None

    # -- construction ----------------------------------------------------------------------------------------------

    @staticmethod
    def _build_attacker(student, args, train_dataset):
        config = attacker_config_for(student, args.attacker_model, train_dataset)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed + 104_729)  # the same attacker on every process, not the student's twin
            return _auto_class(student).from_config(config).to(student.device)

    @staticmethod
    def _check_permutation(permutation, num_labels):
        if not torch.is_tensor(permutation) or permutation.dtype != torch.long or permutation.shape != (num_labels,):
            raise ValueError(f"class_permutation must be a LongTensor of shape ({num_labels},).")
        if not torch.equal(permutation.sort().values, torch.arange(num_labels)):
            raise ValueError("class_permutation must be a permutation of the class indices.")

    def _new_attacker_optimizer(self):
        # A plain optimizer: an accelerate-prepared one would skip steps under gradient accumulation.
        optimizer = torch.optim.Adam if self.args.attacker_optimizer == "adam" else torch.optim.SGD
        self.attacker_optimizer = optimizer(self.attacker.parameters(), lr=self.args.attacker_learning_rate)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if TEACHER_LOGITS_COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, TEACHER_LOGITS_COLUMN]

    # -- the step --------------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        cached_teacher_logits = inputs.get(TEACHER_LOGITS_COLUMN)
        model_inputs = {name: value for name, value in inputs.items() if name not in ("labels", TEACHER_LOGITS_COLUMN)}
        if not model.training:  # evaluation: the student alone
            outputs = self._forward(model, {**model_inputs, "labels": inputs["labels"]})
            return (outputs.loss, outputs) if return_outputs else outputs.loss
        args = self.args
        self._maybe_reset_attacker()
        queries = self._attacker_queries(model_inputs)
        if cached_teacher_logits is not None:
            teacher_logits = cached_teacher_logits
        else:
            with torch.no_grad():
                teacher_logits = self._forward(self.teacher, model_inputs).logits
        # One forward of the student over the benign batch and the queries together, in train mode: batch norm
        # normalises both with the same statistics (the running ones it serves with come from the same mixture), so
        # the student cannot answer queries in one mode and benign inputs in another.
        outputs = self._forward(model, concat_rows(model_inputs, queries))
        rows = len(inputs["labels"])
        outputs.logits, student_query_logits = outputs.logits[:rows], outputs.logits[rows:]
        look_ahead = None
        if args.objective == "unrolled":
            look_ahead = objectives.unrolled_step(self.accelerator.unwrap_model(self.attacker), queries,
                                                  student_query_logits, args.unrolled_step_size,
                                                  self._functional_forward, average=self._process_mean)
            attacker_query_logits = look_ahead.attacker_logits
        else:
            with torch.no_grad():  # the clone as it is before this step's update: the one the student plays against
                attacker_query_logits = self._forward(self.attacker, queries).logits

        distillation_total, distillation, cross_entropy = objectives.distillation_loss(
            outputs.logits, teacher_logits, inputs["labels"], args.temperature, args.alpha
        )
        term = self._objective_term(model_inputs, queries, student_query_logits, attacker_query_logits, teacher_logits,
                                   look_ahead)
        # The alternating and unrolled terms are rewards for the student (push away, mislead): subtracted.
        sign = 1.0 if args.objective == "misinformation" else -1.0
        loss = distillation_total + sign * args.misleader_lambda * term
        self._check_finite(loss, term)
        # The attacker learns from the student's answers on the same queries, once per optimizer step, on the whole
        # accumulated batch: the same update as without gradient accumulation.
        if look_ahead is not None and self._look_ahead_is_the_update():
            self._attacker_update_from(look_ahead)
        else:
            self._pending_attacker_batches.append((queries, F.softmax(student_query_logits.detach().float(), dim=-1)))
            if self.accelerator.sync_gradients:
                self._attacker_update(self._pending_attacker_batches)
                self._pending_attacker_batches = []

        agreement = (attacker_query_logits.argmax(-1) == student_query_logits.argmax(-1)).float().mean()
        for name, value in (
            ("distillation_loss", distillation),
            ("cross_entropy", cross_entropy),
            (OBJECTIVE_TERM_NAMES[args.objective], term),
            ("attacker_agreement", agreement),
        ):
            self._step_metrics[name].append(value.detach().item())
        return (loss, outputs) if return_outputs else loss

    def _objective_term(self, model_inputs, queries, student_query_logits, attacker_query_logits, teacher_logits,
                        look_ahead):
        args = self.args
        if args.objective == "alternating":
            return objectives.alternating_term(student_query_logits, attacker_query_logits)
        if args.objective == "unrolled":
            return objectives.unrolled_term(self.accelerator.unwrap_model(self.attacker), look_ahead, model_inputs,
                                            teacher_logits.argmax(-1), self._functional_forward,
                                            average=self._process_mean)
        with torch.no_grad():
            teacher_query_logits = self._forward(self.teacher, queries).logits
        return objectives.misinformation_term(student_query_logits, teacher_query_logits, self.class_permutation)

    def _process_mean(self, tensor):
        """Mean over processes (identity on one)."""
        if self.args.world_size == 1:
            return tensor
        import torch.distributed.nn.functional as distributed

        return distributed.all_reduce(tensor) / self.args.world_size

    def _forward(self, model, inputs):
        # Teacher, student and attacker may differ in architecture: pass each only the inputs it takes.
        return model(**keep_accepted(inputs, self._accepted(model)))

    def _functional_forward(self, module, state, inputs):
        return objectives.call_with(module, state, keep_accepted(inputs, self._accepted(module)))

    def _accepted(self, model):
        if id(model) not in self._accepted_inputs:
            self._accepted_inputs[id(model)] = accepted_inputs(self.accelerator.unwrap_model(model))
        return self._accepted_inputs[id(model)]

    def _attacker_update(self, batches):
        """`attacker_steps` updates of the attacker towards the student's answers on `batches` (queries, probs)."""
        for _ in range(self.args.attacker_steps):
            self.attacker_optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for index, (queries, student_probs) in enumerate(batches):
                last = index == len(batches) - 1
                # DDP averages the attacker's gradients over processes once, on the last backward.
                with self.accelerator.no_sync(self.attacker) if not last else contextlib.nullcontext():
                    with self.accelerator.autocast():
                        attacker_logits = self._forward(self.attacker, queries).logits
                    attacker_loss = F.kl_div(F.log_softmax(attacker_logits.float(), dim=-1), student_probs,
                                             reduction="batchmean") / len(batches)
                    self.attacker_scaler.scale(attacker_loss).backward()
                total += attacker_loss.detach().item()
            self.attacker_scaler.step(self.attacker_optimizer)
            self.attacker_scaler.update()
            self._step_metrics["attacker_loss"].append(total)

    def _look_ahead_is_the_update(self):
        """
        Whether the look-ahead's gradient is exactly the attacker's next update: one step on this batch's queries
        alone, without loss scaling. It then replaces the update's own forward and backward (an exact saving).
        """
        args = self.args
        return args.attacker_steps == 1 and args.gradient_accumulation_steps == 1 and not self.attacker_scaler.is_enabled()

    def _attacker_update_from(self, look_ahead):
        """The attacker's update from the look-ahead's imitation gradient (already averaged over processes)."""
        attacker = self.accelerator.unwrap_model(self.attacker)
        with torch.no_grad():
            for name, parameter in attacker.named_parameters():
                parameter.grad = look_ahead.gradients[name]
            for name, buffer in attacker.named_buffers():  # the statistics the update's forward would have left
                buffer.copy_(look_ahead.buffers[name])
        self.attacker_optimizer.step()
        self.attacker_optimizer.zero_grad(set_to_none=True)
        self._step_metrics["attacker_loss"].append(look_ahead.imitation.item())

    def _maybe_reset_attacker(self):
        """Re-initialise the attacker every `attacker_reset_epochs` epochs (same new weights on every process)."""
        every = self.args.attacker_reset_epochs
        if not every:
            return
        period = int((self.state.epoch or 0.0) // every)
        if period == self._attacker_period:
            return
        attacker = self.accelerator.unwrap_model(self.attacker)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.args.seed + 7919 * period)
            fresh = type(attacker)(attacker.config).to(next(attacker.parameters()).device)
        with torch.no_grad():
            attacker.load_state_dict(fresh.state_dict())
        self._new_attacker_optimizer()
        self._attacker_period = period

    # -- attacker-like queries -------------------------------------------------------------------------------------

    def _attacker_queries(self, model_inputs):
        args = self.args
        if self.attacker_dataset is not None:
            model_inputs = self._surrogate_batch(model_inputs)
        model_inputs = self._resize_query_batch(model_inputs)
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
            queries = {"input_ids": input_ids, "attention_mask": attention_mask}
            if "token_type_ids" in model_inputs:  # one segment, as the thief's single sentences
                queries["token_type_ids"] = torch.zeros_like(input_ids)
            return queries
        raise ValueError(
            f"MisleaderTrainer needs `pixel_values` (images) or `input_ids` (text) in each batch; got {sorted(model_inputs)}."
        )

    def _resize_query_batch(self, model_inputs):
        size = self.args.attacker_batch_size
        rows = len(next(iter(model_inputs.values())))
        if size is None or size == rows:
            return model_inputs
        # Fewer queries: a random subset; more: drawn with replacement (the augmentation makes them differ).
        device = next(iter(model_inputs.values())).device
        if size < rows:
            index = torch.randperm(rows, generator=self.query_generator, device=device)[:size]
        else:
            index = torch.randint(0, rows, (size,), generator=self.query_generator, device=device)
        return {name: value[index] for name, value in model_inputs.items()}

    def _surrogate_batch(self, like):
        """The next batch of the attacker pool, reshuffled at each pass; a function of how many were drawn, so a
        resumed run continues where it was."""
        size = self.args.per_device_train_batch_size
        per_pass = len(self.attacker_dataset) // size
        pass_index, position = divmod(self._surrogate_draws, per_pass)
        if self._surrogate_order is None or self._surrogate_order[0] != pass_index:
            generator = torch.Generator().manual_seed(self.args.seed + 1_000_003 * self.args.process_index + pass_index)
            self._surrogate_order = (pass_index, torch.randperm(len(self.attacker_dataset), generator=generator).tolist())
        self._surrogate_draws += 1
        columns = [name for name in self.attacker_dataset.column_names if name not in ("label", "labels")]
        rows = self._surrogate_order[1][position * size : (position + 1) * size]
        batch = self.attacker_dataset.with_format("torch", columns=columns)[rows]
        return {name: batch[name].to(value.device) for name, value in like.items() if name in batch}

    # -- divergence guard ------------------------------------------------------------------------------------------

    def _check_finite(self, loss, term):
        finite = torch.isfinite(loss.detach()).float().reshape(1)
        if self.args.world_size > 1:  # every process stops together, or none does
            finite = self.accelerator.reduce(finite, reduction="sum") / self.args.world_size
        if finite.item() < 1.0:
            raise MisleaderDivergenceError(
                f"The student's loss is not finite after {self.state.global_step} steps (objective term {term.item():.4g}, "
                f"objective {self.args.objective!r}): the objective term overpowered distillation; lower "
                f"misleader_lambda (now {self.args.misleader_lambda}) or the learning rate. {self._kept_checkpoint()}"
            )

    def evaluate(self, *args, **kwargs):
        metrics = super().evaluate(*args, **kwargs)
        accuracy = metrics.get(f"{kwargs.get('metric_key_prefix', 'eval')}_accuracy")
        if self.is_in_train and accuracy is not None and self.args.divergence_accuracy_ratio > 0:
            best = self._best_eval_accuracy
            if best is not None and accuracy < self.args.divergence_accuracy_ratio * best:
                raise MisleaderDivergenceError(
                    f"The student's validation accuracy collapsed to {accuracy:.1%} at step {self.state.global_step} "
                    f"(best so far {best:.1%}): the {self.args.objective!r} term is overpowering distillation; lower "
                    f"misleader_lambda (now {self.args.misleader_lambda}). {self._kept_checkpoint()}"
                )
            self._best_eval_accuracy = accuracy if best is None else max(best, accuracy)
        return metrics

    def _kept_checkpoint(self):
        last = last_complete_checkpoint(self.args.output_dir)
        return f"The last checkpoint saved before it diverged is kept: {last}." if last else "No checkpoint had been saved yet."

    def log(self, logs, start_time=None):
        if "loss" in logs and self._step_metrics:  # a training log: add the defence's own running means
            logs.update({name: float(np.mean(values)) for name, values in self._step_metrics.items()})
            self._step_metrics.clear()
        super().log(logs, start_time)

    # -- checkpoints -----------------------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No complete checkpoint in {self.args.output_dir} to resume from.")
        elif resume_from_checkpoint and not is_complete_checkpoint(resume_from_checkpoint):
            raise ValueError(
                f"{resume_from_checkpoint} is not a complete MISLEADER checkpoint (a run killed while saving leaves "
                "one behind); resume from the last complete one with resume_from_checkpoint=True."
            )
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _save_checkpoint(self, model, trial):
        # Never save a diverged student as if it were good (its weights are the same on every process).
        student = self.accelerator.unwrap_model(self.model)
        if not all(torch.isfinite(parameter).all() for parameter in student.parameters()):
            raise MisleaderDivergenceError(
                f"The student's weights are not finite after {self.state.global_step} steps: lower the learning rate "
                f"or misleader_lambda (now {self.args.misleader_lambda}). {self._kept_checkpoint()}"
            )
        # The attacker goes in first: the stock Trainer writes trainer_state.json last and only then deletes older
        # checkpoints, so a run killed at any point leaves either a complete new checkpoint or the previous one.
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        os.makedirs(folder, exist_ok=True)
        torch.save(
            {"generator": self.query_generator.get_state(), "surrogate_draws": self._surrogate_draws},
            os.path.join(folder, QUERY_STATE_NAME.format(self.args.process_index)),
        )
        if self.args.should_save:
            attacker = self.accelerator.unwrap_model(self.attacker)
            save_file({k: v.contiguous() for k, v in attacker.state_dict().items()},
                      os.path.join(folder, ATTACKER_WEIGHTS_NAME))
            state = {
                "optimizer": self.attacker_optimizer.state_dict(),
                "scaler": self.attacker_scaler.state_dict(),
                "attacker_period": self._attacker_period,
                "best_eval_accuracy": self._best_eval_accuracy,
                "class_permutation": self.class_permutation,
            }
            torch.save(state, os.path.join(folder, ATTACKER_STATE_NAME))
        super()._save_checkpoint(model, trial)
        # No process goes on until every file of this checkpoint is written and older ones are rotated out: any process
        # may load it as the best model next (the stock Trainer has no barrier before that load), and the recipe's
        # process 0 deletes checkpoints at the end.
        self.accelerator.wait_for_everyone()

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
        self._new_attacker_optimizer()
        self.attacker_optimizer.load_state_dict(state["optimizer"])
        self.attacker_scaler.load_state_dict(state["scaler"])
        self._attacker_period = state.get("attacker_period", 0)
        self._best_eval_accuracy = state.get("best_eval_accuracy")
        if state.get("class_permutation") is not None:
            self.class_permutation = state["class_permutation"]
        query_state = os.path.join(resume_from_checkpoint, QUERY_STATE_NAME.format(self.args.process_index))
        if os.path.isfile(query_state):
            saved = torch.load(query_state, weights_only=True)
            self.query_generator.set_state(saved["generator"])
            self._surrogate_draws = saved["surrogate_draws"]
        else:
            logger.warning(
                f"{resume_from_checkpoint} has no query state for process {self.args.process_index} (saved with "
                "fewer processes?): this process's attacker-like queries start afresh."
            )

    # -- Hub -------------------------------------------------------------------------------------------------------

    def create_model_card(self, language=None, license=None, tags=None, model_name=None, finetuned_from=None,
                          tasks=None, dataset_tags=None, dataset=None, dataset_args=None, **kwargs):
        """
        Write hf-misleader's card of this student to `args.output_dir/README.md`, instead of the generic Trainer card;
        [`~transformers.Trainer.push_to_hub`] (and `args.push_to_hub=True`) then uploads it. Text written around the
        generated section of a card already there is kept. Arguments as in
        [`~transformers.Trainer.create_model_card`] (`tasks`, `dataset_tags` and `dataset_args` are not used).
        """
        if not self.is_world_process_zero():
            return
        from .card_merge import merge_model_cards
        from .student_card import render_student_card, student_card_facts

        datasets = [dataset] if isinstance(dataset, str) else list(dataset or [])
        model_id = self.hub_model_id or self.args.hub_model_id or model_name or os.path.basename(
            os.path.abspath(self.args.output_dir))
        card = render_student_card(student_card_facts(self, datasets), model_id,
                                   tags=[tags] if isinstance(tags, str) else tags, language=language, license=license,
                                   base_model=finetuned_from)
        path = os.path.join(self.args.output_dir, "README.md")
        existing = None
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                existing = handle.read()
        merge_model_cards(card, existing).save(path)


def _auto_class(model):
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    return AutoModelForSequenceClassification if model.main_input_name == "input_ids" else AutoModelForImageClassification


def end_distributed_run(wait: bool = True):
    """Close the process group, after waiting for every process unless this one failed.

    Without it, a torchrun process can reach interpreter exit while gloo's threads still run and abort with
    "terminate called without an active exception" after training has finished (seen in CI). A failed process
    does not wait: the others may never reach the barrier."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if wait:
            wait_for_every_process()
        torch.distributed.destroy_process_group()


def wait_for_every_process():
    """A barrier across processes when there are several (a no-op on one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
