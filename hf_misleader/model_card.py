"""The card of a MISLEADER-defended model: Hub metadata (`model-index`) plus a Jinja2-rendered README."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData, constants

from .card_merge import BEGIN_MARKER, END_MARKER
from .cards_common import LIBRARY_NAME, TEMPLATES_DIR, dataset_type

DEFENDED_TEMPLATE = "defended_model_card.md"
TAGS = ["model-extraction-defense", "misleader", "ensemble"]

# Display order of the benchmark rows: pool, then output mode, then victim, so that each
# teacher row sits right above the defended row it should be compared with.
_POOL_ORDER = {"in_distribution": 0, "out_of_distribution": 1}
_LABELS_ORDER = {"soft": 0, "label_only": 1}
_VICTIM_ORDER = {"teacher": 0, "defended": 1}


def _sorted_attacks(attacks: list[dict]) -> list[dict]:
    return sorted(
        attacks,
        key=lambda a: (
            _POOL_ORDER.get(a["pool"], len(_POOL_ORDER)),
            a["pool"],
            _LABELS_ORDER.get(a["labels"], len(_LABELS_ORDER)),
            a["labels"],
            _VICTIM_ORDER.get(a["victim"], len(_VICTIM_ORDER)),
            a["queries"],
        ),
    )


def _worst_cases(attacks: list[dict]) -> list[dict]:
    # A defence is scored by its strongest attacker: per query pool and budget, the row whose clone
    # is the most accurate, for the teacher and for the defended model side by side.
    groups: dict[tuple, dict] = {}
    for attack in attacks:
        group = groups.setdefault((attack["pool"], attack["queries"]), {})
        best = group.get(attack["victim"])
        if best is None or attack["clone_accuracy"] > best["clone_accuracy"]:
            group[attack["victim"]] = attack
    return [
        {"pool": pool, "queries": queries, "teacher": group["teacher"], "defended": group["defended"]}
        for (pool, queries), group in groups.items()
        if "teacher" in group and "defended" in group
    ]


def build_card_data(
    results: dict, model_name: str | None = None, benchmark_repo_id: str | None = None
) -> ModelCardData:
    """
    Build the Hub metadata of a defended model from a benchmark `results` dict.

    The defended model's test accuracy becomes an `accuracy` result; every attack row against the
    defended model adds a `clone_accuracy` and a `clone_agreement` result, whose `metric_args` keep
    the victim, query pool, output mode and query count machine-readable. A model pushed without a
    benchmark (no `defended_accuracy`, no `attacks`) gets no `model-index`.

    Args:
        results (`dict`):
            The demo's `results.json` contract: `dataset`, `splits`, `teacher`, `defended_accuracy`,
            `members`, `attacks`, ... with accuracies as fractions in [0, 1].
        model_name (`str`, *optional*, defaults to `None`):
            Name recorded in the `model-index`. Defaults to `results["model_name"]` when present, else
            `"<teacher name>-misleader"`.
        benchmark_repo_id (`str`, *optional*, defaults to `None`):
            Dataset repo holding the raw benchmark runs; recorded as the `source` of the results.

    Returns:
        [`huggingface_hub.ModelCardData`]: card data whose `eval_results` round-trip through the YAML header.
    """
    model_name = model_name or results.get("model_name") or f"{results['teacher']['name']}-misleader"
    task = results.get("pipeline_tag") or "image-classification"
    eval_results = []
    if results.get("dataset") and (results.get("defended_accuracy") is not None or results.get("attacks")):
        common = {
            "task_type": task,
            "dataset_type": dataset_type(results),
            "dataset_name": results["dataset"],
            "dataset_split": "test",
        }
        if benchmark_repo_id:
            common["source_name"] = "hf-misleader extraction benchmark"
            common["source_url"] = f"{constants.ENDPOINT}/datasets/{benchmark_repo_id}"
        if results.get("defended_accuracy") is not None:
            eval_results.append(EvalResult(metric_type="accuracy", metric_value=results["defended_accuracy"], **common))
        for attack in _sorted_attacks(results.get("attacks") or []):
            if attack["victim"] != "defended":
                continue
            what = f"{attack['pool']}, {attack['labels']}, {attack['queries']} queries"
            args = {key: attack[key] for key in ("victim", "pool", "labels", "queries")}
            for metric, name in (("clone_accuracy", "clone accuracy"),
                                 ("clone_agreement", "clone agreement with the teacher")):
                eval_results.append(
                    EvalResult(metric_type=metric, metric_name=f"{name} ({what})", metric_value=attack[metric],
                               metric_args=args, **common)
                )
    return ModelCardData(
        library_name=LIBRARY_NAME,
        pipeline_tag=task,
        tags=list(TAGS),
        datasets=[results["dataset"]] if results.get("dataset") else None,
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )


def results_from_config(config) -> dict:
    """
    The part of the `results.json` contract a saved ensemble knows about itself: teacher, members and objective.

    Used to render the card of a model pushed without a benchmark, and to fill what a results dict leaves out.

    Args:
        config ([`MisleaderConfig`] or `dict`):
            The ensemble's configuration (or its `config.json` as a dict).

    Returns:
        `dict`: `teacher`, `members`, `objective` and `pipeline_tag`.
    """
    config = config if isinstance(config, dict) else config.to_dict()
    names = config.get("member_names") or [None] * len(config.get("members") or [])
    hyper = config.get("member_hyperparameters") or [{} for _ in names]
    members = []
    for index, (member, name, extra) in enumerate(zip(config.get("members") or [], names, hyper)):
        record = {"name": name or f"member-{index}", "model_type": member.get("model_type")}
        record.update({k: v for k, v in (extra or {}).items() if v is not None})
        members.append(record)
    architectures = config.get("architectures") or []
    task = "text-classification" if any("Sequence" in a for a in architectures) else "image-classification"
    teacher = config.get("teacher_name_or_path") or "an unrecorded teacher"
    return {"teacher": {"name": teacher, "model_type": None}, "members": members,
            "objective": config.get("objective") or "alternating", "pipeline_tag": task}


def _plots(plot_filename) -> list[str]:
    if not plot_filename:
        return []
    return [plot_filename] if isinstance(plot_filename, str) else list(plot_filename)


def render_model_card(
    results: dict,
    model_id: str = "path/to/defended",
    plot_filename: str | list[str] | None = "extraction.png",
    benchmark_repo_id: str | None = None,
) -> ModelCard:
    """
    Render the card of a defended model from the `defended_model_card.md` template.

    The generated text sits between [`~card_merge.BEGIN_MARKER`] and [`~card_merge.END_MARKER`], so that
    [`~card_merge.merge_model_cards`] can replace it on a later push and keep what the repo's owner wrote around it.

    Args:
        results (`dict`):
            The demo's `results.json` contract (see [`build_card_data`]). Only `teacher` and `members` are required
            (see [`results_from_config`]): without accuracies and attacks the card says the model is unmeasured.
        model_id (`str`, *optional*, defaults to `"path/to/defended"`):
            Hub repo id or local path shown in the title and in the usage snippet.
        plot_filename (`str` or `list[str]`, *optional*, defaults to `"extraction.png"`):
            File name(s) of plots, relative to the card, the extraction curves first; `None` leaves them out. The
            extraction plot itself is drawn by `hf_misleader.plotting.plot_extraction_curves`.
        benchmark_repo_id (`str`, *optional*, defaults to `None`):
            Dataset repo with the raw benchmark runs (`hf_misleader.hub.push_benchmark_to_hub`), linked from the card.

    Returns:
        [`huggingface_hub.ModelCard`]: the rendered card, YAML metadata included.
    """
    attacks = _sorted_attacks(results.get("attacks") or [])
    return ModelCard.from_template(
        build_card_data(results, benchmark_repo_id=benchmark_repo_id),
        template_path=str(TEMPLATES_DIR / DEFENDED_TEMPLATE),
        results=results,
        model_id=model_id,
        plots=_plots(plot_filename),
        attacks=attacks,
        worst_cases=_worst_cases(attacks),
        benchmark_repo_id=benchmark_repo_id,
        hub_url=constants.ENDPOINT,
        begin_marker=BEGIN_MARKER,
        end_marker=END_MARKER,
    )


def write_model_card(
    results: dict,
    directory: str | Path,
    model_id: str = "path/to/defended",
    plot_filename: str | list[str] | None = "extraction.png",
    benchmark_repo_id: str | None = None,
) -> Path:
    """
    Render the card of a defended model and save it as `README.md` in `directory`.

    Args:
        results (`dict`):
            The demo's `results.json` contract (see [`build_card_data`]).
        directory (`str` or `os.PathLike`):
            Folder to write into, usually the saved model's folder; created if missing.
        model_id (`str`, *optional*, defaults to `"path/to/defended"`):
            Hub repo id or local path shown in the title and in the usage snippet.
        plot_filename (`str` or `list[str]`, *optional*, defaults to `"extraction.png"`):
            File name(s) of plots, relative to `directory`; `None` leaves them out.
        benchmark_repo_id (`str`, *optional*, defaults to `None`):
            Dataset repo with the raw benchmark runs, linked from the card.

    Returns:
        `pathlib.Path`: path of the written `README.md`.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "README.md"
    render_model_card(results, model_id=model_id, plot_filename=plot_filename,
                      benchmark_repo_id=benchmark_repo_id).save(path)
    return path
