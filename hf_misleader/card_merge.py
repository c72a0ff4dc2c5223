"""
The merge that updates a card already on the Hub with a freshly rendered one without losing what its owner wrote,
and the markers that delimit the generated section of every card.
"""

from __future__ import annotations

from .cards_common import LIBRARY_NAME, union

# The generated part of a card sits between these markers: a later push replaces it and keeps the rest.
BEGIN_MARKER = "<!-- hf-misleader: generated section, replaced on every push; edit outside it -->"
END_MARKER = "<!-- hf-misleader: end of generated section -->"

# Results a push generates; on a later push they are replaced, not accumulated.
_GENERATED_METRICS = {"accuracy", "clone_accuracy", "clone_agreement"}


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
            The card just rendered ([`~model_card.render_model_card`], [`~benchmark_card.render_benchmark_card`], ...).
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
            data[key] = union(data.get(key), value)
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
