"""Argument checks and small helpers shared by the attacks (budgets, pools, answer modes, modalities)."""

import torch

from ..inputs import accepted_inputs, as_input_dict, num_rows, select_rows

LABEL_MODES = ("soft", "label_only")
# API outputs that answer with a row of class probabilities (top-k: the other classes at 0).
PROBABILITY_OUTPUTS = ("probabilities", "top_k")


def check_budget(budget):
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be a positive integer, got {budget!r}.")


def check_build_clone(build_clone):
    if not callable(build_clone) or isinstance(build_clone, torch.nn.Module):
        raise TypeError("build_clone must be a function returning a fresh clone model, not a model.")


def check_checkpoints(checkpoints, budget, smallest=1):
    """Sorted query counts for a learning curve: within `[smallest, budget]`, ending at the budget."""
    checkpoints = sorted(set(checkpoints or [budget]))
    if checkpoints[-1] != budget or checkpoints[0] < smallest:
        raise ValueError(f"checkpoints must lie in [{smallest}, budget] and end at the budget; got {checkpoints}.")
    return checkpoints


def check_labels(labels, api):
    """Soft labels need probability answers; label-only training needs label answers."""
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {LABEL_MODES}, got {labels!r}.")
    if labels == "soft" and api.output not in PROBABILITY_OUTPUTS:
        raise ValueError(f"A 'soft' attack needs an API answering probabilities, got output={api.output!r}.")
    if labels == "label_only" and api.output != "label":
        raise ValueError(f"A 'label_only' attack needs an API with output='label', got {api.output!r}.")


def require_probabilities(attack, api):
    if api.output not in PROBABILITY_OUTPUTS:
        raise ValueError(f"{attack} learns from probabilities; it needs an API with output in "
                         f"{PROBABILITY_OUTPUTS}, got {api.output!r}.")


def is_text(api, pool=None):
    """Whether the victim (or the thief's pool) takes token ids rather than `pixel_values`."""
    if pool is not None and "pixel_values" not in as_input_dict(pool):
        return True
    main_input = getattr(api.model, "main_input_name", None)
    if main_input is not None and main_input != "pixel_values":
        return True
    accepted = accepted_inputs(api.model)
    return accepted is not None and "pixel_values" not in accepted


def require_images(attack, api, pool=None):
    if is_text(api, pool):
        raise ValueError(f"{attack} is image-only: it needs gradients with respect to continuous inputs "
                         "(pixel_values), which token ids do not have. Use it on image victims.")


def draw_from_pool(pool, count, budget, seed, why="each pool input is asked once"):
    """`count` distinct pool inputs in a seeded random order; a pool too small for the budget is an error."""
    pool = as_input_dict(pool)
    pool_size = num_rows(pool)
    if count > pool_size:
        raise ValueError(
            f"A budget of {budget} queries needs {count} distinct inputs ({why}), more than the pool of {pool_size} "
            "inputs. Use a larger pool or a smaller budget."
        )
    chosen = torch.randperm(pool_size, generator=torch.Generator().manual_seed(seed))[:count]
    return select_rows(pool, chosen)


def answered_classes(answers):
    """The class each answer names: the label itself, or the most probable class."""
    return answers if answers.dim() == 1 else answers.argmax(-1)


def clamped_log(probabilities, eps=1e-6):
    """Log-probabilities of answers that may hold exact 0s and 1s (never log_softmax of probabilities)."""
    return torch.log(probabilities.float().clamp(eps, 1.0))
