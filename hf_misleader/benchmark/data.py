"""What a benchmark runs on: the processed splits, the thieves' query pools, the victims and the clone architecture."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from .. import data as loaders
from .config import BenchmarkConfig
from .schema import IN_DISTRIBUTION, MINILM
from ..demo import DemoSettings, train_teacher
from ..members import build_image_member, text_member_config


@dataclass
class BenchmarkData:
    """
    The processed data every run of a benchmark shares.

    Args:
        splits (`dict[str, Dataset]`): train / validation / attacker_pool / test, processed for the models.
        pools (`dict[str, dict[str, torch.Tensor]]`): each query pool's model inputs, by pool name.
        test_inputs (`dict[str, torch.Tensor]`), test_labels (`torch.Tensor`): the held-out test split.
        processor: the image processor or tokenizer every split went through.
        id2label (`dict[int, str]`): class names.
        template_config: (text) the tokenizer's model config, which sizes text clones and teachers.
    """

    splits: dict
    pools: dict
    test_inputs: dict
    test_labels: torch.Tensor
    processor: object
    id2label: dict
    template_config: object = None

    def labelled(self, count):
        """`count` labelled real samples a thief may hold (for un-permuting), from the validation split."""
        rows = self.splits["validation"][:count]
        return {k: v for k, v in rows.items() if k != "label"}, rows["label"]


def _model_inputs(split):
    return {name: value for name, value in split[:].items() if name != "label"}


def _raw_images(name, image_size, split="train"):
    if name == "mnist_5k":
        return loaders.load_mnist_5k()
    if name == "sklearn_digits":
        return loaders.load_sklearn_digits(image_size)
    return loaders.load_fashion_mnist(split)


def _image_splits(dataset, seed):
    """The configured splits, drawn with `seed`; an official test split is the data set's own, untouched."""
    sizes = dict(dataset["splits"])
    if sizes["test"] != "official":
        return loaders.split_for_extraction(_raw_images(dataset["name"], dataset["image_size"]), sizes, seed)
    del sizes["test"]
    raw = loaders.split_for_extraction(_raw_images(dataset["name"], dataset["image_size"], split="train"), sizes, seed)
    raw["test"] = _raw_images(dataset["name"], dataset["image_size"], split="test")
    return raw


def _sample(dataset, size, seed, name):
    if size > len(dataset):
        raise ValueError(f"pool {name!r}: asked for {size} inputs but it has {len(dataset)}.")
    order = np.random.default_rng(seed).permutation(len(dataset))[:size]
    return dataset.select(order)


def _text_pool(name, size, raw_pool, tokenizer, max_length, seed):
    if name == "random_words":  # RANDOM-style queries, lengths matched to the thief's real inputs
        lengths = [len(text.split()) for text in raw_pool["text"]]
        texts = loaders.random_word_texts(tokenizer, [lengths[i % len(lengths)] for i in range(size)], seed)
    else:
        texts = _sample(loaders.load_fortunes(), size, seed, name)["text"]
    pool = Dataset.from_dict({"text": list(texts), "label": [0] * len(texts)})
    return _model_inputs(loaders.prepare_text_dataset(pool, tokenizer, max_length))


def load_benchmark_data(config: BenchmarkConfig) -> BenchmarkData:
    """Load, split and process the configured data set and every configured query pool."""
    dataset, seed = config.dataset, config.dataset["split_seed"]
    if config.modality == "image":
        processor = loaders.image_processor(dataset["image_size"])
        raw = _image_splits(dataset, seed)
        splits = {name: loaders.prepare_image_dataset(split, processor) for name, split in raw.items()}
        template = None
    else:
        processor = AutoTokenizer.from_pretrained(loaders.minilm_path())
        raw = loaders.split_for_extraction(loaders.load_rotten_tomatoes(), dataset["splits"], seed)
        splits = {name: loaders.prepare_text_dataset(split, processor, dataset["max_length"])
                  for name, split in raw.items()}
        template = AutoConfig.from_pretrained(loaders.minilm_path())
    id2label = dict(enumerate(raw["train"].features["label"].names))
    if template is not None:
        template.id2label, template.label2id = id2label, {v: k for k, v in id2label.items()}

    pools = {}
    for pool in config.pools:
        if pool["name"] == IN_DISTRIBUTION:
            pools[pool["name"]] = _model_inputs(splits["attacker_pool"])
        elif config.modality == "image":
            surrogate = _sample(_raw_images(pool["name"], dataset["image_size"], split="test"), pool["size"], seed,
                                pool["name"])
            pools[pool["name"]] = _model_inputs(loaders.prepare_image_dataset(surrogate, processor))
        else:
            pools[pool["name"]] = _text_pool(pool["name"], pool["size"], raw["attacker_pool"], processor,
                                             dataset["max_length"], seed)
    test = splits["test"]
    return BenchmarkData(splits=splits, pools=pools, test_inputs=_model_inputs(test), test_labels=test[:]["label"],
                         processor=processor, id2label=id2label, template_config=template)


def _fresh_teacher(config, data):
    teacher = config.teacher
    torch.manual_seed(teacher["seed"])  # as the demo does: the same seed gives the demo's teacher
    if config.modality == "image":
        return build_image_member(teacher["model"], len(data.id2label), data.id2label, 3, config.dataset["image_size"])
    if teacher["model"] == MINILM:
        return AutoModelForSequenceClassification.from_pretrained(loaders.minilm_path(), id2label=data.id2label)
    return AutoModelForSequenceClassification.from_config(
        text_member_config(teacher["model"], data.template_config, config.dataset["max_length"]))


def _auto_class(config):
    return AutoModelForImageClassification if config.modality == "image" else AutoModelForSequenceClassification


def trained_teacher(config, data, output_dir, progress=True):
    """
    The benchmark's own teacher, trained on the train split with the stock `Trainer` (validation selects the epoch),
    saved under `output_dir/victims/teacher` so a resumed benchmark reloads it instead of training it again.
    """
    saved = Path(output_dir) / "victims" / "teacher"
    if (saved / "config.json").is_file():
        return _auto_class(config).from_pretrained(saved).eval()
    teacher = config.teacher
    settings = DemoSettings(task=config.modality, teacher=teacher["model"], teacher_epochs=teacher["epochs"],
                            teacher_learning_rate=teacher["learning_rate"], batch_size=teacher["batch_size"])
    work_dir = Path(output_dir) / "victims" / "training"
    model = train_teacher(_fresh_teacher(config, data), data.splits, settings, work_dir, teacher["seed"], progress)
    model.save_pretrained(saved)
    data.processor.save_pretrained(saved)
    shutil.rmtree(work_dir, ignore_errors=True)
    return model


def saved_victim(config, data, path):
    """A saved model folder (a teacher or a defended ensemble); that it reads the benchmark's inputs (modality, image
    processing) was checked with the config."""
    model = _auto_class(config).from_pretrained(path).eval()
    if model.config.num_labels != len(data.id2label):
        raise ValueError(f"victim {path} has {model.config.num_labels} classes; {config.dataset['name']} has "
                         f"{len(data.id2label)}.")
    return model


def load_victims(config, data, output_dir, progress=True) -> dict:
    """Every configured victim by name, in eval mode."""
    return {victim["name"]: saved_victim(config, data, victim["path"]) if victim["path"]
            else trained_teacher(config, data, output_dir, progress) for victim in config.victims}


def clone_builder(config, data, preset=None):
    """A function returning a freshly initialised clone of the configured architecture (the thief's model), or of
    another member `preset`."""
    preset, num_labels = preset or config.clone["model"], len(data.id2label)
    if config.modality == "image":
        return lambda: build_image_member(preset, num_labels, data.id2label, 3, config.dataset["image_size"])
    clone_config = text_member_config(preset, data.template_config, config.dataset["max_length"])
    return lambda: AutoModelForSequenceClassification.from_config(clone_config)

