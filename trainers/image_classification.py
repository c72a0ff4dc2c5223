"""Defend an image classifier with MISLEADER: a launchable recipe.

    python trainers/image_classification.py trainers/configs/image_classification.yaml
    accelerate launch --config_file trainers/accelerate/multi_cpu.yaml \
        trainers/image_classification.py trainers/configs/image_classification.yaml

Arguments: hf_misleader.recipe.DefendArguments and hf_misleader.MisleaderTrainingArguments, from one YAML file or as
`--flags` (`--help` lists them). `hf-misleader defend --config FILE` runs the same recipe.
"""

from hf_misleader.recipe import main

if __name__ == "__main__":
    main(task="image")
