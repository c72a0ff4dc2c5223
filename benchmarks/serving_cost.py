"""Serving cost of a defended ensemble against its undefended teacher, side by side, in one process.

Both models are served through the stock `pipeline("image-classification")`; the defended one also through the
library's `pipeline("protected-image-classification")` (and the teacher too, to tell the pipeline's cost from the
ensemble's). Latency: one image per call, median over `--calls` calls; throughput: `--batch-size` images per call,
median over `--batch-calls` calls. Calls are interleaved (a shuffled round of every variant at a time), so a slow
spell of a shared machine hits all of them. Ratios are against the teacher behind the stock pipeline.

Models: `MODEL_DIR/teacher-model` and `MODEL_DIR/defended-model` when present (the demo's `outputs/demo`), else
randomly initialised models of the demo's architectures (weights do not change the speed); the JSON says which.

    OMP_NUM_THREADS=1 python benchmarks/serving_cost.py [--calls 200] [--batch-calls 20] [--output FILE]
"""

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time

DEFAULT_OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "serving_cost.json")
BASELINE = "teacher/stock"
# (model, pipeline task) per variant.
VARIANTS = {
    "teacher/stock": ("teacher", "image-classification"),
    "defended/stock": ("defended", "image-classification"),
    "defended/protected": ("defended", "protected-image-classification"),
    "teacher/protected": ("teacher", "protected-image-classification"),
}


def load_models(model_dir):
    """The teacher, the defended ensemble and their image processor; plus where each came from."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from hf_misleader import MisleaderEnsembleForImageClassification, build_image_member
    from hf_misleader.data import image_processor
    from hf_misleader.defend import DEFAULT_MEMBERS

    labels = {i: str(i) for i in range(10)}
    models, sources = {}, {}
    teacher_dir = os.path.join(model_dir, "teacher-model")
    if os.path.isdir(teacher_dir):
        models["teacher"] = AutoModelForImageClassification.from_pretrained(teacher_dir)
        sources["teacher"] = teacher_dir
    else:  # the demo's teacher architecture
        models["teacher"] = build_image_member("resnet-small", 10, labels)
        sources["teacher"] = "random init, resnet-small (the demo's teacher architecture)"
    defended_dir = os.path.join(model_dir, "defended-model")
    if os.path.isdir(defended_dir):
        models["defended"] = AutoModelForImageClassification.from_pretrained(defended_dir)
        sources["defended"] = defended_dir
    else:  # the demo's three members
        members = [build_image_member(name, 10, labels) for name in DEFAULT_MEMBERS]
        models["defended"] = MisleaderEnsembleForImageClassification.from_members(members)
        sources["defended"] = f"random init, ensemble of {', '.join(DEFAULT_MEMBERS)} (the demo's members)"
    for model in models.values():
        model.eval()  # built models start in train mode: batch norm would use batch statistics
    processor_file = os.path.join(defended_dir, "preprocessor_config.json")
    processor = image_processor(28)  # the demo's; a saved one wins
    if os.path.isfile(processor_file):
        processor = AutoImageProcessor.from_pretrained(defended_dir)
    return models, processor, sources


def _seconds(call, *args):
    started = time.perf_counter()
    call(*args)
    return time.perf_counter() - started


def _interleaved(pipes, rounds, call, rng):
    """`rounds` timings of `call(pipe, round)` per variant, each round in a shuffled order."""
    timings = {name: [] for name in pipes}
    for index in range(rounds):
        order = list(pipes)
        rng.shuffle(order)
        for name in order:
            timings[name].append(_seconds(call, pipes[name], index))
    return timings


def measure(calls=200, batch_calls=20, batch_size=64, warmup=10, threads=1, model_dir="outputs/demo", progress=print):
    """Latency and throughput of every variant; returns the record written as JSON."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers
    from transformers import pipeline

    from hf_misleader.data import load_mnist_5k

    torch.set_num_threads(threads)
    models, processor, sources = load_models(model_dir)
    pipes = {name: pipeline(task, model=models[model], image_processor=processor, device="cpu")
             for name, (model, task) in VARIANTS.items()}
    images = load_mnist_5k().select(range(max(batch_size, 1)))["image"]  # real 28x28 digits, as PIL images
    batch = images[:batch_size]
    rng = random.Random(0)

    _interleaved(pipes, warmup, lambda pipe, i: pipe(images[i % len(images)]), rng)
    _interleaved(pipes, max(1, warmup // 5), lambda pipe, i: pipe(batch, batch_size=batch_size), rng)
    progress(f"latency: {calls} calls per variant")
    single = _interleaved(pipes, calls, lambda pipe, i: pipe(images[i % len(images)]), rng)
    progress(f"throughput: {batch_calls} calls of {batch_size} images per variant")
    batched = _interleaved(pipes, batch_calls, lambda pipe, i: pipe(batch, batch_size=batch_size), rng)

    summary = {}
    for name in pipes:
        latencies = sorted(single[name])
        summary[name] = {
            "latency_ms_median": 1000 * statistics.median(latencies),
            "latency_ms_p90": 1000 * latencies[int(0.9 * (len(latencies) - 1))],
            "throughput_images_per_s": batch_size / statistics.median(batched[name]),
        }
    base = summary[BASELINE]
    for row in summary.values():
        row["latency_ratio_vs_teacher"] = row["latency_ms_median"] / base["latency_ms_median"]
        # > 1: the variant serves fewer images per second than the teacher (the batch-64 slowdown).
        row["batch_time_ratio_vs_teacher"] = base["throughput_images_per_s"] / row["throughput_images_per_s"]
    return {
        "calls": calls, "batch_calls": batch_calls, "batch_size": batch_size, "warmup": warmup, "models": sources,
        "parameters": {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "transformers": transformers.__version__, "cpu_count": os.cpu_count(), "threads": threads,
                        "load_average_at_start": os.getloadavg()},
        "summary": summary,
    }


def table(record):
    batch = f"images/s @{record['batch_size']}"
    lines = [f"{'variant':<20}{'latency ms':>11}{'p90':>7}{'x teacher':>10}{batch:>15}{'time x teacher':>16}"]
    for name, row in record["summary"].items():
        lines.append(f"{name:<20}{row['latency_ms_median']:>11.2f}{row['latency_ms_p90']:>7.2f}"
                     f"{row['latency_ratio_vs_teacher']:>10.2f}{row['throughput_images_per_s']:>15.0f}"
                     f"{row['batch_time_ratio_vs_teacher']:>16.2f}")
    return "\n".join(lines)


def save(record, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(record, handle, indent=2)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200, help="single-image calls per variant (latency)")
    parser.add_argument("--batch-calls", type=int, default=20, help="batched calls per variant (throughput)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model-dir", default="outputs/demo", help="folder with teacher-model/ and defended-model/")
    parser.add_argument("--output", default=DEFAULT_OUTPUT)
    options = parser.parse_args()
    record = measure(options.calls, options.batch_calls, options.batch_size, options.warmup, options.threads,
                     options.model_dir)
    record["command"] = " ".join(["python", "benchmarks/serving_cost.py", *sys.argv[1:]])
    save(record, options.output)
    for variant, source in record["models"].items():
        print(f"{variant}: {source}")
    print(table(record))
    print(f"written to {options.output}")


if __name__ == "__main__":
    main()
