"""The extraction attacks: exact query accounting, clear refusals, and the adaptive thieves undoing known defences.

Toy victims (small MLPs on scikit-learn's real 8x8 digits) keep every test to a second or two.
"""

import inspect

import pytest
import torch
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput, SequenceClassifierOutput

from hf_misleader import BlackBoxAPI
from hf_misleader.attacks import ATTACKS, DESCRIPTIONS, averaging, check_attack, dfme, inverting, knockoff, unpermuting
from hf_misleader.attacks.jbda import jacobian_step
from hf_misleader.modeling_misleader import reverse_sigmoid

NUM_LABELS = 10
TINY_TRAINING = {"epochs": 1, "min_steps": 2, "batch_size": 16}


class ToyImageClassifier(nn.Module):
    """An MLP on 1x8x8 digits, with the `pixel_values` -> `.logits` interface of a transformers classifier."""

    def __init__(self, hidden=32):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, NUM_LABELS))

    def forward(self, pixel_values):
        return ImageClassifierOutput(logits=self.net(pixel_values))


class ToyTextClassifier(nn.Module):
    """Mean of token embeddings -> 3 classes, with the `input_ids` interface of a transformers text classifier."""

    def __init__(self, vocab_size=50, num_labels=3):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, 8)
        self.head = nn.Linear(8, num_labels)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask[..., None].float()
        return SequenceClassifierOutput(logits=self.head((self.embed(input_ids) * mask).sum(1) / mask.sum(1)))


class Served(nn.Module):
    """A victim whose answers are `answer(probabilities)`: a public transform, a class permutation, saturation."""

    def __init__(self, inner, answer):
        super().__init__()
        self.inner, self.answer = inner, answer

    def forward(self, pixel_values):
        probabilities = torch.softmax(self.inner(pixel_values=pixel_values).logits, -1)
        # BlackBoxAPI's softmax of these logits gives back exactly the answered probabilities.
        return ImageClassifierOutput(logits=torch.log(self.answer(probabilities)))  # log(0) = -inf: exact 0s


def toy_clone():
    return ToyImageClassifier()


@pytest.fixture(scope="module")
def toy():
    """Real digits in [-1, 1]: victim training set, the thief's pool, 100 labelled samples, a test set; and a
    trained victim (about 90% test accuracy)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 8 - 1
    labels = torch.tensor(digits.target)
    data = {"train": (images[:700], labels[:700]), "pool": images[700:1300],
            "labelled": (images[1300:1400], labels[1300:1400]), "test": (images[1400:], labels[1400:])}
    torch.manual_seed(0)
    victim = ToyImageClassifier(64)
    optimizer = torch.optim.Adam(victim.parameters(), lr=1e-2)
    for step in range(150):
        batch = torch.arange(step * 64, step * 64 + 64) % 700
        loss = nn.functional.cross_entropy(victim(pixel_values=images[batch]).logits, labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    data["victim"] = victim.eval()
    return data


@pytest.fixture(scope="module")
def text_toy():
    torch.manual_seed(0)
    pool = {"input_ids": torch.randint(50, (64, 12)), "attention_mask": torch.ones(64, 12, dtype=torch.long)}
    return ToyTextClassifier().eval(), pool


def victim_probabilities(victim, images):
    with torch.no_grad():
        return torch.softmax(victim(pixel_values=images).logits, -1)


def agreement(model, victim, images):
    same = victim_probabilities(model, images).argmax(-1) == victim_probabilities(victim, images).argmax(-1)
    return same.float().mean().item()


def attack_kwargs(name, toy, pool=None):
    """The smallest working settings of each attack on the toy data."""
    pool = toy["pool"] if pool is None else pool
    labelled_inputs, labelled_labels = toy["labelled"]
    return {
        "knockoff": {"pool": pool, **TINY_TRAINING},
        "jbda": {"pool": pool, "rounds": 2, **TINY_TRAINING},
        "dfme": {"pool": pool, "batch_size": 4, "clone_steps": 2},
        "averaging": {"pool": pool, "repeats": 3, **TINY_TRAINING},
        "inverting": {"pool": pool, "transform": reverse_sigmoid, "simulations": 256, "inverter_steps": 5,
                      **TINY_TRAINING},
        "unpermuting": {"pool": pool, "labelled_inputs": labelled_inputs[:10], "labelled_labels": labelled_labels[:10],
                        **TINY_TRAINING},
    }[name]


def assert_finite(clone):
    assert all(torch.isfinite(p).all() for p in clone.parameters())


# ----------------------------------------------------------------------------------------------------------------
# Query accounting


# A budget of 1 for every attack that can spend one query (averaging needs `repeats` queries per input and
# un-permuting its labelled samples first: both refuse a smaller budget, tested below).
SMALLEST_BUDGETS = [(name, 1) for name in sorted(ATTACKS) if name not in ("averaging", "unpermuting")]


@pytest.mark.parametrize("name, budget", SMALLEST_BUDGETS + [(name, 37) for name in sorted(ATTACKS)])
def test_spends_exactly_the_budget(toy, name, budget):
    """An API capped at the budget would raise on any extra query; the count must land on the budget exactly."""
    api = BlackBoxAPI(toy["victim"], budget=budget)
    scored = []
    checkpoints = [24, 37] if budget == 37 else None
    clone, history = ATTACKS[name].run(api, budget, build_clone=toy_clone, checkpoints=checkpoints, progress=False,
                                       evaluate=lambda clone: scored.append(clone) or {"agreement": 0.5},
                                       **attack_kwargs(name, toy))
    assert api.queries_used == budget and api.queries_left == 0
    assert history[-1]["queries"] == budget and history[-1]["agreement"] == 0.5
    if checkpoints and name == "dfme":  # trained online: scored when a step first passes the checkpoint
        assert len(history) == 2 and 24 <= history[0]["queries"] < 37
    elif checkpoints:
        assert [entry["queries"] for entry in history] == checkpoints
    assert scored[-1] is clone and not clone.training
    assert_finite(clone)


@pytest.mark.parametrize("name", ["knockoff", "averaging", "inverting", "unpermuting"])
def test_text_victims_are_attacked_too(toy, text_toy, name):
    victim, pool = text_toy
    kwargs = attack_kwargs(name, toy, pool=pool)
    if name == "unpermuting":
        kwargs.update(labelled_inputs={key: value[:5] for key, value in pool.items()},
                      labelled_labels=torch.arange(5) % 3)
    api = BlackBoxAPI(victim, budget=30)
    clone, history = ATTACKS[name].run(api, 30, build_clone=lambda: ToyTextClassifier(), progress=False, **kwargs)
    assert api.queries_used == 30 and history == [{"queries": 30}]
    assert_finite(clone)


def test_averaging_spreads_the_remainder_and_averages_fresh_noise(toy):
    counts = averaging.repeat_counts(38, 5)
    assert counts.tolist() == [6, 6, 6, 5, 5, 5, 5] and counts.sum() == 38

    class Noisy(nn.Module):
        """A randomised defence: fresh noise on the logits at every ask."""

        def __init__(self):
            super().__init__()
            self.inner = toy["victim"]

        def forward(self, pixel_values):
            logits = self.inner(pixel_values=pixel_values).logits
            return ImageClassifierOutput(logits=logits + 2 * torch.randn_like(logits))

    torch.manual_seed(0)
    api = BlackBoxAPI(Noisy())
    inputs = toy["pool"][:20]
    single = averaging.query_averaged(api, inputs, torch.ones(20, dtype=torch.long))
    averaged = averaging.query_averaged(api, inputs, torch.full((20,), 30))
    assert api.queries_used == 20 + 600
    truth = victim_probabilities(toy["victim"], inputs)
    assert (averaged - truth).abs().sum(-1).mean() < 0.6 * (single - truth).abs().sum(-1).mean()


def test_jbda_queries_synthetic_steps_from_its_seed_set(toy):
    seen = []

    class Recording(ToyImageClassifier):
        def forward(self, pixel_values):
            seen.append(pixel_values.clone())
            return toy["victim"](pixel_values=pixel_values)

    pool = toy["pool"]
    api = BlackBoxAPI(Recording(), budget=40)
    ATTACKS["jbda"].run(api, 40, pool=pool, build_clone=toy_clone, rounds=2, progress=False, **TINY_TRAINING)
    assert [len(batch) for batch in seen] == [10, 10, 20]  # seed set, then the set doubles each round
    queried = torch.cat(seen)
    assert queried.min() >= pool.min() and queried.max() <= pool.max()
    seeds, first_round = seen[0], seen[1]
    # Each synthetic input is one signed step (0.1 of the value range) from a seed, per pixel, unless clipped.
    distances = (first_round[:, None] - seeds[None]).abs().flatten(2).amax(-1).min(-1).values
    assert torch.allclose(distances, torch.full_like(distances, 0.2), atol=1e-5)


class BatchNormClone(nn.Module):
    """Conv + BatchNorm2d + pool + Linear: batch norm refuses to train on a batch of one row."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(8, NUM_LABELS))

    def forward(self, pixel_values):
        return ImageClassifierOutput(logits=self.net(pixel_values))


@pytest.mark.parametrize("name, budget, labels", [("knockoff", 1, "soft"), ("knockoff", 1, "label_only"),
                                                  ("jbda", 50, "label_only"), ("jbda", 2, "soft")])
def test_batch_norm_clones_train_on_the_smallest_budgets(toy, name, budget, labels):
    """A single answered row is repeated to a batch of two, and JBDA's seed set never drops below two inputs."""
    seen = []

    class Recording(ToyImageClassifier):
        def forward(self, pixel_values):
            seen.append(len(pixel_values))
            return toy["victim"](pixel_values=pixel_values)

    api = BlackBoxAPI(Recording(), budget=budget, output="probabilities" if labels == "soft" else "label")
    clone, history = ATTACKS[name].run(api, budget, pool=toy["pool"], build_clone=BatchNormClone, labels=labels,
                                       progress=False, **TINY_TRAINING)
    assert api.queries_used == budget and sum(seen) == budget
    assert [entry["queries"] for entry in history] == [budget]
    assert_finite(clone)
    if name == "jbda":
        assert seen[0] == 2  # budget 50 at the default 6 rounds: 5 rounds from a seed set of 2
        assert seen == ([2, 2, 4, 8, 16, 18] if budget == 50 else [2])


@pytest.mark.parametrize("rows, batch_size", [(1, 16), (2, 16), (17, 16), (33, 16), (5, 1)])
def test_train_clone_never_trains_on_a_batch_of_one(rows, batch_size):
    from hf_misleader.attacks.training import train_clone

    sizes = []
    clone = BatchNormClone()
    clone.register_forward_pre_hook(lambda module, args, kwargs: sizes.append(len(kwargs["pixel_values"])),
                                    with_kwargs=True)
    inputs = torch.randn(rows, 1, 8, 8)
    answers = torch.softmax(torch.randn(rows, NUM_LABELS), -1)
    train_clone(clone, inputs, answers, epochs=3, min_steps=5, batch_size=batch_size)
    assert sizes and min(sizes) >= 2


def test_jbda_seed_set_is_never_smaller_than_two(toy):
    api = BlackBoxAPI(toy["victim"], budget=3)
    ATTACKS["jbda"].run(api, 3, pool=toy["pool"], build_clone=BatchNormClone, rounds=6, progress=False,
                        **TINY_TRAINING)
    assert api.queries_used == 3


def test_jacobian_step_follows_the_answered_class(toy):
    images, classes = toy["pool"][:8], torch.arange(8)
    moved = jacobian_step(toy["victim"], images, classes, 0.05)
    before = toy["victim"](pixel_values=images).logits.gather(1, classes[:, None])
    after = toy["victim"](pixel_values=moved).logits.gather(1, classes[:, None])
    assert (after > before).all()


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 16, 16), (3, 30, 30)])
def test_dfme_generator_makes_images_of_any_size_in_range(shape):
    torch.manual_seed(0)
    images = dfme.Generator(shape, value_range=(-0.5, 2.0))(torch.randn(4, 100))
    assert images.shape == (4, *shape)
    assert images.min() >= -0.5 and images.max() <= 2.0


# ----------------------------------------------------------------------------------------------------------------
# Clear refusals, before any query


@pytest.mark.parametrize("name,kwargs,budget", [
    ("knockoff", {}, 601),
    ("averaging", {"repeats": 2}, 1202),  # 601 distinct inputs
    ("inverting", {}, 601),
    ("unpermuting", {}, 611),  # 10 labelled + 601 from the pool
    ("jbda", {"seed_size": 601}, 1000),
])
def test_budget_larger_than_the_pool_is_refused(toy, name, kwargs, budget):
    api = BlackBoxAPI(toy["victim"])
    with pytest.raises(ValueError, match="pool of 600"):
        ATTACKS[name].run(api, budget, build_clone=toy_clone, progress=False, **{**attack_kwargs(name, toy), **kwargs})
    assert api.queries_used == 0


@pytest.mark.parametrize("name,with_pool", [("jbda", True), ("dfme", True), ("dfme", False)])
def test_image_only_attacks_refuse_text(text_toy, name, with_pool):
    victim, pool = text_toy
    api = BlackBoxAPI(victim)
    kwargs = {"pool": pool} if with_pool else {"shape": (1, 8, 8)}
    with pytest.raises(ValueError, match="image-only"):
        ATTACKS[name].run(api, 20, build_clone=lambda: ToyTextClassifier(), progress=False, **kwargs)
    assert api.queries_used == 0


@pytest.mark.parametrize("name,kwargs,match", [
    ("averaging", {"repeats": 38}, "repeats"),
    ("averaging", {"checkpoints": [3, 37]}, "checkpoints"),
    ("unpermuting", {"labelled_inputs": torch.zeros(40, 1, 8, 8), "labelled_labels": torch.zeros(40)}, "labelled"),
    ("unpermuting", {"labelled_labels": torch.zeros(3)}, "same length"),
    ("inverting", {"transform": "no_such_defence"}, "transform"),
    ("dfme", {"pool": None}, "shape"),
    ("jbda", {"seed_size": 0}, "seed_size"),
])
def test_bad_settings_are_refused(toy, name, kwargs, match):
    api = BlackBoxAPI(toy["victim"])
    with pytest.raises(ValueError, match=match):
        ATTACKS[name].run(api, 37, build_clone=toy_clone, progress=False, **{**attack_kwargs(name, toy), **kwargs})
    assert api.queries_used == 0


@pytest.mark.parametrize("name", ["dfme", "inverting"])
def test_probability_attacks_refuse_label_answers(toy, name):
    api = BlackBoxAPI(toy["victim"], output="label")
    with pytest.raises(ValueError, match="'label'"):
        ATTACKS[name].run(api, 37, build_clone=toy_clone, progress=False, **attack_kwargs(name, toy))
    assert api.queries_used == 0


def test_registry_describes_what_each_attack_needs():
    for name, attack in ATTACKS.items():
        assert DESCRIPTIONS[name] and attack.PAPER
        assert set(attack.MODALITIES) <= {"image", "text"} and attack.ANSWERS in ("probabilities", "label", "either")
        assert isinstance(attack.NEEDS_POOL, bool) and isinstance(attack.NEEDS_LABELLED, bool)
        parameters = inspect.signature(attack.run).parameters
        assert {"api", "budget", "build_clone", "evaluate", "checkpoints", "seed", "progress"} <= set(parameters)
    assert check_attack("unpermuting", modality="text", output="label", has_labelled=True) is unpermuting
    refusals = [({"name": "jbda", "modality": "text", "output": "probabilities"}, "image"),
                ({"name": "dfme", "modality": "image", "output": "label", "has_pool": False}, "probabilities"),
                ({"name": "knockoff", "modality": "image", "output": "label", "has_pool": False}, "pool"),
                ({"name": "unpermuting", "modality": "image", "output": "label"}, "labelled"),
                ({"name": "nope", "modality": "image", "output": "label"}, "Unknown")]
    for kwargs, match in refusals:
        with pytest.raises(ValueError, match=match):
            check_attack(**kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Saturated answers, adaptive thieves


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_no_nan_with_saturated_answers(toy, name):
    """A victim answering exact 0s and 1s: log(0) must never reach a loss."""
    saturated = Served(toy["victim"], lambda p: nn.functional.one_hot(p.argmax(-1), NUM_LABELS).float())
    api = BlackBoxAPI(saturated)
    assert set(api.query(toy["pool"][:50]).unique().tolist()) == {0.0, 1.0}
    kwargs = {**attack_kwargs(name, toy), **({} if name == "dfme" else {"min_steps": 30})}
    clone, _ = ATTACKS[name].run(api, 80, build_clone=toy_clone, progress=False, **kwargs)
    assert_finite(clone)
    assert torch.isfinite(clone(pixel_values=toy["test"][0]).logits).all()


def test_inverter_recovers_a_known_transform(toy):
    truth = victim_probabilities(toy["victim"], toy["test"][0])
    flatten = lambda p: p**0.3 / (p**0.3).sum(-1, keepdim=True)
    inverter = inverting.fit_inverter(flatten, NUM_LABELS, simulations=5000, steps=400, progress=False)
    total_variation = lambda a, b: (a - b).abs().sum(-1).mean().item() / 2
    assert total_variation(flatten(truth), truth) > 0.2
    assert total_variation(inverter.invert(flatten(truth)), truth) < 0.05
    # Reverse sigmoid is not one-to-one, so it cannot be undone exactly; the inverter still gets much closer.
    inverter = inverting.fit_inverter(reverse_sigmoid, NUM_LABELS, simulations=5000, steps=400, progress=False)
    served = reverse_sigmoid(truth)
    assert total_variation(inverter.invert(served), truth) < 0.5 * total_variation(served, truth)


def test_inverting_thief_beats_a_naive_one_on_reverse_sigmoid(toy):
    api = BlackBoxAPI(Served(toy["victim"], reverse_sigmoid))
    test_images = toy["test"][0]
    truth = victim_probabilities(toy["victim"], test_images)
    settings = {"pool": toy["pool"], "build_clone": toy_clone, "progress": False, "min_steps": 300}
    naive, _ = knockoff.run(api, 300, **settings)
    thief, _ = inverting.run(api, 300, transform="reverse_sigmoid", simulations=5000, inverter_steps=400, **settings)
    assert api.queries_used == 600

    def distance(clone):  # total variation from the victim's real probabilities
        return (victim_probabilities(clone, test_images) - truth).abs().sum(-1).mean().item() / 2

    assert distance(thief) < 0.6 * distance(naive)
    assert agreement(thief, toy["victim"], test_images) > 0.8


def test_unpermuting_thief_recovers_a_known_permutation(toy):
    permutation = torch.tensor([3, 7, 0, 9, 1, 8, 2, 5, 4, 6])  # true class c is answered as permutation[c]
    permuted = Served(toy["victim"], lambda p: p[:, torch.argsort(permutation)])
    labelled_inputs, labelled_labels = toy["labelled"]
    api = BlackBoxAPI(permuted, output="label")
    answered = api.query(labelled_inputs)
    mapping = unpermuting.estimate_permutation(answered, labelled_labels, NUM_LABELS)
    assert torch.equal(mapping[permutation], torch.arange(NUM_LABELS))  # mapping undoes the permutation
    noisy_confusion = torch.eye(NUM_LABELS)[torch.argsort(permutation)] * 5 + 0.1 * torch.rand(10, 10)
    assert torch.equal(unpermuting._greedy_assignment(noisy_confusion), torch.argsort(permutation))  # without scipy

    test_images = toy["test"][0]
    settings = {"pool": toy["pool"], "build_clone": toy_clone, "progress": False, "labels": "label_only",
                "min_steps": 300}
    for output, labels in [("label", "label_only"), ("probabilities", "soft")]:
        api = BlackBoxAPI(permuted, output=output, budget=400)
        thief, _ = unpermuting.run(api, 400, labelled_inputs=labelled_inputs, labelled_labels=labelled_labels,
                                   **{**settings, "labels": labels})
        assert api.queries_used == 400
        assert agreement(thief, toy["victim"], test_images) > 0.8
    naive, _ = knockoff.run(BlackBoxAPI(permuted, output="label"), 400, **settings)
    assert agreement(naive, toy["victim"], test_images) < 0.3
