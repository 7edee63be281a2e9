"""A local, Hub-compatible HTTP server for tests: the write and read API that `huggingface_hub` and `datasets` use.

No Hugging Face Hub is reachable from the test machines, and no installable package implements the write side of
the Hub API, so the tests talk to this double instead. It speaks the real protocol (see
/work/shared/notes/hub-offline.md): repo creation with visibility, branches, tags, `preupload`, the Git LFS "basic"
batch transfer, NDJSON commits with `parentCommit` checks (412), `tree` / `paths-info` / `commits` listings with
Link-header pagination, `resolve` with ETags and range requests, and `validate-yaml` with the Hub's metadata rules.
Unmodified `push_to_hub`, `load_dataset`, `HfApi` and `HfFileSystem` work against it.

Storage is content-addressed: every file body is kept once on disk under its sha256; a commit maps paths to stored
files and points to its parent; branches and tags point to commits.

Failures can be injected per endpoint (`hub.inject_failure("commit", status=500, skip=2)` fails the third commit),
including dropped connections before or after the request took effect, so retry logic and "no tag on failure" are
exercised over real HTTP. `hub.freeze_after_commits(n)` makes it stop answering once n more commits landed (every
later request is read and left hanging, as a Hub that stops answering does) until `hub.unfreeze()`.

Example:
    >>> hub = LocalHub(root=tmp_path, token="hf_secret")  # doctest: +SKIP
    >>> hub.start()  # doctest: +SKIP
    >>> api = HfApi(endpoint=hub.url, token="hf_secret")  # doctest: +SKIP
    >>> api.create_repo("hf-ipt-tester/demo", repo_type="dataset")  # doctest: +SKIP

The pytest fixture `local_hub` (defined at the end of this file) starts one server per session and, for each test,
points `huggingface_hub` and `datasets` at it (environment variables and the already-imported constants).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import pytest
import yaml

from hf_ipt.release.card import HUB_LICENSE_IDS

DEFAULT_USER = "hf-ipt-tester"
DEFAULT_ORGS = ("hf-ipt-org",)
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}

# The Hub's documented limits (https://huggingface.co/docs/hub/storage-limits).
MAX_FILES_PER_REPO = 100_000
MAX_FILES_PER_FOLDER = 10_000
# Above this size a file must go through LFS whatever its name.
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
TREE_PAGE_SIZE = 1000
TREE_PAGE_SIZE_EXPANDED = 50
COMMITS_PAGE_SIZE = 50

# Written by the server into the first commit of every new repo, as the Hub does: binary and data formats go to LFS.
INITIAL_GITATTRIBUTES = (
    "\n".join(
        f"{pattern} filter=lfs diff=lfs merge=lfs -text"
        for pattern in (
            "*.7z *.arrow *.bin *.bz2 *.ckpt *.gz *.h5 *.joblib *.lz4 *.mds *.msgpack *.npy *.npz *.onnx *.parquet "
            "*.pb *.pickle *.pkl *.pt *.pth *.safetensors *.tar *.tflite *.tgz *.wasm *.xz *.zip *.zst "
            "*.jpg *.jpeg *.png *.gif *.webp *.mp3 *.wav *.flac *.ogg *.mp4 *.webm"
        ).split()
    )
    + "\n"
)

# License identifiers accepted in the `license` metadata field (https://huggingface.co/docs/hub/repositories-licenses):
# the one list hf-ipt keeps, so the double refuses exactly what hf-ipt's cards must avoid.
HUB_LICENSES = HUB_LICENSE_IDS
HUB_SIZE_CATEGORIES = frozenset(
    [
        "n<1K",
        "1K<n<10K",
        "10K<n<100K",
        "100K<n<1M",
        "1M<n<10M",
        "10M<n<100M",
        "100M<n<1B",
        "1B<n<10B",
        "10B<n<100B",
        "100B<n<1T",
        "n>1T",
    ]
)
_LANGUAGE_RE = re.compile(r"^([a-z]{2,3}(-[A-Za-z0-9]{2,8})*|code|multilingual)$")
_COMMIT_OID_RE = re.compile(r"^[0-9a-f]{40}$")
_PR_REF_RE = re.compile(r"^refs/pr/(\d+)$")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_blob_oid(content: bytes) -> str:
    """The git object id of a blob with this content (what the Hub reports as a regular file's `oid`)."""
    return hashlib.sha1(b"blob %d\x00" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class HubError(Exception):
    """An HTTP error answered the way the Hub answers it: JSON `{"error": ...}` plus X-Error-Code/X-Error-Message."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.extra = extra or {}


@dataclass(frozen=True)
class StoredFile:
    sha256: str  # key of the body in the blob store
    size: int
    git_oid: str  # git blob id of the content (regular) or of the LFS pointer (LFS)
    lfs: bool


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, StoredFile]
    title: str
    message: str
    date: str
    author: str


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    uid: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    tag_messages: dict[str, str] = field(default_factory=dict)
    pull_requests: dict[int, str] = field(default_factory=dict)  # number -> head commit


@dataclass
class Fault:
    """One injected failure: the next matching requests of `endpoint` fail (after `skip` of them went through)."""

    endpoint: str
    status: int = 500
    skip: int = 0
    times: int = 1
    retry_after: float | None = None
    disconnect: str | None = None  # "before": drop before acting; "after": act, then drop the response
    method: str | None = None
    seen: int = 0
    fired: int = 0

    def matches(self, endpoint: str, method: str) -> bool:
        return endpoint == self.endpoint and (self.method is None or self.method == method)

    @property
    def exhausted(self) -> bool:
        return self.fired >= self.times


@dataclass(frozen=True)
class RequestRecord:
    method: str
    endpoint: str
    path: str
    status: int
    injected: bool
    authenticated: bool


class LocalHub:
    """The server and its state. Start it with `start()`, stop it with `stop()`; `url` is its endpoint."""

    def __init__(
        self,
        root: str | os.PathLike,
        token: str,
        user: str = DEFAULT_USER,
        orgs: tuple[str, ...] = DEFAULT_ORGS,
    ):
        self.root = Path(root)
        self.blob_dir = self.root / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.token = token
        # tokens that authenticate as `user` but may only read: refused (403) on every write, role "read" in whoami
        self.read_only_tokens: set[str] = set()
        self.user = user
        self.orgs = tuple(orgs)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.faults: list[Fault] = []
        self.requests: list[RequestRecord] = []
        self.lfs_uploads: list[str] = []  # sha256 of every object body received over PUT
        self._lock = threading.RLock()
        self._signing_key = secrets.token_bytes(16)
        self._commit_counter = 0
        # freezing: after `_freeze_after` more successful commits the server stops answering (until `unfreeze`)
        self._freeze_after: int | None = None
        self._thawed = threading.Event()
        self._thawed.set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------------------------------- lifecycle
    def start(self) -> LocalHub:
        hub = self

        class Handler(_HubRequestHandler):
            server_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the local hub is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ----------------------------------------------------------------------------------------- test controls
    def inject_failure(
        self,
        endpoint: str,
        status: int = 500,
        *,
        skip: int = 0,
        times: int = 1,
        retry_after: float | None = None,
        disconnect: str | None = None,
        method: str | None = None,
    ) -> Fault:
        """Make the next `times` requests to `endpoint` fail, after letting `skip` of them through.

        `endpoint` is one of the names recorded in `requests` ("commit", "preupload", "lfs_batch", "lfs_upload",
        "create_repo", "tag", "branch", "info", "tree", "resolve", ...). `disconnect="before"` closes the connection
        without acting or answering; `disconnect="after"` performs the request and then drops the answer.
        """
        if disconnect not in (None, "before", "after"):
            raise ValueError(f"disconnect must be None, 'before' or 'after', got {disconnect!r}")
        fault = Fault(endpoint, status, skip, times, retry_after, disconnect, method)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_failures(self) -> None:
        with self._lock:
            self.faults.clear()

    def freeze_after_commits(self, commits: int = 0) -> None:
        """Stop answering once `commits` more commits have succeeded: every later request (of any endpoint) is read
        and then left waiting, as a Hub that hangs does, until `unfreeze()` (its connection is then dropped).

        Example:
            >>> hub.freeze_after_commits(1)  # doctest: +SKIP  (the data commit lands, the card commit hangs)
        """
        with self._lock:
            self._freeze_after = commits
            if commits <= 0:
                self._thawed.clear()

    def unfreeze(self) -> None:
        """Answer again; requests left waiting by a freeze are dropped (their clients gave up long ago)."""
        with self._lock:
            self._freeze_after = None
            self._thawed.set()

    @property
    def frozen(self) -> bool:
        return not self._thawed.is_set()

    def _count_commit(self) -> None:
        with self._lock:
            if self._freeze_after is not None:
                self._freeze_after -= 1
                if self._freeze_after <= 0:
                    self._thawed.clear()

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()
            self.lfs_uploads.clear()

    def calls(self, endpoint: str, *, status: int | None = None) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self.requests if r.endpoint == endpoint and (status is None or r.status == status)]

    # ----------------------------------------------------------------------------------------- inspection
    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo:
        with self._lock:
            try:
                return self.repos[(repo_type, repo_id)]
            except KeyError:
                raise KeyError(f"no {repo_type} repo {repo_id!r} on the local hub") from None

    def list_files(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> dict[str, StoredFile]:
        with self._lock:
            repo = self.repo(repo_id, repo_type)
            return dict(repo.commits[self._resolve(repo, revision)].files)

    def read_file(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "dataset") -> bytes:
        return self.read_blob(self.list_files(repo_id, revision, repo_type)[path].sha256)

    def read_blob(self, sha256: str) -> bytes:
        return self._blob_path(sha256).read_bytes()

    def all_file_bodies(self, repo_id: str, repo_type: str = "dataset") -> Iterator[tuple[str, str, bytes]]:
        """(commit oid, path, body) of every file of every commit of the repo: all that was ever stored in it."""
        with self._lock:
            commits = list(self.repo(repo_id, repo_type).commits.values())
        for commit in commits:
            for path, stored in commit.files.items():
                yield commit.oid, path, self.read_blob(stored.sha256)

    # ----------------------------------------------------------------------------------------- storage
    def _blob_path(self, sha256: str) -> Path:
        return self.blob_dir / sha256[:2] / sha256

    def _has_blob(self, sha256: str, size: int | None = None) -> bool:
        path = self._blob_path(sha256)
        return path.exists() and (size is None or path.stat().st_size == size)

    def _store_blob(self, content: bytes) -> str:
        sha256 = hashlib.sha256(content).hexdigest()
        path = self._blob_path(sha256)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{sha256}.{secrets.token_hex(4)}.tmp")
            tmp.write_bytes(content)
            os.replace(tmp, path)
        return sha256

    def _regular_file(self, content: bytes) -> StoredFile:
        return StoredFile(self._store_blob(content), len(content), git_blob_oid(content), lfs=False)

    def _lfs_file(self, sha256: str, size: int) -> StoredFile:
        return StoredFile(sha256, size, git_blob_oid(lfs_pointer(sha256, size)), lfs=True)

    def _new_commit(self, repo: Repo, parent: str | None, files: dict[str, StoredFile], title: str, message: str):
        self._commit_counter += 1
        date = _now()
        digest = hashlib.sha1()
        digest.update(json.dumps([parent, title, message, date, self._commit_counter]).encode())
        for path in sorted(files):
            digest.update(f"{path}\x00{files[path].git_oid}\n".encode())
        commit = Commit(digest.hexdigest(), parent, files, title, message, date, self.user)
        repo.commits[commit.oid] = commit
        return commit

    # ----------------------------------------------------------------------------------------- revisions
    def _resolve(self, repo: Repo, revision: str) -> str:
        """Commit oid of a branch, tag, `refs/heads/x`, `refs/tags/x`, `refs/pr/N` or (a prefix of) a commit id."""
        revision = unquote(revision)
        if revision.startswith("refs/heads/") and revision[len("refs/heads/") :] in repo.branches:
            return repo.branches[revision[len("refs/heads/") :]]
        if revision.startswith("refs/tags/") and revision[len("refs/tags/") :] in repo.tags:
            return repo.tags[revision[len("refs/tags/") :]]
        if revision in repo.branches:
            return repo.branches[revision]
        if revision in repo.tags:
            return repo.tags[revision]
        pr = _PR_REF_RE.match(revision)
        if pr and int(pr.group(1)) in repo.pull_requests:
            return repo.pull_requests[int(pr.group(1))]
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            found = [oid for oid in repo.commits if oid.startswith(revision)]
            if len(found) == 1:
                return found[0]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _history(self, repo: Repo, oid: str) -> list[Commit]:
        history = []
        current: str | None = oid
        while current is not None:
            commit = repo.commits[current]
            history.append(commit)
            current = commit.parent
        return history


def _folder_oid(files: dict[str, StoredFile], folder: str) -> str:
    prefix = folder.rstrip("/") + "/" if folder else ""
    digest = hashlib.sha1()
    for path in sorted(p for p in files if p.startswith(prefix)):
        digest.update(f"{path}\x00{files[path].git_oid}\n".encode())
    return digest.hexdigest()


def _parse_front_matter(content: str) -> tuple[Any, str | None]:
    """(metadata, error) of a README's YAML block; metadata is None when there is no block."""
    if not content.startswith("---"):
        return None, None
    lines = content.splitlines()
    if not lines or lines[0].strip() != "---":
        return None, None
    for index in range(1, len(lines)):
        if lines[index].strip() == "---":
            block = "\n".join(lines[1:index])
            try:
                return yaml.safe_load(block) or {}, None
            except yaml.YAMLError as err:
                return None, f"Invalid YAML in the metadata block: {err}"
    return None, "The metadata block opened with '---' is never closed"


def _str_or_str_list(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return None


def validate_card_metadata(content: str, repo_type: str = "dataset") -> tuple[list[str], list[str]]:
    """(errors, warnings) for a README.md, following the Hub's metadata rules for the fields hf-ipt writes."""
    metadata, error = _parse_front_matter(content)
    if error:
        return [error], []
    if metadata is None or metadata == {}:
        return [], ["Empty metadata: the README.md has no YAML metadata block"]
    if not isinstance(metadata, dict):
        return [f'"metadata" must be a mapping, got {type(metadata).__name__}'], []
    errors: list[str] = []
    warnings: list[str] = []
    if "license" in metadata:
        licenses = _str_or_str_list(metadata["license"])
        if licenses is None:
            errors.append('"license" must be a string or a list of strings')
        else:
            errors += [
                f'"license" {lic!r} is not a license identifier known to the Hub'
                for lic in licenses
                if lic not in HUB_LICENSES
            ]
    if "language" in metadata:
        languages = _str_or_str_list(metadata["language"])
        if languages is None:
            errors.append('"language" must be a string or a list of strings')
        else:
            errors += [
                f'"language" {lang!r} is not an ISO 639 code' for lang in languages if not _LANGUAGE_RE.match(lang)
            ]
    if repo_type == "dataset" and "size_categories" in metadata:
        sizes = _str_or_str_list(metadata["size_categories"])
        if sizes is None:
            errors.append('"size_categories" must be a string or a list of strings')
        else:
            errors += [
                f'"size_categories" {size!r} is not one of the Hub size categories'
                for size in sizes
                if size not in HUB_SIZE_CATEGORIES
            ]
    for key in ("task_categories", "tags", "source_datasets", "task_ids"):
        if key in metadata and _str_or_str_list(metadata[key]) is None:
            errors.append(f'"{key}" must be a string or a list of strings')
    if "pretty_name" in metadata and not isinstance(metadata["pretty_name"], str):
        errors.append('"pretty_name" must be a string')
    if "configs" in metadata:
        errors += _validate_configs(metadata["configs"])
    return errors, warnings


def _validate_configs(configs: Any) -> list[str]:
    if not isinstance(configs, list):
        return ['"configs" must be a list']
    errors = []
    names = []
    defaults = 0
    for index, entry in enumerate(configs):
        if not isinstance(entry, dict) or not isinstance(entry.get("config_name"), str):
            errors.append(f'"configs[{index}]" must be a mapping with a string "config_name"')
            continue
        names.append(entry["config_name"])
        defaults += bool(entry.get("default"))
        data_files = entry.get("data_files")
        if data_files is None:
            continue
        if isinstance(data_files, str) or (
            isinstance(data_files, list) and all(isinstance(item, str) for item in data_files)
        ):
            continue
        if not isinstance(data_files, list) or not all(
            isinstance(item, dict) and isinstance(item.get("split"), str) and _str_or_str_list(item.get("path"))
            for item in data_files
        ):
            errors.append(
                f'"configs[{index}].data_files" must be a path, a list of paths or a list of {{split, path}} mappings'
            )
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        errors.append(f'"configs" has duplicate config names: {duplicates}')
    if defaults > 1:
        errors.append('"configs" marks more than one config as default')
    return errors


class _HubRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_hub: LocalHub  # set on the subclass built by LocalHub.start

    # The standard handler logs every request to stderr; tests read `LocalHub.requests` instead.
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # ----------------------------------------------------------------------------------------- plumbing
    def _read_body(self) -> bytes:
        # Reading the whole body before answering keeps keep-alive connections in sync, even when we answer an error.
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json", headers=None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json; charset=utf-8", headers)

    def _dispatch(self, method: str) -> None:
        hub = self.server_hub
        body = self._read_body()
        split = urlsplit(self.path)
        self.query = parse_qs(split.query, keep_blank_values=True)
        self.body = body
        endpoint, handler, args = self._route(method, split.path)
        authenticated = bool(self.headers.get("Authorization"))
        if hub.frozen:
            # a Hub that stopped answering: hold the request (bounded, so a forgotten freeze cannot hang the suite)
            with hub._lock:  # recorded when it starts hanging (status -2), so a test sees it while frozen
                hub.requests.append(RequestRecord(method, endpoint, split.path, -2, True, authenticated))
            hub._thawed.wait(timeout=600)
            self.close_connection = True
            return
        fault = self._take_fault(endpoint, method)
        status = 0
        try:
            if fault is not None and fault.disconnect == "before":
                self.close_connection = True
                status = -1
                return
            if fault is not None and fault.disconnect is None:
                raise HubError(
                    fault.status,
                    f"Injected failure {fault.fired}/{fault.times} on {endpoint}",
                    headers={"Retry-After": str(int(fault.retry_after))} if fault.retry_after is not None else {},
                )
            if handler is None:
                raise HubError(404, f"Sorry, we can't find the page you are looking for: {method} {split.path}")
            status, payload, headers, raw = handler(*args)
            if fault is not None and fault.disconnect == "after":
                self.close_connection = True
                status = -1
                return
            if raw is not None:
                content_type = headers.pop("Content-Type", "application/octet-stream")
                self._send(status, raw, content_type, headers)
            else:
                self._send_json(status, payload, headers)
        except HubError as err:
            status = err.status
            headers = {"X-Error-Message": err.message[:500].replace("\n", " "), **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            if self.headers.get("Accept") == "text/plain":
                self._send(status, err.message.encode(), "text/plain; charset=utf-8", headers)
            else:
                self._send_json(status, {"error": err.message, **err.extra}, headers)
        finally:
            with hub._lock:
                hub.requests.append(
                    RequestRecord(method, endpoint, split.path, status, fault is not None, authenticated)
                )

    def _take_fault(self, endpoint: str, method: str) -> Fault | None:
        """The fault that fires for this request, if any; every matching fault counts the request for its `skip`."""
        hub = self.server_hub
        chosen = None
        with hub._lock:
            for fault in hub.faults:
                if fault.exhausted or not fault.matches(endpoint, method):
                    continue
                fault.seen += 1
                if chosen is None and fault.seen > fault.skip:
                    fault.fired += 1
                    chosen = fault
        return chosen

    def _route(self, method: str, path: str):
        """(endpoint name, handler, args) for a request path; segments are split before being URL-decoded."""
        raw = path.split("/")[1:]
        parts = [unquote(p) for p in raw]
        if parts[:2] == ["api", "whoami-v2"] and method == "GET":
            return "whoami", self._whoami, ()
        if parts[:2] == ["api", "repos"] and len(parts) == 3:
            if parts[2] == "create" and method == "POST":
                return "create_repo", self._create_repo, ()
            if parts[2] == "delete" and method == "DELETE":
                return "delete_repo", self._delete_repo, ()
        if parts[:2] == ["api", "validate-yaml"] and method == "POST":
            return "validate_yaml", self._validate_yaml, ()
        if parts[:2] == ["__lfs", "upload"] and len(parts) == 3 and method == "PUT":
            return "lfs_upload", self._lfs_upload, (parts[2],)
        if parts[:2] == ["__lfs", "verify"] and method == "POST":
            return "lfs_verify", self._lfs_verify, ()
        if len(parts) >= 4 and parts[0] == "api" and parts[1] in REPO_TYPES:
            repo_type = REPO_TYPES[parts[1]]
            repo_id = f"{parts[2]}/{parts[3]}"
            rest = parts[4:]
            joined = "/".join(rest[1:])
            action = rest[0] if rest else ""
            routes = {
                ("", "GET"): ("info", self._info, (repo_type, repo_id, None)),
                ("revision", "GET"): ("info", self._info, (repo_type, repo_id, joined)),
                ("refs", "GET"): ("refs", self._refs, (repo_type, repo_id)),
                ("branch", "POST"): ("branch", self._create_branch, (repo_type, repo_id, joined)),
                ("branch", "DELETE"): ("branch", self._delete_branch, (repo_type, repo_id, joined)),
                ("tag", "POST"): ("tag", self._create_tag, (repo_type, repo_id, joined)),
                ("tag", "DELETE"): ("tag", self._delete_tag, (repo_type, repo_id, joined)),
                ("preupload", "POST"): ("preupload", self._preupload, (repo_type, repo_id, joined)),
                ("commit", "POST"): ("commit", self._commit, (repo_type, repo_id, joined)),
                ("paths-info", "POST"): ("paths_info", self._paths_info, (repo_type, repo_id, joined)),
                ("commits", "GET"): ("commits", self._commits, (repo_type, repo_id, joined)),
                ("settings", "PUT"): ("settings", self._settings, (repo_type, repo_id)),
            }
            if action == "tree" and method == "GET" and len(rest) >= 2:
                # the revision is one (encoded) segment; the folder may come encoded or as plain segments
                return "tree", self._tree, (repo_type, repo_id, rest[1], "/".join(rest[2:]))
            if (action, method) in routes:
                return routes[(action, method)]
            return "unknown", None, ()
        # /{prefix}{namespace}/{name}.git/info/lfs/objects/batch and /{prefix}{namespace}/{name}/resolve/{rev}/{path}
        repo_type = "model"
        if parts and parts[0] in ("datasets", "spaces"):
            repo_type = REPO_TYPES[parts[0]]
            parts = parts[1:]
        if len(parts) == 6 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
            return "lfs_batch", self._lfs_batch, (repo_type, f"{parts[0]}/{parts[1][:-4]}")
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            return "resolve", self._resolve_file, (repo_type, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        return "unknown", None, ()

    def _json_body(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError as err:
            raise HubError(400, f"Request body is not valid JSON: {err}") from None

    # ----------------------------------------------------------------------------------------- auth
    def _auth_user(self) -> str | None:
        return self._auth()[0]

    def _auth(self) -> tuple[str | None, str]:
        """(user, token role: "write" or "read"); (None, "") without credentials."""
        header = self.headers.get("Authorization")
        if not header:
            return None, ""
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and hmac.compare_digest(value, self.server_hub.token):
            return self.server_hub.user, "write"
        if scheme.lower() == "bearer" and value in self.server_hub.read_only_tokens:
            return self.server_hub.user, "read"
        raise HubError(401, "Invalid credentials in Authorization header")

    def _require_write(self, namespace: str) -> str:
        user, role = self._auth()
        if user is None:
            raise HubError(401, "You must be authenticated to do this: pass a token with write access")
        if role != "write":
            raise HubError(403, "This token has read access only; use a token with write access")
        if namespace not in (user, *self.server_hub.orgs):
            raise HubError(403, f"You don't have the rights to write in the namespace {namespace!r}")
        return user

    def _get_repo(self, repo_type: str, repo_id: str, write: bool = False) -> Repo:
        hub = self.server_hub
        user = self._require_write(repo_id.split("/")[0]) if write else self._auth_user()
        repo = hub.repos.get((repo_type, repo_id))
        can_see = repo is not None and (not repo.private or user is not None)
        if not can_see:
            # The Hub does not reveal whether a private repo exists: 401 without credentials, 404 with them.
            raise HubError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        return repo

    # ----------------------------------------------------------------------------------------- endpoints
    def _whoami(self):
        user, role = self._auth()
        if user is None:
            raise HubError(401, "Invalid username or password.")
        orgs = [{"type": "org", "name": org, "roleInOrg": "write"} for org in self.server_hub.orgs]
        auth = {"type": "access_token", "accessToken": {"displayName": "local-hub", "role": role}}
        return (
            200,
            {"type": "user", "id": "local", "name": user, "fullname": user, "orgs": orgs, "auth": auth},
            {},
            None,
        )

    def _create_repo(self):
        hub = self.server_hub
        payload = self._json_body()
        name = payload.get("name")
        namespace = payload.get("organization") or hub.user
        repo_type = payload.get("type") or "model"
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}", name) or "--" in name:
            raise HubError(400, f"Invalid repo name {name!r}")
        if repo_type not in URL_PREFIXES:
            raise HubError(400, f"Invalid repo type {repo_type!r}")
        self._require_write(namespace)
        repo_id = f"{namespace}/{name}"
        url = f"{hub.url}/{URL_PREFIXES[repo_type]}{repo_id}"
        visibility = payload.get("visibility")
        if visibility not in (None, "public", "private"):
            raise HubError(400, f"Invalid visibility {visibility!r} for a {repo_type} repo")
        with hub._lock:
            if (repo_type, repo_id) in hub.repos:
                # the client's exist_ok path reads the url from the 409 answer
                raise HubError(409, f"You already created this {repo_type} repo: {repo_id}", extra={"url": url})
            repo = Repo(repo_type, repo_id, visibility == "private", _now(), secrets.token_hex(12))
            gitattributes = hub._regular_file(INITIAL_GITATTRIBUTES.encode())
            first = hub._new_commit(repo, None, {".gitattributes": gitattributes}, "initial commit", "")
            repo.branches["main"] = first.oid
            hub.repos[(repo_type, repo_id)] = repo
        return 200, {"url": url, "name": repo_id, "id": repo.uid}, {}, None

    def _delete_repo(self):
        hub = self.server_hub
        payload = self._json_body()
        namespace = payload.get("organization") or hub.user
        repo_type = payload.get("type") or "model"
        repo_id = f"{namespace}/{payload.get('name')}"
        with hub._lock:
            self._get_repo(repo_type, repo_id, write=True)
            del hub.repos[(repo_type, repo_id)]
        return 200, {}, {}, None

    def _settings(self, repo_type: str, repo_id: str):
        hub = self.server_hub
        payload = self._json_body()
        with hub._lock:
            repo = self._get_repo(repo_type, repo_id, write=True)
            if "private" in payload:
                repo.private = bool(payload["private"])
            if "visibility" in payload:
                if payload["visibility"] not in ("public", "private"):
                    raise HubError(400, f"Invalid visibility {payload['visibility']!r}")
                repo.private = payload["visibility"] == "private"
        return 200, {}, {}, None

    def _info(self, repo_type: str, repo_id: str, revision: str | None):
        hub = self.server_hub
        with hub._lock:
            repo = self._get_repo(repo_type, repo_id)
            commit = repo.commits[hub._resolve(repo, revision or "main")]
            files = dict(commit.files)
        blobs = self.query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = []
        for path in sorted(files):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                stored = files[path]
                sibling.update(size=stored.size, blobId=stored.git_oid)
                if stored.lfs:
                    pointer = lfs_pointer(stored.sha256, stored.size)
                    sibling["lfs"] = {"sha256": stored.sha256, "size": stored.size, "pointerSize": len(pointer)}
            siblings.append(sibling)
        card_data = None
        if "README.md" in files:
            card_data, _ = _parse_front_matter(hub.read_blob(files["README.md"].sha256).decode("utf-8", "replace"))
        info = {
            "_id": repo.uid,
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }
        if isinstance(card_data, dict):
            info["cardData"] = card_data
        expand = self.query.get("expand") or self.query.get("expand[]")
        if expand:
            info = {key: value for key, value in info.items() if key in {"_id", "id", *expand}}
        return 200, info, {}, None

    def _refs(self, repo_type: str, repo_id: str):
        hub = self.server_hub
        with hub._lock:
            repo = self._get_repo(repo_type, repo_id)
            payload: dict[str, Any] = {
                "branches": [
                    {"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid}
                    for name, oid in sorted(repo.branches.items())
                ],
                "tags": [
                    {"name": name, "ref": f"refs/tags/{name}", "targetCommit": oid}
                    for name, oid in sorted(repo.tags.items())
                ],
                "converts": [],
            }
            if self.query.get("include_prs", ["0"])[0] in ("1", "true", "True"):
                payload["pullRequests"] = [
                    {"name": f"refs/pr/{num}", "ref": f"refs/pr/{num}", "targetCommit": oid}
                    for num, oid in sorted(repo.pull_requests.items())
                ]
        return 200, payload, {}, None

    @staticmethod
    def _check_ref_name(name: str, kind: str) -> None:
        if (
            not name
            or name.startswith(("refs/", "/", "-"))
            or name.endswith(("/", ".lock", "."))
            or ".." in name
            or re.search(r"[\s~^:?*\[\\]", name)
            or _COMMIT_OID_RE.match(name)
        ):
            raise HubError(400, f"Invalid {kind} name {name!r}")

    def _create_branch(self, repo_type: str, repo_id: str, branch: str):
        hub = self.server_hub
        payload = self._json_body()
        self._check_ref_name(branch, "branch")
        with hub._lock:
            repo = self._get_repo(repo_type, repo_id, write=True)
            if branch in repo.branches and not payload.get("overwrite"):
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            if payload.get("emptyBranch"):
                repo.branches[branch] = hub._new_commit(repo, None, {}, f"Create empty branch {branch}", "").oid
            else:
                repo.branches[branch] = hub._resolve(repo, payload.get("startingPoint") or "main")
        return 200, {}, {}, None

    def _delete_branch(self, repo_type: str, repo_id: str, branch: str):
        hub = self.server_hub
        with hub._lock:
            repo = self._get_repo(repo_type, repo_id, write=True)
            if branch == "main":
                raise HubError(403, "The main branch cannot be deleted")
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            del repo.branches[branch]
        return 200, {}, {}, None

    def _create_tag(self, repo_type: str, repo_id: str, revision: str):
        hub = self.server_hub
        payload = self._json_body()
        tag = payload.get("tag")
        if not isinstance(tag, str):
            raise HubError(400, 'The request body must contain a string "tag"')
        self._check_ref_name(tag, "tag")
        with hub._lock:
            repo = self._get_repo(repo_type, repo_id, write=True)
            target = hub._resolve(repo, revision)
            if tag in repo.tags:
                raise HubError(409, f"Tag already exists: refs/tags/{tag}")
            repo.tags[tag] = target
            repo.tag_messages[tag] = payload.get("message") or ""
        return 200, {}, {}, None

    def _delete_tag(self, repo_type: str, repo_id: str, tag: str):
        hub = self.server_hub
        with hub._lock:
            repo = self._get_repo(repo_type, repo_id, write=True)
            if tag not in repo.tags:
                raise HubError(404, f"Invalid rev id: {tag}", "RevisionNotFound")
            del repo.tags[tag]
            repo.tag_messages.pop(tag, None)
        return 200, {}, {}, None

    def _writable_head(self, repo: Repo, revision: str) -> tuple[str, str]:
        """(branch or PR ref, head commit) a commit on `revision` goes to; tags and commit ids are not writable."""
        revision = unquote(revision)
        if revision.startswith("refs/heads/"):
            revision = revision[len("refs/heads/") :]
        if revision in repo.branches:
            return revision, repo.branches[revision]
        pr = _PR_REF_RE.match(revision)
        if pr and int(pr.group(1)) in repo.pull_requests:
            return revision, repo.pull_requests[int(pr.group(1))]
        if revision in repo.tags or re.fullmatch(r"[0-9a-f]{40}", revision):
            raise HubError(400, f"Invalid rev id: {revision} is not a branch; commits can only be made on branches")
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _is_lfs_path(self, files: dict[str, StoredFile], path: str, size: int, sample: bytes) -> bool:
        if size >= LFS_SIZE_THRESHOLD or b"\x00" in sample:
            return True
        attributes = INITIAL_GITATTRIBUTES
        if ".gitattributes" in files:
            attributes = self.server_hub.read_blob(files[".gitattributes"].sha256).decode("utf-8", "replace")
        name = path.rsplit("/", 1)[-1]
        for line in attributes.splitlines():
            pieces = line.split()
            if len(pieces) >= 2 and "filter=lfs" in pieces[1:]:
                if fnmatch.fnmatch(name, pieces[0]) or fnmatch.fnmatch(path, pieces[0]):
                    return True
        return False

    @staticmethod
    def _is_ignored(gitignore: str | None, path: str) -> bool:
        if not gitignore:
            return False
        name = path.rsplit("/", 1)[-1]
        patterns = [line.strip() for line in gitignore.splitlines() if line.strip() and not line.startswith("#")]
        return any(fnmatch.fnmatch(path, p.lstrip("/")) or fnmatch.fnmatch(name, p) for p in patterns)

    def _preupload(self, repo_type: str, repo_id: str, revision: str):
        hub = self.server_hub
        payload = self._json_body()
        with hub._lock:
            repo = self._get_repo(repo_type, repo_id, write=True)
            if self.query.get("create_pr", ["0"])[0] == "1":
                head = hub._resolve(repo, revision)
            else:
                _, head = self._writable_head(repo, revision)
            files = dict(repo.commits[head].files)
        gitignore = payload.get("gitIgnore")
        if gitignore is None and ".gitignore" in files:
            gitignore = hub.read_blob(files[".gitignore"].sha256).decode("utf-8", "replace")
        answers = []
        for item in payload.get("files", []):
            path = item.get("path")
            if not isinstance(path, str):
                raise HubError(400, 'Each entry of "files" needs a string "path"')
            sample = base64.b64decode(item.get("sample") or "")
            lfs = self._is_lfs_path(files, path, int(item.get("size") or 0), sample)
            existing = files.get(path)
            oid = None
            if existing is not None:
                oid = existing.sha256 if existing.lfs else existing.git_oid
            answers.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": self._is_ignored(gitignore, path),
                    "oid": oid,
                }
            )
        return 200, {"files": answers, "commitOid": head}, {}, None

    def _lfs_signature(self, oid: str, size: int) -> str:
        return hmac.new(self.server_hub._signing_key, f"{oid}:{size}".encode(), hashlib.sha256).hexdigest()[:32]

    def _lfs_batch(self, repo_type: str, repo_id: str):
        hub = self.server_hub
        payload = self._json_body()
        with hub._lock:
            self._get_repo(repo_type, repo_id, write=True)
        if payload.get("operation") != "upload":
            raise HubError(422, f"Only the 'upload' LFS operation is supported, got {payload.get('operation')!r}")
        if "basic" not in (payload.get("transfers") or ["basic"]):
            raise HubError(422, "This server only offers the 'basic' LFS transfer")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj.get("oid"), obj.get("size")
            if not isinstance(oid, str) or not re.fullmatch(r"[0-9a-f]{64}", oid) or not isinstance(size, int):
                objects.append({"oid": str(oid), "size": size or 0, "error": {"code": 422, "message": "Invalid oid"}})
                continue
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not hub._has_blob(oid, size):
                query = urlencode({"size": size, "sig": self._lfs_signature(oid, size)})
                entry["actions"] = {
                    "upload": {"href": f"{hub.url}/__lfs/upload/{oid}?{query}", "header": {}},
                    "verify": {"href": f"{hub.url}/__lfs/verify", "header": {}},
                }
            objects.append(entry)
        body = json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode()
        return 200, None, {"Content-Type": "application/vnd.git-lfs+json"}, body

    def _lfs_upload(self, oid: str):
        hub = self.server_hub
        size = int(self.query.get("size", ["-1"])[0])
        signature = self.query.get("sig", [""])[0]
        if not hmac.compare_digest(signature, self._lfs_signature(oid, size)):
            raise HubError(403, "The upload URL signature does not match")
        if len(self.body) != size:
            raise HubError(400, f"Expected {size} bytes for object {oid}, received {len(self.body)}")
        if hashlib.sha256(self.body).hexdigest() != oid:
            raise HubError(400, f"The uploaded content does not hash to {oid}")
        hub._store_blob(self.body)
        with hub._lock:
            hub.lfs_uploads.append(oid)
        return 200, None, {"Content-Type": "text/plain"}, b""

    def _lfs_verify(self):
        payload = self._json_body()
        if not self.server_hub._has_blob(str(payload.get("oid")), payload.get("size")):
            raise HubError(404, f"Object {payload.get('oid')} was not uploaded")
        return 200, {}, {}, None

    @staticmethod
    def _check_path(path: Any) -> str:
        if not isinstance(path, str) or not path or path.startswith("/") or path.endswith("/"):
            raise HubError(400, f"Invalid path in commit: {path!r}")
        if any(piece in ("", ".", "..") for piece in path.split("/")) or path.split("/")[0] == ".git":
            raise HubError(400, f"Invalid path in commit: {path!r}")
        return path

    def _commit(self, repo_type: str, repo_id: str, revision: str):
        hub = self.server_hub
        lines = [json.loads(line) for line in self.body.decode("utf-8").splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first line of a commit must be its header")
        header = lines[0].get("value") or {}
        summary = header.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            raise HubError(400, "A commit needs a non-empty summary")
        create_pr = self.query.get("create_pr", ["0"])[0] == "1"
        with hub._lock:
            repo = self._get_repo(repo_type, repo_id, write=True)
            if create_pr:
                ref, head = None, hub._resolve(repo, revision)
            else:
                ref, head = self._writable_head(repo, revision)
            parent_commit = header.get("parentCommit")
            if parent_commit is not None and parent_commit != head:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(repo.commits[head].files)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value") or {}
                if key == "file":
                    path = self._check_path(value.get("path"))
                    if value.get("encoding", "base64") != "base64":
                        raise HubError(400, f"Unsupported encoding for {path}: {value.get('encoding')!r}")
                    files[path] = hub._regular_file(base64.b64decode(value.get("content") or ""))
                elif key == "lfsFile":
                    path = self._check_path(value.get("path"))
                    oid = value.get("oid")
                    if value.get("algo", "sha256") != "sha256" or not isinstance(oid, str):
                        raise HubError(400, f"Invalid LFS pointer for {path}")
                    if not hub._has_blob(oid):
                        raise HubError(
                            422, f"Your push was rejected because the LFS object {oid} of {path} was never uploaded"
                        )
                    size = hub._blob_path(oid).stat().st_size
                    if value.get("size") is not None and value["size"] != size:
                        raise HubError(422, f"Size mismatch for the LFS object of {path}")
                    files[path] = hub._lfs_file(oid, size)
                elif key == "deletedFile":
                    path = self._check_path(value.get("path"))
                    if path not in files:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del files[path]
                elif key == "deletedFolder":
                    folder = str(value.get("path") or "").strip("/")
                    doomed = [p for p in files if p.startswith(folder + "/")]
                    if not doomed:
                        raise HubError(404, f"A folder with this name doesn't exist: {folder}", "EntryNotFound")
                    for path in doomed:
                        del files[path]
                else:
                    raise HubError(400, f"Unknown commit operation {key!r}")
            self._check_limits(files)
            if "README.md" in files and files["README.md"] != repo.commits[head].files.get("README.md"):
                readme = hub.read_blob(files["README.md"].sha256).decode("utf-8", "replace")
                errors, _ = validate_card_metadata(readme, repo_type)
                if errors:
                    raise HubError(400, "Invalid metadata in README.md: " + "; ".join(errors))
            commit = hub._new_commit(repo, head, files, summary, header.get("description") or "")
            pr_url = None
            if create_pr:
                number = max(repo.pull_requests, default=0) + 1
                repo.pull_requests[number] = commit.oid
                pr_url = f"{hub.url}/{URL_PREFIXES[repo_type]}{repo_id}/discussions/{number}"
            else:
                repo.branches[ref] = commit.oid
        hub._count_commit()
        payload = {
            "success": True,
            "commitOid": commit.oid,
            "commitUrl": f"{hub.url}/{URL_PREFIXES[repo_type]}{repo_id}/commit/{commit.oid}",
            "hookOutput": "",
            "pullRequestUrl": pr_url,
        }
        return 200, payload, {}, None

    @staticmethod
    def _check_limits(files: dict[str, StoredFile]) -> None:
        if len(files) >= MAX_FILES_PER_REPO:
            raise HubError(
                400, f"A repository must hold fewer than {MAX_FILES_PER_REPO} files, this commit makes {len(files)}"
            )
        per_folder: dict[str, int] = {}
        for path in files:
            folder = path.rsplit("/", 1)[0] if "/" in path else ""
            per_folder[folder] = per_folder.get(folder, 0) + 1
        crowded = {folder: count for folder, count in per_folder.items() if count >= MAX_FILES_PER_FOLDER}
        if crowded:
            raise HubError(400, f"A folder must hold fewer than {MAX_FILES_PER_FOLDER} files: {crowded}")

    def _entries(self, repo: Repo, commit: Commit, paths: list[str], expand: bool) -> list[dict[str, Any]]:
        hub = self.server_hub
        files = commit.files
        entries = []
        for path in paths:
            if path in files:
                stored = files[path]
                entry: dict[str, Any] = {"type": "file", "oid": stored.git_oid, "size": stored.size, "path": path}
                if stored.lfs:
                    pointer = lfs_pointer(stored.sha256, stored.size)
                    entry["lfs"] = {"oid": stored.sha256, "size": stored.size, "pointerSize": len(pointer)}
            else:
                entry = {"type": "directory", "oid": _folder_oid(files, path), "size": 0, "path": path}
            if expand:
                last = self._last_commit(hub, repo, commit, path)
                entry["lastCommit"] = {"id": last.oid, "title": last.title, "date": last.date}
                if entry["type"] == "file":
                    entry["securityFileStatus"] = {
                        "status": "safe",
                        "avScan": {"virusFound": False, "virusNames": None},
                        "pickleImportScan": None,
                    }
            entries.append(entry)
        return entries

    @staticmethod
    def _last_commit(hub: LocalHub, repo: Repo, commit: Commit, path: str) -> Commit:
        def snapshot(c: Commit) -> dict[str, str]:
            return {p: s.git_oid for p, s in c.files.items() if p == path or p.startswith(path + "/")}

        history = hub._history(repo, commit.oid)
        for current, previous in zip(history, history[1:], strict=False):
            if snapshot(current) != snapshot(previous):
                return current
        return history[-1]

    def _children(self, files: dict[str, StoredFile], folder: str, recursive: bool) -> list[str]:
        prefix = folder + "/" if folder else ""
        found: set[str] = set()
        for path in files:
            if not path.startswith(prefix):
                continue
            pieces = path[len(prefix) :].split("/")
            depth = len(pieces) if recursive else 1
            for level in range(1, min(depth, len(pieces)) + 1):
                found.add(prefix + "/".join(pieces[:level]))
        # folders first, then files, each sorted by path
        return sorted(found, key=lambda p: (p in files, p))

    def _tree(self, repo_type: str, repo_id: str, revision: str, folder: str):
        hub = self.server_hub
        folder = folder.strip("/")
        with hub._lock:
            repo = self._get_repo(repo_type, repo_id)
            commit = repo.commits[hub._resolve(repo, revision)]
        if folder and (folder in commit.files or not any(p.startswith(folder + "/") for p in commit.files)):
            raise HubError(404, f"Entry not found: {folder} is not a folder at this revision", "EntryNotFound")
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        expand = self.query.get("expand", ["false"])[0].lower() in ("1", "true")
        paths = self._children(commit.files, folder, recursive)
        page_size = TREE_PAGE_SIZE_EXPANDED if expand else TREE_PAGE_SIZE
        start = int(self.query.get("cursor", ["0"])[0] or 0)
        page = paths[start : start + page_size]
        headers = {}
        if start + page_size < len(paths):
            query = urlencode({"recursive": str(recursive), "expand": str(expand), "cursor": start + page_size})
            encoded = "/" + quote(folder, safe="") if folder else ""
            next_url = (
                f"{hub.url}/api/{repo_type}s/{repo_id}/tree/{quote(unquote(revision), safe='')}{encoded}?{query}"
            )
            headers["Link"] = f'<{next_url}>; rel="next"'
        return 200, self._entries(repo, commit, page, expand), headers, None

    def _paths_info(self, repo_type: str, repo_id: str, revision: str):
        hub = self.server_hub
        if "json" in self.headers.get("Content-Type", ""):
            payload = self._json_body()
            paths = payload.get("paths") or []
            expand = bool(payload.get("expand"))
        else:
            form = parse_qs(self.body.decode("utf-8"), keep_blank_values=True)
            paths = form.get("paths", [])
            expand = form.get("expand", ["false"])[0].lower() in ("1", "true")
        with hub._lock:
            repo = self._get_repo(repo_type, repo_id)
            commit = repo.commits[hub._resolve(repo, revision)]
        existing = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files or any(p.startswith(path + "/") for p in commit.files):
                existing.append(path)
        return 200, self._entries(repo, commit, existing, expand), {}, None

    def _commits(self, repo_type: str, repo_id: str, revision: str):
        hub = self.server_hub
        with hub._lock:
            repo = self._get_repo(repo_type, repo_id)
            history = hub._history(repo, hub._resolve(repo, revision))
        start = int(self.query.get("p", ["0"])[0] or 0)
        page = history[start * COMMITS_PAGE_SIZE : (start + 1) * COMMITS_PAGE_SIZE]
        headers = {}
        if (start + 1) * COMMITS_PAGE_SIZE < len(history):
            next_url = f"{hub.url}/api/{repo_type}s/{repo_id}/commits/{quote(revision, safe='')}?p={start + 1}"
            headers["Link"] = f'<{next_url}>; rel="next"'
        items = [
            {
                "id": c.oid,
                "title": c.title,
                "message": c.message,
                "date": c.date,
                "authors": [{"user": c.author, "avatar": ""}],
            }
            for c in page
        ]
        return 200, items, headers, None

    def _resolve_file(self, repo_type: str, repo_id: str, revision: str, path: str):
        hub = self.server_hub
        with hub._lock:
            repo = self._get_repo(repo_type, repo_id)
            oid = hub._resolve(repo, revision)
            stored = repo.commits[oid].files.get(path)
        if stored is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", headers={"X-Repo-Commit": oid})
        headers = {"X-Repo-Commit": oid, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if stored.lfs:
            headers["ETag"] = f'"{stored.sha256}"'
            headers["X-Linked-Etag"] = f'"{stored.sha256}"'
            headers["X-Linked-Size"] = str(stored.size)
        else:
            headers["ETag"] = f'"{stored.git_oid}"'
        content = hub.read_blob(stored.sha256)
        range_header = self.headers.get("Range")
        if not range_header:
            return 200, None, headers, content
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
        if not match or (match.group(1) == "" and match.group(2) == ""):
            raise HubError(
                416, f"Unsupported range {range_header!r}", headers={"Content-Range": f"bytes */{len(content)}"}
            )
        if match.group(1) == "":
            start = max(0, len(content) - int(match.group(2)))
            end = len(content) - 1
        else:
            start = int(match.group(1))
            end = min(int(match.group(2)), len(content) - 1) if match.group(2) else len(content) - 1
        if start >= len(content) or start > end:
            if len(content) == 0 and start == 0:
                return 200, None, headers, content
            raise HubError(
                416,
                f"Range {range_header!r} is outside the file",
                headers={"Content-Range": f"bytes */{len(content)}"},
            )
        headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
        return 206, None, headers, content[start : end + 1]

    def _validate_yaml(self):
        payload = self._json_body()
        content = payload.get("content")
        if not isinstance(content, str):
            raise HubError(400, 'The request body must contain a string "content"')
        errors, warnings = validate_card_metadata(content, payload.get("repoType") or "model")
        body = {"errors": [{"message": e} for e in errors], "warnings": [{"message": w} for w in warnings]}
        if self.headers.get("Accept") == "text/plain":
            text = "\n".join(errors) if errors else "OK"
            return (400 if errors else 200), None, {"Content-Type": "text/plain; charset=utf-8"}, text.encode()
        return (400 if errors else 200), body, {}, None


# ----------------------------------------------------------------------------------------------------- fixtures
TEST_TOKEN = "hf_localhubSECRETtoken0123456789abcdef"  # fake; the server accepts only this one


def point_clients_at(monkeypatch: pytest.MonkeyPatch, hub: LocalHub, hf_home: Path) -> None:
    """Point `huggingface_hub` and `datasets` at `hub`, whether or not they were imported already.

    The environment variables are read when the libraries are first imported; the module constants they were
    copied into are patched too, so the order of imports in the test session does not matter.
    """
    import sys

    hub_cache = hf_home / "hub"
    datasets_cache = hf_home / "datasets"
    environment = {
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": hub.token,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hub_cache),
        "HF_DATASETS_CACHE": str(datasets_cache),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
    }
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)

    import datasets.config
    import huggingface_hub.constants as constants
    from huggingface_hub import HfFileSystem

    host = urlsplit(hub.url).hostname
    for name, value in {
        "ENDPOINT": hub.url,
        "HUGGINGFACE_CO_URL_TEMPLATE": hub.url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {host},
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hub_cache),
        "HUGGINGFACE_HUB_CACHE": str(hub_cache),
        "HF_ASSETS_CACHE": str(hf_home / "assets"),
        "HF_XET_CACHE": str(hf_home / "xet"),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
    }.items():
        monkeypatch.setattr(constants, name, value)
    for name, value in {
        "HF_ENDPOINT": hub.url,
        "HUB_DATASETS_URL": hub.url + "/datasets/{repo_id}/resolve/{revision}/{path}",
        "HF_HUB_OFFLINE": False,
        "HF_DATASETS_OFFLINE": False,
        "HF_CACHE_HOME": str(hf_home),
        "HF_DATASETS_CACHE": datasets_cache,
        "DOWNLOADED_DATASETS_PATH": datasets_cache / "downloads",
        "EXTRACTED_DATASETS_PATH": datasets_cache / "downloads" / "extracted",
    }.items():
        monkeypatch.setattr(datasets.config, name, value)
    # the module-level client behind `huggingface_hub.create_repo`, `upload_file`, ... copied the endpoint at import
    hf_api = sys.modules["huggingface_hub.hf_api"]
    monkeypatch.setattr(hf_api.api, "endpoint", hub.url)
    # HfFileSystem instances are cached per endpoint/token and keep directory listings; start from a clean slate
    HfFileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def _local_hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHub]:
    root = tmp_path_factory.mktemp("local-hub")
    hub = LocalHub(root / "server", token=TEST_TOKEN).start()
    try:
        yield hub
    finally:
        hub.stop()
        shutil.rmtree(root / "server", ignore_errors=True)


@pytest.fixture
def local_hub(_local_hub_server: LocalHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHub]:
    """The running local Hub, with `huggingface_hub` and `datasets` pointed at it for the duration of the test."""
    hub = _local_hub_server
    hf_home = tmp_path_factory.mktemp("hf-home")
    with pytest.MonkeyPatch.context() as monkeypatch:
        point_clients_at(monkeypatch, hub, hf_home)
        hub.clear_failures()
        try:
            yield hub
        finally:
            hub.clear_failures()
            hub.unfreeze()
            from huggingface_hub import HfFileSystem

            HfFileSystem.clear_instance_cache()
