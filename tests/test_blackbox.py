"""BlackBoxAPI (what a thief sees, exact query accounting) and the KnockoffNets attack."""

import pytest
import torch

from hf_misleader import BlackBoxAPI, QueryBudgetExceeded
from hf_misleader.attacks import knockoff

from .conftest import IMAGE_SIZE, NUM_LABELS, build_member


@pytest.fixture(scope="module")
def victim():
    return build_member("resnet-tiny", seed=0)


@pytest.fixture(scope="module")
def pool(digits):
    return digits["train"][:]["pixel_values"]  # 128 real processed digits


def test_counts_every_input_repeats_included(victim, pool):
    api = BlackBoxAPI(victim)
    assert api.queries_used == 0 and api.queries_left is None
    api.query(pool[:5])
    api.query(pool[:5])  # the very same inputs again
    api.query(torch.cat([pool[:1]] * 7))  # one input repeated within a batch
    assert api.queries_used == 17


def test_probabilities_are_rows_of_a_distribution(victim, pool):
    api = BlackBoxAPI(victim, batch_size=7)  # several forward passes
    answers = api.query(pool[:20])
    assert answers.shape == (20, NUM_LABELS)
    assert answers.dtype == torch.float32
    assert (answers >= 0).all()
    torch.testing.assert_close(answers.sum(-1), torch.ones(20))
    with torch.no_grad():
        expected = torch.softmax(victim(pixel_values=pool[:20]).logits, -1)
    torch.testing.assert_close(answers, expected, atol=1e-6, rtol=1e-5)
    # Never the raw logits: those are not normalised.
    assert not torch.allclose(answers, victim(pixel_values=pool[:20]).logits.detach())


def test_answers_do_not_depend_on_batch_size(victim, pool):
    small = BlackBoxAPI(victim, batch_size=3).query(pool[:10])
    large = BlackBoxAPI(victim, batch_size=256).query(pool[:10])
    torch.testing.assert_close(small, large, atol=1e-6, rtol=1e-5)


def test_label_mode_returns_argmax_class_indices(victim, pool):
    labels = BlackBoxAPI(victim, output="label").query(pool[:20])
    probabilities = BlackBoxAPI(victim).query(pool[:20])
    assert labels.shape == (20,)
    assert labels.dtype == torch.int64
    assert ((labels >= 0) & (labels < NUM_LABELS)).all()
    assert torch.equal(labels, probabilities.argmax(-1))


def test_budget_exceeded_neither_answers_nor_charges(victim, pool):
    api = BlackBoxAPI(victim, budget=10)
    api.query(pool[:6])
    assert api.queries_left == 4
    with pytest.raises(QueryBudgetExceeded):
        api.query(pool[:5])
    assert api.queries_used == 6 and api.queries_left == 4
    assert api.query(pool[:4]).shape == (4, NUM_LABELS)  # the rest of the budget still works, exactly
    assert api.queries_used == 10 and api.queries_left == 0
    with pytest.raises(QueryBudgetExceeded):
        api.query(pool[:1])
    assert api.queries_used == 10


def test_budget_exceeded_does_not_run_the_model(pool):
    class Counting(torch.nn.Module):
        """A real tiny classifier that records how many inputs it saw."""

        def __init__(self):
            super().__init__()
            self.inner = build_member("convnext-tiny", seed=0)
            self.seen = 0

        def forward(self, pixel_values):
            self.seen += len(pixel_values)
            return self.inner(pixel_values=pixel_values)

    model = Counting()
    api = BlackBoxAPI(model, budget=3)
    with pytest.raises(QueryBudgetExceeded):
        api.query(pool[:4])
    assert model.seen == 0
    api.query(pool[:3])
    assert model.seen == 3


@pytest.mark.parametrize("kwargs", [{"output": "logits"}, {"budget": -1}])
def test_bad_api_settings(victim, kwargs):
    with pytest.raises(ValueError):
        BlackBoxAPI(victim, **kwargs)


def test_query_needs_a_batch(victim):
    api = BlackBoxAPI(victim)
    with pytest.raises(ValueError):
        api.query(torch.empty(0, 3, IMAGE_SIZE, IMAGE_SIZE))
    with pytest.raises(ValueError):
        api.query(torch.zeros(3))
    with pytest.raises(TypeError):
        api.query([[0.0]])
    with pytest.raises(ValueError, match="same number of rows"):
        api.query({"input_ids": torch.zeros(2, 4, dtype=torch.long), "attention_mask": torch.ones(3, 4)})
    assert api.queries_used == 0


# ----------------------------------------------------------------------------------------------------------------
# KnockoffNets


def tiny_clone():
    return build_member("resnet-tiny")


def test_knockoff_budget_larger_than_pool(victim, pool):
    api = BlackBoxAPI(victim)
    with pytest.raises(ValueError, match=str(len(pool))) as error:
        knockoff.run(api, len(pool) + 1, pool, tiny_clone, progress=False)
    assert "pool" in str(error.value)
    assert api.queries_used == 0


@pytest.mark.parametrize("labels,output", [("soft", "label"), ("label_only", "probabilities")])
def test_knockoff_output_mode_mismatch(victim, pool, labels, output):
    api = BlackBoxAPI(victim, output=output)
    with pytest.raises(ValueError, match=output):
        knockoff.run(api, 8, pool, tiny_clone, labels=labels, progress=False)
    assert api.queries_used == 0


@pytest.mark.parametrize("checkpoints", [[4, 8], [4, 20], [0, 16]], ids=["short-of-budget", "past-budget", "zero"])
def test_knockoff_bad_checkpoints(victim, pool, checkpoints):
    api = BlackBoxAPI(victim)
    with pytest.raises(ValueError, match="checkpoints"):
        knockoff.run(api, 16, pool, tiny_clone, checkpoints=checkpoints, progress=False)
    assert api.queries_used == 0


@pytest.mark.parametrize("labels", knockoff.LABEL_MODES)
def test_knockoff_spends_exactly_the_budget(victim, pool, labels):
    api = BlackBoxAPI(victim, output="probabilities" if labels == "soft" else "label", budget=48)
    seen_clones = []

    def evaluate(clone):
        seen_clones.append(clone)
        with torch.no_grad():
            agreement = (clone(pixel_values=pool).logits.argmax(-1) == victim(pixel_values=pool).logits.argmax(-1))
        return {"agreement": agreement.float().mean().item()}

    clone, history = knockoff.run(api, 48, pool, tiny_clone, labels=labels, evaluate=evaluate,
                                  checkpoints=[16, 32, 48], progress=False, epochs=1, min_steps=3, batch_size=16)
    assert api.queries_used == 48 and api.queries_left == 0
    assert [entry["queries"] for entry in history] == [16, 32, 48]
    assert all(0.0 <= entry["agreement"] <= 1.0 for entry in history)
    assert len(seen_clones) == 3 and len({id(c) for c in seen_clones}) == 3  # a fresh clone per checkpoint
    assert clone is seen_clones[-1]
    assert not clone.training


def test_knockoff_is_reproducible(victim, pool):
    def steal():
        api = BlackBoxAPI(victim, budget=24)
        clone, _ = knockoff.run(api, 24, pool, tiny_clone, seed=3, progress=False, epochs=1, min_steps=2,
                                batch_size=8)
        with torch.no_grad():
            return clone(pixel_values=pool[:8]).logits

    assert torch.equal(steal(), steal())


def test_a_failed_query_is_not_charged_and_bad_settings_are_refused(victim):
    api = BlackBoxAPI(victim, budget=10)
    with pytest.raises(Exception):
        api.query(torch.zeros(4, 2, IMAGE_SIZE, IMAGE_SIZE))  # wrong channel count: the model cannot answer
    assert api.queries_used == 0
    for bad in ({"batch_size": 0}, {"budget": 2.5}, {"budget": "100"}):
        with pytest.raises(ValueError):
            BlackBoxAPI(victim, **bad)
    with pytest.raises(TypeError, match="build_clone"):
        knockoff.run(BlackBoxAPI(victim), 4, torch.zeros(8, 3, IMAGE_SIZE, IMAGE_SIZE), victim)
