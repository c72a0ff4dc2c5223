"""The `hf-misleader` command line."""

import argparse
import sys

from . import __version__


def seed(text: str) -> int:  # argparse names the type by this function's name
    value = int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**32), got {text}")
    return value


def _demo(arguments):
    if arguments.no_progress:  # also the data and weight-loading bars, not only training's
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    from .demo import run_demo

    output_dir = arguments.output_dir or ("outputs/demo" if arguments.task == "image" else "outputs/demo-text")
    run_demo(output_dir=output_dir, quick=arguments.quick, seed=arguments.seed, progress=not arguments.no_progress,
             task=arguments.task)


def _defend(arguments):
    from .recipe import main as run_recipe

    run_recipe([arguments.config])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-misleader", description="Defend classifiers against model extraction.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="Defend a real classifier end to end and report honestly.")
    demo.add_argument("--task", choices=("image", "text"), default="image",
                      help="image: MNIST digits (default); text: Rotten Tomatoes with a pretrained MiniLM teacher.")
    demo.add_argument("--output-dir", default=None,
                      help="Where to write the model, results and card (default: outputs/demo[-text]).")
    demo.add_argument("--quick", action="store_true", help="Toy scale (a minute or two), for tests.")
    demo.add_argument("--seed", type=seed, default=0, help="Seed of the splits, training and attacks.")
    demo.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    demo.set_defaults(handler=_demo)
    defend = commands.add_parser(
        "defend", help="Defend a classifier as a recipe config says (the trainers/ recipes; accelerate launch-able)."
    )
    defend.add_argument("--config", required=True,
                        help="YAML or JSON with DefendArguments and MisleaderTrainingArguments, e.g. "
                             "trainers/configs/image_classification.yaml.")
    defend.set_defaults(handler=_defend)
    from .benchmark import add_benchmark_command
    from .hub import add_push_command

    add_benchmark_command(commands)
    add_push_command(commands)
    return parser


def report_errors(prog: str, function, *args, **kwargs) -> int:
    """Run `function`; the exit status, with a user's error (a bad config, a missing file) as one line on stderr,
    not a traceback. Also the recipe scripts' (`trainers/*_classification.py`) entry point."""
    try:
        function(*args, **kwargs)
    except (ValueError, ImportError, OSError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # what was finished is on disk (a benchmark resumes from it); no traceback
        print(f"\n{prog}: interrupted.", file=sys.stderr)
        return 130
    return 0


def main(argv=None) -> int:
    arguments = build_parser().parse_args(argv)
    return report_errors(f"hf-misleader {arguments.command}", arguments.handler, arguments)


if __name__ == "__main__":
    sys.exit(main())
