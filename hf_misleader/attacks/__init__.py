"""Model-extraction attacks, one file each. Every attack queries a `BlackBoxAPI` and returns `(clone, history)`."""

from . import averaging, dfme, inverting, jbda, knockoff, unpermuting
from .registry import ATTACKS, DESCRIPTIONS, check_attack, get_attack

__all__ = ["ATTACKS", "DESCRIPTIONS", "averaging", "check_attack", "dfme", "get_attack", "inverting", "jbda",
           "knockoff", "unpermuting"]
