"""Shared fixtures: real sklearn digits at 16x16, processed once per session, and tiny members."""

import os

# Before anything imports huggingface_hub: a Hub lookup without it waits ~25 s to fail.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# 2 threads on a busy 2-core box run 5-15x slower than 1.
torch.set_num_threads(1)

IMAGE_SIZE = 16
NUM_LABELS = 10
ID2LABEL = {i: str(i) for i in range(NUM_LABELS)}
IMAGE_PRESETS = ("resnet-tiny", "convnext-tiny", "vit-tiny", "mobilenet_v2-tiny")


def make_processor():
    from transformers import ViTImageProcessorPil

    return ViTImageProcessorPil(
        do_resize=True, size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )


def build_member(preset, seed=None):
    """A freshly initialised tiny image member for 16x16 RGB digits, in eval mode."""
    from hf_misleader.members import build_image_member

    if seed is not None:
        torch.manual_seed(seed)
    return build_image_member(preset, NUM_LABELS, ID2LABEL, 3, IMAGE_SIZE).eval()


@pytest.fixture(scope="session")
def processor():
    return make_processor()


@pytest.fixture(scope="session")
def raw_digits():
    """Real sklearn digits upscaled to 16x16, split 128 train / 64 validation (PIL images + labels)."""
    from hf_misleader.data import load_sklearn_digits, split_for_extraction

    return split_for_extraction(load_sklearn_digits(image_size=IMAGE_SIZE), {"train": 128, "validation": 64}, seed=0)


@pytest.fixture(scope="session")
def digits(raw_digits, processor):
    """The same splits processed to `pixel_values` (3x16x16 float tensors) and `label`."""
    from hf_misleader.data import prepare_image_dataset

    return {name: prepare_image_dataset(split, processor) for name, split in raw_digits.items()}


@pytest.fixture(scope="session")
def pixel_batch(digits):
    """16 real processed images and their labels, as tensors."""
    rows = digits["train"][:16]
    return rows["pixel_values"], rows["label"]
