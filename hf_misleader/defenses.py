"""
Baseline output defences: post-processors over a served classifier's probabilities, each with its published
parameters, for the extraction benchmark to compare MISLEADER against.

Every defence maps `(n, C)` probabilities to `(n, C)` probabilities that are finite, non-negative, sum to 1 per row
and never all zero, including for saturated inputs (a softmax of logits of 1e4 is exactly one-hot). A row that a
defence would leave empty (or non-finite) is answered with the one-hot of the undefended top-1 class: the least a
served classifier reveals.

>>> defense = build_defense({"name": "rounding", "decimals": 1})
>>> defense(torch.tensor([[0.62, 0.27, 0.11]]))
tensor([[0.6000, 0.3000, 0.1000]])
"""

import inspect
from collections.abc import Mapping

import torch

from .inputs import model_probabilities
from .modeling_misleader import reverse_sigmoid
from .prediction_poisoning import best_poisoned_target


class OutputDefense:
    """
    Base class of the output defences. Subclasses set the class attributes and implement `perturb`.

    Attributes:
        name (`str`): registry name, as in [`build_defense`] specs.
        preserves_top1 (`bool`): every defended row keeps the undefended row's top-1 class (its first maximal
            index), so a label-only thief sees the served labels unchanged.
        randomised (`bool`): answers to a repeated query differ; the randomness comes from the `generator`.
        needs_inputs (`bool`): the defence reads the query inputs, not only the probabilities.
    """

    name: str = None
    preserves_top1: bool = False
    randomised: bool = False
    needs_inputs: bool = False

    def __call__(self, probabilities: torch.Tensor, inputs=None, generator: torch.Generator | None = None):
        """
        Defend a batch of answers.

        Args:
            probabilities (`torch.Tensor`): `(n, C)` probabilities (rows are renormalised if they do not sum to 1).
            inputs (*optional*): the batch of query inputs the probabilities answer; needed when `needs_inputs`.
            generator (`torch.Generator`, *optional*): the source of randomness of randomised defences; torch's
                global generator when `None`.

        Returns:
            `torch.Tensor`: `(n, C)` defended probabilities, float32 (float64 for float64 inputs).
        """
        rows = _probability_rows(probabilities)
        if self.needs_inputs and inputs is None:
            raise ValueError(f"The {self.name!r} defence reads the query inputs: pass inputs=.")
        top1 = rows.argmax(-1)
        defended = _as_distributions(self.perturb(rows, inputs=inputs, generator=generator), top1)
        defended = defended.to(torch.float64 if probabilities.dtype == torch.float64 else torch.float32)
        return _break_ties_towards(defended, top1) if self.preserves_top1 else defended

    def perturb(self, probabilities: torch.Tensor, inputs=None, generator=None) -> torch.Tensor:
        """The defence proper, on float64 rows that sum to 1. The result is renormalised by `__call__`."""
        raise NotImplementedError

    def parameters(self) -> dict:
        """The defence's name and parameters, JSON-able, for result rows."""
        return {"name": self.name}

    def __repr__(self):
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.parameters().items() if key != "name")
        return f"{type(self).__name__}({arguments})"


class TopOneLabel(OutputDefense):
    """
    Label only: the one-hot of the top-1 class (Tramèr et al., "Stealing Machine Learning Models via Prediction
    APIs", USENIX Security 2016, who name it as the natural countermeasure of returning labels only).

    No parameters. Preserves the top-1 label: yes. Deterministic.
    """

    name = "top1"
    preserves_top1 = True

    def perturb(self, probabilities, inputs=None, generator=None):
        return _one_hot(probabilities.argmax(-1), probabilities.shape[-1], probabilities.dtype)


class Rounding(OutputDefense):
    """
    Rounded probabilities (Tramèr et al., "Stealing Machine Learning Models via Prediction APIs", USENIX Security
    2016), renormalised to sum to 1. A row that rounds to all zeros (more than 20 classes at one decimal) is answered with
    its top-1 one-hot.

    Args:
        decimals (`int`, *optional*, defaults to 2):
            Decimal digits kept (typically 1 or 2).

    Preserves the top-1 label: yes. Rounding can tie the top-1 class with another one; the top-1 class is then made
    larger by one unit in the last place, so the served label stays the undefended one. Deterministic.
    """

    name = "rounding"
    preserves_top1 = True

    def __init__(self, decimals: int = 2):
        self.decimals = _check_int("decimals", decimals, minimum=0)

    def perturb(self, probabilities, inputs=None, generator=None):
        return torch.round(probabilities, decimals=self.decimals)

    def parameters(self):
        return {"name": self.name, "decimals": self.decimals}


class ReverseSigmoid(OutputDefense):
    """
    Reverse sigmoid (Lee et al., "Defending Against NN Model Stealing Attacks Using Deceptive Perturbations", IEEE
    S&P Workshops 2019): `y' = normalise(max(0, y - beta * (sigmoid(gamma * logit(y)) - 1/2)))`. It squashes
    confident answers so that a thief's cross-entropy learns wrong logits; the shared implementation is
    [`~modeling_misleader.reverse_sigmoid`], the one a saved ensemble applies with `config.output_defense`.

    Args:
        beta (`float`, *optional*, defaults to 0.7):
            Strength of the perturbation (>= 0).
        gamma (`float`, *optional*, defaults to 0.4):
            Slope of the sigmoid in logit space (> 0).

    Preserves the top-1 label: no, not in general (uncertain answers can change class; with a large beta every
    answer does: at beta 1.5, gamma 0.4 the MNIST teacher's served accuracy fell to 0%, see benchmarks/RESULTS.md).
    Deterministic.
    """

    name = "reverse_sigmoid"

    def __init__(self, beta: float = 0.7, gamma: float = 0.4):
        self.beta = _check_float("beta", beta, minimum=0.0)
        self.gamma = _check_float("gamma", gamma, minimum=0.0, strictly=True)

    def perturb(self, probabilities, inputs=None, generator=None):
        return reverse_sigmoid(probabilities, beta=self.beta, gamma=self.gamma)

    def parameters(self):
        return {"name": self.name, "beta": self.beta, "gamma": self.gamma}


class GaussianNoise(OutputDefense):
    """
    Random noise: `y' = normalise(max(0, y + N(0, sigma^2)))`, fresh noise for every answer (the random-noise
    baseline of Orekondy et al., "Prediction Poisoning", ICLR 2020, here added to the probabilities rather than to
    their logits). A row the clamp empties is answered with the one-hot of its largest noisy value.

    Args:
        sigma (`float`, *optional*, defaults to 0.1):
            Standard deviation of the noise (>= 0).

    Preserves the top-1 label: no. Randomised: yes (averaging repeated queries removes much of the noise; the
    benchmark attacks it that way too).
    """

    name = "gaussian_noise"
    randomised = True

    def __init__(self, sigma: float = 0.1):
        self.sigma = _check_float("sigma", sigma, minimum=0.0)

    def perturb(self, probabilities, inputs=None, generator=None):
        # Drawn on the generator's device, so a CPU generator gives the same noise whatever the model's device.
        device = generator.device if generator is not None else probabilities.device
        noise = torch.randn(probabilities.shape, generator=generator, device=device, dtype=torch.float32)
        noisy = probabilities + self.sigma * noise.to(probabilities)
        clamped = noisy.clamp_min(0)
        empty = clamped.sum(-1, keepdim=True) <= 0
        return torch.where(empty, _one_hot(noisy.argmax(-1), noisy.shape[-1], noisy.dtype), clamped)

    def parameters(self):
        return {"name": self.name, "sigma": self.sigma}


class AdaptiveMisinformation(OutputDefense):
    """
    Adaptive misinformation (Kariyappa & Qureshi, "Defending Against Model Stealing Attacks with Adaptive
    Misinformation", CVPR 2020): queries that look out of distribution are answered with misinformation,
    `y' = (1 - a) * y + a * y_mis` with `a = sigmoid(nu * (tau - score(x)))`, where the score is an
    out-of-distribution detector's maximum softmax probability (low = out of distribution).

    Args:
        tau (`float`, *optional*, defaults to 0.9):
            Threshold on the score, in [0, 1]: answers scoring below it are misinformation. The paper sweeps it to
            trade defended accuracy against protection; choose it on held-out in-distribution data.
        nu (`float`, *optional*, defaults to 10000):
            Sharpness of the switch (the authors' code uses 10000: practically a step at `tau`).
        detector (`torch.nn.Module` or callable, *optional*):
            The out-of-distribution score. A classifier module scores by its maximum softmax probability (the
            paper's detector is a classifier trained with outlier exposure); another callable takes the query inputs
            and returns `(n,)` scores. The default, `"max_softmax"`, is the victim's own maximum softmax probability.
        misinformation_model (`torch.nn.Module` or callable, *optional*):
            The misinformation function. A classifier module answers its softmax (the paper trains one to put little
            mass on the correct class); another callable takes the query inputs and returns `(n, C)` probabilities.
            The default, `"complement"`, is a deterministic wrong distribution derived from the victim's answer,
            `(1 - y) / (C - 1)`: no mass on a confident top-1 class, most on the least likely classes.

    Preserves the top-1 label: no (that is its point on out-of-distribution queries). Deterministic.
    """

    name = "adaptive_misinformation"
    needs_inputs = True  # in general; an instance without models reads only the probabilities

    def __init__(self, tau: float = 0.9, nu: float = 10000.0, detector="max_softmax",
                 misinformation_model="complement"):
        self.tau = _check_float("tau", tau, minimum=0.0, maximum=1.0)
        self.nu = _check_float("nu", nu, minimum=0.0, strictly=True)
        self.detector = _model_or_default("detector", detector, "max_softmax")
        self.misinformation_model = _model_or_default("misinformation_model", misinformation_model, "complement")
        self.needs_inputs = self.detector is not None or self.misinformation_model is not None

    def perturb(self, probabilities, inputs=None, generator=None):
        count, num_labels = probabilities.shape
        if self.detector is None:
            score = probabilities.max(-1).values
        elif isinstance(self.detector, torch.nn.Module):
            score = model_probabilities(self.detector, inputs).max(-1).values
        else:
            score = _checked_output(self.detector(inputs), (count,), "detector").to(probabilities)
        if self.misinformation_model is None:
            if num_labels < 2:
                raise ValueError("Adaptive misinformation needs at least 2 classes to answer a wrong one.")
            misinformation = (1 - probabilities) / (num_labels - 1)
        elif isinstance(self.misinformation_model, torch.nn.Module):
            misinformation = model_probabilities(self.misinformation_model, inputs)
        else:
            misinformation = self.misinformation_model(inputs)
            misinformation = _checked_output(misinformation, (count, num_labels), "misinformation_model")
        misinformation = _probability_rows(misinformation.to(probabilities.device))
        weight = torch.sigmoid(self.nu * (self.tau - score.to(probabilities))).unsqueeze(-1)
        return (1 - weight) * probabilities + weight * misinformation

    def parameters(self):
        return {"name": self.name, "tau": self.tau, "nu": self.nu,
                "detector": _describe(self.detector, "max_softmax"),
                "misinformation_model": _describe(self.misinformation_model, "complement")}


class MAD(OutputDefense):
    """
    Maximising angular deviation (Orekondy et al., "Prediction Poisoning: Towards Defenses Against DNN Model
    Stealing Attacks", ICLR 2020). The thief's clone learns from the gradient `G^T y'` of its loss; MAD answers the
    `y'` within an L1 distance `epsilon` of `y` whose gradient direction deviates most from that of the true answer,
    maximising `|| G^T y' / ||G^T y'|| - G^T y / ||G^T y|| ||^2` (the paper's objective). As in the authors' code:
    the candidates are the one-hot vertices of the simplex, the best one `y*` is mixed in as far as the budget
    allows, `y' = y + min(1, epsilon / ||y* - y||_1) (y* - y)`, and `G` is the gradient of the surrogate's last
    linear layer, the practical approximation of the full network's.

    That gradient has a closed form: for a last layer `z = W h + b`, the gradient of the cross-entropy against a
    target `t` is `(p - t) h^T`, with `p` the surrogate's softmax. The angle between two such gradients is the angle
    between `p - t` and `p - y`, so only the surrogate's probabilities are needed, no backward pass. When the
    surrogate agrees with the victim (`p = y`, e.g. both saturated), `G^T y` vanishes and the angle is undefined;
    those rows use the authors' code's default unnormalised objective `||G^T (y' - y)||^2 = ||h||^2 ||y' - y||^2`,
    which moves mass to the victim's least likely class. (That code uses the unnormalised objective everywhere by
    default, `objmax=False`; with the last-layer gradient it then always picks the least likely class whatever the
    surrogate, so the paper's angular objective is used wherever it is defined.)

    Args:
        surrogate (`torch.nn.Module`):
            The defender's stand-in for the thief's clone: a classifier (returning `logits`, or a logits tensor)
            that takes the same query inputs as the victim. Not the victim itself (see above).
        epsilon (`float`, *optional*, defaults to 0.5):
            L1 budget of the perturbation, in [0, 2] (the paper sweeps it over this range).

    Preserves the top-1 label: no (see [`MADArgmax`] for the variant that does). Deterministic.
    """

    name = "mad"
    needs_inputs = True
    keep_top1 = False

    def __init__(self, surrogate=None, epsilon: float = 0.5):
        if surrogate is None:
            raise ValueError(
                f"The {self.name!r} defence needs surrogate=: a classifier module standing in for the thief's clone "
                "(e.g. a small model trained on the victim's answers), not the victim itself."
            )
        if not isinstance(surrogate, torch.nn.Module):
            raise ValueError(f"surrogate must be a torch.nn.Module classifier, got {type(surrogate).__name__}.")
        self.surrogate = surrogate.eval()
        self.epsilon = _check_float("epsilon", epsilon, minimum=0.0, maximum=2.0)

    def perturb(self, probabilities, inputs=None, generator=None):
        surrogate = model_probabilities(self.surrogate, inputs).to(probabilities)
        if surrogate.shape != probabilities.shape:
            raise ValueError(f"The surrogate answers {tuple(surrogate.shape)} probabilities for a victim's "
                             f"{tuple(probabilities.shape)}: it must classify into the same classes.")
        target = best_poisoned_target(probabilities, surrogate, keep_top1=self.keep_top1)
        distance = (target - probabilities).abs().sum(-1, keepdim=True)
        step = torch.where(distance > 0, (self.epsilon / distance).clamp(max=1.0), torch.zeros_like(distance))
        return probabilities + step * (target - probabilities)

    def parameters(self):
        return {"name": self.name, "epsilon": self.epsilon, "surrogate": _describe(self.surrogate, None)}


class MADArgmax(MAD):
    """
    MAD-argmax (Orekondy et al., ICLR 2020): [`MAD`] restricted to answers that keep the victim's top-1 class. As
    in the authors' code, the candidates are the uniform distributions over every set of classes that contains the
    top-1 class `k`, with `k` upweighted by 1e-5 so that it stays the strict maximum (all `2^(C-1)` sets up to 10
    classes; beyond, a greedy search that grows the set one class at a time, within 1024 candidates).

    Args:
        surrogate (`torch.nn.Module`): as for [`MAD`].
        epsilon (`float`, *optional*, defaults to 0.5): as for [`MAD`].

    Preserves the top-1 label: yes. Deterministic.
    """

    name = "mad_argmax"
    preserves_top1 = True
    keep_top1 = True


DEFENSES = {cls.name: cls for cls in (TopOneLabel, Rounding, ReverseSigmoid, GaussianNoise, AdaptiveMisinformation,
                                      MAD, MADArgmax)}


def build_defense(spec) -> OutputDefense | None:
    """
    An output defence from its spec.

    Args:
        spec (`None`, `str`, `dict` or [`OutputDefense`]):
            `None` or `"none"`: no defence; a registry name (`"top1"`, `"rounding"`, ...) for its published
            defaults; `{"name": ..., **parameters}`; or a defence, returned as it is.

    Returns:
        [`OutputDefense`] or `None`.
    """
    if spec is None or isinstance(spec, OutputDefense):
        return spec
    if isinstance(spec, str):
        name, parameters = spec, {}
    elif isinstance(spec, Mapping):
        parameters = dict(spec)
        if "name" not in parameters:
            raise ValueError(f"A defence spec dict needs a 'name' (one of {sorted(DEFENSES)}), got {spec!r}.")
        name = parameters.pop("name")
    else:
        raise ValueError(f"A defence spec is None, a name, a dict with a 'name', or an OutputDefense; got {spec!r}.")
    if name == "none" and not parameters:
        return None
    if name not in DEFENSES:
        raise ValueError(f"Unknown output defence {name!r}; known: {', '.join(sorted(DEFENSES))} (or 'none').")
    cls = DEFENSES[name]
    accepted = [argument for argument in inspect.signature(cls.__init__).parameters if argument != "self"]
    unknown = sorted(set(parameters) - set(accepted))
    if unknown:
        raise ValueError(f"Unknown parameter(s) {unknown} for the {name!r} defence; it takes {accepted or 'none'}.")
    return cls(**parameters)


# ------------------------------------------------------------------------------------------------------------------
# Helpers


def _probability_rows(probabilities) -> torch.Tensor:
    """Validated `(n, C)` float64 rows, renormalised to sum to 1."""
    if not torch.is_tensor(probabilities) or probabilities.dim() != 2 or probabilities.shape[-1] < 1:
        shape = tuple(probabilities.shape) if torch.is_tensor(probabilities) else type(probabilities).__name__
        raise ValueError(f"A defence takes (n, num_labels) probabilities, got {shape}.")
    rows = probabilities.detach().double()
    if not torch.isfinite(rows).all() or (rows < -1e-6).any():
        raise ValueError("Probabilities must be finite and non-negative.")
    rows = rows.clamp_min(0)
    total = rows.sum(-1, keepdim=True)
    if (total <= 0).any():
        raise ValueError("A row of probabilities is all zeros.")
    return rows / total


def _as_distributions(perturbed, top1):
    """Rows made finite, non-negative and summing to 1; an empty row answers the top-1 one-hot."""
    perturbed = torch.nan_to_num(perturbed, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0)
    total = perturbed.sum(-1, keepdim=True)
    empty = total <= 0
    fallback = _one_hot(top1, perturbed.shape[-1], perturbed.dtype)
    return torch.where(empty, fallback, perturbed / torch.where(empty, torch.ones_like(total), total))


def _break_ties_towards(defended, top1):
    # Rounding (or float rounding) can tie the top-1 class with an earlier index, which argmax would then serve.
    rows = torch.arange(len(defended))
    at_top = defended[rows, top1]
    tied = (defended.argmax(-1) != top1) & (at_top == defended.max(-1).values)
    if tied.any():
        defended = defended.clone()
        defended[rows[tied], top1[tied]] = torch.nextafter(at_top[tied], torch.full_like(at_top[tied], 2.0))
    return defended


def _one_hot(index, num_labels, dtype):
    return torch.nn.functional.one_hot(index, num_labels).to(dtype)


def _checked_output(value, shape, what):
    if not torch.is_tensor(value) or tuple(value.shape) != shape:
        got = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
        raise ValueError(f"{what} must return a tensor of shape {shape}, got {got}.")
    return value.detach().double()


def _model_or_default(argument, value, default):
    """None for the named default (or None), else a module or callable."""
    if value is None or (isinstance(value, str) and value == default):
        return None
    if not callable(value):
        raise ValueError(f"{argument} must be {default!r}, a classifier module or a callable, got {value!r}.")
    return value


def _describe(model, default):
    """A JSON-able name for a model argument: the default's name, the module's class, or the callable's name."""
    if model is None:
        return default
    if isinstance(model, torch.nn.Module):
        return type(model).__name__
    return getattr(model, "__name__", type(model).__name__)


def _check_float(name, value, minimum=None, maximum=None, strictly=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{name} must be a number, got {value!r}.")
    if minimum is not None and (value <= minimum if strictly else value < minimum):
        raise ValueError(f"{name} must be {'>' if strictly else '>='} {minimum}, got {value!r}.")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}.")
    return float(value)


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return value
