"""
MAD's search for a poisoned answer (Orekondy et al., "Prediction Poisoning: Towards Defenses Against DNN Model
Stealing Attacks", ICLR 2020): the candidate target whose last-layer gradient deviates most from the true answer's,
for [`~defenses.MAD`] and [`~defenses.MADArgmax`].

A candidate target `c` enters the objective only through its inner products with `v = y - p`, `p` and `y` and its
norm, so candidates are scored from sums over their classes, never materialised.
"""

import itertools

import torch

UPWEIGHT = 1e-5  # the authors' code: keeps the top-1 class the strict maximum of a uniform candidate


def gradient_deviation(target: torch.Tensor, probabilities: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """
    MAD's objective for explicit `(n, C)` targets: `2 - 2 cos` of the angle between the last-layer gradients a clone
    with softmax `surrogate` takes towards `target` and towards the true `probabilities` (`||c - y||^2` where the
    latter vanishes, see [`~defenses.MAD`]).
    """
    inner = [(target * x).sum(-1, keepdim=True) for x in (probabilities - surrogate, surrogate, probabilities)]
    norm = (target * target).sum(-1, keepdim=True)
    return _deviation(*inner, norm, probabilities, surrogate).squeeze(-1)


def best_poisoned_target(probabilities: torch.Tensor, surrogate: torch.Tensor, keep_top1=False) -> torch.Tensor:
    """MAD's best candidate target per row; with `keep_top1`, MAD-argmax's (one that keeps the top-1 class)."""
    count, num_labels = probabilities.shape
    if not keep_top1:
        # The vertices e_k: their inner products are the entries themselves, their norms 1.
        scores = _deviation(probabilities - surrogate, surrogate, probabilities, torch.ones_like(probabilities),
                            probabilities, surrogate)
        return torch.nn.functional.one_hot(scores.argmax(-1), num_labels).to(probabilities.dtype)
    top1 = probabilities.argmax(-1)
    if num_labels <= 10:
        sets = _sets_containing(top1, num_labels, probabilities.dtype)
        sums = [(sets * x.unsqueeze(1)).sum(-1) for x in _terms(probabilities, surrogate)]
        best = _score_sets(sums, sets.sum(-1), probabilities, surrogate, top1).argmax(-1)
        chosen = sets[torch.arange(count), best]
    else:
        chosen = _greedy_set(probabilities, surrogate, top1)
    chosen[torch.arange(count), top1] += UPWEIGHT
    return chosen / chosen.sum(-1, keepdim=True)


def _terms(probabilities, surrogate):
    return probabilities - surrogate, surrogate, probabilities


def _sets_containing(top1, num_labels, dtype):
    """`(n, 2^(C-1), C)` indicators of every set of classes that contains the row's top-1 class."""
    count = len(top1)
    subsets = torch.tensor(list(itertools.product([0.0, 1.0], repeat=num_labels - 1)), dtype=dtype,
                           device=top1.device).reshape(2 ** (num_labels - 1), num_labels - 1)
    classes = torch.arange(num_labels, device=top1.device).expand(count, -1)
    others = classes[classes != top1.unsqueeze(-1)].view(count, num_labels - 1)
    sets = torch.zeros(count, len(subsets), num_labels, dtype=dtype, device=top1.device)
    sets.scatter_(2, others.unsqueeze(1).expand(-1, len(subsets), -1), subsets.expand(count, -1, -1))
    sets[torch.arange(count), :, top1] = 1.0
    return sets


def _greedy_set(probabilities, surrogate, top1, max_candidates=1024):
    """The authors' search beyond 10 classes: grow the set from {top1}, adding the best class each time."""
    count, num_labels = probabilities.shape
    rows = torch.arange(count)
    terms = _terms(probabilities, surrogate)
    chosen = torch.nn.functional.one_hot(top1, num_labels).to(torch.bool)
    sums = [x[rows, top1].unsqueeze(-1) for x in terms]
    size = 1
    best_set = chosen
    best_score = _score_sets(sums, size, probabilities, surrogate, top1).squeeze(-1)
    evaluated = 0
    while evaluated < max_candidates and size < num_labels:
        scores = _score_sets([total + x for total, x in zip(sums, terms)], size + 1, probabilities, surrogate, top1)
        added = scores.masked_fill(chosen, -torch.inf).argmax(-1)  # a class already in the set is no candidate
        step_score = scores[rows, added]
        chosen = chosen.clone()
        chosen[rows, added] = True
        sums = [total + x[rows, added].unsqueeze(-1) for total, x in zip(sums, terms)]
        evaluated += num_labels - size
        size += 1
        best_set = torch.where((step_score > best_score).unsqueeze(-1), chosen, best_set)
        best_score = torch.maximum(best_score, step_score)
    return best_set.to(probabilities.dtype)


def _score_sets(sums, size, probabilities, surrogate, top1):
    """The objective of the candidates `(1_S + u e_k) / (|S| + u)`, from the sums over `S` of `v`, `p`, `y`."""
    rows = torch.arange(len(probabilities))
    total = size + UPWEIGHT
    terms = _terms(probabilities, surrogate)
    inner = [(s + UPWEIGHT * x[rows, top1].unsqueeze(-1)) / total for s, x in zip(sums, terms)]
    norm = (size + 2 * UPWEIGHT + UPWEIGHT**2) / total**2
    if not torch.is_tensor(norm):
        norm = torch.full_like(inner[0], norm)
    return _deviation(*inner, norm, probabilities, surrogate)


def _deviation(inner_v, inner_p, inner_y, candidate_norm, probabilities, surrogate):
    """
    `2 - 2 cos(c - p, y - p)` for `(n, m)` candidates given by their inner products with `v = y - p`, `p`, `y` and
    their squared norms; the unnormalised `||c - y||^2` on rows where `y = p`.
    """
    v = probabilities - surrogate
    v_norm = (v * v).sum(-1, keepdim=True)
    dot = inner_v - (surrogate * v).sum(-1, keepdim=True)  # <c - p, v>
    step_norm = (candidate_norm - 2 * inner_p + (surrogate * surrogate).sum(-1, keepdim=True)).clamp_min(0)
    denominator = (step_norm * v_norm).sqrt()
    # A candidate whose gradient vanishes (c = p) gives the clone nothing to follow: count it as no deviation.
    cosine = torch.where(denominator > 1e-12, dot / denominator.clamp_min(1e-12), torch.ones_like(dot))
    unnormalised = candidate_norm - 2 * inner_y + (probabilities * probabilities).sum(-1, keepdim=True)
    # Probabilities come from float32: a gradient direction below 1e-6 is rounding noise.
    return torch.where(v_norm > 1e-12, 2 - 2 * cosine, unnormalised)
