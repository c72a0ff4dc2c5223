"""The extraction benchmark: victims x output defences x attacks x query pools x budgets x seeds -> a `Dataset`.

```python
from hf_misleader.benchmark import run_benchmark

runs = run_benchmark("benchmarks/configs/tiny.yaml", "outputs/benchmark/tiny")
runs.filter(lambda row: row["answers"] == "worst_case").to_pandas()
```

The pieces: `config` (the config; what it may say in `schema`, its checks in `checks`),
`data` (data, pools, victims, clones), `runs` (one theft), `results` (rows on disk,
worst case, floor, summary) and `plots`.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset
from tqdm.auto import tqdm

from .config import BenchmarkConfig, BenchmarkConfigError, load_config
from .plots import plot_utility_vs_extraction, plot_worst_case_curves
from .results import SUMMARY_MD, ResultStore, format_summary
from .runs import Run, plan_runs

WORST_CASE_PLOT = "worst_case_vs_queries.png"
PARETO_PLOT = "utility_vs_extraction.png"

__all__ = ["BenchmarkConfig", "BenchmarkConfigError", "add_benchmark_command", "load_config", "plan_runs",
           "run_benchmark"]


def _prepare(config, output_dir, progress):
    """Everything the runs share; only built when some run is left to do."""
    from .data import clone_builder, load_benchmark_data, load_victims
    from .runs import RunContext
    from ..metrics import load_extraction_metric

    data = load_benchmark_data(config)
    victims = load_victims(config, data, output_dir, progress)
    return RunContext(config=config, data=data, victims=victims, build_clone=clone_builder(config, data),
                      metric=load_extraction_metric(), progress=progress)


def _describe(run: Run) -> str:
    return f"{run.victim}+{run.defense} {run.attack}/{run.answers} {run.pool} {run.budget}q s{run.seed}"


def run_benchmark(config, output_dir=None, progress=True, report=None) -> Dataset:
    """
    Run every combination a benchmark config lists and return one row per run, plus one `answers="worst_case"` row
    per (victim, defence, attack, pool, budget, seed): the strongest way of using the answers.

    Results are written to `output_dir` after every run (`results.json`, `results.parquet`, atomically), so an
    interrupted benchmark resumes where it stopped: runs found there are not run again. At the end it also writes
    `summary.md` and two plots (`worst_case_vs_queries.png`, `utility_vs_extraction.png`).

    Args:
        config (`str`, `os.PathLike`, `dict` or [`BenchmarkConfig`]):
            A YAML file like `benchmarks/configs/tiny.yaml`, or the same as a dict. Checked whole before anything
            runs ([`BenchmarkConfigError`] names the bad key).
        output_dir (`str` or `os.PathLike`, *optional*, defaults to `outputs/benchmark/<config name>`):
            Where results live.
        progress (`bool`, *optional*, defaults to `True`):
            Show progress bars (over runs, and inside each run).
        report (`bool`, *optional*, defaults to `progress`):
            Print the summary table and the line naming the output folder at the end (the command line always does,
            `--no-progress` or not).

    Returns:
        `datasets.Dataset`: the columns of `results.COLUMNS`.
    """
    config = load_config(config)
    output_dir = Path(output_dir or Path("outputs") / "benchmark" / config.name)
    store = ResultStore(output_dir, config)
    pending = [run for run in plan_runs(config) if run.key not in store.done]
    if pending:
        from .runs import execute_run

        context = _prepare(config, output_dir, progress)
        bar = tqdm(pending, desc="benchmark", unit="run", disable=not progress)
        for run in bar:
            bar.set_postfix_str(_describe(run))
            store.add(execute_run(run, context))
    store.write()
    rows = store.rows()
    summary = format_summary(rows)
    (output_dir / SUMMARY_MD).write_text(f"# {config.name}: worst case over the thief's ways of using answers\n\n"
                                         f"{summary}\n")
    plot_worst_case_curves(rows, output_dir / WORST_CASE_PLOT)
    plot_utility_vs_extraction(rows, output_dir / PARETO_PLOT)
    if progress if report is None else report:
        print(summary)
        print(f"\n{len(pending)} runs done now, {len(store.runs) - len(pending)} found finished; wrote {output_dir}/")
    return store.dataset()


def _benchmark_command(arguments):
    if arguments.no_progress:  # also the data and weight-loading bars
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    # --no-progress hides the bars only: the summary and the output folder are what the command is run for.
    run_benchmark(arguments.config, arguments.output_dir, progress=not arguments.no_progress, report=True)


def add_benchmark_command(subparsers):
    """
    Add `hf-misleader benchmark --config FILE [--output-dir D] [--no-progress]` to an argparse sub-parser set; the
    command's handler is `arguments.handler(arguments)`.
    """
    parser = subparsers.add_parser(
        "benchmark", help="Steal victims behind output defences as a config lists; resumable; worst case first."
    )
    parser.add_argument("--config", required=True, help="YAML benchmark config, e.g. benchmarks/configs/tiny.yaml.")
    parser.add_argument("--output-dir", default=None,
                        help="Where results live (default: outputs/benchmark/<config name>); finished runs there "
                             "are not run again.")
    parser.add_argument("--no-progress", action="store_true", help="Hide progress bars (the summary is still printed).")
    parser.set_defaults(handler=_benchmark_command)
    return parser
