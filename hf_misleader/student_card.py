"""The card of one MISLEADER student, pushed by `MisleaderTrainer.push_to_hub`."""

from __future__ import annotations

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .card_merge import BEGIN_MARKER, END_MARKER
from .cards_common import LIBRARY_NAME, TEMPLATES_DIR, dataset_type, union

STUDENT_TEMPLATE = "student_model_card.md"


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
        eval_results = [EvalResult(task_type=facts["pipeline_tag"], dataset_type=dataset_type({"dataset": dataset}),
                                   dataset_name=dataset, dataset_split="validation", metric_type="accuracy",
                                   metric_value=facts["eval_accuracy"])]
    data = ModelCardData(
        library_name=LIBRARY_NAME,
        pipeline_tag=facts["pipeline_tag"],
        tags=union(["model-extraction-defense", "misleader", "misleader-student"], tags),
        datasets=facts.get("datasets") or None,
        language=language,
        license=license,
        base_model=base_model,
        model_name=model_id.split("/")[-1] if eval_results else None,
        eval_results=eval_results,
    )
    return ModelCard.from_template(data, template_path=str(TEMPLATES_DIR / STUDENT_TEMPLATE), facts=facts,
                                   model_id=model_id, begin_marker=BEGIN_MARKER, end_marker=END_MARKER)
