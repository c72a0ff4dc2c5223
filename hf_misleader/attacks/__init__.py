"""Model-extraction attacks, one file each. Every attack queries a `BlackBoxAPI` and returns `(clone, history)`."""

from . import knockoff

__all__ = ["knockoff"]
