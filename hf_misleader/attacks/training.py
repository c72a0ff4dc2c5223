"""Training a clone on a victim's answers, the one step every attack ends with."""

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..inputs import accepted_inputs, as_input_dict, keep_accepted, num_rows, select_rows


MIN_BATCH = 2  # the smallest mini-batch batch norm can train on


def fresh_clone(build_clone, seed):
    torch.manual_seed(seed)  # same clone initialisation for every victim
    return build_clone()


def train_clone(clone, inputs, answers, labels="soft", epochs=20, min_steps=200, batch_size=64, learning_rate=1e-3,
                seed=0):
    """
    Fit `clone` to the victim's answers: soft labels by KL to the probabilities, label-only by cross-entropy.

    No mini-batch ever holds a single row, as batch norm cannot train on one: batches hold at least
    `MIN_BATCH` rows (a `batch_size` below it is raised to it), an epoch's tail rolls into the next epoch's
    first batch, and a training set of a single row is repeated to fill a batch.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    batch_size = max(batch_size, MIN_BATCH)
    generator = torch.Generator().manual_seed(seed)
    inputs = keep_accepted(as_input_dict(inputs), accepted_inputs(clone))
    rows = num_rows(inputs)
    if rows == 0:
        raise ValueError("train_clone needs at least one answered input.")
    if rows < MIN_BATCH:  # e.g. a budget of one query: repeat the row so batch norm sees a batch
        repeat = torch.arange(rows).repeat(math.ceil(MIN_BATCH / rows))
        inputs, answers = select_rows(inputs, repeat), answers[repeat]
        rows = len(repeat)
    steps = max(min_steps, epochs * math.ceil(rows / batch_size))
    optimizer = torch.optim.Adam(clone.parameters(), lr=learning_rate)
    clone.train()
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        # Reshuffle each epoch; the tail of an epoch rolls into the next, so with rows >= 2 every batch has
        # min(batch_size, rows + tail) >= 2 rows: never a batch of one.
        if len(order) < batch_size:
            order = torch.cat([order, torch.randperm(rows, generator=generator)])
        batch, order = order[:batch_size], order[batch_size:]
        log_probs = F.log_softmax(clone(**select_rows(inputs, batch)).logits, dim=-1)
        if labels == "soft":
            # kl_div takes the answers as probabilities: exact 0s contribute 0, never log(0).
            loss = F.kl_div(log_probs, answers[batch], reduction="batchmean")
        else:
            loss = F.nll_loss(log_probs, answers[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return clone.eval()


def learning_curve(build_clone, inputs, answers, checkpoints, labels="soft", evaluate=None, seed=0, progress=True,
                   desc="clone", rows_at=None, **train_kwargs):
    """
    Train a fresh clone at each checkpoint on the answers the thief had by then, and score it.

    Args:
        inputs, answers: everything queried, in query order (one row per answer).
        checkpoints (`list[int]`): query counts, ascending, the last one the whole budget.
        rows_at (`Callable[[int], int]`, *optional*): rows of `inputs` answered within that many queries (by
            default one row per query; an attack that repeats inputs maps counts to fewer rows).

    Returns:
        `(clone, history)`: the clone of the last checkpoint and one `{"queries": n, **evaluate(clone)}` per checkpoint.
    """
    history, clone = [], None
    for count in tqdm(checkpoints, desc=desc, disable=not progress, leave=False):
        rows = rows_at(count) if rows_at else count
        clone = train_clone(fresh_clone(build_clone, seed), select_rows(as_input_dict(inputs), slice(0, rows)),
                            answers[:rows], labels=labels, seed=seed, **train_kwargs)
        history.append({"queries": count, **(evaluate(clone) if evaluate else {})})
    return clone, history
