"""MisleaderTrainer with real processes: torchrun (gloo on CPU) against one process, and SIGKILL then resume.

Each case runs tests/scripts/train_one_student.py, which trains a ViT student against a ConvNeXt attacker (neither
has batch norm, so per-process batches of 4 and one batch of 8 compute the same thing) on real digits and saves
every process's final student and attacker weights.
"""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "train_one_student.py")
# Deterministic attacker-like queries (the identity transform), so that one process and two see the same queries.
SAME_QUERIES = {"augmentation": "mild", "augmentation_strength": 0.0}
# Float sums in another order: two processes average per-process means, one process takes one mean.
TOLERANCE = 1e-5


def free_port():
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def train(output_dir, batch_size, processes=1, extra=None, **options):
    command = [sys.executable, SCRIPT] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", f"--master_port={free_port()}",
        SCRIPT,
    ]
    command += ["--output-dir", str(output_dir), "--batch-size", str(batch_size), "--args", json.dumps(extra or {})]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is not False:
            command += [flag] if value is True else [flag, str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def weights(output_dir, rank=0):
    return load_file(os.path.join(output_dir, f"rank-{rank}.safetensors"))


def report(output_dir, rank=0):
    with open(os.path.join(output_dir, f"rank-{rank}.json")) as handle:
        return json.load(handle)


def max_difference(first, second, prefix):
    return max((first[k].float() - second[k].float()).abs().max().item() for k in first if k.startswith(prefix))


def check(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.parametrize("objective", ["alternating", "unrolled", "misinformation"])
def test_two_processes_train_the_same_student_as_one(tmp_path, objective):
    extra = {"objective": objective, **SAME_QUERIES}
    if objective == "misinformation":
        extra["misinformation_target"] = "uniform"  # the random secret permutation would differ between runs
    check(train(tmp_path / "one", 8, extra=extra))
    check(train(tmp_path / "two", 4, processes=2, extra=extra))
    assert report(tmp_path / "two", 1)["world_size"] == 2
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert max_difference(one, two, "student.") < TOLERANCE
    assert max_difference(one, two, "attacker.") < TOLERANCE
    # and the run did train: the student moved
    check(train(tmp_path / "none", 8, extra=extra, max_steps=1))
    assert max_difference(one, weights(tmp_path / "none"), "student.") > 1e-3


@pytest.mark.parametrize("objective", ["alternating", "unrolled"])
def test_attacker_is_identical_on_every_process(tmp_path, objective):
    """Heavy, random queries: each process draws its own, yet DDP keeps one attacker (and one student)."""
    check(train(tmp_path, 4, processes=2, extra={"objective": objective, "augmentation": "heavy"}))
    zero, one = weights(tmp_path, 0), weights(tmp_path, 1)
    assert zero.keys() == one.keys()
    for name in zero:
        assert torch.equal(zero[name], one[name]), name


def test_gradient_accumulation_gives_the_large_batch_update(tmp_path):
    """2 micro-batches of 4 == one batch of 8, attacker included (it steps once per optimizer step, on both)."""
    check(train(tmp_path / "large", 8, extra=SAME_QUERIES))
    check(train(tmp_path / "accumulated", 4, extra=SAME_QUERIES, accumulation=2))
    large, accumulated = weights(tmp_path / "large"), weights(tmp_path / "accumulated")
    assert max_difference(large, accumulated, "student.") < TOLERANCE
    assert max_difference(large, accumulated, "attacker.") < TOLERANCE


@pytest.mark.parametrize("while_saving", [False, True], ids=["after-checkpoint", "while-saving"])
def test_sigkill_then_resume_ends_bit_identical(tmp_path, while_saving):
    """Unrolled objective, random queries, an attacker reset mid-run: killed, resumed, the same weights bit for bit.
    Killed while writing checkpoint-4, the run resumes from checkpoint-2 (the partial folder is never taken)."""
    extra = {"objective": "unrolled", "attacker_reset_epochs": 0.1}
    check(train(tmp_path / "straight", 8, extra=extra, max_steps=6, save_steps=2))
    killed = train(tmp_path / "killed", 8, extra=extra, max_steps=6, save_steps=2, kill_at_step=4,
                   kill_while_saving=while_saving)
    assert killed.returncode == -signal.SIGKILL
    check(train(tmp_path / "killed", 8, extra=extra, max_steps=6, save_steps=2, resume=True))
    resumed = report(tmp_path / "killed")
    assert resumed["resumed_from"] == ("checkpoint-2" if while_saving else "checkpoint-4")
    assert resumed["steps_run"] == ([3, 4, 5, 6] if while_saving else [5, 6])
    straight, again = weights(tmp_path / "straight"), weights(tmp_path / "killed")
    for name in straight:
        assert torch.equal(straight[name], again[name]), name


def test_fsdp_is_refused_with_a_clear_error(tmp_path):
    result = train(tmp_path, 4, processes=2, extra={"fsdp": True})
    assert result.returncode != 0
    assert "DeepSpeed and FSDP are not supported" in result.stdout + result.stderr
    assert not os.path.exists(os.path.join(tmp_path, "rank-0.safetensors"))
