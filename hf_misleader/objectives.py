"""The MISLEADER losses, as plain functions of logits and models (the trainer wires them together).

Every KL here is computed between log-probabilities (`log_softmax` of logits): probabilities are never passed
through `log_softmax`.
"""

import contextlib
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd import forward_ad
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
    """One imitation step of the attacker on the student's answers (see `unrolled_step`)."""

    start: dict  # the attacker's parameters before the step, detached copies
    parameters: dict  # the stepped clone's parameters, detached leaves (the term differentiates through them by hand)
    buffers: dict  # copies of the attacker's buffers, batch-norm statistics updated by the queries' forward
    start_buffers: dict  # copies of the attacker's buffers before the queries' forward
    attacker_logits: torch.Tensor  # the attacker's logits on the queries before the step, detached
    gradients: dict  # the imitation gradient per parameter, detached, averaged (None where a parameter is unused)
    direction: torch.Tensor  # the flat, averaged, unit-length imitation gradient
    norm: torch.Tensor  # the length of the averaged imitation gradient, before normalising
    imitation: torch.Tensor  # the imitation loss before the step, detached
    random_state: tuple  # the random state before the queries' forward, replayed by the term's (same dropout masks)
    queries: dict  # what `unrolled_step` was given, for `unrolled_term`
    student_query_logits: torch.Tensor  # with their graph: the term's gradient reaches the student through them
    step_size: float


def unrolled_step(attacker, queries, student_query_logits, step_size, forward, average=None) -> LookAhead:
    """
    The attacker's parameters after one more imitation step on the student's answers, normalised to length
    `step_size`: `theta' = theta - step_size * g / ||g||` with `g = grad_theta KL(student(x') || a_theta(x'))`.

    Nothing here keeps a graph: `unrolled_term` differentiates `theta'` with respect to the student's answers in
    closed form. Buffers (batch-norm statistics) are copies: the look-ahead never changes the attacker. `g` is also
    the gradient of the attacker's own imitation update on these queries, so the trainer can take that update from
    it instead of a second forward and backward.

    Args:
        attacker (`nn.Module`): the unwrapped attacker clone.
        queries (`dict`): the attacker-like queries, as model inputs.
        student_query_logits (`torch.Tensor`): the student's logits on `queries`, with their graph (kept for the term).
        step_size (`float`): the step's global L2 norm.
        forward (`Callable[[nn.Module, dict, dict], logits]`): runs `attacker` with given parameters on inputs.
        average (`Callable[[torch.Tensor], torch.Tensor]`, *optional*): a mean over processes of a flat tensor, so
            that under DDP every process takes the step of the global batch.
    """
    # Copies, not views: the attacker's own optimizer updates it in place before the student's backward pass.
    start = {name: p.detach().clone().requires_grad_(True) for name, p in attacker.named_parameters()}
    start_buffers = {name: b.detach().clone() for name, b in attacker.named_buffers()}
    buffers = {name: b.clone() for name, b in start_buffers.items()}
    random_state = current_random_state(student_query_logits.device)
    attacker_logits = forward(attacker, {**start, **buffers}, queries)
    imitation = kl_divergence(student_query_logits.detach(), attacker_logits)
    gradients = torch.autograd.grad(imitation, list(start.values()), allow_unused=True)
    unused = {name for name, g in zip(start, gradients) if g is None}
    flat = flat_gradient(gradients, start)
    if average is not None:
        flat = average(flat)
    norm = torch.sqrt((flat.float() ** 2).sum() + 1e-12)
    direction = flat / norm
    stepped = {name: (p.detach() - step_size * piece).requires_grad_(True)
               for (name, p), piece in zip(start.items(), split_like(direction, start))}
    averaged = {name: None if name in unused else piece for name, piece in zip(start, split_like(flat, start))}
    start = {name: p.detach() for name, p in start.items()}
    return LookAhead(start, stepped, buffers, start_buffers, attacker_logits.detach(), averaged, direction, norm,
                     imitation.detach(), random_state, queries, student_query_logits, step_size)


def unrolled_term(attacker, look_ahead, real_inputs, teacher_labels, forward, average=None):
    """
    The unrolled objective's term, to be subtracted: CE of the stepped clone on the real batch vs the teacher's labels.

    Its value is that CE; its gradient reaches the student through the clone's step, computed exactly without a
    second-order backward. With `v = grad_theta' CE` and the step `theta' = theta - s g / ||g||`,
    `d CE = -(s / ||g||) <w, dg>` where `w = v - (v . g_hat) g_hat`, and since `g = J^T (p_clone - p_student) / B`
    (`J` the clone's logit Jacobian on the queries), `<w, dg> = -(J w) . dp_student / B`: one forward-mode
    Jacobian-vector product of the clone on the queries gives the student's gradient.

    Args:
        attacker, forward, average: as for `unrolled_step`.
        look_ahead ([`LookAhead`]): the result of `unrolled_step`.
        real_inputs (`dict`): the benign batch, as model inputs.
        teacher_labels (`torch.Tensor`): the teacher's labels on `real_inputs`.
    """
    # Fresh buffer copies: the look-ahead's keep the queries' statistics, for the attacker's own update.
    buffers = {name: b.clone() for name, b in look_ahead.buffers.items()}
    stepped = look_ahead.parameters
    cross_entropy = F.cross_entropy(forward(attacker, {**stepped, **buffers}, real_inputs).float(), teacher_labels)
    flat = flat_gradient(torch.autograd.grad(cross_entropy, list(stepped.values()), allow_unused=True), stepped)
    if average is not None:  # every process's term moves with every process's answers through the averaged step
        flat = average(flat)
    w = flat - look_ahead.direction * (look_ahead.direction @ flat)
    tangents = dict(zip(stepped, split_like(w, stepped)))
    buffers = {name: b.clone() for name, b in look_ahead.start_buffers.items()}
    # Forward-mode AD with dual tensors (not torch.func.jvp, which breaks under autocast's casts).
    probs = F.softmax(look_ahead.student_query_logits.float(), dim=-1)
    with replayed_randomness(look_ahead.random_state, probs.device), forward_ad.dual_level():
        dual = {name: forward_ad.make_dual(p, tangents[name]) for name, p in look_ahead.start.items()}
        jacobian_w = forward_ad.unpack_dual(forward(attacker, {**dual, **buffers}, look_ahead.queries)).tangent
    scale = look_ahead.step_size / (look_ahead.norm * len(probs))
    surrogate = scale * (probs * jacobian_w.detach().float()).sum()
    return cross_entropy.detach() + (surrogate - surrogate.detach())


def flat_gradient(gradients, parameters):
    """`gradients` (from `autograd.grad(..., allow_unused=True)`) as one flat tensor, zeros for unused `parameters`."""
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(parameters.values(), gradients)])


def split_like(flat, tensors):
    """`flat` cut into pieces shaped like the values of `tensors` (a dict), in order."""
    pieces, start = [], 0
    for tensor in tensors.values():
        pieces.append(flat[start : start + tensor.numel()].view_as(tensor).to(tensor.dtype))
        start += tensor.numel()
    return pieces


def current_random_state(device):
    """The CPU's random state and, off the CPU, `device`'s: what `replayed_randomness` restores."""
    accelerator = None if device.type == "cpu" else getattr(torch, device.type).get_rng_state(*_which(device))
    return torch.get_rng_state(), accelerator


@contextlib.contextmanager
def replayed_randomness(state, device):
    """Runs the block from `state` (of `current_random_state`), leaving the global random state as it was."""
    cpu, accelerator = state
    devices = [] if device.type == "cpu" else [device.index or 0]
    with torch.random.fork_rng(devices=devices, device_type="cuda" if device.type == "cpu" else device.type):
        torch.set_rng_state(cpu)
        if accelerator is not None:
            getattr(torch, device.type).set_rng_state(accelerator, *_which(device))
        yield


def _which(device):
    """The device argument of `torch.<device type>.get/set_rng_state`: `torch.mps`'s take none."""
    return () if device.type == "mps" else (device,)


def call_with(module, state, inputs):
    """`module`'s logits on `inputs` with its parameters and buffers replaced by `state` (torch.func)."""
    return functional_call(module, state, args=(), kwargs=inputs, tie_weights=True, strict=False).logits
