"""Share defended models and their benchmark results on the Hugging Face Hub: private by default, one commit per model,
retried on network errors, with hf-misleader's cards."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError
from transformers.dynamic_module_utils import get_relative_import_files

from .benchmark_card import render_benchmark_card
from .card_merge import merge_model_cards
from .model_card import render_model_card, results_from_config

logger = logging.getLogger(__name__)

# Network errors are retried this many times in all, waiting BASE_DELAY_SECONDS, then twice as long each time.
MAX_ATTEMPTS = 4
BASE_DELAY_SECONDS = 1.0
PUBLIC_HUB_HOST = "huggingface.co"  # where https://status.huggingface.co reports outages
# What a defended folder may contribute to the repo: the model, its remote code, its processor, plots. Nothing else
# (no checkpoints, no teacher, no attacker, no pickles) is ever uploaded.
CONFIG_FILES = ("config.json", "generation_config.json")
PROCESSOR_FILES = (
    "preprocessor_config.json", "processor_config.json", "image_processor_config.json",
    "video_preprocessor_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt",
    "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model", "chat_template.jinja",
)
PLOT_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
PUBLIC_WARNING = (
    "Pushing {repo_id} as a PUBLIC repo: anyone will be able to download the weights, that is, to copy the model "
    "outright, which defeats the point of a defence against model extraction. Keep it private (the default) unless "
    "you mean to publish the model itself."
)


class MissingHubTokenError(OSError):
    """No Hugging Face token: the Hub refuses anonymous writes."""


class HubPushError(OSError):
    """A Hub request kept failing after every retry, or failed in a way retrying cannot fix."""


# -- retries -----------------------------------------------------------------------------------------------------------


def _network_errors() -> tuple[type[BaseException], ...]:
    # huggingface_hub 2.x speaks httpx2, 1.x httpx; other libraries (datasets' fsspec paths) may use requests.
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                          ("requests", ("ConnectionError", "Timeout"))):
        try:
            imported = __import__(f"{module}.exceptions" if module == "requests" else module, fromlist=list(names))
        except ImportError:
            continue
        errors += [getattr(imported, name) for name in names if hasattr(imported, name)]
    return tuple(errors)


NETWORK_ERRORS = _network_errors()


def is_transient(error: BaseException | None) -> bool:
    """Connection errors, timeouts and the Hub's 5xx (and 429) answers may pass if tried again; anything else will not.
    The error's cause counts too: a download that could not reach the Hub says so as "not found in the cache"."""
    if error is None:
        return False
    if isinstance(error, HfHubHTTPError) and getattr(error, "response", None) is not None:
        status = error.response.status_code
        return status >= 500 or status == 429
    return isinstance(error, NETWORK_ERRORS) or is_transient(error.__cause__)


def with_retries(call, what: str):
    """
    Run `call()`, retrying transient errors ([`is_transient`]) with exponential backoff, [`MAX_ATTEMPTS`] tries in all.

    Raises:
        [`HubPushError`]: when every attempt failed, or on an HTTP error that retrying cannot fix, naming `what` was
        being done and why.
    """
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return call()
        except Exception as error:
            if not is_transient(error):
                if isinstance(error, HfHubHTTPError):
                    raise HubPushError(f"Could not {what}: {_describe(error)}") from error
                raise
            if attempt == MAX_ATTEMPTS:
                raise HubPushError(
                    f"Could not {what}: still failing after {MAX_ATTEMPTS} attempts ({_describe(error)}). Check your "
                    f"network connection and {_where_to_look()}, then run the push again: it is safe to repeat."
                ) from error
            delay = BASE_DELAY_SECONDS * 2 ** (attempt - 1)
            logger.warning(f"Could not {what} ({_describe(error)}); retrying in {delay:.1f} s "
                           f"(attempt {attempt + 1} of {MAX_ATTEMPTS}).")
            time.sleep(delay)


def _where_to_look() -> str:
    """The public Hub's status page only helps when pushing there; with HF_ENDPOINT set elsewhere (a mirror, an
    on-premise Hub) the endpoint itself is what to check."""
    endpoint = constants.ENDPOINT.rstrip("/")
    if urlparse(endpoint).hostname == PUBLIC_HUB_HOST:
        return "https://status.huggingface.co"
    return f"that the Hub at {endpoint} (HF_ENDPOINT) is up"


def _describe(error: BaseException) -> str:
    status = getattr(getattr(error, "response", None), "status_code", None)
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if status in (401, 403):
        return f"{first_line} (HTTP {status}: check that your token has write access to this namespace)"
    return first_line if status is None or str(status) in first_line else f"HTTP {status}: {first_line}"


def resolve_token(token: str | None) -> str:
    """The token to write with: `token`, else the one `hf auth login` saved or `HF_TOKEN` holds."""
    token = token or get_token()
    if not token:
        raise MissingHubTokenError(
            "No Hugging Face token found, and pushing to the Hub needs one with write access. Log in with "
            "`hf auth login` (`huggingface-cli login` with older huggingface_hub), set the HF_TOKEN environment "
            "variable, or pass token=... (CLI: --token)."
        )
    return token


# -- the defended folder -----------------------------------------------------------------------------------------------


def _weight_files(folder: Path) -> list[str]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [index.name, *shards]
    if (folder / "model.safetensors").is_file():
        return ["model.safetensors"]
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    hint = f" It holds pickled weights ({', '.join(pickles)}), which are never pushed." if pickles else ""
    raise ValueError(f"{folder} has no safetensors weights (model.safetensors).{hint} Save the ensemble with "
                     "`save_pretrained` (safetensors is its default).")


def _code_files(folder: Path, config: dict) -> list[str]:
    # `auto_map` names the modules `trust_remote_code` imports: they must travel with the weights.
    auto_map = config.get("auto_map") or {}
    if not auto_map:
        raise ValueError(
            f"{folder}/config.json has no `auto_map`, so `trust_remote_code=True` could not load it without "
            "hf-misleader. Save the ensemble after `import hf_misleader` (which registers the model code)."
        )
    modules = {reference.split(".")[0] for reference in auto_map.values() if isinstance(reference, str)}
    missing = sorted(f"{m}.py" for m in modules if not (folder / f"{m}.py").is_file())
    if missing:
        raise ValueError(f"{folder} lacks the model code {', '.join(missing)} named in config.json's auto_map.")
    # Plus what those modules import relatively, as transformers resolves it when loading: no other .py file.
    files = {f"{m}.py" for m in modules}
    for module in modules:
        files.update(Path(path).name for path in get_relative_import_files(folder / f"{module}.py"))
    return sorted(files)


def stage_defended_model(source, staging: Path, processor=None) -> tuple[dict, list[str]]:
    """
    Gather in `staging` exactly what a defended model's repo holds: config, safetensors weights, remote code,
    processor/tokenizer files and plots.

    Args:
        source (`str`, `os.PathLike` or a MISLEADER ensemble):
            A folder written by `save_pretrained` (the demo's `defended-model/`), or the ensemble itself
            ([`MisleaderEnsembleForImageClassification`] or [`MisleaderEnsembleForSequenceClassification`]).
        staging (`pathlib.Path`):
            An empty folder.
        processor (*optional*):
            An image processor or tokenizer to save next to a model object.

    Returns:
        `tuple[dict, list[str]]`: the model's config as a dict, and the plots' file names (extraction plot first).
    """
    if not isinstance(source, (str, os.PathLike)):
        source.save_pretrained(staging)
        if processor is not None:
            processor.save_pretrained(staging)
        folder = staging
    else:
        folder = Path(source)
        if not (folder / "config.json").is_file():
            raise ValueError(f"{folder} is not a saved model folder: it has no config.json.")
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") != "misleader":
        raise ValueError(f"{folder} holds a {config.get('model_type')!r} model, not a MISLEADER ensemble "
                         "(model_type 'misleader').")
    plots = sorted((p.name for p in folder.iterdir() if p.suffix.lower() in PLOT_SUFFIXES),
                   key=lambda name: (name != "extraction.png", name))
    names = [*CONFIG_FILES, *_weight_files(folder), *_code_files(folder, config), *PROCESSOR_FILES, *plots]
    if folder != staging:
        for name in dict.fromkeys(names):
            if (folder / name).is_file():
                shutil.copy2(folder / name, staging / name)
    for stray in [p for p in staging.iterdir() if p.name not in names]:  # what save_pretrained wrote beyond the list
        shutil.rmtree(stray) if stray.is_dir() else stray.unlink()
    return config, plots


def load_benchmark_results(source, folder=None) -> dict | None:
    """
    The benchmark results to put in the card: a dict, or the path of a `results.json`. When `source` is None, a
    `results.json` in `folder` or in its parent (the demo's layout: `outputs/demo/results.json` next to
    `outputs/demo/defended-model/`) is used if there is one.
    """
    if isinstance(source, dict):
        return source
    if source is not None:
        return json.loads(Path(source).read_text())
    if folder is None:
        return None
    for candidate in (Path(folder) / "results.json", Path(folder).resolve().parent / "results.json"):
        if candidate.is_file():
            found = json.loads(candidate.read_text())
            # Only the benchmark contract's results.json, not some other file of that name.
            if isinstance(found, dict) and {"teacher", "members", "attacks"} <= set(found):
                logger.info(f"Using the benchmark results in {candidate} for the model card.")
                return found
    return None


# -- pushing -----------------------------------------------------------------------------------------------------------


def _existing_readme(api: HfApi, repo_id: str, repo_type: str, revision: str | None, cache_dir: str) -> str | None:
    def download():
        try:
            path = api.hf_hub_download(repo_id, "README.md", repo_type=repo_type, revision=revision,
                                       cache_dir=cache_dir)
        except EntryNotFoundError as error:
            if isinstance(error, HfHubHTTPError):  # the Hub answered: there is no card yet
                return None
            raise  # the Hub could not be asked: never take that for "no card", or the owner's card is overwritten
        return Path(path).read_text(encoding="utf-8")

    return with_retries(download, f"read the card of {repo_id}")


def _prepare_repo(api: HfApi, repo_id: str, repo_type: str, private: bool, revision: str | None):
    with_retries(lambda: api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True),
                 f"create the {repo_type} repo {repo_id}")
    info = with_retries(lambda: api.repo_info(repo_id, repo_type=repo_type), f"read the {repo_type} repo {repo_id}")
    if private and info.private is False:
        logger.warning(f"{repo_id} already exists and is public; hf-misleader does not change a repo's visibility. "
                       "Make it private in its settings if it should not be downloadable.")
    if revision and not revision.startswith("refs/pr/"):
        with_retries(lambda: api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True),
                     f"create the branch {revision} of {repo_id}")


def _commit_folder(api, folder: Path, repo_id: str, repo_type: str, **commit_kwargs):
    def commit():
        # Fresh operations on every attempt: the client marks them once it has used them.
        operations = [CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path))
                      for path in sorted(folder.rglob("*")) if path.is_file()]
        return api.create_commit(repo_id, operations, repo_type=repo_type, **commit_kwargs)

    return with_retries(commit, f"commit to {repo_id}")


def push_to_hub(
    defended_dir_or_model,
    repo_id: str,
    *,
    private: bool = True,
    token: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    benchmark_results=None,
    benchmark_repo_id: str | None = None,
    processor=None,
):
    """
    Push a defended model to the Hub in one commit: config, safetensors weights, the model code
    `trust_remote_code=True` needs (so it loads without hf-misleader), its processor or tokenizer, the extraction
    plot(s) and hf-misleader's model card.

    A `README.md` already in the repo is updated, not overwritten (see
    [`~hf_misleader.card_merge.merge_model_cards`]): the generated section is replaced, the owner's text around it and
    their metadata are kept. Network errors and the Hub's 5xx answers are retried with exponential backoff.

    Args:
        defended_dir_or_model (`str`, `os.PathLike` or a MISLEADER ensemble):
            A folder written by `save_pretrained` (e.g. the demo's `outputs/demo/defended-model`), or the ensemble.
        repo_id (`str`):
            `"namespace/name"` of the model repo; created if missing.
        private (`bool`, *optional*, defaults to `True`):
            Create the repo private. A public repo lets anyone download the weights, that is copy the model outright,
            so `False` logs a warning. An existing repo's visibility is never changed.
        token (`str`, *optional*):
            A token with write access; defaults to the one `hf auth login` saved, or `HF_TOKEN`.
        revision (`str`, *optional*):
            Branch to commit to (created from `main` if missing), or a `refs/pr/N` to add to an open pull request.
        create_pr (`bool`, *optional*, defaults to `False`):
            Open a pull request with the commit instead of committing to the branch.
        commit_message (`str`, *optional*):
            Defaults to "Upload MISLEADER-defended model with hf-misleader".
        benchmark_results (`dict` or `str`, *optional*):
            The benchmark results (the `results.json` contract) or the path of a `results.json`, for the card's
            benchmark table and `model-index`. When not given, a `results.json` in the folder or its parent is used;
            without any, the card says the model's resistance to extraction is unmeasured.
        benchmark_repo_id (`str`, *optional*):
            Dataset repo holding the raw benchmark runs ([`push_benchmark_to_hub`]), linked from the card.
        processor (*optional*):
            Image processor or tokenizer to push with a model object (a folder's own processor files are pushed
            anyway).

    Returns:
        [`~huggingface_hub.CommitInfo`]: the commit; `str(info)` is its URL, `info.pr_url` the pull request's.

    Raises:
        [`MissingHubTokenError`]: no token. [`HubPushError`]: the Hub kept failing or refused the push.
        `ValueError`: the folder is not a complete defended model (no safetensors weights, no remote code...).
    """
    with tempfile.TemporaryDirectory(prefix="hf-misleader-push-") as workspace:
        staging, cache = Path(workspace) / "repo", os.path.join(workspace, "cache")
        staging.mkdir()
        # The folder first: a missing or incomplete model is the error to report, token or not.
        config, plots = stage_defended_model(defended_dir_or_model, staging, processor=processor)
        api = HfApi(token=resolve_token(token))
        if not private:
            logger.warning(PUBLIC_WARNING.format(repo_id=repo_id))
        folder = defended_dir_or_model if isinstance(defended_dir_or_model, (str, os.PathLike)) else None
        results = {**results_from_config(config), **(load_benchmark_results(benchmark_results, folder) or {})}
        results.setdefault("model_name", repo_id.split("/")[-1])  # the model-index names this model, not the teacher
        card = render_model_card(results, model_id=repo_id, plot_filename=plots, benchmark_repo_id=benchmark_repo_id)

        _prepare_repo(api, repo_id, "model", private, revision)
        existing = _existing_readme(api, repo_id, "model", revision, cache)
        if existing is None and folder is not None and (Path(folder) / "README.md").is_file():
            existing = (Path(folder) / "README.md").read_text(encoding="utf-8")  # keep the owner's local edits
        merge_model_cards(card, existing).save(staging / "README.md")
        return _commit_folder(api, staging, repo_id, "model", revision=revision, create_pr=create_pr,
                              commit_message=commit_message or "Upload MISLEADER-defended model with hf-misleader")


def push_benchmark_to_hub(
    results,
    repo_id: str,
    *,
    private: bool = True,
    token: str | None = None,
    model_repo_id: str | None = None,
    description: str | None = None,
    commit_message: str | None = None,
):
    """
    Push benchmark results as a dataset repo, one row per benchmark run, with its own card.

    Two commits: the data through [`datasets.Dataset.push_to_hub`] (Parquet shards and the `dataset_info`
    metadata `load_dataset` reads), then the card, merged into the README the first commit wrote.

    Args:
        results (`datasets.Dataset` or `list[dict]`):
            One row per benchmark run (e.g. `hf_misleader.benchmark`'s output).
        repo_id (`str`):
            `"namespace/name"` of the dataset repo; created if missing.
        private (`bool`, *optional*, defaults to `True`):
            Create the repo private.
        token (`str`, *optional*):
            A token with write access; defaults to the one `hf auth login` saved, or `HF_TOKEN`.
        model_repo_id (`str`, *optional*):
            The defended model's repo, linked from the card.
        description (`str`, *optional*):
            A paragraph for the card, replacing the default description.
        commit_message (`str`, *optional*):
            Message of the data commit.

    Returns:
        [`~huggingface_hub.CommitInfo`]: the card's commit.
    """
    from datasets import Dataset

    token = resolve_token(token)
    dataset = results if isinstance(results, Dataset) else Dataset.from_list(list(results))
    if len(dataset) == 0:
        raise ValueError("The benchmark results are empty: there is nothing to push.")
    message = commit_message or "Upload benchmark results with hf-misleader"
    with_retries(lambda: dataset.push_to_hub(repo_id, private=private, token=token, commit_message=message),
                 f"push the benchmark results to {repo_id}")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="hf-misleader-push-") as workspace:
        staging = Path(workspace) / "repo"
        staging.mkdir()
        existing = _existing_readme(api, repo_id, "dataset", None, os.path.join(workspace, "cache"))
        card = render_benchmark_card(dataset, repo_id, model_repo_id=model_repo_id, description=description)
        merge_model_cards(card, existing).save(staging / "README.md")
        return _commit_folder(api, staging, repo_id, "dataset", commit_message="Update the benchmark card")


# -- command line ------------------------------------------------------------------------------------------------------


def add_push_command(subparsers):
    """
    Add `hf-misleader push DIR REPO_ID [--public] [--revision R] [--create-pr] [--token T] [--benchmark FILE]
    [--benchmark-repo ID] [--commit-message M]` to an `argparse` sub-command set; its handler is
    `arguments.handler(arguments)`.
    """
    push = subparsers.add_parser("push", help="Push a defended model (private by default) with its card to the Hub.")
    push.add_argument("directory", help="The defended model's folder (e.g. outputs/demo/defended-model).")
    push.add_argument("repo_id", help="namespace/name of the model repo.")
    push.add_argument("--public", action="store_true",
                      help="Make a new repo public: anyone could then download, i.e. copy, the model.")
    push.add_argument("--revision", default=None, help="Branch (created if missing) or refs/pr/N to commit to.")
    push.add_argument("--create-pr", action="store_true", help="Open a pull request instead of committing directly.")
    push.add_argument("--token", default=None, help="Hub token with write access (default: hf auth login / HF_TOKEN).")
    push.add_argument("--benchmark", default=None, metavar="FILE",
                      help="results.json for the card (default: one in DIR or its parent, if any).")
    push.add_argument("--benchmark-repo", default=None, metavar="REPO_ID",
                      help="Dataset repo with the raw benchmark runs, linked from the card.")
    push.add_argument("--commit-message", default=None)
    push.set_defaults(handler=_push_command)
    return push


def _push_command(arguments):
    info = push_to_hub(arguments.directory, arguments.repo_id, private=not arguments.public, token=arguments.token,
                       revision=arguments.revision, create_pr=arguments.create_pr,
                       commit_message=arguments.commit_message, benchmark_results=arguments.benchmark,
                       benchmark_repo_id=arguments.benchmark_repo)
    print(f"pushed {arguments.repo_id}: {info.pr_url or info.commit_url}")
