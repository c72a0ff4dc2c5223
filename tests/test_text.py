"""The text path: real Rotten Tomatoes snippets, the real MiniLM tokenizer, tiny BERT/DistilBERT models."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, BertConfig

from hf_misleader import BlackBoxAPI, MisleaderTrainer, MisleaderTrainingArguments, defend
from hf_misleader.attacks import knockoff
from hf_misleader.augment import simulate_text_queries
from hf_misleader.data import (
    load_rotten_tomatoes,
    minilm_path,
    prepare_text_dataset,
    random_word_texts,
    split_for_extraction,
)
from hf_misleader.members import list_presets, text_member_config
from hf_misleader.modeling_misleader import MisleaderEnsembleForSequenceClassification

MAX_LENGTH = 32


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_path())


@pytest.fixture(scope="module")
def snippets(tokenizer):
    raw = split_for_extraction(load_rotten_tomatoes(), {"train": 64, "validation": 32}, seed=0)
    return {name: prepare_text_dataset(split, tokenizer, max_length=MAX_LENGTH) for name, split in raw.items()}


@pytest.fixture(scope="module")
def teacher_config(tokenizer):
    # A tiny BERT reading the MiniLM tokenizer stands in for the 22.7M teacher: same vocabulary, fast.
    config = AutoConfig.from_pretrained(minilm_path())
    return BertConfig(vocab_size=config.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=config.max_position_embeddings,
                      id2label={0: "rotten", 1: "fresh"})


def tiny_text_model(teacher_config, preset, seed):
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(text_member_config(preset, teacher_config, MAX_LENGTH)).eval()


def test_rotten_tomatoes_is_the_real_corpus():
    data = load_rotten_tomatoes()
    assert len(data) == 12808
    assert data.features["label"].names == ["rotten", "fresh"]
    fresh = sum(data["label"])
    assert fresh == 7403
    assert all(isinstance(text, str) and text for text in data["text"][:100])


def test_random_word_texts_match_lengths(tokenizer):
    texts = random_word_texts(tokenizer, [3, 7, 1], seed=0)
    assert [len(text.split()) for text in texts] == [3, 7, 1]
    assert texts == random_word_texts(tokenizer, [3, 7, 1], seed=0)
    assert texts != random_word_texts(tokenizer, [3, 7, 1], seed=1)


@pytest.mark.parametrize("policy", ["mild", "heavy"])
def test_text_queries_keep_structure(snippets, policy):
    batch = snippets["train"][:32]
    ids, mask = batch["input_ids"], batch["attention_mask"]
    generator = torch.Generator().manual_seed(0)
    new_ids, new_mask = simulate_text_queries(ids, mask, generator, policy=policy)
    assert new_ids.shape == ids.shape and new_mask.shape == mask.shape
    assert not torch.equal(new_ids, ids)
    # [CLS] first, [SEP] last real token, real tokens contiguous from the left, pads after.
    assert torch.equal(new_ids[:, 0], ids[:, 0])
    lengths = new_mask.sum(1)
    assert torch.equal(new_mask, (torch.arange(ids.shape[1]) < lengths.unsqueeze(1)).long())
    assert (new_ids[torch.arange(len(ids)), lengths - 1] == 102).all()
    assert (lengths <= ids.shape[1]).all()
    # Replacement tokens come from the batch's own vocabulary.
    assert set(new_ids[new_mask.bool()].tolist()) <= set(ids[mask.bool()].tolist())
    again = simulate_text_queries(ids, mask, torch.Generator().manual_seed(0), policy=policy)
    assert torch.equal(again[0], new_ids) and torch.equal(again[1], new_mask)


def test_text_queries_reject_bad_input(snippets):
    batch = snippets["train"][:4]
    with pytest.raises(ValueError, match="policy"):
        simulate_text_queries(batch["input_ids"], batch["attention_mask"], torch.Generator(), policy="wild")
    with pytest.raises(ValueError, match="same shape"):
        simulate_text_queries(batch["input_ids"], batch["attention_mask"][:, :5], torch.Generator())


def test_text_presets_take_the_teachers_tokenizer(teacher_config):
    assert {"bert-tiny", "distilbert-tiny", "bert-small", "distilbert-small"} <= set(list_presets("text"))
    for preset in list_presets("text"):
        config = text_member_config(preset, teacher_config)
        assert config.vocab_size == teacher_config.vocab_size
        assert config.max_position_embeddings == teacher_config.max_position_embeddings
        assert config.num_labels == 2 and config.id2label[1] == "fresh"


def test_text_member_that_cannot_read_the_tokenizer_is_refused(teacher_config):
    small_vocab = BertConfig(vocab_size=1000, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    with pytest.raises(ValueError, match="vocab"):
        text_member_config(small_vocab, teacher_config)
    short = BertConfig(vocab_size=teacher_config.vocab_size, max_position_embeddings=16, hidden_size=16,
                       num_hidden_layers=1, num_attention_heads=2)
    with pytest.raises(ValueError, match="positions"):
        text_member_config(short, teacher_config, sequence_length=MAX_LENGTH)
    with pytest.raises(ValueError, match="Available presets"):
        text_member_config("gpt-huge", teacher_config)


@pytest.mark.parametrize("objective", ["alternating", "unrolled", "misinformation"])
def test_one_text_step_trains_student_and_attacker(tmp_path, snippets, teacher_config, objective):
    teacher = tiny_text_model(teacher_config, "bert-tiny", seed=0)
    student = tiny_text_model(teacher_config, "distilbert-tiny", seed=1).train()  # takes no token_type_ids
    attacker = tiny_text_model(teacher_config, "bert-tiny", seed=2)
    before = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in
              (("teacher", teacher), ("student", student), ("attacker", attacker))}
    args = MisleaderTrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=16,
                                      report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no",
                                      objective=objective)
    trainer = MisleaderTrainer(model=student, teacher_model=teacher, attacker_model=attacker, args=args,
                               train_dataset=snippets["train"])
    trainer.train()

    def changed(name, model):
        return sum(not torch.equal(v, model.state_dict()[k]) for k, v in before[name].items())

    assert changed("teacher", teacher) == 0
    assert changed("student", student) > 0
    assert changed("attacker", attacker) > 0


def test_defend_text_end_to_end(tmp_path, snippets, teacher_config):
    teacher = tiny_text_model(teacher_config, "bert-tiny", seed=0)
    args = MisleaderTrainingArguments(output_dir=str(tmp_path / "defence"), max_steps=2, per_device_train_batch_size=16,
                                      report_to="none", use_cpu=True, disable_tqdm=True)
    ensemble = defend(teacher, snippets["train"], members=["bert-tiny", "distilbert-tiny"],
                      eval_dataset=snippets["validation"], args=args)
    assert isinstance(ensemble, MisleaderEnsembleForSequenceClassification)
    assert [m.config.model_type for m in ensemble.members] == ["bert", "distilbert"]
    ensemble.save_pretrained(tmp_path / "model")
    reloaded = MisleaderEnsembleForSequenceClassification.from_pretrained(tmp_path / "model").eval()
    batch = {k: v for k, v in snippets["validation"][:8].items() if k != "label"}
    with torch.no_grad():
        assert torch.equal(ensemble(**batch).logits, reloaded(**batch).logits)


def test_text_black_box_and_knockoff(snippets, teacher_config):
    victim = tiny_text_model(teacher_config, "bert-tiny", seed=0)
    pool = {k: v for k, v in snippets["train"][:].items() if k != "label"}
    api = BlackBoxAPI(victim, output="label", budget=40)
    clone, history = knockoff.run(api, 40, pool, lambda: tiny_text_model(teacher_config, "distilbert-tiny", 3),
                                  labels="label_only", checkpoints=[20, 40], min_steps=2, epochs=1, progress=False)
    assert api.queries_used == 40
    assert [entry["queries"] for entry in history] == [20, 40]
    with pytest.raises(ValueError, match="pool of 64"):
        knockoff.run(BlackBoxAPI(victim, output="label"), 65, pool, lambda: clone, labels="label_only")


def test_text_ensemble_serves_through_remote_code_without_the_library(tmp_path, tokenizer, teacher_config):
    """Auto class, stock pipeline and trust_remote_code in a process where hf_misleader cannot be imported."""
    import json
    import subprocess
    import sys

    from transformers import AutoModelForSequenceClassification as Auto
    from transformers import pipeline

    from hf_misleader import MisleaderConfig

    members = [text_member_config(preset, teacher_config, MAX_LENGTH) for preset in ("bert-tiny", "distilbert-tiny")]
    torch.manual_seed(0)
    ensemble = MisleaderEnsembleForSequenceClassification(MisleaderConfig(members=members)).eval()
    ensemble.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    assert not list((tmp_path / "model").glob("*.bin")) and (tmp_path / "model" / "model.safetensors").exists()
    assert isinstance(Auto.from_pretrained(tmp_path / "model"), MisleaderEnsembleForSequenceClassification)

    texts = ["A gripping, beautifully acted film.", "Dull and far too long."]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = torch.softmax(ensemble(**encoded).logits, -1)
    served = pipeline("text-classification", model=str(tmp_path / "model"), top_k=None)(texts)
    for row, answers in zip(expected, served):
        for answer in answers:
            assert abs(answer["score"] - row[ensemble.config.label2id[answer["label"]]].item()) < 1e-5

    script = (
        "import sys, json, torch\n"
        "sys.modules['hf_misleader'] = None\n"
        "torch.set_num_threads(1)\n"
        "from transformers import pipeline\n"
        "classify = pipeline('text-classification', model=sys.argv[1], trust_remote_code=True, top_k=None)\n"
        "assert type(classify.model).__module__.startswith('transformers_modules')\n"
        "print(json.dumps(classify(json.loads(sys.argv[2]))))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "model"), json.dumps(texts)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**__import__("os").environ, "HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert done.returncode == 0, done.stderr[-3000:]
    remote = json.loads(done.stdout.strip().splitlines()[-1])
    for local_answers, remote_answers in zip(served, remote):
        assert {a["label"]: round(a["score"], 6) for a in local_answers} == \
               {a["label"]: round(a["score"], 6) for a in remote_answers}


def test_defend_takes_a_teacher_folder(tmp_path, snippets, teacher_config):
    tiny_text_model(teacher_config, "bert-tiny", seed=0).save_pretrained(tmp_path / "teacher")
    args = MisleaderTrainingArguments(output_dir=str(tmp_path / "defence"), max_steps=1, per_device_train_batch_size=16,
                                      report_to="none", use_cpu=True, disable_tqdm=True)
    ensemble = defend(str(tmp_path / "teacher"), snippets["train"], members=["distilbert-tiny"], args=args)
    assert isinstance(ensemble, MisleaderEnsembleForSequenceClassification)
    assert ensemble.config.id2label == {0: "rotten", 1: "fresh"}


def test_splices_join_the_head_of_one_sentence_to_the_tail_of_another(snippets):
    from hf_misleader.augment import splice_pairs

    batch = snippets["train"][:32]
    ids, mask = batch["input_ids"], batch["attention_mask"]
    chosen = torch.arange(32) % 2 == 0
    new_ids, new_mask = splice_pairs(ids, mask, torch.Generator().manual_seed(0), chosen)
    assert torch.equal(new_ids[~chosen], ids[~chosen]) and torch.equal(new_mask[~chosen], mask[~chosen])
    lengths = new_mask.sum(1)
    assert torch.equal(new_mask, (torch.arange(ids.shape[1]) < lengths.unsqueeze(1)).long())
    assert (new_ids[:, 0] == 101).all() and (new_ids[torch.arange(32), lengths - 1] == 102).all()
    assert ((new_ids == 102).sum(1) == 1).all()  # one [SEP], at the end
    sentences = [ids[i, 1 : mask[i].sum() - 1].tolist() for i in range(32)]
    mixed = 0
    for row in torch.nonzero(chosen).flatten().tolist():
        tokens = new_ids[row, 1 : lengths[row] - 1].tolist()
        # Its head is a prefix of its own sentence and the rest a piece of some sentence of the batch.
        cut = max(k for k in range(len(tokens) + 1) if tokens[:k] == sentences[row][:k])
        tail = tokens[cut:]
        assert any(tail == s[j : j + len(tail)] for s in sentences for j in range(len(s) - len(tail) + 1)), row
        mixed += bool(tail) and cut < len(sentences[row])
    assert mixed >= 8  # most chosen rows really mix two sentences


def test_a_surrogate_pool_of_other_length_joins_the_training_batch(tmp_path, snippets, teacher_config, tokenizer):
    """The student answers the benign batch and the queries in one forward: token batches of different lengths are
    padded to one (the padding masked out), so a surrogate pool tokenised to another length still trains."""
    from hf_misleader.data import prepare_text_dataset
    from hf_misleader.inputs import concat_rows

    short = {"input_ids": torch.tensor([[101, 7, 102]]), "attention_mask": torch.tensor([[1, 1, 1]])}
    long = {"input_ids": torch.tensor([[101, 8, 9, 10, 102]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    joined = concat_rows(short, long)
    assert joined["input_ids"].tolist() == [[101, 7, 102, 0, 0], [101, 8, 9, 10, 102]]
    assert joined["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    with pytest.raises(ValueError, match="Cannot join"):
        concat_rows(short, {"input_ids": long["input_ids"]})

    raw = split_for_extraction(load_rotten_tomatoes(), {"pool": 32}, seed=1)["pool"]
    pool = prepare_text_dataset(raw, tokenizer, max_length=MAX_LENGTH // 2)
    args = MisleaderTrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=16,
                                      report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no")
    trainer = MisleaderTrainer(model=tiny_text_model(teacher_config, "bert-tiny", seed=1).train(),
                               teacher_model=tiny_text_model(teacher_config, "bert-tiny", seed=0), args=args,
                               train_dataset=snippets["train"], attacker_dataset=pool)
    trainer.train()
    assert trainer.state.global_step == 1
