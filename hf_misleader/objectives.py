"""The MISLEADER losses, as plain functions of logits and models (the trainer wires them together).

Every KL here is computed between log-probabilities (`log_softmax` of logits): probabilities are never passed
through `log_softmax`.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.func import functional_call


def kl_divergence(target_logits, logits, temperature=1.0):
    """`KL(softmax(target_logits/T) || softmax(logits/T))`, averaged over the batch."""
    return F.kl_div(
        F.log_softmax(logits.float() / temperature, dim=-1),
        F.log_softmax(target_logits.float() / temperature, dim=-1),
        log_target=True,
        reduction="batchmean",
    )


def distillation_loss(student_logits, teacher_logits, labels, temperature, alpha):
    """`alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * CE(student, labels)`, and its two parts."""
    distillation = kl_divergence(teacher_logits, student_logits, temperature) * temperature**2
    cross_entropy = F.cross_entropy(student_logits.float(), labels)
    return alpha * distillation + (1 - alpha) * cross_entropy, distillation, cross_entropy


def alternating_term(student_query_logits, attacker_query_logits):
    """The reference recipe's term, to be subtracted: `KL(student(x') || attacker(x'))`, attacker detached."""
    return kl_divergence(student_query_logits, attacker_query_logits.detach())


def derangement(num_labels: int, generator: torch.Generator) -> torch.Tensor:
    """A random permutation of `range(num_labels)` with no fixed point (every class is sent elsewhere)."""
    if num_labels < 2:
        raise ValueError("A class permutation with no fixed point needs at least 2 classes.")
    while True:  # rejection sampling: about 1/e of permutations are derangements
        permutation = torch.randperm(num_labels, generator=generator)
        if not (permutation == torch.arange(num_labels)).any():
            return permutation


def misinformation_term(student_query_logits, teacher_query_logits, permutation=None):
    """
    `KL(target || student(x'))` on attacker-like queries: the target is the teacher's distribution with class `c`'s
    probability moved to class `permutation[c]`, or the uniform distribution when `permutation` is None.
    """
    log_probs = F.log_softmax(student_query_logits.float(), dim=-1)
    if permutation is None:
        target = torch.full_like(log_probs, -torch.log(torch.tensor(float(log_probs.shape[-1]))).item())
    else:
        teacher = F.log_softmax(teacher_query_logits.float(), dim=-1)
        target = torch.empty_like(teacher)
        target[:, permutation.to(teacher.device)] = teacher  # target[pi(c)] = teacher[c]
    return F.kl_div(log_probs, target, log_target=True, reduction="batchmean")


class LookAhead(NamedTuple):
    """One differentiable imitation step of the attacker (see `unrolled_step`)."""

    parameters: dict  # the stepped clone's parameters, differentiable functions of the student's answers
    buffers: dict  # copies of the attacker's buffers, batch-norm statistics updated by the queries' forward
    attacker_logits: torch.Tensor  # the attacker's logits on the queries before the step, detached
    gradients: dict  # the imitation gradient per parameter, detached (None where a parameter is unused)
    imitation: torch.Tensor  # the imitation loss before the step, detached


def unrolled_step(attacker, queries, student_query_logits, step_size, forward, average=None) -> LookAhead:
    """
    The attacker's parameters after one more differentiable imitation step on the student's answers, normalised to
    length `step_size`: `theta' = theta - step_size * g / ||g||` with `g = grad_theta KL(student(x') || a_theta(x'))`.

    `theta` is detached (nothing reaches the attacker), `g` keeps its graph back to the student's answers
    (`create_graph=True`), so `theta'` is a differentiable function of the student. Buffers (batch-norm statistics)
    are copies: the look-ahead never changes the attacker. `g` is also the gradient of the attacker's own imitation
    update on these queries, so the trainer can take that update from it instead of a second forward and backward.

    Args:
        attacker (`nn.Module`): the unwrapped attacker clone.
        queries (`dict`): the attacker-like queries, as model inputs.
        student_query_logits (`torch.Tensor`): the student's logits on `queries`, with their graph.
        step_size (`float`): the step's global L2 norm.
        forward (`Callable[[nn.Module, dict, dict], logits]`): runs `attacker` with given parameters on inputs.
        average (`Callable[[torch.Tensor], torch.Tensor]`, *optional*): a differentiable mean over processes of the
            flattened gradient, so that under DDP every process takes the step of the global batch.
    """
    # Copies, not views: the attacker's own optimizer updates it in place before the student's backward pass.
    parameters = {name: p.detach().clone().requires_grad_(True) for name, p in attacker.named_parameters()}
    buffers = {name: b.detach().clone() for name, b in attacker.named_buffers()}
    attacker_logits = forward(attacker, {**parameters, **buffers}, queries)
    imitation = kl_divergence(student_query_logits, attacker_logits)
    gradients = torch.autograd.grad(imitation, list(parameters.values()), create_graph=True, allow_unused=True)
    unused = {name for name, g in zip(parameters, gradients) if g is None}
    gradients = [torch.zeros_like(p) if g is None else g for p, g in zip(parameters.values(), gradients)]
    flat = torch.cat([g.reshape(-1) for g in gradients])
    if average is not None:
        flat = average(flat)
    direction = flat / torch.sqrt((flat.float() ** 2).sum() + 1e-12)
    stepped, averaged, start = {}, {}, 0
    for name, p in parameters.items():
        stepped[name] = p - step_size * direction[start : start + p.numel()].view_as(p).to(p.dtype)
        averaged[name] = None if name in unused else flat[start : start + p.numel()].detach().view_as(p).to(p.dtype)
        start += p.numel()
    return LookAhead(stepped, buffers, attacker_logits.detach(), averaged, imitation.detach())


def unrolled_term(attacker, look_ahead, real_inputs, teacher_labels, forward):
    """The unrolled objective's term, to be subtracted: CE of the stepped clone on the real batch vs the teacher's labels."""
    # Fresh buffer copies: the look-ahead's keep the queries' statistics, for the attacker's own update.
    buffers = {name: b.clone() for name, b in look_ahead.buffers.items()}
    logits = forward(attacker, {**look_ahead.parameters, **buffers}, real_inputs)
    return F.cross_entropy(logits.float(), teacher_labels)


def call_with(module, state, inputs):
    """`module`'s logits on `inputs` with its parameters and buffers replaced by `state` (torch.func)."""
    return functional_call(module, state, args=(), kwargs=inputs, tie_weights=True, strict=False).logits
