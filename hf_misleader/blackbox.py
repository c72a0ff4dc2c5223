"""BlackBoxAPI: exactly what a thief sees of a served classifier, with exact query accounting."""

import threading

import torch
from transformers import Pipeline

from .defenses import build_defense
from .inputs import accepted_inputs, as_input_dict, classifier_logits, num_rows, select_rows
from .pipeline_misleader import QueryBudgetExceeded  # one exception for every budget, served or simulated

OUTPUT_MODES = ("probabilities", "top_k", "label")


class BlackBoxAPI:
    """
    A served classifier as a thief sees it: inputs in, probabilities (top-k scores, or labels only) out, never
    logits. Every input counts as one query, whether real, synthetic, augmented or repeated.

    Args:
        model ([`~transformers.PreTrainedModel`], `torch.nn.Module` or [`~transformers.Pipeline`]):
            The victim. A classifier module (a stock model, a defended ensemble, or any module returning `logits` or
            a logits tensor) answers the softmax of its logits, computed in float32 so that logits of 1e4 still give
            finite probabilities. An image- or text-classification pipeline (stock or protected) answers the scores
            it serves, for all classes, mapped back to class indices through `model.config` and renormalised to sum
            to 1 (a protected pipeline that lists fewer classes or rounds serves rows that do not).
        output (`str`, *optional*, defaults to `"probabilities"`):
            `"probabilities"`: the (defended) probabilities; `"top_k"`: the probabilities of the `top_k` most likely
            classes as they are, zeros elsewhere and *not* renormalised, like `pipeline(..., top_k=k)` and commercial
            APIs serve them (the uncovered mass is visible to a thief too; renormalise on the thief's side if
            needed); `"label"`: the top-1 class index only.
        budget (`int`, *optional*):
            Total number of inputs this API answers; more raises [`QueryBudgetExceeded`]. Unlimited when `None`.
        batch_size (`int`, *optional*, defaults to 256):
            Inputs per forward pass. Answers do not depend on it, except those of randomised defences, which depend
            on the order in which randomness is drawn.
        defense (`str`, `dict` or [`~defenses.OutputDefense`], *optional*):
            An output defence applied to the victim's probabilities before `output` selects what leaves the API
            (see [`~defenses.build_defense`]). Defences that read the query inputs get each batch as it was given.
        top_k (`int`, *optional*):
            How many classes `output="top_k"` reveals (required there, refused with the other modes).
        seed (`int`, *optional*, defaults to 0):
            Seed of the API's own `torch.Generator`, the only randomness of randomised defences: two APIs with the
            same seed answer the same stream of queries identically. A query that fails leaves it untouched.
    """

    def __init__(self, model, output="probabilities", budget=None, batch_size=256, defense=None, top_k=None, seed=0):
        if output not in OUTPUT_MODES:
            raise ValueError(f"output must be one of {OUTPUT_MODES} (never logits), got {output!r}.")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
            raise ValueError(f"budget must be a non-negative integer or None, got {budget!r}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if output == "top_k" and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f'output="top_k" needs top_k, a positive integer; got {top_k!r}.')
        if output != "top_k" and top_k is not None:
            raise ValueError(f'top_k only applies to output="top_k"; got top_k={top_k!r} with output={output!r}.')
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}.")
        self.is_pipeline = isinstance(model, Pipeline)
        self._accepted = None
        if self.is_pipeline:
            self._label_to_index = _label_to_index(model)
        elif callable(getattr(model, "forward", None)):
            model = model.eval()
            self._accepted = accepted_inputs(model)
        else:
            raise TypeError(f"model must be a classifier module or a classification pipeline, got "
                            f"{type(model).__name__}.")
        self.model = model
        self.output = output
        self.top_k = top_k
        self.budget = budget
        self.batch_size = batch_size
        self.defense = build_defense(defense)
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)
        self._num_labels = getattr(_config(model), "num_labels", None)
        self._queries_used = 0
        self._lock = threading.Lock()

    @property
    def queries_used(self) -> int:
        return self._queries_used

    @property
    def queries_left(self):
        return None if self.budget is None else self.budget - self._queries_used

    @property
    def num_labels(self):
        """The number of classes of every answer (`None` for a module without config until it has answered)."""
        return self._num_labels

    @property
    def input_kind(self):
        """
        What `query` takes: `"pixel_values"` (a `(n, channels, height, width)` tensor), `"input_ids"` (a dict of
        token tensors: `input_ids`, `attention_mask`, ...), `"images"` or `"texts"` (a list of raw images or strings,
        for a pipeline victim); `None` when a bare module does not say.
        """
        if self.is_pipeline:
            return "images" if getattr(self.model, "image_processor", None) is not None else "texts"
        name = getattr(self.model, "main_input_name", None)
        if name is None and self._accepted is not None:
            name = next((kind for kind in ("pixel_values", "input_ids") if kind in self._accepted), None)
        return name if name in ("pixel_values", "input_ids") else None

    def _charge(self, count: int):
        with self._lock:
            if self.budget is not None and self._queries_used + count > self.budget:
                raise QueryBudgetExceeded(
                    f"Query budget exceeded: this call asks {count} queries (one per input) but only "
                    f"{self.budget - self._queries_used} of the budget of {self.budget} are left. Nothing was "
                    "answered or charged."
                )
            self._queries_used += count

    def query(self, inputs) -> torch.Tensor:
        """
        Answer a batch of inputs (see `input_kind`): a tensor of `pixel_values`, a dict of tensors (`input_ids`,
        `attention_mask`, ...) for text, or for a pipeline victim a list of raw images or strings. Every row counts as
        one query.

        Returns:
            `torch.Tensor`: `(n, num_labels)` float32 probabilities (`output="top_k"`: zeros outside the `top_k`
            best), or `(n,)` int64 class indices with `output="label"`.
        """
        inputs, count = self._as_batch(inputs)
        self._charge(count)
        generator_state = self._generator.get_state()
        try:
            with torch.no_grad():
                return self._answer(inputs, count)
        except Exception:
            self._charge(-count)  # no answer left the API: nothing to count
            self._generator.set_state(generator_state)
            raise

    def _as_batch(self, inputs):
        if self.is_pipeline:
            if not isinstance(inputs, (list, tuple)):
                raise TypeError(
                    f"A pipeline victim takes a list of raw {self.input_kind}, got {type(inputs).__name__}."
                )
            inputs, count = list(inputs), len(inputs)
        else:
            if torch.is_tensor(inputs) and inputs.dim() < 2:
                raise ValueError(f"query() takes a batch of inputs; got a tensor of shape {tuple(inputs.shape)}.")
            inputs = as_input_dict(inputs)
            count = num_rows(inputs)
        if count == 0:
            raise ValueError("query() takes a non-empty batch of inputs.")
        return inputs, count

    def _answer(self, inputs, count):
        answers = []
        for start in range(0, count, self.batch_size):
            rows = slice(start, start + self.batch_size)
            batch = inputs[rows] if self.is_pipeline else select_rows(inputs, rows)
            if self.is_pipeline:
                probabilities = self._pipeline_probabilities(batch)
            else:
                probabilities = self._model_probabilities(batch)
            if self.defense is not None:
                probabilities = self.defense(probabilities, inputs=batch, generator=self._generator)
            answers.append(self._select_output(probabilities.float().cpu()))
        return torch.cat(answers)

    def _model_probabilities(self, batch):
        logits = classifier_logits(self.model, batch, self._accepted)
        # Softmax on the logits themselves (not exp then normalise): logits of 1e4 give exact 0/1, never NaN.
        probabilities = torch.softmax(logits.float(), dim=-1)
        if not torch.isfinite(probabilities).all():
            raise ValueError("The model returned non-finite logits (NaN or +inf); nothing was answered.")
        self._num_labels = probabilities.shape[-1]
        return probabilities

    def _pipeline_probabilities(self, batch):
        num_labels = self._num_labels
        served = self.model(batch, top_k=num_labels, batch_size=min(self.batch_size, len(batch)))
        probabilities = torch.zeros(len(batch), num_labels)
        for row, answer in enumerate(served):
            for item in answer if isinstance(answer, list) else [answer]:
                if item["label"] not in self._label_to_index:
                    raise ValueError(f"The pipeline served label {item['label']!r}, not in its model's id2label.")
                # A label-only protected pipeline serves no score: its one label carries all the mass.
                probabilities[row, self._label_to_index[item["label"]]] = float(item.get("score", 1.0))
        total = probabilities.sum(-1, keepdim=True)
        if not torch.isfinite(probabilities).all() or (total <= 0).any():
            raise ValueError("The pipeline served scores that are not finite or sum to zero.")
        return probabilities / total

    def _select_output(self, probabilities):
        if self.output == "label":
            return probabilities.argmax(-1)
        if self.output == "top_k" and self.top_k < probabilities.shape[-1]:
            # A stable sort breaks ties towards the lower class index, as argmax does.
            best = probabilities.sort(dim=-1, descending=True, stable=True).indices[:, : self.top_k]
            kept = torch.zeros_like(probabilities).scatter_(-1, best, 1.0).bool()
            return torch.where(kept, probabilities, torch.zeros_like(probabilities))
        return probabilities


def _config(model):
    return getattr(model.model if isinstance(model, Pipeline) else model, "config", None)


def _label_to_index(pipeline) -> dict:
    """The class index of every label a pipeline serves (`label2id`, or the inverse of `id2label`, unset in v5)."""
    config = _config(pipeline)
    if config is None or not getattr(config, "id2label", None):
        raise ValueError("A pipeline victim needs a classifier whose config has id2label.")
    label2id = getattr(config, "label2id", None) or {label: index for index, label in config.id2label.items()}
    mapping = {label: int(index) for label, index in label2id.items()}
    if sorted(mapping.values()) != list(range(config.num_labels)):
        raise ValueError(f"The pipeline's labels do not name each of its {config.num_labels} classes once: {mapping}.")
    return mapping
