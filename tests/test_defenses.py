"""Baseline output defences: distributions out for any probabilities in, honest top-1 claims, determinism, specs."""

import itertools
import json

import pytest
import torch

from hf_misleader.defenses import DEFENSES, OutputDefense, build_defense
from hf_misleader.prediction_poisoning import gradient_deviation

from .conftest import NUM_LABELS, build_member

ROWS = 16


@pytest.fixture(scope="module")
def surrogate():
    return build_member("resnet-tiny", seed=1)


@pytest.fixture(scope="module")
def images(pixel_batch):
    return pixel_batch[0][:ROWS]


# Every defence with its defaults, plus the extreme settings that stress the clamps and fallbacks.
SPECS = [
    "top1",
    "rounding",
    {"name": "rounding", "decimals": 1},
    {"name": "rounding", "decimals": 0},
    "reverse_sigmoid",
    "gaussian_noise",
    {"name": "gaussian_noise", "sigma": 5.0},
    "adaptive_misinformation",
    {"name": "adaptive_misinformation", "tau": 1.0},
    "mad",
    {"name": "mad", "epsilon": 2.0},
    "mad_argmax",
    {"name": "mad_argmax", "epsilon": 2.0},
]


def spec_id(spec):
    return spec if isinstance(spec, str) else "-".join(str(value) for value in spec.values())


def make(spec, surrogate):
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    if spec["name"].startswith("mad"):
        spec["surrogate"] = surrogate
    return build_defense(spec)


def mixed_logits(rows=ROWS, seed=0):
    """Logits whose top-1 classes cycle through every class."""
    logits = torch.randn(rows, NUM_LABELS, generator=torch.Generator().manual_seed(seed))
    logits[torch.arange(rows), torch.arange(rows) % NUM_LABELS] += 3.0
    return logits


def tied_logits(rows=ROWS):
    """Saturated rows whose two best classes tie exactly (argmax: the lower index)."""
    logits = torch.zeros(rows, NUM_LABELS)
    logits[torch.arange(rows), torch.arange(rows) % NUM_LABELS] = 1e4
    logits[torch.arange(rows), (torch.arange(rows) * 3 + 1) % NUM_LABELS] = 1e4
    return logits


CASES = {
    "mixed": lambda: torch.softmax(mixed_logits(), -1),
    "large-x100": lambda: torch.softmax(mixed_logits() * 100, -1),
    "saturated-1e4": lambda: torch.softmax(mixed_logits() * 1e4, -1),  # exactly one-hot
    "tied-1e4": lambda: torch.softmax(tied_logits(), -1),
    "uniform": lambda: torch.full((ROWS, NUM_LABELS), 1.0 / NUM_LABELS),
    "single-row": lambda: torch.softmax(mixed_logits(rows=1, seed=5) * 100, -1),
    "float64": lambda: torch.softmax(mixed_logits().double(), -1),
}


def defend(defense, probabilities, images, seed=0):
    return defense(probabilities, inputs=images[: len(probabilities)], generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_answers_are_distributions_and_keep_their_top1_claim(spec, case, surrogate, images):
    defense = make(spec, surrogate)
    probabilities = CASES[case]()
    defended = defend(defense, probabilities, images)
    assert defended.shape == probabilities.shape
    assert defended.dtype == (torch.float64 if probabilities.dtype == torch.float64 else torch.float32)
    assert torch.isfinite(defended).all()
    assert (defended >= 0).all()
    assert (defended.max(-1).values > 0).all()  # never an all-zero row
    torch.testing.assert_close(defended.sum(-1), torch.ones(len(defended), dtype=defended.dtype))
    if defense.preserves_top1:
        assert torch.equal(defended.argmax(-1), probabilities.argmax(-1))


# Uncertain answers on which each defence that does not claim to keep the top-1 label does change it.
def near_uniform_with_a_rare_class():
    logits = torch.zeros(ROWS, NUM_LABELS)
    logits[:, -1] = -5.0  # reverse sigmoid lifts a tiny probability above the near-uniform rest
    logits[torch.arange(ROWS), torch.arange(ROWS) % (NUM_LABELS - 1)] += 0.01
    return torch.softmax(logits, -1)


@pytest.mark.parametrize("spec", [s for s in SPECS if not DEFENSES[spec_id(s).split("-")[0]].preserves_top1],
                         ids=spec_id)
def test_defences_that_do_not_claim_to_keep_the_label_can_change_it(spec, surrogate, images):
    defense = make(spec, surrogate)
    assert not defense.preserves_top1
    probabilities = near_uniform_with_a_rare_class()
    defended = defend(defense, probabilities, images)
    assert (defended.argmax(-1) != probabilities.argmax(-1)).any()


def test_registry_and_claims():
    assert set(DEFENSES) == {"top1", "rounding", "reverse_sigmoid", "gaussian_noise", "adaptive_misinformation", "mad",
                             "mad_argmax"}
    claims = {name: (cls.preserves_top1, cls.randomised) for name, cls in DEFENSES.items()}
    assert claims == {"top1": (True, False), "rounding": (True, False), "reverse_sigmoid": (False, False),
                      "gaussian_noise": (False, True), "adaptive_misinformation": (False, False),
                      "mad": (False, False), "mad_argmax": (True, False)}
    for cls in DEFENSES.values():
        assert issubclass(cls, OutputDefense)
        assert "Preserves the top-1 label" in cls.__doc__


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_same_generator_seed_same_answers_and_randomised_claim(spec, surrogate, images):
    defense = make(spec, surrogate)
    probabilities = CASES["mixed"]()
    assert torch.equal(defend(defense, probabilities, images, seed=3), defend(defense, probabilities, images, seed=3))
    generator = torch.Generator().manual_seed(3)
    first = defense(probabilities, inputs=images, generator=generator)
    again = defense(probabilities, inputs=images, generator=generator)  # the same query, asked twice
    assert torch.equal(first, again) != defense.randomised


def test_rounding_values_and_tie_towards_the_top1():
    rounding = build_defense({"name": "rounding", "decimals": 1})
    torch.testing.assert_close(rounding(torch.tensor([[0.62, 0.27, 0.11]])), torch.tensor([[0.6, 0.3, 0.1]]))
    tied = rounding(torch.tensor([[0.331, 0.336, 0.333]]))  # all round to 0.3: class 1 stays the label
    assert tied.argmax(-1).item() == 1
    torch.testing.assert_close(tied, torch.full((1, 3), 1 / 3))
    many = torch.full((1, 40), 1 / 40)
    many[0, 7] += 0.001
    assert torch.equal(rounding(many / many.sum()), torch.nn.functional.one_hot(torch.tensor([7]), 40).float())


def test_top1_and_reverse_sigmoid_are_the_shared_transforms():
    from hf_misleader.modeling_misleader import reverse_sigmoid

    probabilities = CASES["mixed"]()
    assert torch.equal(build_defense("top1")(probabilities),
                       torch.nn.functional.one_hot(probabilities.argmax(-1), NUM_LABELS).float())
    defended = build_defense({"name": "reverse_sigmoid", "beta": 0.5, "gamma": 0.2})(probabilities)
    torch.testing.assert_close(defended, reverse_sigmoid(probabilities, beta=0.5, gamma=0.2))


def test_adaptive_misinformation_answers_wrong_only_out_of_distribution(surrogate, images):
    defense = build_defense({"name": "adaptive_misinformation", "tau": 0.5})
    confident = torch.softmax(mixed_logits() * 10, -1)
    confident = confident[confident.max(-1).values > 0.6]
    torch.testing.assert_close(defense(confident), confident.float())
    uncertain = torch.softmax(mixed_logits() * 0.1, -1)
    assert (uncertain.max(-1).values < 0.4).all()
    torch.testing.assert_close(defense(uncertain), (1 - uncertain) / (NUM_LABELS - 1))
    assert not defense.needs_inputs

    # A classifier module as detector and misinformation model (scores and answers from the inputs).
    with_models = build_defense({"name": "adaptive_misinformation", "tau": 1.0, "detector": surrogate,
                                 "misinformation_model": surrogate})
    assert with_models.needs_inputs
    with torch.no_grad():
        expected = torch.softmax(surrogate(pixel_values=images).logits, -1)
    torch.testing.assert_close(with_models(confident[:1].expand(ROWS, -1), inputs=images), expected)
    assert json.dumps(with_models.parameters())
    with pytest.raises(ValueError, match="inputs"):
        with_models(confident[:1])

    # Plain callables: scores (n,) and probabilities (n, C); a wrong shape is a clear error.
    callables = build_defense({"name": "adaptive_misinformation", "detector": lambda x: torch.zeros(len(x)),
                               "misinformation_model": lambda x: torch.full((len(x), NUM_LABELS), 0.1)})
    torch.testing.assert_close(callables(confident, inputs=images[: len(confident)]),
                               torch.full(confident.shape, 0.1))
    broken = build_defense({"name": "adaptive_misinformation", "detector": lambda x: torch.zeros(len(x), 2)})
    with pytest.raises(ValueError, match="detector must return"):
        broken(confident, inputs=images[: len(confident)])


# ------------------------------------------------------------------------------------------------------------------
# MAD


def last_layer_gradients(model, image):
    """G: row k is the gradient of the clone's NLL at class k w.r.t. its last linear layer's weight (authors' G)."""
    layer = [module for module in model.modules() if isinstance(module, torch.nn.Linear)][-1]
    logits = model(pixel_values=image.unsqueeze(0)).logits
    nll = -torch.log_softmax(logits.double(), -1)[0]
    return torch.stack([torch.autograd.grad(nll[k], layer.weight, retain_graph=True)[0].flatten().double()
                        for k in range(NUM_LABELS)])


def angular_objective(G, target, y):
    u, v = G.T @ target, G.T @ y
    return ((u / u.norm() - v / v.norm()).norm() ** 2).item()


def test_mad_closed_form_is_the_last_layer_gradient_angle(surrogate, images):
    probabilities = CASES["mixed"]().double()
    with torch.no_grad():
        surrogate_probabilities = torch.softmax(surrogate(pixel_values=images).logits.double(), -1)
    generator = torch.Generator().manual_seed(0)
    for row in range(4):
        G = last_layer_gradients(surrogate, images[row])
        targets = [torch.eye(NUM_LABELS, dtype=torch.float64)[k] for k in range(NUM_LABELS)]
        targets += [torch.softmax(torch.randn(NUM_LABELS, generator=generator).double(), -1) for _ in range(3)]
        for target in targets:
            one = slice(row, row + 1)
            closed = gradient_deviation(target[None], probabilities[one], surrogate_probabilities[one])
            assert closed.item() == pytest.approx(angular_objective(G, target, probabilities[row]), abs=1e-6)


def test_mad_picks_the_most_deviating_vertex_within_the_budget(surrogate, images):
    probabilities = CASES["mixed"]()
    for epsilon in (0.0, 0.3, 2.0):
        defended = make({"name": "mad", "epsilon": epsilon}, surrogate)(probabilities, inputs=images)
        distance = (defended - probabilities).abs().sum(-1)
        assert (distance <= epsilon + 1e-5).all()
        if epsilon == 0.0:
            torch.testing.assert_close(defended, probabilities)
    defended = make({"name": "mad", "epsilon": 2.0}, surrogate)(probabilities, inputs=images)  # the vertex itself
    for row in range(4):
        G = last_layer_gradients(surrogate, images[row])
        vertices = torch.eye(NUM_LABELS, dtype=torch.float64)
        scores = [angular_objective(G, vertex, probabilities[row].double()) for vertex in vertices]
        assert defended[row].argmax().item() == max(range(NUM_LABELS), key=scores.__getitem__)
        assert defended[row].max().item() == pytest.approx(1.0)


def test_mad_argmax_search_matches_brute_force(surrogate):
    from hf_misleader.prediction_poisoning import best_poisoned_target

    generator = torch.Generator().manual_seed(0)
    probabilities = torch.softmax(torch.randn(6, 5, generator=generator).double() * 2, -1)
    surrogate_probabilities = torch.softmax(torch.randn(6, 5, generator=generator).double() * 2, -1)
    chosen = best_poisoned_target(probabilities, surrogate_probabilities, keep_top1=True)
    for row in range(6):
        top = probabilities[row].argmax().item()
        candidates = []
        for members in itertools.product([0.0, 1.0], repeat=5):
            if members[top]:
                candidate = torch.tensor(members, dtype=torch.float64)
                candidate[top] += 1e-5
                candidates.append(candidate / candidate.sum())
        candidates = torch.stack(candidates)
        scores = gradient_deviation(candidates, probabilities[row].expand(len(candidates), -1),
                                    surrogate_probabilities[row].expand(len(candidates), -1))
        torch.testing.assert_close(chosen[row], candidates[scores.argmax()])
        assert chosen[row].argmax().item() == top


@pytest.mark.parametrize("num_labels", [12, 40])
def test_mad_argmax_greedy_search_for_many_classes(num_labels):
    from hf_misleader.defenses import MADArgmax

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(8, num_labels, generator=generator) * 3
    probabilities = torch.softmax(logits, -1)
    surrogate = torch.nn.Linear(4, num_labels)  # a bare module answering a logits tensor
    inputs = torch.randn(8, 4, generator=generator)
    defense = MADArgmax(surrogate=surrogate, epsilon=1.0)
    defended = defense(probabilities, inputs=inputs)
    assert torch.equal(defended.argmax(-1), probabilities.argmax(-1))
    assert ((defended - probabilities).abs().sum(-1) <= 1.0 + 1e-5).all()
    assert not torch.allclose(defended, probabilities)


# ------------------------------------------------------------------------------------------------------------------
# Specs and inputs


def test_build_defense_specs(surrogate):
    assert build_defense(None) is None and build_defense("none") is None and build_defense({"name": "none"}) is None
    defense = build_defense({"name": "gaussian_noise", "sigma": 0.2})
    assert build_defense(defense) is defense
    assert defense.parameters() == {"name": "gaussian_noise", "sigma": 0.2}
    for spec in SPECS:
        parameters = make(spec, surrogate).parameters()
        assert json.loads(json.dumps(parameters)) == parameters
        if not parameters["name"].startswith("mad"):
            assert build_defense(parameters).parameters() == parameters  # a result row rebuilds its defence


@pytest.mark.parametrize(
    "spec,message",
    [
        ("laplace", "Unknown output defence 'laplace'"),
        ({"name": "rounding", "digits": 2}, r"Unknown parameter\(s\) \['digits'\] for the 'rounding' defence"),
        ({"decimals": 2}, "needs a 'name'"),
        (3, "A defence spec is"),
        ({"name": "rounding", "decimals": -1}, "decimals must be an integer >= 0"),
        ({"name": "rounding", "decimals": 1.5}, "decimals must be an integer"),
        ({"name": "gaussian_noise", "sigma": -0.1}, "sigma must be >= 0"),
        ({"name": "reverse_sigmoid", "gamma": 0}, "gamma must be > 0"),
        ({"name": "adaptive_misinformation", "tau": 1.5}, "tau must be <= 1"),
        ({"name": "adaptive_misinformation", "detector": "msp"}, "detector must be"),
        ("mad", "needs surrogate="),
        ({"name": "mad_argmax", "surrogate": "resnet"}, "surrogate must be a torch.nn.Module"),
        ({"name": "none", "decimals": 1}, "Unknown output defence 'none'"),
    ],
)
def test_bad_specs_raise_clear_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        build_defense(spec)


def test_mad_epsilon_out_of_range(surrogate):
    with pytest.raises(ValueError, match="epsilon must be <= 2"):
        build_defense({"name": "mad", "surrogate": surrogate, "epsilon": 3})


@pytest.mark.parametrize("bad", [torch.ones(3), torch.tensor([[0.5, float("nan")]]), torch.tensor([[0.0, 0.0]]),
                                 torch.tensor([[1.5, -0.5]])])
def test_bad_probabilities_are_refused(bad):
    with pytest.raises(ValueError):
        build_defense("top1")(bad)


def test_mad_needs_the_inputs_and_the_same_classes(surrogate, images):
    defense = make("mad", surrogate)
    with pytest.raises(ValueError, match="inputs"):
        defense(CASES["mixed"]())
    with pytest.raises(ValueError, match="same classes"):
        defense(torch.full((ROWS, 3), 1 / 3), inputs=images)
