"""BlackBoxAPI: exactly what a thief sees of a served classifier, with exact query accounting."""

import threading

import torch

from .inputs import accepted_inputs, as_input_dict, keep_accepted, num_rows, select_rows
from .pipeline_misleader import QueryBudgetExceeded  # one exception for every budget, served or simulated

OUTPUT_MODES = ("probabilities", "label")


class BlackBoxAPI:
    """
    A served classifier as a thief sees it: inputs in, probabilities (or labels only) out, never logits.
    Every input counts as one query, whether real, synthetic, augmented or repeated.

    Args:
        model ([`~transformers.PreTrainedModel`] or `torch.nn.Module`):
            Any classifier whose output has `logits` (a stock model, a defended ensemble).
        output (`str`, *optional*, defaults to `"probabilities"`):
            `"probabilities"`: the softmax of the model's logits; `"label"`: the top-1 class index only.
        budget (`int`, *optional*):
            Total number of inputs this API answers; more raises [`QueryBudgetExceeded`]. Unlimited when `None`.
        batch_size (`int`, *optional*, defaults to 256):
            Inputs per forward pass (answers do not depend on it).
    """

    def __init__(self, model, output="probabilities", budget=None, batch_size=256):
        if output not in OUTPUT_MODES:
            raise ValueError(f"output must be one of {OUTPUT_MODES}, got {output!r}.")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
            raise ValueError(f"budget must be a non-negative integer or None, got {budget!r}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if not callable(getattr(model, "forward", None)):
            raise TypeError(f"model must be a classifier module, got {type(model).__name__}.")
        self.model = model.eval()
        self._accepted = accepted_inputs(model)
        self.output = output
        self.budget = budget
        self.batch_size = batch_size
        self._queries_used = 0
        self._lock = threading.Lock()

    @property
    def queries_used(self) -> int:
        return self._queries_used

    @property
    def queries_left(self):
        return None if self.budget is None else self.budget - self._queries_used

    def _charge(self, count: int):
        with self._lock:
            if self.budget is not None and self._queries_used + count > self.budget:
                raise QueryBudgetExceeded(
                    f"{count} queries asked with {self.budget - self._queries_used} of the budget of "
                    f"{self.budget} left."
                )
            self._queries_used += count

    @torch.no_grad()
    def query(self, inputs) -> torch.Tensor:
        """
        Answer a batch of inputs: a tensor of `pixel_values`, or a dict of tensors (`input_ids`,
        `attention_mask`, ...) for text. Every row counts as one query.

        Returns:
            `torch.Tensor`: `(n, num_labels)` probabilities, or `(n,)` class indices with `output="label"`.
        """
        if torch.is_tensor(inputs) and inputs.dim() < 2:
            raise ValueError(f"query() takes a batch of inputs; got a tensor of shape {tuple(inputs.shape)}.")
        inputs = as_input_dict(inputs)
        count = num_rows(inputs)
        if count == 0:
            raise ValueError("query() takes a non-empty batch of inputs.")
        self._charge(count)
        try:
            return self._answer(inputs, count)
        except Exception:
            self._charge(-count)  # no answer left the API: nothing to count
            raise

    def _answer(self, inputs, count):
        device = next(self.model.parameters()).device
        answers = []
        for start in range(0, count, self.batch_size):
            batch = select_rows(keep_accepted(inputs, self._accepted), slice(start, start + self.batch_size))
            logits = self.model(**{name: value.to(device) for name, value in batch.items()}).logits
            probabilities = torch.softmax(logits.float(), dim=-1)
            answers.append(probabilities.argmax(-1) if self.output == "label" else probabilities)
        return torch.cat(answers).cpu()
