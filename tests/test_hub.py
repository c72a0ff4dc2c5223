"""Pushing defended models and benchmark results to the Hub, against a local Hub server (tests/hub_server.py) driven
by the real huggingface_hub, datasets and transformers clients; one test against the real Hub when a token and the
network are there."""

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import uuid

import pytest
from huggingface_hub import DatasetCard, ModelCard

from hf_misleader import MisleaderEnsembleForImageClassification
from hf_misleader import hub as hub_module
from hf_misleader.card_merge import BEGIN_MARKER, END_MARKER, merge_model_cards
from hf_misleader.hub import HubPushError, MissingHubTokenError, add_push_command, push_benchmark_to_hub, push_to_hub
from hf_misleader.model_card import render_model_card

from .conftest import ID2LABEL, NUM_LABELS, build_member, make_processor
from .hub_server import HubServer

NAMESPACE = "test-user"
MODEL_FILES = {".gitattributes", "README.md", "config.json", "model.safetensors", "configuration_misleader.py",
               "modeling_misleader.py", "preprocessor_config.json", "extraction.png"}


# ----------------------------------------------------------------------------------------------------------------
# Fixtures: a local Hub, the clients pointed at it, a small defended model


@pytest.fixture(scope="module")
def hub_server():
    with HubServer() as server:
        yield server


def point_clients_at(monkeypatch, server, home):
    """Point huggingface_hub, datasets and transformers at the local server. They read HF_ENDPOINT and the offline
    flag when imported (and conftest.py set HF_HUB_OFFLINE=1 before that), so the module constants are patched."""
    import datasets.config
    import transformers.utils.hub
    from huggingface_hub import constants

    env = {"HF_ENDPOINT": server.endpoint, "HF_TOKEN": server.token, "HF_HOME": str(home), "HF_HUB_OFFLINE": "0",
           "HF_HUB_DISABLE_XET": "1", "HF_DATASETS_CACHE": str(home / "datasets")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for name, value in {"ENDPOINT": server.endpoint, "HF_HUB_OFFLINE": False, "HF_HUB_DISABLE_XET": True,
                        "HUGGINGFACE_CO_URL_TEMPLATE": server.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
                        "HF_HUB_CACHE": str(home / "hub"), "HF_TOKEN_PATH": str(home / "token"),
                        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens")}.items():
        monkeypatch.setattr(constants, name, value)
    for name, value in {"HF_ENDPOINT": server.endpoint, "HF_HUB_OFFLINE": False, "HF_DATASETS_OFFLINE": False,
                        "HUB_DATASETS_URL": server.endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}",
                        "HF_DATASETS_CACHE": home / "datasets"}.items():
        monkeypatch.setattr(datasets.config, name, value)
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)  # a shared HfApi keeps the endpoint it was made with
    return env


@pytest.fixture
def hub(hub_server, monkeypatch, tmp_path):
    """The local Hub, with every client pointed at it and retries that wait milliseconds, not seconds."""
    hub_server.env = point_clients_at(monkeypatch, hub_server, tmp_path / "hf_home")
    monkeypatch.setattr(hub_module, "BASE_DELAY_SECONDS", 0.01)
    yield hub_server
    unknown = [request for request in hub_server.requests if request[1] == "unknown"]
    assert not unknown, f"the clients called endpoints the local Hub does not serve: {unknown}"


def repo_name(prefix):
    return f"{NAMESPACE}/{prefix}-{uuid.uuid4().hex[:8]}"


def benchmark_results():
    """A results.json in the demo's contract, for a 2-member ensemble."""
    attacks = []
    for pool in ("in_distribution", "out_of_distribution"):
        for labels in ("soft", "label_only"):
            for victim, base in (("teacher", 0.6), ("defended", 0.4)):
                attacks.append({"victim": victim, "pool": pool, "labels": labels, "queries": 128,
                                "clone_accuracy": base + (0.1 if labels == "soft" else 0.0), "clone_agreement": base})
    return {
        "dataset": "sklearn-digits", "seed": 0, "queries": 128, "pipeline_tag": "image-classification",
        "splits": {"train": 128, "validation": 64, "attacker_pool": 128, "test": 128},
        "teacher": {"name": "resnet-small", "model_type": "resnet"}, "objective": "alternating",
        "teacher_accuracy": 0.95, "defended_accuracy": 0.93, "label_only_floor": 0.4, "seconds": 1.0,
        "members": [{"name": "resnet-tiny", "model_type": "resnet", "lambda": 0.001, "temperature": 6.0, "alpha": 0.3},
                    {"name": "vit-tiny", "model_type": "vit", "lambda": 0.05, "temperature": 4.0, "alpha": 0.9}],
        "attacks": attacks,
    }


@pytest.fixture(scope="module")
def defended_dir(tmp_path_factory):
    """The demo's layout: defended-model/ (weights, code, processor, plot, a local card) next to results.json."""
    from PIL import Image

    root = tmp_path_factory.mktemp("demo")
    folder = root / "defended-model"
    members = [build_member(preset, seed=index) for index, preset in enumerate(("resnet-tiny", "vit-tiny"))]
    ensemble = MisleaderEnsembleForImageClassification.from_members(
        members, member_names=["resnet-tiny", "vit-tiny"], id2label=ID2LABEL,
        label2id={label: index for index, label in ID2LABEL.items()},
    )
    ensemble.config.teacher_name_or_path = "resnet-small"
    ensemble.save_pretrained(folder)
    make_processor().save_pretrained(folder)
    Image.new("RGB", (8, 8), "red").save(folder / "extraction.png")
    (folder / "training_args.bin").write_bytes(b"pickle: never pushed")
    (folder / "train_notes.py").write_text("TOKEN = 'not for the Hub'\n")  # only the model's own code is pushed
    (folder / "checkpoint-1").mkdir()
    (folder / "checkpoint-1" / "attacker.safetensors").write_bytes(b"never pushed")
    (root / "results.json").write_text(json.dumps(benchmark_results()))
    return folder


@pytest.fixture(scope="module")
def digit_images(tmp_path_factory, raw_digits):
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for index, image in enumerate(raw_digits["validation"]["image"][:4]):
        path = folder / f"digit{index}.png"
        image.save(path)
        paths.append(str(path))
    return paths


# ----------------------------------------------------------------------------------------------------------------
# Pushing a defended model


def test_push_one_commit_private_and_loads_without_hf_misleader(hub, defended_dir, digit_images, tmp_path):
    from transformers import pipeline

    repo_id = repo_name("defended")
    commits_before = hub.count("commit")
    info = push_to_hub(defended_dir, repo_id, benchmark_repo_id=f"{NAMESPACE}/bench")

    assert hub.count("commit") == commits_before + 1  # one commit holds everything
    assert hub.repo(repo_id).private is True
    files = hub.files(repo_id)
    assert set(files) == MODEL_FILES  # no pickles, no checkpoints, no attacker
    assert info.oid == hub.repo(repo_id).refs["main"]
    assert str(info).endswith(f"/{repo_id}/commit/{info.oid}")

    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "hf-misleader"
    results = {(r.metric_type, (r.metric_args or {}).get("pool"), (r.metric_args or {}).get("labels")): r
               for r in card.data.eval_results}
    assert results[("accuracy", None, None)].metric_value == pytest.approx(0.93)
    assert results[("clone_accuracy", "out_of_distribution", "soft")].metric_value == pytest.approx(0.5)
    assert len(card.data.eval_results) == 1 + 2 * 4  # test accuracy, then accuracy and agreement per defended attack
    assert all(r.source_url.endswith(f"/datasets/{NAMESPACE}/bench") for r in card.data.eval_results)
    assert f'model_id = "{repo_id}"' in card.text and "![clone accuracy vs queries](extraction.png)" in card.text
    assert f"/datasets/{NAMESPACE}/bench" in card.text
    assert card.text.count(BEGIN_MARKER) == 1

    # A fresh process that cannot import hf_misleader loads the pushed model with the stock pipeline.
    script = textwrap.dedent(f"""
        import importlib.abc, json, sys
        class NoHfMisleader(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] == "hf_misleader":
                    raise ImportError("the pushed model must load without hf_misleader")
        sys.meta_path.insert(0, NoHfMisleader())
        import torch
        torch.set_num_threads(1)
        from transformers import pipeline
        classify = pipeline("image-classification", model={repo_id!r}, trust_remote_code=True, device="cpu")
        print(json.dumps(classify({digit_images!r}, top_k={NUM_LABELS})))
    """)
    env = {**os.environ, **hub.env, "HF_HOME": str(tmp_path / "fresh_home"), "OMP_NUM_THREADS": "1"}
    env.pop("TRANSFORMERS_OFFLINE", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    remote = json.loads(done.stdout.strip().splitlines()[-1])
    local = pipeline("image-classification", model=str(defended_dir), device="cpu")(digit_images, top_k=NUM_LABELS)
    for remote_answers, local_answers in zip(remote, local):
        remote_scores = {a["label"]: a["score"] for a in remote_answers}
        assert set(remote_scores) == set(ID2LABEL.values())
        for answer in local_answers:
            assert remote_scores[answer["label"]] == pytest.approx(answer["score"], abs=1e-6)


def test_public_push_warns_and_is_recorded(hub, defended_dir, caplog):
    repo_id = repo_name("public")
    with caplog.at_level(logging.WARNING, logger="hf_misleader.hub"):
        push_to_hub(defended_dir, repo_id, private=False)
    assert hub.repo(repo_id).private is False
    assert "PUBLIC" in caplog.text and "copy the model" in caplog.text and "extraction" in caplog.text


def test_model_object_without_benchmark(hub, tmp_path):
    # A model object, no results anywhere: the card says the model is unmeasured, and has no model-index.
    members = [build_member("resnet-tiny", seed=0)]
    ensemble = MisleaderEnsembleForImageClassification.from_members(members, member_names=["resnet-tiny"],
                                                                    id2label=ID2LABEL)
    repo_id = repo_name("object")
    push_to_hub(ensemble, repo_id, processor=make_processor())
    files = hub.files(repo_id)
    assert {"config.json", "model.safetensors", "modeling_misleader.py", "preprocessor_config.json"} <= set(files)
    card = ModelCard(files["README.md"].decode())
    assert card.data.eval_results is None
    assert "No extraction benchmark was recorded" in card.text


def test_create_pr_and_branch(hub, defended_dir):
    repo_id = repo_name("pr")
    push_to_hub(defended_dir, repo_id)
    main_before = hub.repo(repo_id).refs["main"]

    info = push_to_hub(defended_dir, repo_id, create_pr=True, benchmark_repo_id=f"{NAMESPACE}/other-bench",
                       commit_message="Link the benchmark")
    assert info.pr_revision == "refs/pr/1" and info.pr_num == 1
    assert info.pr_url.endswith(f"/{repo_id}/discussions/1")
    assert hub.repo(repo_id).refs["main"] == main_before  # the branch is untouched until the PR is merged
    assert b"other-bench" in hub.files(repo_id, revision="refs/pr/1")["README.md"]
    assert b"other-bench" not in hub.files(repo_id)["README.md"]

    push_to_hub(defended_dir, repo_id, revision="dev")  # a missing branch is created from main
    assert hub.repo(repo_id).refs["dev"] != main_before
    assert hub.repo(repo_id).refs["main"] == main_before


def test_existing_card_is_updated_not_clobbered(hub, defended_dir):
    from huggingface_hub import CommitOperationAdd, HfApi

    repo_id = repo_name("carded")
    api = HfApi()
    api.create_repo(repo_id, private=True)
    own_card = textwrap.dedent("""\
        ---
        license: mit
        tags:
        - my-own-tag
        ---
        # Our classifier

        Written by its owners: keep me.

        ## Contact

        security@example.com
        """)
    api.create_commit(repo_id, [CommitOperationAdd("README.md", own_card.encode())], commit_message="our card")

    for _ in range(2):  # pushing twice must not duplicate anything
        push_to_hub(defended_dir, repo_id)
        card = ModelCard(hub.files(repo_id)["README.md"].decode())
        assert card.data.license == "mit"
        assert "my-own-tag" in card.data.tags and "model-extraction-defense" in card.data.tags
        assert card.data.library_name == "hf-misleader" and card.data.eval_results
        assert card.text.count("Written by its owners: keep me.") == 1
        assert card.text.count("security@example.com") == 1
        assert card.text.count("## Members") == 1 and card.text.count(BEGIN_MARKER) == 1

    # Text the owner adds around the generated section survives the next push; the section itself is replaced.
    edited = hub.files(repo_id)["README.md"].decode()
    edited = edited.replace(END_MARKER, END_MARKER + "\n\n## Changelog\n\nv2: retrained.")
    api.create_commit(repo_id, [CommitOperationAdd("README.md", edited.encode())], commit_message="changelog")
    push_to_hub(defended_dir, repo_id, benchmark_repo_id=f"{NAMESPACE}/new-bench")
    text = hub.files(repo_id)["README.md"].decode()
    assert "v2: retrained." in text and f"{NAMESPACE}/new-bench" in text and text.count("## Members") == 1


def test_a_local_card_seeds_a_new_repo(hub, defended_dir, tmp_path):
    import shutil

    from hf_misleader.model_card import write_model_card

    folder = tmp_path / "defended-model"
    shutil.copytree(defended_dir, folder)
    card_path = write_model_card(benchmark_results(), folder, model_id=str(folder))  # what the demo writes
    card_path.write_text(card_path.read_text() + "\n## Notes\n\nOur deployment notes.\n")
    repo_id = repo_name("seeded")
    push_to_hub(folder, repo_id)
    text = hub.files(repo_id)["README.md"].decode()
    assert text.count("Our deployment notes.") == 1 and text.count("## Members") == 1
    assert f'model_id = "{repo_id}"' in text and str(folder) not in text


def test_missing_token_gives_a_clear_error(hub, defended_dir, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    requests_before = len(hub.requests)
    with pytest.raises(MissingHubTokenError, match=r"hf auth login.*HF_TOKEN"):
        push_to_hub(defended_dir, repo_name("no-token"))
    assert len(hub.requests) == requests_before  # nothing was sent


def test_a_missing_folder_is_reported_before_a_missing_token(hub, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    with pytest.raises(ValueError, match="no-such-model.*not a saved model folder") as raised:
        push_to_hub(tmp_path / "no-such-model", repo_name("no-folder"))
    assert not isinstance(raised.value, MissingHubTokenError)


def test_transient_failures_are_retried(hub, defended_dir, caplog):
    from huggingface_hub import HfApi

    repo_id = repo_name("flaky")
    HfApi().upload_file(path_or_fileobj=b"# Ours\n\nKeep me.\n", path_in_repo="README.md",
                        repo_id=HfApi().create_repo(repo_id).repo_id)
    hub.fail("create_repo", times=1, status=None)  # a dropped connection
    hub.fail("commit", times=2, status=503)
    commits_before = hub.count("commit")
    with caplog.at_level(logging.WARNING, logger="hf_misleader.hub"):
        info = push_to_hub(defended_dir, repo_id)
    assert hub.count("commit") == commits_before + 3
    assert hub.repo(repo_id).refs["main"] == info.oid and "model.safetensors" in hub.files(repo_id)
    assert "Keep me." in hub.files(repo_id)["README.md"].decode()
    assert caplog.text.count("retrying in") == 3


def test_an_unreadable_card_is_never_taken_for_a_missing_one(hub, defended_dir, monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id = repo_name("unreadable")
    HfApi().create_repo(repo_id)
    HfApi().upload_file(path_or_fileobj=b"# Ours\n", path_in_repo="README.md", repo_id=repo_id)
    before = hub.files(repo_id)

    def unreachable(*args, **kwargs):
        # What hf_hub_download raises when the Hub cannot be reached and the file is not cached.
        raise LocalEntryNotFoundError("cannot find the requested file in the local cache") from ConnectionError("down")

    monkeypatch.setattr(HfApi, "hf_hub_download", unreachable)
    commits_before = hub.count("commit")
    with pytest.raises(HubPushError, match="read the card"):
        push_to_hub(defended_dir, repo_id)
    assert hub.count("commit") == commits_before and hub.files(repo_id) == before


def test_failing_commit_leaves_the_repo_unchanged(hub, defended_dir):
    repo_id = repo_name("broken")
    push_to_hub(defended_dir, repo_id)
    before_ref, before_files = hub.repo(repo_id).refs["main"], hub.files(repo_id)

    hub.fail("commit", times=100, status=500)
    commits_before = hub.count("commit")
    still_failing = rf"{repo_id}: still failing after {hub_module.MAX_ATTEMPTS} attempts"
    with pytest.raises(HubPushError, match=still_failing) as failed:
        push_to_hub(defended_dir, repo_id, benchmark_repo_id=f"{NAMESPACE}/never")
    # HF_ENDPOINT points at the local Hub: that is what to check, not the public Hub's status page.
    assert f"the Hub at {hub.endpoint} (HF_ENDPOINT) is up" in str(failed.value)
    assert "status.huggingface.co" not in str(failed.value)
    assert hub.count("commit") == commits_before + hub_module.MAX_ATTEMPTS
    hub.fail("commit", times=1, status=422)  # a refusal is not retried
    with pytest.raises(HubPushError, match="422"):
        push_to_hub(defended_dir, repo_id)
    assert hub.count("commit") == commits_before + hub_module.MAX_ATTEMPTS + 1
    hub.fail("commit", times=0)
    assert hub.repo(repo_id).refs["main"] == before_ref and hub.files(repo_id) == before_files


def test_unreachable_endpoint_is_named_in_the_error(defended_dir, monkeypatch):
    from huggingface_hub import constants

    with socket.socket() as probe:  # a loopback port nobody listens on: every connection is refused at once
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest.py set it for the rest of the suite
    monkeypatch.setattr(hub_module, "BASE_DELAY_SECONDS", 0.01)
    with pytest.raises(HubPushError, match="still failing") as failed:
        push_to_hub(defended_dir, repo_name("unreachable"), token="hf_not_a_real_token")
    assert f"Check your network connection and that the Hub at {endpoint} (HF_ENDPOINT) is up" in str(failed.value)
    assert "status.huggingface.co" not in str(failed.value)


def test_the_public_hub_points_to_its_status_page(monkeypatch):
    from huggingface_hub import constants

    def dropped():
        raise ConnectionError("connection reset by peer")

    monkeypatch.setattr(constants, "ENDPOINT", "https://huggingface.co")
    monkeypatch.setattr(hub_module, "BASE_DELAY_SECONDS", 0.0)
    with pytest.raises(HubPushError, match=r"connection reset by peer.*https://status\.huggingface\.co"):
        hub_module.with_retries(dropped, "commit to org/model")


def test_refuses_an_incomplete_folder(hub, defended_dir, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((defended_dir / "config.json").read_text())
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="no safetensors weights.*pytorch_model.bin"):
        push_to_hub(folder, repo_name("pickled"))
    config = json.loads((defended_dir / "config.json").read_text())
    del config["auto_map"]
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes((defended_dir / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="auto_map"):
        push_to_hub(folder, repo_name("no-code"))


def test_cli_push(hub, defended_dir, tmp_path, capsys, caplog):
    parser = argparse.ArgumentParser(prog="hf-misleader")
    add_push_command(parser.add_subparsers(dest="command", required=True))
    results = tmp_path / "other-results.json"
    results.write_text(json.dumps(dict(benchmark_results(), defended_accuracy=0.5)))
    repo_id = repo_name("cli")
    arguments = parser.parse_args(["push", str(defended_dir), repo_id, "--public", "--benchmark", str(results),
                                   "--create-pr", "--token", hub.token])
    with caplog.at_level(logging.WARNING, logger="hf_misleader.hub"):
        arguments.handler(arguments)
    assert f"pushed {repo_id}: " in capsys.readouterr().out and "PUBLIC" in caplog.text
    assert hub.repo(repo_id).private is False and "refs/pr/1" in hub.repo(repo_id).refs
    card = ModelCard(hub.files(repo_id, revision="refs/pr/1")["README.md"].decode())
    assert [r.metric_value for r in card.data.eval_results if r.metric_type == "accuracy"] == [0.5]


# ----------------------------------------------------------------------------------------------------------------
# Benchmark results as a dataset repo


def test_benchmark_dataset_push_and_load_round_trip(hub, tmp_path):
    from datasets import Dataset, load_dataset

    rows = [{"dataset": "digits", "victim": "teacher", "defense": defense, "attack": "knockoff", "answers": answers,
             "worst_of": worst_of, "budget": budget, "seed": 0, "clone_accuracy": accuracy,
             "clone_agreement": accuracy - 0.01, "queries": budget, "my_note": "a|b"}
            for defense, answers, worst_of, budget, accuracy in (
                ("none", "soft", "", 64, 0.7), ("none", "label_only", "", 128, 0.8),
                ("reverse_sigmoid", "worst_case", "inverting", 128, 0.6))]
    repo_id = repo_name("bench")
    info = push_benchmark_to_hub(Dataset.from_list(rows), repo_id, model_repo_id=f"{NAMESPACE}/defended")
    assert hub.repo(repo_id, "dataset").private is True
    assert info.oid == hub.repo(repo_id, "dataset").refs["main"]

    back = load_dataset(repo_id, split="train", cache_dir=str(tmp_path / "cache"))
    assert back.to_list() == rows

    card = DatasetCard(hub.files(repo_id, "dataset")["README.md"].decode())
    assert card.data.dataset_info and card.data.configs  # the metadata load_dataset needs is kept
    assert "model-extraction-defense" in card.data.tags
    assert f"[{NAMESPACE}/defended]" in card.text and f'load_dataset("{repo_id}", split="train")' in card.text
    assert "| victim / defense | worst-case clone accuracy | reached by |" in card.text
    assert "| teacher / none | 80.0% | knockoff, label_only, 128 |" in card.text
    assert "| teacher / reverse_sigmoid | 60.0% | knockoff, inverting, 128 |" in card.text
    meaning = "test accuracy of the thief's clone (lower is a better defence)"
    assert f"| `clone_accuracy` | float64 | {meaning} |" in card.text
    assert "| `my_note` | string |  |" in card.text and "a\\|b" in card.text  # unknown columns listed, pipes escaped


# ----------------------------------------------------------------------------------------------------------------
# MisleaderTrainer(push_to_hub=True) pushes hf-misleader's card


def test_trainer_push_to_hub_uses_the_misleader_card(hub, digits, tmp_path):
    from hf_misleader import MisleaderTrainer, MisleaderTrainingArguments

    repo_id = repo_name("student")
    args = MisleaderTrainingArguments(
        output_dir=str(tmp_path / "student"), max_steps=1, per_device_train_batch_size=8, report_to="none",
        use_cpu=True, disable_tqdm=True, save_strategy="no", logging_strategy="no", seed=0,
        push_to_hub=True, hub_model_id=repo_id, hub_private_repo=True,
    )
    trainer = MisleaderTrainer(model=build_member("resnet-tiny", seed=1).train(),
                               teacher_model=build_member("resnet-tiny", seed=2), args=args,
                               train_dataset=digits["train"], eval_dataset=digits["validation"])
    trainer.train()
    trainer.evaluate()
    trainer.push_to_hub(dataset="sklearn-digits")

    assert hub.repo(repo_id).private is True
    card = ModelCard(hub.files(repo_id)["README.md"].decode())
    assert card.data.library_name == "hf-misleader" and "misleader-student" in card.data.tags
    assert f"# {repo_id}: a MISLEADER student of" in card.text
    assert "| objective | `unrolled` |" in card.text  # the default objective
    (accuracy,) = card.data.eval_results
    assert accuracy.metric_type == "accuracy" and accuracy.dataset_split == "validation"
    assert "fine-tuned version" not in card.text  # not the generic Trainer card


# ----------------------------------------------------------------------------------------------------------------
# Cards on their own


def test_merge_keeps_text_of_a_foreign_card_below_the_generated_section():
    generated = render_model_card(benchmark_results(), model_id="org/defended")
    foreign = textwrap.dedent("""\
        ---
        license: apache-2.0
        model-index:
        - name: theirs
          results:
          - task: {type: image-classification}
            dataset: {name: Other, type: other}
            metrics:
            - {type: f1, value: 0.5}
        ---
        # Theirs

        Notes.
        """)
    merged = merge_model_cards(generated, foreign)
    assert merged.text.index(END_MARKER) < merged.text.index("Notes.")
    assert merged.data.license == "apache-2.0"
    kinds = {(r.dataset_type, r.metric_type) for r in merged.data.eval_results}
    assert ("other", "f1") in kinds and ("sklearn-digits", "clone_accuracy") in kinds
    assert merge_model_cards(generated, None) is generated


# ----------------------------------------------------------------------------------------------------------------
# The real Hub: only with a token and a network


def _real_hub_available():
    from huggingface_hub import get_token

    if not (os.environ.get("HF_TOKEN") or get_token()):
        return "no Hugging Face token (set HF_TOKEN or run `hf auth login`)"
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        return "huggingface.co is not reachable"
    return None


def test_real_hub_round_trip(defended_dir, monkeypatch):
    reason = _real_hub_available()
    if reason:
        pytest.skip(f"real-Hub test skipped: {reason}")
    from huggingface_hub import HfApi, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest.py set it for the rest of the suite
    api = HfApi()
    repo_id = f"{api.whoami()['name']}/hf-misleader-test-{uuid.uuid4().hex[:8]}"
    try:
        push_to_hub(defended_dir, repo_id)
        assert api.model_info(repo_id).private is True
        assert {"model.safetensors", "modeling_misleader.py", "README.md"} <= set(api.list_repo_files(repo_id))
    finally:
        api.delete_repo(repo_id, missing_ok=True)
