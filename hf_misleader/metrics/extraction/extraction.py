"""Extraction metric: how well a stolen clone does the task, and how closely it copies the victim."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Scores a model-extraction clone on a labelled test set: `clone_accuracy` is the fraction of test inputs the clone
labels correctly, `clone_agreement` the fraction on which it gives the same top-1 label as the victim (the model
the thief queried, before any output defence).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): the clone's top-1 class per test input.
    references (`list[int]`): the true class per test input.
    victim_predictions (`list[int]`): the victim's top-1 class per test input.

Returns:
    `dict`: `clone_accuracy` and `clone_agreement`, fractions in [0, 1].

Example:
    >>> metric = evaluate.load("hf_misleader/metrics/extraction")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0], victim_predictions=[0, 0, 1])
    {'clone_accuracy': 0.6666666666666666, 'clone_agreement': 0.6666666666666666}
"""

_CITATION = """
@inproceedings{orekondy2019knockoff,
  title={Knockoff Nets: Stealing Functionality of Black-Box Models},
  author={Orekondy, Tribhuvanesh and Schiele, Bernt and Fritz, Mario},
  booktitle={CVPR},
  year={2019}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Extraction(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int64"),
                    "references": datasets.Value("int64"),
                    "victim_predictions": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions, references, victim_predictions):
        predictions = np.asarray(predictions)
        return {
            "clone_accuracy": float(np.mean(predictions == np.asarray(references))),
            "clone_agreement": float(np.mean(predictions == np.asarray(victim_predictions))),
        }
