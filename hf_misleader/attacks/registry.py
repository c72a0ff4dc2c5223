"""The attacks by name, with what each needs, so a benchmark can check a configuration before spending queries."""

from . import averaging, dfme, inverting, jbda, knockoff, unpermuting
from .common import PROBABILITY_OUTPUTS

# Each module has `run(api, budget, *, build_clone, ..., evaluate, checkpoints, seed, progress) -> (clone, history)`
# and the constants DESCRIPTION, PAPER, NEEDS_POOL, NEEDS_LABELLED, MODALITIES and ANSWERS.
ATTACKS = {
    "knockoff": knockoff,
    "jbda": jbda,
    "dfme": dfme,
    "averaging": averaging,
    "inverting": inverting,
    "unpermuting": unpermuting,
}
DESCRIPTIONS = {name: module.DESCRIPTION for name, module in ATTACKS.items()}


def get_attack(name):
    if name not in ATTACKS:
        raise ValueError(f"Unknown attack {name!r}; choose one of {sorted(ATTACKS)}.")
    return ATTACKS[name]


def check_attack(name, *, modality, output, has_pool=True, has_labelled=False):
    """
    Raise a `ValueError` naming the problem if attack `name` cannot run in this setting.

    Args:
        name (`str`): a key of `ATTACKS`.
        modality (`str`): `"image"` or `"text"`.
        output (`str`): the black box's output mode (`"probabilities"`, `"top_k"`, `"label"`).
        has_pool (`bool`): whether the thief has a pool of its own inputs.
        has_labelled (`bool`): whether it has a few labelled real samples.

    Returns:
        The attack's module.
    """
    attack = get_attack(name)
    if modality not in attack.MODALITIES:
        raise ValueError(f"Attack {name!r} works on {' and '.join(attack.MODALITIES)} victims, not {modality}.")
    if attack.ANSWERS == "probabilities" and output not in PROBABILITY_OUTPUTS:
        raise ValueError(f"Attack {name!r} learns from probabilities; the black box answers {output!r}.")
    if attack.ANSWERS == "label" and output != "label":
        raise ValueError(f"Attack {name!r} learns from labels; the black box answers {output!r}.")
    if attack.NEEDS_POOL and not has_pool:
        raise ValueError(f"Attack {name!r} needs a pool of the thief's own inputs.")
    if attack.NEEDS_LABELLED and not has_labelled:
        raise ValueError(f"Attack {name!r} needs a few labelled real samples (labelled_inputs, labelled_labels).")
    return attack
