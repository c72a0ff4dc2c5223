"""The card of a benchmark-results dataset: what each column means, a preview, and the worst case per defence."""

from __future__ import annotations

from huggingface_hub import constants

from .card_merge import BEGIN_MARKER, END_MARKER
from .cards_common import LIBRARY_NAME, TEMPLATES_DIR

BENCHMARK_TEMPLATE = "benchmark_dataset_card.md"

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

