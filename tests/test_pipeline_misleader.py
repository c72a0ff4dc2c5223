"""Protected pipelines on tiny real models: stock scores, output hardening, per-caller budgets, input checks."""

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ViTImageProcessorPil,
    pipeline,
)
from transformers.pipelines import PIPELINE_REGISTRY

from hf_misleader import (
    MisleaderConfig,
    MisleaderEnsembleForImageClassification,
    MisleaderEnsembleForSequenceClassification,
    ProtectedImageClassificationPipeline,
    ProtectedTextClassificationPipeline,
    QueryBudget,
    register_pipelines,
)
from hf_misleader.pipeline_misleader import QueryBudgetExceeded

from hf_misleader.members import build_image_member

from .conftest import ID2LABEL, IMAGE_SIZE, NUM_LABELS, build_member

TEXT_LABELS = {0: "negative", 1: "neutral", 2: "positive"}
WORDS = "the a movie film good bad great awful plot actor boring fun not very".split()
TEXTS = ["the movie was good", "a boring plot", "not very fun", "great actor awful film"]


def sharpen(model, factor):
    """Scale the classification head so that members are confident and scores far apart."""
    with torch.no_grad():
        head = [module for module in model.modules() if isinstance(module, torch.nn.Linear)][-1]
        head.weight.mul_(factor)
        head.bias.mul_(factor)
    return model


def load_members(ensemble, members):
    for slot, member in zip(ensemble.members, members):
        slot.load_state_dict(member.state_dict())


@pytest.fixture(scope="module")
def image_model(tmp_path_factory, processor):
    presets = ("resnet-tiny", "vit-tiny")
    members = [sharpen(build_member(preset, seed=index), 20.0) for index, preset in enumerate(presets)]
    config = MisleaderConfig(
        members=[member.config.to_dict() for member in members],
        id2label=ID2LABEL,
        label2id={label: index for index, label in ID2LABEL.items()},
    )
    ensemble = MisleaderEnsembleForImageClassification(config)
    load_members(ensemble, members)
    folder = tmp_path_factory.mktemp("protected") / "image"
    ensemble.save_pretrained(folder)
    processor.save_pretrained(folder)  # ViTImageProcessorPil, 16x16
    return str(folder)


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("protected") / "text"
    folder.mkdir()
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    # transformers 5: the vocabulary is `vocab=` (a path or a dict); `vocab_file=` is silently ignored.
    tokenizer = BertTokenizerFast(vocab=str(vocab_file))
    assert tokenizer.unk_token_id not in tokenizer("the movie was good")["input_ids"][1:3]
    torch.manual_seed(0)
    size = {"vocab_size": len(WORDS) + 5, "max_position_embeddings": 16, "id2label": TEXT_LABELS}
    members = [
        BertForSequenceClassification(
            BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, **size)
        ),
        DistilBertForSequenceClassification(
            DistilBertConfig(dim=16, n_layers=1, n_heads=2, hidden_dim=32, **size)
        ),
    ]
    members = [sharpen(member.eval(), 100.0) for member in members]
    ensemble = MisleaderEnsembleForSequenceClassification(
        MisleaderConfig(members=[member.config.to_dict() for member in members])
    )
    load_members(ensemble, members)
    ensemble.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def images(raw_digits):
    return list(raw_digits["validation"]["image"][:3])  # real grayscale (mode "L") digits


@pytest.fixture(scope="module")
def stock_image(image_model):
    return pipeline("image-classification", model=image_model, device="cpu")


@pytest.fixture(scope="module")
def stock_text(text_model):
    return pipeline("text-classification", model=text_model, device="cpu")


def protected_image(image_model, **options):
    return pipeline("protected-image-classification", model=image_model, device="cpu", **options)


def protected_text(text_model, **options):
    return pipeline("protected-text-classification", model=text_model, device="cpu", **options)


# ----------------------------------------------------------------------------------------------------------------
# Registration and QueryBudget


def test_tasks_are_registered_once():
    for task, cls in (
        ("protected-image-classification", ProtectedImageClassificationPipeline),
        ("protected-text-classification", ProtectedTextClassificationPipeline),
    ):
        assert PIPELINE_REGISTRY.supported_tasks[task]["impl"] is cls
    before = dict(PIPELINE_REGISTRY.supported_tasks)
    register_pipelines()  # idempotent: no "already registered" overwrite
    assert PIPELINE_REGISTRY.supported_tasks == before


def test_query_budget_counts_per_caller_and_refuses_without_charging():
    budget = QueryBudget(5)
    assert budget.charge("alice", 3) == 2
    assert (budget.used("alice"), budget.remaining("alice"), budget.remaining("bob")) == (3, 2, 5)
    with pytest.raises(QueryBudgetExceeded, match=r"'alice'.*3 queries asked, 3 of the budget of 5 already used"):
        budget.charge("alice", 3)
    assert budget.used("alice") == 3
    budget.charge("alice", 2)
    with pytest.raises(QueryBudgetExceeded):
        budget.charge("alice", 1)
    assert budget.charge("bob", 5) == 0
    assert issubclass(QueryBudgetExceeded, RuntimeError)
    for bad in (-1, 2.5, True, None):
        with pytest.raises(ValueError, match="max_queries"):
            QueryBudget(bad)
    with pytest.raises(ValueError, match="count"):
        budget.charge("carol", -1)
    with pytest.raises(ValueError, match="caller"):
        budget.charge("", 1)


def test_query_budget_is_exact_under_threads():
    budget, granted, refused = QueryBudget(150), [], []
    barrier = threading.Barrier(8)

    def client(name):
        barrier.wait()
        for _ in range(40):
            try:
                budget.charge(name, 1)
                granted.append(1)
            except QueryBudgetExceeded:
                refused.append(1)

    threads = [threading.Thread(target=client, args=("shared",)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(granted), len(refused), budget.used("shared")) == (150, 8 * 40 - 150, 150)


# ----------------------------------------------------------------------------------------------------------------
# Image pipeline


def test_image_scores_equal_stock_and_cap_top_k(image_model, stock_image, images):
    stock = stock_image(images, top_k=NUM_LABELS)
    assert stock[0][0]["score"] > 0.3  # confident members: far from uniform (0.1)

    uncapped = protected_image(image_model, max_top_k=None)
    assert isinstance(uncapped, ProtectedImageClassificationPipeline)
    assert uncapped(images, top_k=NUM_LABELS) == stock
    assert uncapped(images[0], top_k=None) == stock[0]  # None: every class
    assert uncapped(images[0]) == stock[0][:5]  # the stock default top_k=5

    default = protected_image(image_model)  # max_top_k=1
    assert default(images[0]) == stock[0][:1]
    assert default(images, top_k=NUM_LABELS) == [answer[:1] for answer in stock]

    capped = protected_image(image_model, max_top_k=3)
    assert capped(images, top_k=NUM_LABELS) == [answer[:3] for answer in stock]
    assert capped(images[1], top_k=2) == stock[1][:2]


def test_image_rounding_and_label_only(image_model, stock_image, images):
    stock = stock_image(images, top_k=NUM_LABELS)
    rounded = protected_image(image_model, max_top_k=4, round_digits=2)(images, top_k=NUM_LABELS)
    assert rounded == [
        [{"label": entry["label"], "score": round(entry["score"], 2)} for entry in answer[:4]] for answer in stock
    ]
    labels = protected_image(image_model, label_only=True, max_top_k=5)
    assert labels(images[0], top_k=5) == [{"label": stock[0][0]["label"]}]
    assert labels(images) == [[{"label": answer[0]["label"]}] for answer in stock]


def test_image_options_are_fixed_at_construction(image_model, images):
    classify = protected_image(image_model, max_top_k=2)
    for option in ({"max_top_k": 10}, {"label_only": False}, {"round_digits": None}, {"query_budget": 10 ** 9},
                   {"function_to_apply": "none"}):
        with pytest.raises(ValueError, match="fixed when the protected pipeline is built"):
            classify(images[0], **option)
    with pytest.raises(ValueError, match="top_k"):
        classify(images[0], top_k=0)
    for bad in ({"max_top_k": -1}, {"max_top_k": 0}, {"round_digits": -2}, {"label_only": "yes"},
                {"query_budget": -3}, {"function_to_apply": "none"}, {"top_k": -1}):
        with pytest.raises(ValueError):
            protected_image(image_model, **bad)


def test_image_budget_per_caller_and_batches(image_model, images):
    classify = protected_image(image_model, query_budget=5)
    classify(images[0], caller="alice")
    classify(images, caller="alice")  # a list of 3 counts 3
    with pytest.raises(QueryBudgetExceeded, match=r"'alice': 3 queries asked, 4 of the budget of 5"):
        classify(images, caller="alice")
    assert classify.query_budget.used("alice") == 4  # refused: nothing charged
    classify(images[1], caller="alice")
    with pytest.raises(QueryBudgetExceeded):
        classify(images[1], caller="alice")
    # Callers are independent; the default caller is "anonymous".
    assert len(classify(images + images[:2], caller="bob")) == 5
    classify(images[0])
    assert (classify.query_budget.used("bob"), classify.query_budget.used("anonymous")) == (5, 1)
    # A generator is charged lazily, one input at a time before it is answered.
    answers = classify((image for image in images * 2), caller="carol")
    received = []
    with pytest.raises(QueryBudgetExceeded):
        for answer in answers:
            received.append(answer)
    assert len(received) == 5 and classify.query_budget.used("carol") == 5


def test_image_budget_is_exact_under_concurrent_calls(image_model, images):
    classify = protected_image(image_model, query_budget=12)
    served, refused, errors = [], [], []
    barrier = threading.Barrier(6)

    def client(index):
        barrier.wait()
        for _ in range(4):
            try:
                served.append(classify(images[index % len(images)], caller="shared"))
            except QueryBudgetExceeded:
                refused.append(1)
            except Exception as error:  # noqa: BLE001 - surfaced below
                errors.append(error)

    threads = [threading.Thread(target=client, args=(index,)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert (len(served), len(refused), classify.query_budget.used("shared")) == (12, 12, 12)
    assert all(len(answer) == 1 and "score" in answer[0] for answer in served)


def test_image_bad_inputs_raise_clear_errors_before_charging(image_model, images):
    classify = protected_image(image_model, query_budget=100)
    cases = [
        ("", "is a string"),
        ("/etc/passwd", "is a string"),
        ("http://127.0.0.1:1/x.png", "is a string"),
        ([], "empty list"),
        (3, "is of type int"),
        ([images[0], {"image": 1}], "Input 1 is of type dict"),
        (np.zeros((16, 16, 4), np.uint8), r"4 channels \(shape \(16, 16, 4\)\) but the model takes 3"),
        (torch.zeros(4, 16, 16), "4 channels"),
        (np.zeros((16, 16, 2), np.uint8), "not channel axes"),
        (np.zeros((16, 16), np.uint8), "one image is an"),
        (np.zeros((2, 3, 16, 16), np.float32), "pass a list for several images"),
        (np.zeros((0, 0, 3), np.uint8), "no pixels"),
        (Image.new("RGB", (0, 0)), "no pixels"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            classify(bad, caller="mallory")
    assert classify.query_budget.used("mallory") == 0


def test_trusted_paths_and_failed_inputs_are_not_charged(image_model, images, tmp_path):
    classify = protected_image(image_model, query_budget=3, allow_paths_and_urls=True)
    images[0].save(tmp_path / "digit.png")
    assert len(classify(str(tmp_path / "digit.png"), caller="trusted")) == 1
    with pytest.raises(ValueError, match="empty string"):
        classify("  ", caller="trusted")
    with pytest.raises(Exception):
        classify([images[0], str(tmp_path / "missing.png")], caller="trusted")  # fails inside the stock pipeline
    assert classify.query_budget.used("trusted") == 1  # only the answered image
    with pytest.raises(ValueError, match="allow_paths_and_urls"):
        protected_image(image_model, allow_paths_and_urls="yes")


def test_image_accepts_pil_modes_and_matching_arrays(image_model, stock_image, images):
    classify = protected_image(image_model, max_top_k=None)
    rgba = images[0].convert("RGBA")
    # PIL images are converted from their mode, as in the stock pipeline (RGBA loses its alpha channel).
    assert classify(rgba, top_k=3) == stock_image(rgba, top_k=3) == stock_image(images[0], top_k=3)
    rgb = np.asarray(images[0].convert("RGB"))
    from_array = classify(rgb, top_k=3)
    assert from_array == classify(np.ascontiguousarray(rgb.transpose(2, 0, 1)), top_k=3)
    assert [entry["label"] for entry in from_array] == [entry["label"] for entry in stock_image(images[0], top_k=3)]


def test_grayscale_model_takes_pil_images_and_one_channel_arrays(tmp_path, images):
    member = build_image_member("resnet-tiny", NUM_LABELS, ID2LABEL, 1, IMAGE_SIZE).eval()
    ensemble = MisleaderEnsembleForImageClassification(MisleaderConfig(members=[member.config.to_dict()]))
    load_members(ensemble, [member])
    ensemble.save_pretrained(tmp_path)
    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ViTImageProcessorPil(size=size, image_mean=[0.5], image_std=[0.5]).save_pretrained(tmp_path)
    classify = protected_image(str(tmp_path), max_top_k=None)
    # PIL images of any mode are converted to grayscale for a 1-channel model (the stock pipeline makes them RGB).
    gray = classify(images[0], top_k=3)
    assert classify(images[0].convert("RGB"), top_k=3) == gray
    assert classify(np.asarray(images[0])[:, :, None], top_k=3) == gray
    with pytest.raises(ValueError, match=r"3 channels .* the model takes 1.*convert\('L'\)"):
        classify(np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8))


def test_saved_protected_pipeline_loads_with_trust_remote_code(image_model, tmp_path, images):
    """pipeline_misleader.py travels with the model and runs where hf_misleader is not installed."""
    protected_image(image_model, max_top_k=3).save_pretrained(tmp_path / "served")
    assert (tmp_path / "served" / "pipeline_misleader.py").is_file()
    images[0].save(tmp_path / "digit.png")
    script = textwrap.dedent(
        """
        import sys, torch
        sys.modules["hf_misleader"] = None  # the library cannot be imported here
        torch.set_num_threads(1)
        from transformers import pipeline
        classify = pipeline(model=sys.argv[1], trust_remote_code=True, device="cpu", allow_paths_and_urls=True)
        assert sys.modules["hf_misleader"] is None, "the library was imported"
        assert type(classify).__module__.startswith("transformers_modules"), type(classify).__module__
        assert classify.task == "protected-image-classification", classify.task
        answer = classify(sys.argv[2], top_k=5)
        assert len(answer) == 1 and set(answer[0]) == {"label", "score"}, answer  # default max_top_k=1
        print("REMOTE-PIPELINE-OK")
        """
    )
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "served"), str(tmp_path / "digit.png")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "REMOTE-PIPELINE-OK" in done.stdout


# ----------------------------------------------------------------------------------------------------------------
# Text pipeline


def test_text_scores_equal_stock_in_every_call_form(text_model, stock_text):
    uncapped = protected_text(text_model, max_top_k=None)
    assert isinstance(uncapped, ProtectedTextClassificationPipeline)
    every = stock_text(TEXTS, top_k=None)
    assert max(answer[0]["score"] for answer in every) > 0.45  # far from uniform (1/3)
    assert uncapped(TEXTS, top_k=None) == every
    assert uncapped(TEXTS[0], top_k=None) == stock_text(TEXTS[0], top_k=None)
    # Without top_k: the stock top-1 forms, a one-item list for a string, a dict per input for a list.
    assert uncapped(TEXTS[0]) == stock_text(TEXTS[0]) == [every[0][0]]
    assert uncapped(TEXTS) == stock_text(TEXTS) == [answer[0] for answer in every]
    pair = {"text": "the movie", "text_pair": "boring plot"}
    assert uncapped(pair) == stock_text(pair)

    capped = protected_text(text_model, max_top_k=2)
    assert capped(TEXTS, top_k=None) == [answer[:2] for answer in every]
    assert capped(TEXTS[1], top_k=3) == every[1][:2]
    assert capped(TEXTS[1]) == [every[1][0]]
    # A top_k given at construction: one list per input (stock wraps a single string's answer in a second list).
    assert protected_text(text_model, top_k=2, max_top_k=3)(TEXTS[2]) == every[2][:2]


def test_text_rounding_and_label_only(text_model, stock_text):
    every = stock_text(TEXTS, top_k=None)
    rounded = protected_text(text_model, max_top_k=3, round_digits=3)(TEXTS, top_k=None)
    assert rounded == [[{"label": e["label"], "score": round(e["score"], 3)} for e in answer] for answer in every]
    labels = protected_text(text_model, label_only=True, max_top_k=3)
    assert labels(TEXTS[0]) == [{"label": every[0][0]["label"]}]
    assert labels(TEXTS) == [{"label": answer[0]["label"]} for answer in every]
    assert labels(TEXTS, top_k=None) == [[{"label": answer[0]["label"]}] for answer in every]


def test_text_budget_and_bad_inputs(text_model):
    classify = protected_text(text_model, query_budget=3)
    cases = [
        ("", "empty string"),
        (" \n", "empty string"),
        ([], "empty list"),
        (5, "is of type int"),
        (["fine", ""], "Input 1 is an empty string"),
        ([["the movie", "good"]], "Input 0 is of type list"),
        ({"txt": "good"}, "keys"),
        ({"text": "good", "text_pair": ""}, "'text_pair' must be a non-empty string"),
        (Image.new("RGB", (4, 4)), "is of type Image"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            classify(bad, caller="mallory")
    assert classify.query_budget.used("mallory") == 0
    with pytest.raises(ValueError, match="tokens long; the model takes at most 16"):
        classify("good " * 30, caller="mallory")  # fails while being answered: given back, not charged
    assert classify(TEXTS[:2], caller="mallory") and classify.query_budget.used("mallory") == 2
    classify(TEXTS[0], caller="mallory")  # the last query of the budget of 3
    with pytest.raises(QueryBudgetExceeded, match="'mallory'"):
        classify(TEXTS[0], caller="mallory")
    assert len(classify(TEXTS[:3], caller="alice")) == 3
    # Long texts are served when the pipeline is built to truncate them.
    truncating = protected_text(text_model, truncation=True, max_length=16)
    assert truncating("good " * 30)[0]["label"] in TEXT_LABELS.values()


# ----------------------------------------------------------------------------------------------------------------
# A served output defence composes with the ensemble: the protected pipeline and the black box answer with it


def test_output_defense_reaches_the_protected_pipeline_and_the_black_box(image_model, stock_image, images, processor,
                                                                         tmp_path):
    from transformers import AutoModelForImageClassification

    from hf_misleader import BlackBoxAPI
    from hf_misleader.modeling_misleader import reverse_sigmoid

    model = AutoModelForImageClassification.from_pretrained(image_model)
    model.config.output_defense = {"name": "reverse_sigmoid", "beta": 0.7, "gamma": 0.4}
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    plain = stock_image(images, top_k=NUM_LABELS)
    defended = protected_image(str(tmp_path), max_top_k=None)(images, top_k=NUM_LABELS)
    label2id = {label: int(index) for label, index in model.config.label2id.items()}
    for plain_answer, defended_answer in zip(plain, defended):
        averaged = torch.zeros(NUM_LABELS)
        for entry in plain_answer:
            averaged[label2id[entry["label"]]] = entry["score"]
        expected = reverse_sigmoid(averaged.unsqueeze(0), 0.7, 0.4)[0]
        for entry in defended_answer:
            assert entry["score"] == pytest.approx(expected[label2id[entry["label"]]].item(), abs=1e-5)
    # The black box sees the same transformed probabilities.
    pixel_values = processor(images=[image.convert("RGB") for image in images], return_tensors="pt")["pixel_values"]
    answers = BlackBoxAPI(AutoModelForImageClassification.from_pretrained(tmp_path)).query(pixel_values)
    for row, answer in zip(answers, defended):
        for entry in answer:
            assert row[label2id[entry["label"]]].item() == pytest.approx(entry["score"], abs=1e-5)
