"""Defend an image classifier with MISLEADER: a launchable recipe.

    python trainers/image_classification.py trainers/configs/image_classification.yaml
    accelerate launch --config_file trainers/accelerate/multi_cpu.yaml \
        trainers/image_classification.py trainers/configs/image_classification.yaml

Arguments: hf_misleader.recipe.DefendArguments and hf_misleader.MisleaderTrainingArguments, from one YAML file or as
`--flags` (`--help` lists them). `hf-misleader defend --config FILE` runs the same recipe.
"""

import os
import sys

from hf_misleader.cli import report_errors
from hf_misleader.recipe import main

if __name__ == "__main__":
    # A bad config is one line and exit status 2, as for `hf-misleader defend`; main() closes a torchrun process group.
    sys.exit(report_errors(os.path.basename(__file__), main, task="image"))
