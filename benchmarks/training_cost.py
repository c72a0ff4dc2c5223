"""Training cost of MisleaderTrainer against plain knowledge distillation with the stock Trainer, side by side.

Every configuration trains the same student (same initialisation, data, batches and number of steps) in a fresh
subprocess, so that wall time and peak resident memory (ru_maxrss) are its own. Ratios are against "kd", a stock
`transformers.Trainer` whose loss is the same distillation loss MisleaderTrainer uses, without attacker or queries.

    python benchmarks/training_cost.py [--steps 60] [--repeats 3] [--output benchmarks/results/training_cost.json]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = {
    "kd": {},
    "alternating": {"objective": "alternating"},
    "unrolled": {"objective": "unrolled"},
    "misinformation": {"objective": "misinformation"},
}


def run_one(name, steps, threads):
    """Train one configuration in this process; print its wall time and peak memory as JSON."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch

    torch.set_num_threads(threads)
    from transformers import Trainer, TrainingArguments, ViTImageProcessorPil

    from hf_misleader import MisleaderTrainer, MisleaderTrainingArguments
    from hf_misleader.data import load_mnist_5k, prepare_image_dataset, split_for_extraction
    from hf_misleader.members import build_image_member
    from hf_misleader.objectives import distillation_loss

    processor = ViTImageProcessorPil(do_resize=True, size={"height": 28, "width": 28}, image_mean=[0.5] * 3,
                                     image_std=[0.5] * 3)
    train = prepare_image_dataset(split_for_extraction(load_mnist_5k(), {"train": 2200}, seed=0)["train"], processor)
    labels = {i: str(i) for i in range(10)}
    torch.manual_seed(0)
    teacher = build_image_member("resnet-small", 10, labels).eval()
    torch.manual_seed(1)
    student = build_image_member("resnet-tiny", 10, labels)
    common = dict(output_dir=f"/tmp/training-cost-{name}", max_steps=steps, per_device_train_batch_size=64,
                  learning_rate=2e-3, report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no",
                  logging_strategy="no", seed=0, dataloader_num_workers=0)

    if name == "kd":
        class DistillationTrainer(Trainer):
            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                labels_ = inputs.pop("labels")
                with torch.no_grad():
                    teacher_logits = teacher(**inputs).logits
                outputs = model(**inputs)
                loss = distillation_loss(outputs.logits, teacher_logits, labels_, 4.0, 0.5)[0]
                return (loss, outputs) if return_outputs else loss

        trainer = DistillationTrainer(model=student, args=TrainingArguments(**common), train_dataset=train)
    else:
        trainer = MisleaderTrainer(model=student, teacher_model=teacher, args=MisleaderTrainingArguments(
            **common, **CONFIGS[name]), train_dataset=train)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"name": name, "seconds": seconds, "peak_rss_mib": peak_mib}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration, interleaved; median reported")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "training_cost.json"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.one:
        run_one(options.one, options.steps, options.threads)
        return

    runs = {name: [] for name in CONFIGS}
    for repeat in range(options.repeats):  # interleaved, so that a slow spell of the machine hits every config
        for name in CONFIGS:
            done = subprocess.run([sys.executable, __file__, "--one", name, "--steps", str(options.steps),
                                   "--threads", str(options.threads)], capture_output=True, text=True, check=True)
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"repeat {repeat + 1}: {runs[name][-1]}", flush=True)
    summary = {}
    for name, results in runs.items():
        summary[name] = {
            "seconds_median": statistics.median(r["seconds"] for r in results),
            "peak_rss_mib_median": statistics.median(r["peak_rss_mib"] for r in results),
        }
    for name in CONFIGS:
        summary[name]["time_ratio_vs_kd"] = summary[name]["seconds_median"] / summary["kd"]["seconds_median"]
        summary[name]["memory_ratio_vs_kd"] = summary[name]["peak_rss_mib_median"] / summary["kd"]["peak_rss_mib_median"]
    record = {"command": " ".join(["python", "benchmarks/training_cost.py", *sys.argv[1:]]), "steps": options.steps,
              "repeats": options.repeats, "threads": options.threads, "runs": runs, "summary": summary}
    os.makedirs(os.path.dirname(options.output), exist_ok=True)
    with open(options.output, "w") as handle:
        json.dump(record, handle, indent=2)
    print(f"{'config':<16}{'seconds':>9}{'x KD':>7}{'peak MiB':>10}{'x KD':>7}")
    for name, row in summary.items():
        print(f"{name:<16}{row['seconds_median']:>9.1f}{row['time_ratio_vs_kd']:>7.2f}"
              f"{row['peak_rss_mib_median']:>10.0f}{row['memory_ratio_vs_kd']:>7.2f}")


if __name__ == "__main__":
    main()
