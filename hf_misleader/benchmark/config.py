"""The benchmark's configuration: read from YAML or a dict, checked whole before anything runs.

The accepted keys and values are in `schema.py`, the checks of each section in `checks.py`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from .checks import (
    check_attack,
    check_budgets_fit,
    check_clone,
    check_dataset,
    check_defenses,
    check_pools,
    check_teacher,
    check_victims,
)
from .schema import (
    DATASETS,
    IN_DISTRIBUTION,
    TOP_LEVEL_KEYS,
    BenchmarkConfigError,
    check_int_list,
    check_list,
    no_duplicates,
    no_unknown_keys,
)


@dataclass
class BenchmarkConfig:
    """
    A checked benchmark configuration. Axes (one run per combination): `victims` x `defenses` x `attacks` (each with
    its `answers`) x `pools` x `budgets` x `seeds`. The rest says how the data, the teacher and the clones are made.
    """

    name: str
    dataset: dict
    victims: list  # {"name", "path"}; path None = the teacher trained by the benchmark
    teacher: dict
    defenses: list  # {"name", "spec" (for `build_defense`; None: undefended), "params" (as rows record them)}
    attacks: list  # {"name", "answers", "kwargs", "adaptive": {mode: kwargs}}
    pools: list  # {"name", "size"}
    budgets: list
    seeds: list
    clone: dict
    # The defences built while checking (model-valued parameters as stand-ins): what each is, for planning runs.
    built_defenses: list = field(default=None, repr=False, compare=False)

    @property
    def modality(self) -> str:
        return DATASETS[self.dataset["name"]][0]

    def to_dict(self) -> dict:
        config = asdict(self)
        config.pop("built_defenses")
        return config

    def settings(self) -> dict:
        """What a finished row depends on besides its axis values: resuming with other settings is refused."""
        return {
            "dataset": self.dataset, "teacher": self.teacher, "clone": self.clone,
            "victims": {v["name"]: v["path"] for v in self.victims},
            "attacks": {a["name"]: {"kwargs": a["kwargs"], "adaptive": a["adaptive"]} for a in self.attacks},
            "pools": {p["name"]: p["size"] for p in self.pools},
        }


def load_config(config) -> BenchmarkConfig:
    """
    Read and check a benchmark configuration.

    Args:
        config (`str`, `os.PathLike`, `dict` or [`BenchmarkConfig`]):
            A YAML (or JSON) file, or the same structure as a dict.

    Returns:
        [`BenchmarkConfig`], with every default filled in.

    Raises:
        [`BenchmarkConfigError`] (a `ValueError`) naming the first bad key.
    """
    if isinstance(config, BenchmarkConfig):
        return config
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"No benchmark config at {path}.")
        try:
            config = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:  # one line naming the file and the spot, not the scanner's traceback
            reason = " ".join(str(error).split())
            raise BenchmarkConfigError("<top level>", f"{path} is not valid YAML: {reason}") from None
    if not isinstance(config, dict):
        raise BenchmarkConfigError("<top level>", f"expected a mapping, got {type(config).__name__}.")
    no_unknown_keys("<top level>", config, TOP_LEVEL_KEYS)
    for key in ("dataset", "victims", "attacks", "budgets"):
        if key not in config:
            raise BenchmarkConfigError(key, "missing (required).")

    dataset = check_dataset(config["dataset"])
    modality = DATASETS[dataset["name"]][0]
    victims = check_victims(config["victims"], dataset)
    teacher = check_teacher(config.get("teacher"), modality, needed=any(v["path"] is None for v in victims))
    defenses, built = check_defenses(config.get("defenses", ["none"]), modality)
    attacks = [check_attack(f"attacks[{i}]", spec, modality)
               for i, spec in enumerate(check_list("attacks", config["attacks"]))]
    no_duplicates("attacks", [a["name"] for a in attacks])
    pools = check_pools(config.get("pools", [IN_DISTRIBUTION]), dataset, modality)
    budgets = check_int_list("budgets", config["budgets"], minimum=1)
    seeds = check_int_list("seeds", config.get("seeds", [0]), minimum=0)
    clone = check_clone(config.get("clone", {}), modality)
    check_budgets_fit(budgets, pools, attacks, dataset["splits"]["validation"],
                      averaging_runs=any(defense is not None and defense.randomised for defense in built))
    name = config.get("name", "benchmark")
    if not isinstance(name, str) or not name:
        raise BenchmarkConfigError("name", f"expected a non-empty string, got {name!r}.")
    return BenchmarkConfig(name=name, dataset=dataset, victims=victims, teacher=teacher, defenses=defenses,
                           attacks=attacks, pools=pools, budgets=budgets, seeds=seeds, clone=clone,
                           built_defenses=built)
