"""A local stand-in for the Hugging Face Hub HTTP API, for push/pull tests without the network.

It serves the subset of endpoints the real `huggingface_hub` client (and `datasets`, `transformers` through it) calls
to create repos, commit files (regular and LFS uploads), open pull requests, list and download files, for model and
dataset repos. State lives in memory. Failures can be injected per endpoint to test retries and atomic commits.

Start it with `HubServer().start()`; point clients at `server.endpoint` (`HF_ENDPOINT`) with `server.token`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

USER = "test-user"
TOKEN = "hf_local_test_token"
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# Like the Hub's default .gitattributes: binary formats go through LFS.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".parquet", ".arrow", ".png", ".jpg", ".zip", ".gz", ".npy")
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES).encode()


def git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass(frozen=True)
class StoredFile:
    content: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def oid(self) -> str:
        return git_blob_oid(self.content)

    @property
    def etag(self) -> str:
        # The Hub's ETag: the git blob id, or the sha256 for LFS files.
        return self.sha256 if self.lfs else self.oid

    def tree_entry(self, path: str) -> dict:
        entry = {"type": "file", "oid": self.oid, "size": len(self.content), "path": path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": len(self.content), "pointerSize": 134}
        return entry


@dataclass
class Commit:
    oid: str
    files: dict  # path -> StoredFile
    title: str
    parent: str | None
    date: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()))


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    refs: dict = field(default_factory=dict)  # "main" or "refs/pr/N" -> commit oid
    commits: dict = field(default_factory=dict)
    pull_requests: int = 0

    def resolve(self, revision: str) -> Commit | None:
        oid = self.refs.get(revision, revision)
        return self.commits.get(oid)

    def add_commit(self, files: dict, title: str, parent: str | None) -> Commit:
        commit = Commit(oid=hashlib.sha1(uuid.uuid4().bytes).hexdigest(), files=files, title=title, parent=parent)
        self.commits[commit.oid] = commit
        return commit


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit


@dataclass
class Failure:
    remaining: int
    status: int | None  # None: drop the connection without answering


class HubServer:
    """
    An in-memory Hub on a free loopback port.

    Args:
        lfs_suffixes (`tuple[str]`, *optional*):
            File suffixes the preupload endpoint sends through LFS (the rest is committed inline, as "regular").

    Attributes:
        endpoint (`str`): base URL, for `HF_ENDPOINT`.
        token (`str`): the only token accepted for writes and private reads.
        requests (`list[tuple[str, str, str]]`): (method, endpoint name, path) of every request, in order.
    """

    def __init__(self, lfs_suffixes=LFS_SUFFIXES):
        self.token = TOKEN
        self.user = USER
        self.lfs_suffixes = lfs_suffixes
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> content, uploaded before the commit that uses them
        self.requests: list[tuple[str, str, str]] = []
        self._failures: dict[str, Failure] = {}
        self._lock = threading.RLock()
        self._httpd = None
        self._thread = None

    # -- life cycle --------------------------------------------------------------------------------------------------

    def start(self) -> HubServer:
        hub = self

        class Handler(_Handler):
            server_state = hub

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    @property
    def endpoint(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- test helpers ------------------------------------------------------------------------------------------------

    def fail(self, endpoint_name: str, times: int = 1, status: int | None = 500):
        """Make the next `times` requests to `endpoint_name` (e.g. "commit", "create_repo") fail with `status`, or
        with a dropped connection when `status` is None."""
        with self._lock:
            self._failures[endpoint_name] = Failure(times, status)

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        commit = self.repo(repo_id, repo_type).resolve(revision)
        return {path: stored.content for path, stored in commit.files.items()}

    def count(self, endpoint_name: str) -> int:
        return sum(1 for _, name, _ in self.requests if name == endpoint_name)

    def take_failure(self, endpoint_name: str) -> Failure | None:
        with self._lock:
            failure = self._failures.get(endpoint_name)
            if failure is None or failure.remaining <= 0:
                return None
            failure.remaining -= 1
            return failure


class _Handler(BaseHTTPRequestHandler):
    server_state: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # quiet: the test output is the place for failures, not access logs
        pass

    # -- plumbing ----------------------------------------------------------------------------------------------------

    def _body(self) -> bytes:
        # Always drain the request body, or a kept-alive connection reads it as the next request.
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json", headers=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, payload, status: int = 200, headers: dict | None = None):
        self._send(status, json.dumps(payload).encode(), headers=headers)

    def _token(self) -> str | None:
        value = self.headers.get("Authorization", "")
        return value[len("Bearer "):] if value.startswith("Bearer ") else None

    def _require_write(self):
        if self._token() != self.server_state.token:
            raise HttpError(401, "Invalid credentials in Authorization header")

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.server_state.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and self._token() != self.server_state.token):
            raise HttpError(404 if repo is None else 401, "Repository not found", code="RepoNotFound")
        return repo

    def _dispatch(self):
        state = self.server_state
        parts = urlsplit(self.path)
        segments = [unquote(s) for s in parts.path.strip("/").split("/")] if parts.path.strip("/") else []
        query = parse_qs(parts.query)
        route = self._route(segments)
        name = route[0] if route else "unknown"
        state.requests.append((self.command, name, parts.path))
        body = self._body()
        failure = state.take_failure(name)
        if failure is not None:
            if failure.status is None:
                self.close_connection = True
                self.connection.shutdown(2)  # a reset connection: the client sees a network error
                return
            return self._json({"error": f"injected failure of {name}"}, status=failure.status)
        if route is None:
            return self._json({"error": f"local hub: no route for {self.command} {parts.path}"}, status=501)
        handler, args = getattr(self, f"_on_{name}"), route[1]
        with state._lock:
            try:
                handler(*args, body=body, query=query)
            except HttpError as error:
                headers = {"X-Error-Message": error.message}
                if error.code:
                    headers["X-Error-Code"] = error.code
                if error.commit:
                    headers["X-Repo-Commit"] = error.commit
                self._json({"error": error.message}, status=error.status, headers=headers)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    def _route(self, s: list[str]):
        """(endpoint name, positional args) for a path, or None."""
        method = self.command
        if s[:2] == ["api", "whoami-v2"]:
            return "whoami", ()
        if s[:3] == ["api", "repos", "create"] and method == "POST":
            return "create_repo", ()
        if s[:2] == ["api", "validate-yaml"]:
            return "validate_yaml", ()
        if len(s) >= 4 and s[0] == "api" and s[1] in REPO_TYPES:
            repo = (REPO_TYPES[s[1]], f"{s[2]}/{s[3]}")
            rest = s[4:]
            if not rest and method in ("GET", "HEAD"):
                return "repo_info", (*repo, "main")
            action = rest[0] if rest else None
            if action == "revision" and len(rest) >= 2:
                return "repo_info", (*repo, "/".join(rest[1:]))
            if action == "preupload" and method == "POST":
                return "preupload", (*repo, "/".join(rest[1:]))
            if action == "commit" and method == "POST":
                return "commit", (*repo, "/".join(rest[1:]))
            if action == "tree" and len(rest) >= 2:
                return "tree", (*repo, rest[1], "/".join(rest[2:]))
            if action == "paths-info" and method == "POST":
                return "paths_info", (*repo, "/".join(rest[1:]))
            if action == "refs":
                return "refs", repo
            if action == "branch" and method == "POST":
                return "create_branch", (*repo, "/".join(rest[1:]))
            if action == "commits":
                return "list_commits", (*repo, "/".join(rest[1:]) or "main")
            return None
        if s and s[0] == "_lfs" and method == "PUT" and len(s) == 2:
            return "lfs_upload", (s[1],)
        # /{prefix}{ns}/{name}.git/info/lfs/objects/batch and /{prefix}{ns}/{name}/resolve/{rev}/{path}
        repo_type, rest = ("model", s)
        if s and s[0] in REPO_TYPES and s[0] != "models":
            repo_type, rest = REPO_TYPES[s[0]], s[1:]
        if len(rest) >= 2 and rest[1].endswith(".git") and rest[2:] == ["info", "lfs", "objects", "batch"]:
            return "lfs_batch", (repo_type, f"{rest[0]}/{rest[1][:-len('.git')]}")
        if len(rest) >= 5 and rest[2] == "resolve" and method in ("GET", "HEAD"):
            return "resolve", (repo_type, f"{rest[0]}/{rest[1]}", rest[3], "/".join(rest[4:]))
        return None

    # -- endpoints ---------------------------------------------------------------------------------------------------

    def _on_whoami(self, body, query):
        if self._token() != self.server_state.token:
            raise HttpError(401, "Invalid credentials in Authorization header")
        self._json({"type": "user", "id": "1", "name": USER, "fullname": "Test User", "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}}})

    def _on_validate_yaml(self, body, query):
        self._json({"errors": [], "warnings": []})

    def _on_create_repo(self, body, query):
        self._require_write()
        payload = json.loads(body or b"{}")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        url = f"{self.server_state.endpoint}/{URL_PREFIXES[repo_type]}{repo_id}"
        state = self.server_state
        if (repo_type, repo_id) in state.repos:  # the Hub names the existing repo's URL in its refusal
            return self._json({"error": "You already created this repo", "url": url}, status=409)
        private = payload.get("visibility", "private" if payload.get("private") else "public") != "public"
        repo = Repo(repo_type, repo_id, private=private)
        initial = repo.add_commit({".gitattributes": StoredFile(GITATTRIBUTES, lfs=False)}, "initial commit", None)
        repo.refs["main"] = initial.oid
        state.repos[(repo_type, repo_id)] = repo
        self._json({"url": url, "name": repo_id})

    def _on_repo_info(self, repo_type, repo_id, revision, body, query):
        repo = self._repo(repo_type, repo_id)
        commit = self._resolve_commit(repo, revision)
        siblings = [{"rfilename": path, "size": len(f.content), "blobId": f.oid,
                     **({"lfs": {"size": len(f.content), "sha256": f.sha256, "pointerSize": 134}} if f.lfs else {})}
                    for path, f in sorted(commit.files.items())]
        self._json({"id": repo_id, "_id": repo_id, "author": repo_id.split("/")[0], "sha": commit.oid,
                    "private": repo.private, "gated": False, "disabled": False, "lastModified": commit.date,
                    "createdAt": commit.date, "tags": [], "downloads": 0, "likes": 0, "siblings": siblings})

    def _on_preupload(self, repo_type, repo_id, revision, body, query):
        self._require_write()
        repo = self._repo(repo_type, repo_id)
        commit = self._resolve_commit(repo, revision)
        files = []
        for item in json.loads(body)["files"]:
            lfs = item["path"].endswith(self.server_state.lfs_suffixes) and item["size"] > 0
            existing = commit.files.get(item["path"])
            files.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": existing.oid if existing else None})
        self._json({"files": files, "commitOid": commit.oid})

    def _on_lfs_batch(self, repo_type, repo_id, body, query):
        self._require_write()
        self._repo(repo_type, repo_id)
        objects = []
        for item in json.loads(body)["objects"]:
            entry = {"oid": item["oid"], "size": item["size"], "authenticated": True}
            if item["oid"] not in self.server_state.lfs_objects:
                entry["actions"] = {"upload": {"href": f"{self.server_state.endpoint}/_lfs/{item['oid']}"}}
            objects.append(entry)
        self._json({"transfer": "basic", "objects": objects})

    def _on_lfs_upload(self, oid, body, query):
        if hashlib.sha256(body).hexdigest() != oid:
            raise HttpError(400, "sha256 of the uploaded content does not match its oid")
        self.server_state.lfs_objects[oid] = body
        self._send(200)

    def _commit_endpoint_files(self, base: Commit, lines: list[dict]) -> tuple[dict, dict]:
        """The header and the new tree of a commit: every operation is checked before anything is stored."""
        header, files = None, dict(base.files)
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "header":
                header = value
            elif key == "file":
                content = value["content"]
                content = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                files[value["path"]] = StoredFile(content, lfs=False)
            elif key == "lfsFile":
                content = self.server_state.lfs_objects.get(value["oid"])
                if content is None:
                    raise HttpError(422, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                files[value["path"]] = StoredFile(content, lfs=True)
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise HttpError(404, "A file with this name doesn't exist", code="EntryNotFound")
                del files[value["path"]]
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {path: f for path, f in files.items() if not path.startswith(prefix)}
            else:
                raise HttpError(400, f"unknown commit operation {key!r}")
        if header is None:
            raise HttpError(400, "commit without a header line")
        return header, files

    def _on_commit(self, repo_type, repo_id, revision, body, query):
        self._require_write()
        repo = self._repo(repo_type, repo_id)
        base = self._resolve_commit(repo, revision)
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header, files = self._commit_endpoint_files(base, lines)
        if header.get("parentCommit") and header["parentCommit"] != base.oid:
            raise HttpError(412, "A commit has happened since. Please refresh and try again.")
        commit = repo.add_commit(files, header.get("summary", ""), base.oid)
        pull_request_url = None
        if query.get("create_pr", ["0"])[0] in ("1", "true", "True"):
            repo.pull_requests += 1
            repo.refs[f"refs/pr/{repo.pull_requests}"] = commit.oid
            pull_request_url = f"{self._repo_url(repo)}/discussions/{repo.pull_requests}"
        else:
            ref = revision if revision in repo.refs else None
            if ref is None:
                raise HttpError(400, f"Cannot commit to {revision!r}: not a branch", code="RevisionNotFound")
            repo.refs[ref] = commit.oid
        self._json({"success": True, "commitOid": commit.oid, "pullRequestUrl": pull_request_url,
                    "commitUrl": f"{self._repo_url(repo)}/commit/{commit.oid}"})

    def _repo_url(self, repo: Repo) -> str:
        return f"{self.server_state.endpoint}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"

    def _resolve_commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HttpError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        return commit

    def _tree_entries(self, commit: Commit, folder: str, recursive: bool) -> list[dict]:
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        entries, folders = [], set()
        for path, stored in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):]
            parents = rest.split("/")[:-1]
            for depth in range(len(parents) if recursive else min(1, len(parents))):
                folders.add(prefix + "/".join(parents[: depth + 1]))
            if recursive or not parents:
                entries.append(stored.tree_entry(path))
        entries += [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "path": f}
                    for f in sorted(folders)]
        return entries

    def _on_tree(self, repo_type, repo_id, revision, folder, body, query):
        repo = self._repo(repo_type, repo_id)
        commit = self._resolve_commit(repo, revision)
        recursive = query.get("recursive", ["False"])[0].lower() in ("1", "true")
        entries = self._tree_entries(commit, folder, recursive)
        if folder.strip("/") and not entries:
            raise HttpError(404, f"{folder} does not exist", code="EntryNotFound", commit=commit.oid)
        self._json(entries)

    def _on_paths_info(self, repo_type, repo_id, revision, body, query):
        repo = self._repo(repo_type, repo_id)
        commit = self._resolve_commit(repo, revision)
        paths = [path.strip("/") for path in parse_qs(body.decode()).get("paths", [])]
        entries = []
        for path in paths:
            if path in commit.files:
                entries.append(commit.files[path].tree_entry(path))
            elif any(p.startswith(path + "/") for p in commit.files):
                entries.append({"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "path": path})
        self._json(entries)

    def _on_refs(self, repo_type, repo_id, body, query):
        repo = self._repo(repo_type, repo_id)

        def info(name):
            return {"name": name.split("/")[-1] if name.startswith("refs/pr/") else name,
                    "ref": name if name.startswith("refs/") else f"refs/heads/{name}", "targetCommit": repo.refs[name]}

        branches = [n for n in repo.refs if not n.startswith("refs/pr/")]
        pull_requests = [n for n in repo.refs if n.startswith("refs/pr/")]
        self._json({"branches": [info(n) for n in branches], "converts": [], "tags": [],
                    "pullRequests": [info(n) for n in pull_requests]})

    def _on_create_branch(self, repo_type, repo_id, branch, body, query):
        self._require_write()
        repo = self._repo(repo_type, repo_id)
        if branch in repo.refs:
            raise HttpError(409, f"Branch {branch} already exists")
        start = json.loads(body or b"{}").get("startingPoint") or "main"
        repo.refs[branch] = self._resolve_commit(repo, start).oid
        self._json({})

    def _on_list_commits(self, repo_type, repo_id, revision, body, query):
        repo = self._repo(repo_type, repo_id)
        commit, history = self._resolve_commit(repo, revision), []
        while commit is not None:
            history.append({"id": commit.oid, "title": commit.title, "message": "", "authors": [{"user": USER}],
                            "date": commit.date})
            commit = repo.commits.get(commit.parent) if commit.parent else None
        self._json(history)

    def _on_resolve(self, repo_type, repo_id, revision, path, body, query):
        repo = self._repo(repo_type, repo_id)
        commit = self._resolve_commit(repo, revision)
        stored = commit.files.get(path)
        if stored is None:
            raise HttpError(404, "Entry not found", code="EntryNotFound", commit=commit.oid)
        content, status, headers = stored.content, 200, {
            "X-Repo-Commit": commit.oid, "ETag": f'"{stored.etag}"', "Accept-Ranges": "bytes",
        }
        if stored.lfs:
            headers.update({"X-Linked-Etag": f'"{stored.sha256}"', "X-Linked-Size": str(len(stored.content))})
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if match and content:
            start = int(match[1]) if match[1] else max(0, len(content) - int(match[2]))
            end = int(match[2]) if match[1] and match[2] else len(content) - 1
            end = min(end, len(content) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            content, status = content[start:end + 1], 206
        self._send(status, content, content_type="application/octet-stream", headers=headers)

