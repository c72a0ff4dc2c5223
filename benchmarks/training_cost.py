"""Training cost of MisleaderTrainer against plain knowledge distillation with the stock Trainer, side by side.

Every configuration trains the same student (same initialisation, data, batches and number of steps) in a fresh
subprocess, so that wall time and peak resident memory are its own; the configurations are interleaved over the
repeats, so a slow spell of a shared machine hits all of them. Ratios are against "kd", a stock
`transformers.Trainer` whose loss is the distillation loss MisleaderTrainer uses, without attacker or queries.

    OMP_NUM_THREADS=1 python benchmarks/training_cost.py [--steps 60] [--repeats 3] [--output FILE]
"""

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

CONFIGS = {
    "kd": {},
    "alternating": {"objective": "alternating"},
    "unrolled": {"objective": "unrolled"},
    "misinformation": {"objective": "misinformation"},
}
DEFAULT_OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "training_cost.json")


def _status_mib(field):
    """A VmRSS / VmHWM line of /proc/self/status, in MiB (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} is not in /proc/self/status")


def run_one(name, steps, threads, train_size=2200, batch_size=64):
    """Train one configuration in this process; returns its wall time and memory."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch

    torch.set_num_threads(threads)
    from transformers import Trainer, TrainingArguments

    from hf_misleader import MisleaderTrainer, MisleaderTrainingArguments
    from hf_misleader.data import image_processor, load_mnist_5k, prepare_image_dataset, split_for_extraction
    from hf_misleader.members import build_image_member
    from hf_misleader.objectives import distillation_loss

    raw = split_for_extraction(load_mnist_5k(), {"train": train_size}, seed=0)["train"]
    train = prepare_image_dataset(raw, image_processor(28))
    labels = {i: str(i) for i in range(10)}
    # The demo's architectures: a resnet-small teacher, a resnet-tiny student. Random weights: cost only.
    torch.manual_seed(0)
    teacher = build_image_member("resnet-small", 10, labels).eval()
    torch.manual_seed(1)
    student = build_image_member("resnet-tiny", 10, labels)
    output_dir = tempfile.mkdtemp(prefix=f"training-cost-{name}-")
    common = dict(output_dir=output_dir, max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=2e-3,
                  report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no", logging_strategy="no",
                  seed=0, dataloader_num_workers=0)

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

    # Peak memory of training itself: reset the high-water mark (Linux clear_refs "5") once data and models are
    # loaded, so the peak is not the data set's pre-processing.
    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    rss_before = _status_mib("VmRSS")
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    peak = _status_mib("VmHWM")
    shutil.rmtree(output_dir, ignore_errors=True)
    return {"name": name, "seconds": seconds, "peak_rss_mib": peak, "train_increment_mib": peak - rss_before}


def _child(name, steps, threads, train_size):
    command = [sys.executable, os.path.abspath(__file__), "--one", name, "--steps", str(steps), "--threads",
               str(threads), "--train-size", str(train_size)]
    done = subprocess.run(command, check=False, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def environment(threads):
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "cpu_count": os.cpu_count(), "threads": threads, "load_average_at_start": os.getloadavg()}


def measure(steps=60, repeats=3, threads=1, train_size=2200, configs=tuple(CONFIGS), progress=print):
    """Run every configuration `repeats` times, interleaved; returns the record written as JSON."""
    if "kd" not in configs:
        raise ValueError("The ratios need the 'kd' baseline among the configurations.")
    env = environment(threads)
    runs = {name: [] for name in configs}
    for repeat in range(repeats):
        for name in configs:
            runs[name].append(_child(name, steps, threads, train_size))
            progress(f"repeat {repeat + 1}/{repeats} {name}: {runs[name][-1]['seconds']:.1f} s, "
                     f"peak {runs[name][-1]['peak_rss_mib']:.0f} MiB")
    summary = {}
    for name, results in runs.items():
        summary[name] = {key + "_median": statistics.median(r[key] for r in results)
                         for key in ("seconds", "peak_rss_mib", "train_increment_mib")}
    kd = summary["kd"]
    for name, row in summary.items():
        row["time_ratio_vs_kd"] = row["seconds_median"] / kd["seconds_median"]
        row["memory_ratio_vs_kd"] = row["peak_rss_mib_median"] / kd["peak_rss_mib_median"]
        row["increment_ratio_vs_kd"] = row["train_increment_mib_median"] / kd["train_increment_mib_median"]
        # Same-repeat ratios: how much the time ratio moves between repeats.
        per_repeat = [r["seconds"] / k["seconds"] for r, k in zip(runs[name], runs["kd"])]
        row["time_ratio_range"] = [min(per_repeat), max(per_repeat)]
    return {"steps": steps, "repeats": repeats, "train_size": train_size, "batch_size": 64,
            "student": "resnet-tiny", "teacher": "resnet-small", "environment": env, "runs": runs, "summary": summary}


def table(record):
    lines = [(f"{'config':<16}{'seconds':>9}{'x KD':>7}{'(range)':>13}{'peak MiB':>10}{'x KD':>7}"
              f"{'train +MiB':>12}{'x KD':>7}")]
    for name, row in record["summary"].items():
        low, high = row["time_ratio_range"]
        lines.append(f"{name:<16}{row['seconds_median']:>9.2f}{row['time_ratio_vs_kd']:>7.2f}"
                     f"{f'({low:.2f}-{high:.2f})':>13}{row['peak_rss_mib_median']:>10.0f}"
                     f"{row['memory_ratio_vs_kd']:>7.2f}{row['train_increment_mib_median']:>12.0f}"
                     f"{row['increment_ratio_vs_kd']:>7.2f}")
    return "\n".join(lines)


def save(record, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(record, handle, indent=2)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration, interleaved; median reported")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-size", type=int, default=2200, help="MNIST-5k rows to train on (the demo's 2,200)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: train one configuration, print JSON
    options = parser.parse_args()
    if options.one:
        print(json.dumps(run_one(options.one, options.steps, options.threads, options.train_size)))
        return
    record = measure(options.steps, options.repeats, options.threads, options.train_size)
    record["command"] = " ".join(["python", "benchmarks/training_cost.py", *sys.argv[1:]])
    save(record, options.output)
    print(table(record))
    print(f"written to {options.output}")


if __name__ == "__main__":
    main()
