"""Protected pipelines: the stock classification pipelines plus serving-side output hardening and query accounting.

Shared with the model on the Hub (``trust_remote_code``): imports only torch, transformers and the standard library.

```python
>>> import hf_misleader  # registers the tasks below
>>> from transformers import pipeline
>>> classify = pipeline("protected-image-classification", model="org/classifier-defended",
...                     max_top_k=3, round_digits=2, query_budget=1000)
>>> classify(image, caller="client-42")
[{'label': 'cat', 'score': 0.91}, {'label': 'dog', 'score': 0.06}, {'label': 'fox', 'score': 0.01}]
```

The hardening options are fixed when the pipeline is built. A caller cannot change them per call: the stock
`_sanitize_parameters` merges call kwargs over construction kwargs, so these options never go through it and are
refused at call time with a `ValueError`.
"""

import collections.abc
import threading
import types

import torch
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification
from transformers.image_utils import is_pil_image, load_image
from transformers.pipelines import PIPELINE_REGISTRY, ImageClassificationPipeline, TextClassificationPipeline
from transformers.pipelines.text_classification import ClassificationFunction
from transformers.utils import is_numpy_array, is_torch_tensor

DEFAULT_CALLER = "anonymous"
HARDENING_OPTIONS = ("max_top_k", "round_digits", "label_only", "query_budget")


class QueryBudgetExceeded(RuntimeError):
    """Raised when a caller asks for more answers than its query budget allows. Nothing was answered or charged."""


class QueryBudget:
    """
    A thread-safe per-caller query counter. One query is one input answered, whatever it is.

    Args:
        max_queries (`int`):
            How many inputs each caller may have answered in total (>= 0).
    """

    def __init__(self, max_queries: int):
        if isinstance(max_queries, bool) or not isinstance(max_queries, int) or max_queries < 0:
            raise ValueError(f"max_queries must be an int >= 0, got {max_queries!r}.")
        self.max_queries = max_queries
        self._used = collections.Counter()
        self._lock = threading.Lock()

    @staticmethod
    def _check_caller(caller):
        if not isinstance(caller, str) or not caller:
            raise ValueError(f"A caller is identified by a non-empty string, got {caller!r}.")

    def charge(self, caller: str, count: int = 1) -> int:
        """
        Charge `count` queries to `caller` before they are answered.

        Returns:
            `int`: the queries `caller` has left afterwards.

        Raises:
            [`QueryBudgetExceeded`]: when `caller` has fewer than `count` left; nothing is charged then.
        """
        self._check_caller(caller)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"count must be an int >= 0, got {count!r}.")
        with self._lock:
            used = self._used[caller]
            if used + count > self.max_queries:
                raise QueryBudgetExceeded(
                    f"Query budget exceeded for caller {caller!r}: {count} queries asked, {used} of the budget of "
                    f"{self.max_queries} already used ({self.max_queries - used} left). Nothing was answered or "
                    "charged."
                )
            self._used[caller] = used + count
            return self.max_queries - used - count

    def refund(self, caller: str, count: int) -> None:
        """Give back `count` queries charged to `caller` whose inputs could not be answered."""
        self._check_caller(caller)
        with self._lock:
            self._used[caller] = max(0, self._used[caller] - count)

    def used(self, caller: str) -> int:
        """The queries charged to `caller` so far."""
        self._check_caller(caller)
        with self._lock:
            return self._used[caller]

    def remaining(self, caller: str) -> int:
        """The queries `caller` may still ask."""
        self._check_caller(caller)
        with self._lock:
            return self.max_queries - self._used[caller]

    def __repr__(self):
        with self._lock:
            return f"{self.__class__.__name__}(max_queries={self.max_queries}, callers={len(self._used)})"


class OutputHardeningMixin:
    """
    Serving-side hardening of a classification pipeline's answers, applied in `postprocess` to the probabilities
    the stock pipeline computes (softmax of the model's `logits`; for a MISLEADER ensemble exactly the members'
    averaged probabilities). Never returns logits or member outputs.

    Put it first in the bases, before the stock pipeline class, so that its `__init__` and `_sanitize_parameters`
    run before the stock ones.

    Args:
        max_top_k (`int`, *optional*, defaults to 1):
            The most classes one answer lists, whatever `top_k` a call asks for (a larger request returns only
            `max_top_k`). `None` lifts the cap.
        round_digits (`int`, *optional*):
            Round each returned score to this many decimal digits. Not rounded when `None`.
        label_only (`bool`, *optional*, defaults to `False`):
            Return only the top-1 label, without a score: each answer is `[{"label": top_label}]` (the text
            pipeline's default single-answer form is `{"label": top_label}`).
        query_budget (`int` or [`QueryBudget`], *optional*):
            Per-caller budget of inputs. Callers name themselves with the call kwarg `caller="..."` (defaults to
            `"anonymous"`); every input counts, a list of n inputs counts n, and it is charged before anything is
            answered (all or nothing for a list). A [`QueryBudget`] instance can be shared by several pipelines.
            Unlimited when `None`.
    """

    def __init__(self, *args, max_top_k=1, round_digits=None, label_only=False, query_budget=None, **kwargs):
        if max_top_k is not None and (isinstance(max_top_k, bool) or not isinstance(max_top_k, int) or max_top_k < 1):
            raise ValueError(f"max_top_k must be an int >= 1 (or None for no cap), got {max_top_k!r}.")
        if round_digits is not None and (
            isinstance(round_digits, bool) or not isinstance(round_digits, int) or round_digits < 0
        ):
            raise ValueError(f"round_digits must be an int >= 0 (or None), got {round_digits!r}.")
        if not isinstance(label_only, bool):
            raise ValueError(f"label_only must be True or False, got {label_only!r}.")
        if query_budget is not None and not isinstance(query_budget, QueryBudget):
            query_budget = QueryBudget(query_budget)
        self.max_top_k = max_top_k
        self.round_digits = round_digits
        self.label_only = label_only
        self.query_budget = query_budget
        super().__init__(*args, **kwargs)
        config = self.model.config
        if config.problem_type == "regression":
            raise ValueError("The protected pipelines serve classifiers; a regression model has no class scores.")
        # The only score function: sigmoid for multi-label / single-logit models, softmax otherwise (never "none",
        # which would return raw logits).
        multi_label = config.problem_type == "multi_label_classification" or config.num_labels == 1
        self._score_function = ClassificationFunction.SIGMOID if multi_label else ClassificationFunction.SOFTMAX

    def _sanitize_parameters(self, top_k="", **kwargs):
        refused = [name for name in (*HARDENING_OPTIONS, "function_to_apply", "caller") if name in kwargs]
        if refused:
            raise ValueError(
                f"{', '.join(refused)} cannot be set here: the hardening options are fixed when the protected pipeline "
                "is built (pipeline(..., max_top_k=...)), scores are always probabilities, and `caller` is a call "
                "argument."
            )
        if top_k != "" and top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be an int >= 1 (or None for all classes), got {top_k!r}.")
        if top_k != "":
            kwargs["top_k"] = top_k
        preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(**kwargs)
        if top_k != "":
            # The stock image pipeline drops `top_k=None`; here it means every class (still capped by max_top_k).
            postprocess_params["top_k"] = top_k
        return preprocess_params, forward_params, postprocess_params

    # -- accounting -------------------------------------------------------------------------------------------------

    def _guard(self, inputs, caller, kwargs):
        """Check every input, then charge the caller; returns the inputs as the stock `__call__` should get them."""
        if not isinstance(caller, str) or not caller:
            raise ValueError(f"`caller` must be a non-empty string, got {caller!r}.")
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        if isinstance(inputs, (types.GeneratorType, collections.abc.Iterator)) and not isinstance(
            inputs, collections.abc.Sized
        ):
            # Lazily: each input is checked and charged when the pipeline pulls it, before it is answered. In the
            # main process (a DataLoader worker would charge a copy of the budget).
            kwargs["num_workers"] = 0
            return self._charged_stream(inputs, caller), 0  # charged one by one as they are answered
        if isinstance(inputs, list):
            if not inputs:
                raise ValueError("The pipeline got an empty list: pass at least one input.")
            for index, item in enumerate(inputs):
                self._check_input(item, where=f"Input {index}")
            count = len(inputs)
        elif isinstance(inputs, torch.utils.data.Dataset) and isinstance(inputs, collections.abc.Sized):
            count = len(inputs)  # items are checked in preprocess
            if count == 0:
                raise ValueError("The pipeline got an empty dataset: pass at least one input.")
        else:
            self._check_input(inputs, where="The input")
            count = 1
        if self.query_budget is not None:
            self.query_budget.charge(caller, count)
        return inputs, count

    def _answer_charged(self, answer, inputs, caller, kwargs):
        """Run the stock call on checked inputs; a call that fails without answering is not charged."""
        inputs, count = self._guard(inputs, caller, kwargs)
        try:
            return answer(inputs)
        except Exception:
            if self.query_budget is not None and count:
                self.query_budget.refund(caller, count)
            raise

    def _charged_stream(self, inputs, caller):
        for index, item in enumerate(inputs):
            self._check_input(item, where=f"Input {index}")
            if self.query_budget is not None:
                self.query_budget.charge(caller, 1)
            yield item

    # -- hardening --------------------------------------------------------------------------------------------------

    def _harden(self, ranked, top_k):
        """`ranked`: every class as `{"label", "score"}`, best first. Returns the entries a caller may see."""
        if self.label_only:
            return [{"label": ranked[0]["label"]}]
        count = len(ranked) if top_k is None else top_k
        if self.max_top_k is not None:
            count = min(count, self.max_top_k)
        entries = [{"label": entry["label"], "score": float(entry["score"])} for entry in ranked[:count]]
        if self.round_digits is not None:
            for entry in entries:
                entry["score"] = round(entry["score"], self.round_digits)
        return entries

    def _check_input(self, item, where):
        raise NotImplementedError


def _expected_image_channels(config):
    """The channel count the model takes, from its config or (for an ensemble) its members' configs; None if unknown."""
    channels = getattr(config, "num_channels", None)
    if channels is not None:
        return int(channels)
    found = {member.get("num_channels") for member in getattr(config, "members", None) or []}
    found.discard(None)
    if len(found) > 1:
        raise ValueError(f"The ensemble's members take different channel counts {sorted(found)}.")
    return int(found.pop()) if found else None


class ProtectedImageClassificationPipeline(OutputHardeningMixin, ImageClassificationPipeline):
    """
    [`ImageClassificationPipeline`] with output hardening and per-caller query accounting (see
    [`OutputHardeningMixin`] for `max_top_k`, `round_digits`, `label_only`, `query_budget`). Task:
    `"protected-image-classification"`.

    Call it like the stock pipeline: one image or a list (`top_k`, `timeout`; plus `caller`). Images are PIL images,
    paths/URLs (both converted by PIL from their mode, as in the stock pipeline: RGBA, palette and grayscale become
    RGB, or grayscale when the model takes one channel), or single `numpy`/`torch` arrays of shape `(H, W, C)` or
    `(C, H, W)` with exactly the model's channel count (an array has no mode to convert from, so a 4-channel or
    2-channel array is refused rather than guessed at). Each answer is a list of `{"label", "score"}` (at most
    `max_top_k` of them), or `[{"label"}]` with `label_only=True`; a list of images gives a list of answers.

    Args:
        allow_paths_and_urls (`bool`, *optional*, defaults to `False`):
            Accept strings (file paths, URLs, base64 images) as inputs. Off by default: the protected pipeline faces
            untrusted callers, and a string makes the server read its own files or fetch a URL on their behalf.
    """

    def __init__(self, *args, allow_paths_and_urls=False, **kwargs):
        if not isinstance(allow_paths_and_urls, bool):
            raise ValueError(f"allow_paths_and_urls must be True or False, got {allow_paths_and_urls!r}.")
        self.allow_paths_and_urls = allow_paths_and_urls
        super().__init__(*args, **kwargs)
        self._channels = _expected_image_channels(self.model.config)

    def __call__(self, inputs=None, caller=DEFAULT_CALLER, **kwargs):
        if "images" in kwargs:
            inputs = kwargs.pop("images")
        return self._answer_charged(lambda checked: super(OutputHardeningMixin, self).__call__(checked, **kwargs),
                                    inputs, caller, kwargs)

    def _check_input(self, item, where):
        if isinstance(item, str):
            if not self.allow_paths_and_urls:
                raise ValueError(
                    f"{where} is a string: this protected pipeline takes PIL images or arrays only (a path or URL would "
                    "make the server read its files or fetch it for the caller). Build it with "
                    "allow_paths_and_urls=True to accept them from trusted callers."
                )
            if not item.strip():
                raise ValueError(f"{where} is an empty string; an image is a PIL image, an array, a path or a URL.")
            return
        if is_pil_image(item):
            if item.width == 0 or item.height == 0:
                raise ValueError(f"{where} is an image with no pixels ({item.width}x{item.height}).")
            if self._channels not in (None, 1, 3):
                raise ValueError(
                    f"The model takes {self._channels}-channel images; PIL images are converted to RGB or grayscale. "
                    f"Pass a ({self._channels}, H, W) array instead."
                )
            return
        if is_numpy_array(item) or is_torch_tensor(item):
            shape = tuple(item.shape)
            if len(shape) != 3:
                raise ValueError(
                    f"{where} is an array of shape {shape}; one image is an (H, W, C) or (C, H, W) array "
                    "(pass a list for several images; make grayscale a channel axis of size 1)."
                )
            # The image processor's own rule: the first axis is the channel axis if it could be one.
            channel_axis = 0 if shape[0] in (1, 3, 4) else 2 if shape[2] in (1, 3, 4) else None
            if channel_axis is None:
                raise ValueError(
                    f"{where} has shape {shape}: its first and last axes are not channel axes (of size 1, 3 or 4); "
                    f"the model takes {self._channels or 3}-channel images."
                )
            height, width = [size for axis, size in enumerate(shape) if axis != channel_axis]
            if height == 0 or width == 0:
                raise ValueError(f"{where} is an image with no pixels (shape {shape}).")
            channels = shape[channel_axis]
            if self._channels is not None and channels != self._channels:
                mode = {1: "L", 3: "RGB"}.get(self._channels)
                hint = f", e.g. `PIL.Image.fromarray(array).convert({mode!r})`" if mode else ""
                raise ValueError(
                    f"{where} has {channels} channels (shape {shape}) but the model takes {self._channels}. "
                    f"An array has no mode to convert from: convert it first{hint}."
                )
            return
        raise ValueError(
            f"{where} is of type {type(item).__name__}; an image is a PIL image, a numpy/torch array, a path or a URL."
        )

    def preprocess(self, image, timeout=None):
        self._check_input(image, where="The input")
        if not (is_numpy_array(image) or is_torch_tensor(image)):
            image = load_image(image, timeout=timeout)  # RGB, as in the stock pipeline
            if self._channels == 1:
                image = image.convert("L")
        model_inputs = self.image_processor(images=image, return_tensors="pt").to(self.dtype)
        pixel_values = model_inputs["pixel_values"]
        if pixel_values.shape[0] != 1:
            raise ValueError(f"One input gave {pixel_values.shape[0]} images; pass a list for several images.")
        if self._channels is not None and pixel_values.shape[1] != self._channels:
            raise ValueError(
                f"The image processor produced {pixel_values.shape[1]}-channel pixel values but the model takes "
                f"{self._channels} channels: check the image processor's configuration (image_mean, image_std)."
            )
        return model_inputs

    def postprocess(self, model_outputs, top_k=5, **kwargs):
        num_labels = self.model.config.num_labels
        ranked = super().postprocess(model_outputs, function_to_apply=self._score_function, top_k=num_labels)
        return self._harden(ranked, top_k)


class ProtectedTextClassificationPipeline(OutputHardeningMixin, TextClassificationPipeline):
    """
    [`TextClassificationPipeline`] with output hardening and per-caller query accounting (see
    [`OutputHardeningMixin`] for `max_top_k`, `round_digits`, `label_only`, `query_budget`). Task:
    `"protected-text-classification"`.

    Call it like the stock pipeline: a non-empty string, a `{"text", "text_pair"}` dict, or a list of them (plus
    `caller`). Output shapes are the stock ones: without `top_k`, one `{"label", "score"}` per input (a single string
    gives `[{...}]`); with `top_k` (an int, or `None` for all classes), a list of at most `max_top_k` entries per
    input. With `label_only=True` each entry is `{"label"}` and an answer has only the top-1 label. A text longer
    than the model's positions is refused with a `ValueError` and not charged (build the pipeline with
    `truncation=True` to cut long texts instead).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        config = self.model.config
        limits = [getattr(config, "max_position_embeddings", None)]
        limits += [member.get("max_position_embeddings") for member in getattr(config, "members", None) or []]
        if self.tokenizer is not None and (self.tokenizer.model_max_length or 0) < 1_000_000:
            limits.append(self.tokenizer.model_max_length)
        limits = [int(limit) for limit in limits if limit]
        self._max_tokens = min(limits) if limits else None

    def __call__(self, inputs=None, caller=DEFAULT_CALLER, **kwargs):
        # The stock rule, also honouring a `top_k` given at construction (stock wraps those answers twice).
        legacy = "top_k" not in kwargs and "top_k" not in self._postprocess_params
        result = self._answer_charged(
            lambda checked: super(TextClassificationPipeline, self).__call__(checked, **kwargs), inputs, caller, kwargs
        )
        return [result] if isinstance(inputs, str) and legacy else result

    def _check_input(self, item, where):
        if isinstance(item, str):
            if not item.strip():
                raise ValueError(f"{where} is an empty string; there is nothing to classify.")
            return
        if isinstance(item, dict):
            if "text" not in item or set(item) - {"text", "text_pair"}:
                raise ValueError(f'{where} is a dict with keys {sorted(item)}; use {{"text": ..., "text_pair": ...}}.')
            for key, value in item.items():
                if not isinstance(value, str) or not value.strip():
                    raise ValueError(f"{where}'s {key!r} must be a non-empty string, got {value!r}.")
            return
        raise ValueError(
            f"{where} is of type {type(item).__name__}; a text input is a non-empty string or a "
            '{"text": ..., "text_pair": ...} dict.'
        )

    def preprocess(self, inputs, **tokenizer_kwargs):
        self._check_input(inputs, where="The input")
        model_inputs = super().preprocess(inputs, **tokenizer_kwargs)
        input_ids = model_inputs["input_ids"]
        if input_ids.shape[0] != 1:
            raise ValueError(f"One input gave {input_ids.shape[0]} sequences; pass a list for several texts.")
        if self._max_tokens is not None and input_ids.shape[1] > self._max_tokens:
            raise ValueError(
                f"The input is {input_ids.shape[1]} tokens long; the model takes at most {self._max_tokens}. Build "
                f"the pipeline with truncation=True (and max_length={self._max_tokens}) to cut long texts."
            )
        return model_inputs

    def postprocess(self, model_outputs, top_k=1, _legacy=True, **kwargs):
        ranked = super().postprocess(model_outputs, function_to_apply=self._score_function, top_k=None, _legacy=False)
        entries = self._harden(ranked, 1 if _legacy else top_k)
        return entries[0] if _legacy else entries


PROTECTED_PIPELINES = {
    "protected-image-classification": (ProtectedImageClassificationPipeline, AutoModelForImageClassification, "image"),
    "protected-text-classification": (ProtectedTextClassificationPipeline, AutoModelForSequenceClassification, "text"),
}


def register_pipelines():
    """Register the protected tasks with `transformers.pipeline` (idempotent)."""
    for task, (pipeline_class, auto_class, modality) in PROTECTED_PIPELINES.items():
        if PIPELINE_REGISTRY.supported_tasks.get(task, {}).get("impl") is pipeline_class:
            continue
        PIPELINE_REGISTRY.register_pipeline(task, pipeline_class=pipeline_class, pt_model=auto_class, type=modality)
