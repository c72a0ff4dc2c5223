"""BlackBoxAPI (what a thief sees, exact query accounting) and the KnockoffNets attack."""

import pytest
import torch

from hf_misleader import BlackBoxAPI, QueryBudgetExceeded
from hf_misleader.attacks import knockoff
from hf_misleader.defenses import build_defense

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


# ----------------------------------------------------------------------------------------------------------------
# Output defences, top-k, pipelines, seeds


def victim_probabilities(victim, images):
    with torch.no_grad():
        return torch.softmax(victim(pixel_values=images).logits, -1)


def test_defense_is_applied_to_the_answers(victim, pool):
    expected = victim_probabilities(victim, pool[:12])
    top1 = BlackBoxAPI(victim, defense="top1", batch_size=5).query(pool[:12])
    assert torch.equal(top1, torch.nn.functional.one_hot(expected.argmax(-1), NUM_LABELS).float())
    spec = {"name": "rounding", "decimals": 1}
    api = BlackBoxAPI(victim, defense=spec)
    assert api.defense.parameters() == spec
    torch.testing.assert_close(api.query(pool[:12]), build_defense(spec)(expected))
    labels = BlackBoxAPI(victim, output="label", defense="reverse_sigmoid").query(pool[:12])
    assert torch.equal(labels, build_defense("reverse_sigmoid")(expected).argmax(-1))
    assert BlackBoxAPI(victim, defense="none").defense is None
    with pytest.raises(ValueError, match="Unknown output defence"):
        BlackBoxAPI(victim, defense="blur")


def test_input_reading_defence_gets_each_batch(victim, pool):
    surrogate = build_member("convnext-tiny", seed=1)
    spec = {"name": "mad", "surrogate": surrogate, "epsilon": 0.5}
    answers = BlackBoxAPI(victim, defense=spec, batch_size=5).query(pool[:12])
    expected = build_defense(spec)(victim_probabilities(victim, pool[:12]), inputs=pool[:12])
    torch.testing.assert_close(answers, expected)


def test_top_k_keeps_the_k_best_scores_as_served(victim, pool):
    probabilities = BlackBoxAPI(victim).query(pool[:20])
    answers = BlackBoxAPI(victim, output="top_k", top_k=3).query(pool[:20])
    assert answers.shape == (20, NUM_LABELS)
    assert ((answers > 0).sum(-1) == 3).all()
    kept = answers > 0
    assert torch.equal(answers[kept], probabilities[kept])  # the served values, not renormalised
    assert (answers.sum(-1) <= 1 + 1e-6).all()
    smallest_kept = answers.masked_fill(~kept, 2.0).min(-1).values
    largest_dropped = probabilities.masked_fill(kept, -1.0).max(-1).values
    assert (smallest_kept >= largest_dropped).all()
    assert torch.equal(answers.argmax(-1), probabilities.argmax(-1))
    every_class = BlackBoxAPI(victim, output="top_k", top_k=NUM_LABELS + 5).query(pool[:4])
    torch.testing.assert_close(every_class, probabilities[:4])


@pytest.mark.parametrize("kwargs", [{"output": "top_k"}, {"output": "top_k", "top_k": 0}, {"top_k": 3},
                                    {"output": "label", "top_k": 1}, {"seed": "0"}])
def test_bad_top_k_and_seed_settings(victim, kwargs):
    with pytest.raises(ValueError, match="top_k|seed"):
        BlackBoxAPI(victim, **kwargs)


def test_counts_repeats_exactly_with_a_defence_and_refuses_past_the_budget(victim, pool):
    api = BlackBoxAPI(victim, defense="gaussian_noise", budget=20, batch_size=4)
    api.query(pool[:6])
    api.query(torch.cat([pool[:1]] * 9))  # one input repeated: nine queries
    assert api.queries_used == 15 and api.queries_left == 5
    with pytest.raises(QueryBudgetExceeded, match="asks 6 queries .* only 5 of the budget of 20 are left"):
        api.query(pool[:6])
    assert api.queries_used == 15
    api.query(pool[:5])
    assert api.queries_left == 0


def test_same_seed_same_answers_for_randomised_defences(victim, pool):
    def stream(seed):
        api = BlackBoxAPI(victim, defense={"name": "gaussian_noise", "sigma": 0.2}, seed=seed, batch_size=4)
        return [api.query(pool[:6]), api.query(pool[:6]), api.query(pool[3:9])]

    first, again, other = stream(7), stream(7), stream(8)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], other[0])
    assert not torch.equal(first[0], first[1])  # a repeated query gets fresh noise


def test_a_failed_query_does_not_consume_randomness(victim, pool):
    clean = BlackBoxAPI(victim, defense="gaussian_noise", seed=1)
    failing = BlackBoxAPI(victim, defense="gaussian_noise", seed=1)
    with pytest.raises(Exception):
        failing.query(torch.zeros(4, 2, IMAGE_SIZE, IMAGE_SIZE))
    assert torch.equal(failing.query(pool[:5]), clean.query(pool[:5]))


class Saturated(torch.nn.Module):
    """A bare classifier (`forward(x)` returning a logits tensor) whose logits reach 1e4 in size."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(3 * IMAGE_SIZE * IMAGE_SIZE, NUM_LABELS)

    def forward(self, x):
        logits = self.linear(x.flatten(1))
        return 1e4 * logits / logits.abs().amax(-1, keepdim=True)


@pytest.mark.parametrize("defense", [None, "top1", "rounding", "reverse_sigmoid", "gaussian_noise",
                                     "adaptive_misinformation"])
def test_logits_of_1e4_give_finite_answers(pool, defense):
    api = BlackBoxAPI(Saturated(), defense=defense)
    answers = api.query(pool[:16])
    assert torch.isfinite(answers).all() and (answers >= 0).all()
    torch.testing.assert_close(answers.sum(-1), torch.ones(16))
    assert api.num_labels == NUM_LABELS and api.input_kind is None


def test_num_labels_and_input_kind(victim):
    api = BlackBoxAPI(victim)
    assert api.num_labels == NUM_LABELS and api.input_kind == "pixel_values"


@pytest.fixture(scope="module")
def image_pipeline(victim, processor):
    from transformers import pipeline

    return pipeline("image-classification", model=victim, image_processor=processor)


def test_image_pipeline_victim(image_pipeline, victim, raw_digits, digits):
    images = raw_digits["train"][:10]["image"]
    api = BlackBoxAPI(image_pipeline, budget=12, batch_size=4)
    assert api.input_kind == "images" and api.num_labels == NUM_LABELS
    answers = api.query(images)
    assert api.queries_used == 10
    expected = victim_probabilities(victim, digits["train"][:10]["pixel_values"])
    torch.testing.assert_close(answers, expected, atol=1e-5, rtol=1e-4)  # label strings mapped back to indices
    with pytest.raises(QueryBudgetExceeded):
        api.query(images[:3])
    with pytest.raises(TypeError, match="list of raw images"):
        api.query(images[0])
    labels = BlackBoxAPI(image_pipeline, output="label", defense="rounding").query(images)
    assert torch.equal(labels, expected.argmax(-1))


def test_protected_pipeline_victim(victim, processor, raw_digits):
    from transformers import pipeline

    images = raw_digits["train"][:6]["image"]
    for options in ({"max_top_k": 1, "round_digits": 2}, {"label_only": True}):
        served = pipeline("protected-image-classification", model=victim, image_processor=processor, **options)
        answers = BlackBoxAPI(served).query(images)
        # One class per answer: all the mass on the served label.
        assert torch.equal(answers, torch.nn.functional.one_hot(answers.argmax(-1), NUM_LABELS).float())
        assert [served.model.config.id2label[i] for i in answers.argmax(-1).tolist()] == \
               [answer[0]["label"] for answer in served(images)]


def test_text_pipeline_victim():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, pipeline

    from hf_misleader.data import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, id2label={0: "rotten", 1: "fresh"})
    model = AutoModelForSequenceClassification.from_config(config).eval()
    texts = ["a gripping, beautifully acted film", "dull", "neither good nor bad, just long"]
    api = BlackBoxAPI(pipeline("text-classification", model=model, tokenizer=tokenizer), batch_size=2)
    assert api.input_kind == "texts" and api.num_labels == 2
    answers = api.query(texts)
    with torch.no_grad():
        expected = torch.cat([torch.softmax(model(**tokenizer([text], return_tensors="pt")).logits, -1)
                              for text in texts])
    torch.testing.assert_close(answers, expected, atol=1e-5, rtol=1e-4)
    assert api.queries_used == 3
    tokens = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    direct = BlackBoxAPI(model)
    assert direct.input_kind == "input_ids"
    torch.testing.assert_close(direct.query(tokens), expected, atol=1e-5, rtol=1e-4)
