"""Evaluation metric modules shipped with the package, loaded with `evaluate.load` from a local path (no network)."""

from pathlib import Path

METRICS_DIR = Path(__file__).parent


def load_extraction_metric():
    """The `extraction` metric (clone accuracy and agreement with the victim) as an `evaluate.Metric`."""
    import evaluate

    return evaluate.load(str(METRICS_DIR / "extraction"))
