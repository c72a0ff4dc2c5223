"""Train one MISLEADER student on real digits and save what a test compares; run alone or under torchrun.

    torchrun --nproc_per_node 2 tests/scripts/train_one_student.py --output-dir DIR --batch-size 4 [...]

Writes, from every process, `rank-<r>.safetensors` with the final student and attacker weights.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

torch.set_num_threads(1)

from hf_misleader import MisleaderTrainer, MisleaderTrainingArguments  # noqa: E402
from hf_misleader.data import load_sklearn_digits, prepare_image_dataset, split_for_extraction  # noqa: E402
from hf_misleader.members import build_image_member  # noqa: E402
from hf_misleader.trainer import end_distributed_run, last_complete_checkpoint  # noqa: E402
from transformers import TrainerCallback, ViTImageProcessorPil  # noqa: E402


def kill_at(trainer, step, while_saving):
    """A real SIGKILL: right after the checkpoint of `step` is complete, or halfway through writing it (after the
    weights, before the optimizer and the trainer state)."""
    import signal

    if while_saving:
        save_optimizer = trainer._save_optimizer_and_scheduler

        def dying_save(output_dir):
            if trainer.state.global_step == step:
                os.kill(os.getpid(), signal.SIGKILL)
            save_optimizer(output_dir)

        trainer._save_optimizer_and_scheduler = dying_save
        return

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == step:
                os.kill(os.getpid(), signal.SIGKILL)

    trainer.add_callback(Kill())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--batch-size", type=int, required=True, help="per process")
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=3)
    parser.add_argument("--save-steps", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-at-step", type=int, default=0, help="SIGKILL this process at that step...")
    parser.add_argument("--kill-while-saving", action="store_true", help="...in the middle of writing its checkpoint")
    parser.add_argument("--args", default="{}", help="JSON of further MisleaderTrainingArguments")
    options = parser.parse_args()

    processor = ViTImageProcessorPil(do_resize=True, size={"height": 16, "width": 16}, image_mean=[0.5] * 3,
                                     image_std=[0.5] * 3)
    raw = split_for_extraction(load_sklearn_digits(16), {"train": 128, "validation": 64}, seed=0)
    data = {name: prepare_image_dataset(split, processor) for name, split in raw.items()}
    labels = {i: str(i) for i in range(10)}

    def build(preset, seed):
        torch.manual_seed(seed)
        return build_image_member(preset, 10, labels, 3, 16)

    extra = json.loads(options.args)
    args = MisleaderTrainingArguments(
        output_dir=options.output_dir, max_steps=options.max_steps, per_device_train_batch_size=options.batch_size,
        gradient_accumulation_steps=options.accumulation, learning_rate=1e-3, lr_scheduler_type="constant",
        report_to="none", use_cpu=True, disable_tqdm=True, logging_strategy="no", seed=0, dataloader_num_workers=0,
        save_strategy="steps" if options.save_steps else "no", save_steps=options.save_steps or 500,
        **{"objective": "alternating", "misleader_lambda": 1.0, "augmentation": "mild", "augmentation_strength": 0.0,
           **extra},
    )
    trainer = MisleaderTrainer(
        model=build("vit-tiny", 1).train(),
        teacher_model=build("resnet-tiny", 2).eval(),
        attacker_model=build("convnext-tiny", 3),
        args=args, train_dataset=data["train"], eval_dataset=data["validation"],
    )
    if options.kill_at_step:
        kill_at(trainer, options.kill_at_step, options.kill_while_saving)
    steps_run = []
    trainer.add_callback(type("Count", (TrainerCallback,), {
        "on_step_end": lambda self, args, state, control, **kwargs: steps_run.append(state.global_step)})())
    resumed_from = last_complete_checkpoint(options.output_dir) if options.resume else None
    trainer.train(resume_from_checkpoint=True if options.resume else None)
    tensors = {f"student.{k}": v.contiguous() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}
    tensors.update({f"attacker.{k}": v.contiguous()
                    for k, v in trainer.accelerator.unwrap_model(trainer.attacker).state_dict().items()})
    save_file(tensors, os.path.join(options.output_dir, f"rank-{args.process_index}.safetensors"))
    with open(os.path.join(options.output_dir, f"rank-{args.process_index}.json"), "w") as handle:
        json.dump({"global_step": trainer.state.global_step, "world_size": args.world_size, "steps_run": steps_run,
                   "resumed_from": resumed_from and os.path.basename(resumed_from)}, handle)


if __name__ == "__main__":
    main()
    end_distributed_run()
