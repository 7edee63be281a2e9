"""Versioned releases on the Hugging Face Hub: data, card, recipe and statistics at one revision, then a tag.

A release pushes one or more configs of a dataset repo (e.g. `continual-m3` and `from-scratch-m2`) to a branch
(`main` by default), then commits the dataset card, each config's resolved recipe, statistics and plots to the same
branch, and finally tags that commit with the version (`v1.0`, `v1.1`, ...). Users pin the version:

    load_dataset("me/my-ipt-corpus", "continual-m3", revision="v1.0")

Guarantees:
- The tag is created last, on the commit that holds the card, and only when everything before succeeded: a failed or
  interrupted release never creates or moves a tag.
- Re-running a release after a failure completes it: `push_to_hub` writes shards with deterministic names and the
  Hub skips files whose content is already there, and the card, statistics and plots are byte-identical for the same
  data, so nothing is uploaded twice.
- An existing version is refused (`VersionExistsError`) before anything is uploaded, unless `force=True`.
- Transient Hub errors (429, 5xx, 408, 409 and 412 commit conflicts, dropped connections) are retried with
  exponential back-off; a permanent error raises `ReleaseError` saying which step failed and what was already done.
- Every HTTP call of a release (hf-ipt's, huggingface_hub's and `datasets`' own) waits at most `release.timeout`
  seconds, and once the Hub has given no usable answer for `release.retry_budget` seconds the release stops with a
  `ReleaseError` (no tag made, what was uploaded, the command that resumes it) instead of hanging (`HubCallGuard`).
  Transfers that go through Xet storage (`hf_xet`) follow that library's own timeouts.
- The card's metadata is valid for the Hub before anything is uploaded: a license that is not a Hub id becomes
  `license: other` with `license_name` / `license_link`, and `source_datasets` lists only Hub dataset ids.
- The token never appears in the card, the uploaded recipe/statistics, log lines or error messages; `private` is
  honoured when the repo is created, and a release into an existing repo of the other visibility is refused.

Example:
    >>> from hf_ipt.release.hub import push_release, verify_release
    >>> push_release(ds, "me/my-ipt-corpus", version="v1.0", config_name="continual-m3")  # doctest: +SKIP
    >>> verify_release(ds, "me/my-ipt-corpus", "v1.0", "continual-m3")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, DatasetCard, HfApi, get_token
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    RepositoryNotFoundError,
)
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import validate_repo_id

from hf_ipt.redaction import scrub
from hf_ipt.release.bundle import ReleaseBundle, build_bundle
from hf_ipt.release.card import RELEASE_INFO_DIR, CardOptions, ReleaseInfo, render_card, sidecar_dir
from hf_ipt.store import FileCopy
from hf_ipt.validation import check_fields
from hf_ipt.version import __version__

logger = logging.getLogger(__name__)

VERSION_RE = re.compile(r"^v\d+(\.\d+)*$")
CONFIG_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SPLIT_NAME_RE = re.compile(r"^\w+(\.\w+)*$")
# 409: another commit in progress; 412: the branch moved under our parent_commit; both resolve by retrying.
TRANSIENT_STATUS_CODES = frozenset({408, 409, 412, 429, 500, 502, 503, 504})

T = TypeVar("T")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class ReleaseConfig:
    """Where and how a release is pushed.

    Example:
        >>> ReleaseConfig(repo_id="me/ipt-corpus", version="v1.0", config_name="continual-m3").revision
        'main'
        >>> ReleaseConfig(repo_id="me/ipt-corpus", version="1.0")
        Traceback (most recent call last):
        ...
        ValueError: a release version is a tag like 'v1.0' or 'v1.1', got '1.0' (did you mean 'v1.0'?)
    """

    repo_id: str = field(metadata=_help("Dataset repo on the Hub, 'namespace/name'."))
    version: str = field(metadata=_help("Version to release, a tag such as 'v1.0' or 'v1.1'."))
    config_name: str = field(
        default="default", metadata=_help("Config name for a single Dataset/DatasetDict (ignored for a mapping).")
    )
    split: str = field(default="train", metadata=_help("Split name given to a single Dataset."))
    revision: str = field(default="main", metadata=_help("Branch the release is committed to before tagging."))
    private: bool | None = field(
        default=None,
        metadata=_help("Visibility of a new repo; for an existing repo a different visibility is refused. None: any."),
    )
    force: bool = field(default=False, metadata=_help("Move the tag if the version already exists."))
    max_shard_size: int | str | None = field(
        default=None, metadata=_help("Largest Parquet shard, e.g. '500MB' (datasets' default when None).")
    )
    default_config: str | None = field(
        default=None, metadata=_help("Config to mark as the repo's default config (the one loaded without a name).")
    )
    plots: bool = field(default=True, metadata=_help("Render PNG plots for the card (needs matplotlib)."))
    max_retries: int = field(default=5, metadata={"help": "Retries of a step after a transient Hub error.", "min": 0})
    retry_base_delay: float = field(
        default=1.0, metadata={"help": "Seconds before the first retry; doubled each time.", "min": 0}
    )
    retry_max_delay: float = field(
        default=60.0, metadata={"help": "Longest wait between two retries, in seconds.", "min": 0}
    )
    timeout: float = field(
        default=60.0,
        metadata={
            "help": "Seconds a Hub request may wait for the server (to connect, and for each read or write); a "
            "request past it fails and is retried.",
            "min": 0.001,
        },
    )
    retry_budget: float = field(
        default=900.0,
        metadata={
            "help": "Seconds a release keeps retrying once the Hub stops answering or keeps failing; then it stops "
            "with an error saying what was uploaded (no tag is made) and how to resume.",
            "min": 0,
        },
    )
    token: str | None = field(
        default=None, repr=False, metadata=_help("Hub token; defaults to HF_TOKEN or the saved login. Never logged.")
    )

    def __post_init__(self) -> None:
        check_fields(self, "release")
        if self.repo_id.count("/") != 1:
            raise ValueError(
                f"release.repo_id must be 'namespace/name', got {self.repo_id!r}: releases name their namespace"
            )
        try:
            validate_repo_id(self.repo_id)
        except HFValidationError as err:
            raise ValueError(f"release.repo_id {self.repo_id!r} is not a valid Hub repo id: {err}") from None
        check_version(self.version)
        check_config_name(self.config_name)
        if not SPLIT_NAME_RE.match(self.split):
            raise ValueError(f"release.split must match {SPLIT_NAME_RE.pattern}, got {self.split!r}")
        if not self.revision or self.revision.startswith("refs/"):
            raise ValueError(f"release.revision must be a branch name such as 'main', got {self.revision!r}")
        if self.revision == self.version:
            raise ValueError(f"release.revision {self.revision!r} equals the version: the tag would shadow it")
        if self.max_shard_size is not None:
            from datasets.utils.py_utils import convert_file_size_to_int

            try:
                if convert_file_size_to_int(self.max_shard_size) <= 0:
                    raise ValueError
            except (ValueError, TypeError):
                raise ValueError(
                    f"release.max_shard_size must be a positive byte count or a size like '500MB', "
                    f"got {self.max_shard_size!r}"
                ) from None
        if self.default_config is not None:
            check_config_name(self.default_config)
        if self.retry_base_delay > self.retry_max_delay:
            raise ValueError(
                f"ReleaseConfig needs 0 <= retry_base_delay <= retry_max_delay, got {self.retry_base_delay!r} and "
                f"{self.retry_max_delay!r}"
            )
        if self.token is not None and not self.token.strip():
            raise ValueError("release.token must be a non-empty string or None (then HF_TOKEN / saved login)")


def check_version(version: Any) -> str:
    """Return `version` if it is a release tag like 'v1.0', else raise a ValueError saying how to write one.

    Example:
        >>> check_version("v1.0")
        'v1.0'
        >>> check_version("1.0")
        Traceback (most recent call last):
        ...
        ValueError: a release version is a tag like 'v1.0' or 'v1.1', got '1.0' (did you mean 'v1.0'?)
    """
    if not isinstance(version, str) or not VERSION_RE.match(version):
        hint = (
            f" (did you mean 'v{version}'?)"
            if isinstance(version, str) and re.match(r"^\d+(\.\d+)*$", version)
            else ""
        )
        raise ValueError(f"a release version is a tag like 'v1.0' or 'v1.1', got {version!r}{hint}")
    return version


def check_config_name(name: Any) -> str:
    """Return `name` if it can name a dataset config on the Hub (letters, digits, `._-`; not 'data'), else raise.

    Example:
        >>> check_config_name("continual-m3")
        'continual-m3'
        >>> check_config_name("data")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: config name must match ... and not be 'data' (reserved by push_to_hub), got 'data'
    """
    if not isinstance(name, str) or not CONFIG_NAME_RE.match(name) or name == "data":
        raise ValueError(
            f"config name must match {CONFIG_NAME_RE.pattern} and not be 'data' (reserved by push_to_hub), "
            f"got {name!r}"
        )
    return name


class ReleaseError(RuntimeError):
    """A release step failed for good. `step` names it, `completed` lists what was already done on the Hub.

    Example:
        >>> try:  # doctest: +SKIP
        ...     push_release(ds, "me/ipt-corpus", version="v1.0")
        ... except ReleaseError as err:
        ...     print(err.step)
        tag 4ab2... as v1.0
    """

    def __init__(
        self, message: str, *, step: str, completed: Sequence[str] = (), repo_id: str = "", version: str = ""
    ):
        super().__init__(message)
        self.step = step
        self.completed = list(completed)
        self.repo_id = repo_id
        self.version = version


class VersionExistsError(ReleaseError):
    """The version is already a tag of the repo and `force` was not set.

    Example:
        >>> push_release(ds, "me/ipt-corpus", version="v1.0")  # doctest: +SKIP
        Traceback (most recent call last):
        VersionExistsError: ...
        >>> push_release(ds, "me/ipt-corpus", version="v1.0", force=True)  # doctest: +SKIP
    """


class ReleaseMismatchError(ValueError):
    """The data loaded back from the Hub differs from the data that was pushed.

    Example:
        >>> verify_release(ds.select(range(10)), "me/ipt-corpus", "v1.0")  # doctest: +SKIP
        Traceback (most recent call last):
        ReleaseMismatchError: ...
    """


@dataclass(frozen=True)
class ReleaseResult:
    """What a successful release produced.

    Example:
        >>> result = push_release(ds, "me/ipt-corpus", version="v1.0", config_name="continual-m3")  # doctest: +SKIP
        >>> result.configs, result.url  # doctest: +SKIP
        (('continual-m3',), 'https://huggingface.co/datasets/me/ipt-corpus/tree/v1.0')
    """

    repo_id: str
    version: str
    revision: str
    commit: str
    configs: tuple[str, ...]
    files: tuple[str, ...]
    url: str


# --------------------------------------------------------------------------------------------------- inputs
def _configs_to_push(data: Any, config: ReleaseConfig) -> dict[str, dict[str, Any]]:
    """{config name: {split name: Dataset}} from a Dataset, a DatasetDict or a mapping of config names to those."""
    from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict

    def splits_of(name: str, value: Any) -> dict[str, Any]:
        if isinstance(value, (IterableDataset, IterableDatasetDict)):
            raise TypeError(
                f"config {name!r} is an {type(value).__name__}: a release computes its card's figures from the rows, "
                "so it needs a Dataset or DatasetDict (materialize it, e.g. with Dataset.from_generator)"
            )
        if isinstance(value, Dataset):
            return {config.split: value}
        if isinstance(value, DatasetDict):
            return dict(value)
        raise TypeError(f"config {name!r} must be a Dataset or a DatasetDict, got {type(value).__name__}")

    if isinstance(data, (Dataset, DatasetDict, IterableDataset, IterableDatasetDict)):
        configs = {config.config_name: splits_of(config.config_name, data)}
    elif isinstance(data, Mapping):
        if config.config_name != "default":
            raise ValueError(
                f"config_name={config.config_name!r} names a single dataset; with a mapping of configs the keys "
                f"{list(data)} are the config names"
            )
        configs = {check_config_name(name): splits_of(name, value) for name, value in data.items()}
    else:
        raise TypeError(
            "push_release takes a Dataset, a DatasetDict, or a mapping {config name: Dataset or DatasetDict}, "
            f"got {type(data).__name__}"
        )
    if not configs:
        raise ValueError("push_release got an empty mapping: there is no config to release")
    for name, splits in configs.items():
        if not splits:
            raise ValueError(f"config {name!r} has no split to push")
        for split, dataset in splits.items():
            if not SPLIT_NAME_RE.match(split):
                raise ValueError(f"config {name!r}: split name {split!r} must match {SPLIT_NAME_RE.pattern}")
            if dataset.num_rows == 0:
                raise ValueError(
                    f"config {name!r}, split {split!r} has no rows: refusing to release an empty split (check the "
                    "filtering that produced it)"
                )
    if config.default_config is not None and config.default_config not in configs:
        raise ValueError(f"default_config {config.default_config!r} is not one of the pushed configs {list(configs)}")
    if config.default_config not in (None, "default") and "default" in configs:
        raise ValueError(
            f"a config named 'default' is always the default one, so default_config={config.default_config!r} cannot "
            "be honoured; give that config another name"
        )
    return configs


def _infos_for(info: Any, configs: Mapping[str, Any], recipe: Any) -> dict[str, ReleaseInfo]:
    if info is None or isinstance(info, ReleaseInfo):
        infos = {name: info or ReleaseInfo() for name in configs}
    elif isinstance(info, Mapping):
        unknown = sorted(set(info) - set(configs))
        if unknown:
            raise ValueError(f"info describes configs {unknown} that are not pushed (pushed: {list(configs)})")
        infos = {}
        for name in configs:
            value = info.get(name) or ReleaseInfo()
            if not isinstance(value, ReleaseInfo):
                raise TypeError(f"info[{name!r}] must be a ReleaseInfo, got {type(value).__name__}")
            infos[name] = value
    else:
        raise TypeError(f"info must be a ReleaseInfo or {{config name: ReleaseInfo}}, got {type(info).__name__}")
    if recipe is not None:
        infos = {
            name: value if value.recipe is not None else _with_recipe(value, recipe) for name, value in infos.items()
        }
    return infos


def _with_recipe(info: ReleaseInfo, recipe: Any) -> ReleaseInfo:
    from dataclasses import replace

    return replace(info, recipe=recipe)


# --------------------------------------------------------------------------------------------------- retries
def _transport_errors() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module_name, names in (
        ("httpx", ("TransportError",)),
        ("httpx2", ("TransportError",)),
        ("requests", ("ConnectionError", "Timeout")),
    ):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        found += [getattr(module, name) for name in names if hasattr(module, name)]
    return tuple(found)


def _exception_chain(err: BaseException):
    seen = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def retry_delay_for(err: BaseException) -> float | None:
    """Seconds the server asked to wait (0 if it did not say) when `err` is transient; None when it is permanent.

    Example:
        >>> retry_delay_for(ConnectionError("reset by peer")), retry_delay_for(ValueError("bad input"))
        (0.0, None)
    """
    transport = _transport_errors()
    for current in _exception_chain(err):
        if isinstance(current, HfHubHTTPError) and getattr(current, "response", None) is not None:
            if current.response.status_code not in TRANSIENT_STATUS_CODES:
                return None
            retry_after = current.response.headers.get("Retry-After", "")
            return float(retry_after) if retry_after.strip().replace(".", "", 1).isdigit() else 0.0
        if isinstance(current, transport):
            return 0.0
    return None


class HubStalledError(RuntimeError):
    """The Hub gave no usable answer for longer than `release.retry_budget` seconds: the release stops retrying.

    Raised from inside an HTTP call (so no library retries it further) and turned into a `ReleaseError`.

    Example:
        >>> str(HubStalledError(3.0))
        'the Hub gave no usable answer for 3s (release.retry_budget)'
    """

    def __init__(self, budget: float):
        super().__init__(f"the Hub gave no usable answer for {budget:g}s (release.retry_budget)")
        self.budget = budget


class HubCallGuard:
    """Bounds every HTTP call a release makes (huggingface_hub's and `datasets`' alike, through their shared
    client): each request gets `timeout` seconds (connect, read, write), and once no request has been answered for
    `retry_budget` seconds (a frozen server, a run of 5xx/429) every new request fails at once with
    `HubStalledError`, so no retry loop, ours or a library's, runs on.

    Example:
        >>> guard = HubCallGuard(timeout=30, retry_budget=600)
        >>> with guard.installed():  # doctest: +SKIP
        ...     HfApi().repo_info("me/x", repo_type="dataset")
    """

    def __init__(self, timeout: float, retry_budget: float, clock: Callable[[], float] = time.monotonic):
        self.timeout = float(timeout)
        self.retry_budget = float(retry_budget)
        self.clock = clock
        self.last_answer = clock()
        self._lock = threading.Lock()

    def remaining(self) -> float:
        """Seconds left before the budget is spent (counted from the last answered request)."""
        with self._lock:
            return self.retry_budget - (self.clock() - self.last_answer)

    def check(self) -> None:
        """Raise `HubStalledError` when the budget is spent."""
        if self.remaining() <= 0:
            raise HubStalledError(self.retry_budget)

    def answered(self) -> None:
        with self._lock:
            self.last_answer = self.clock()

    def on_request(self, request: Any) -> None:
        """httpx request hook: refuse once the budget is spent, else cap the request's timeouts."""
        remaining = self.remaining()
        if remaining <= 0:
            raise HubStalledError(self.retry_budget)
        cap = max(0.001, min(self.timeout, remaining))
        timeouts = dict(request.extensions.get("timeout") or {})
        for kind in ("connect", "read", "write", "pool"):
            value = timeouts.get(kind)
            timeouts[kind] = cap if value is None else min(float(value), cap)
        request.extensions = {**request.extensions, "timeout": timeouts}

    def on_response(self, response: Any) -> None:
        """httpx response hook: an answer that is not a transient error restarts the budget."""
        if response.status_code not in TRANSIENT_STATUS_CODES:
            self.answered()

    @contextlib.contextmanager
    def installed(self):
        """Route huggingface_hub's shared HTTP client through this guard for the duration of the block."""
        from huggingface_hub.utils import _http as hf_http

        previous = getattr(hf_http, "_GLOBAL_CLIENT_FACTORY", None) or hf_http.default_client_factory

        def factory():
            client = previous()
            hooks = client.event_hooks
            client.event_hooks = {
                "request": [*hooks.get("request", []), self.on_request],
                "response": [*hooks.get("response", []), self.on_response],
            }
            client.timeout = self.timeout
            return client

        hf_http.set_client_factory(factory)
        try:
            yield self
        finally:
            hf_http.set_client_factory(previous)


class _Progress:
    """What the release already did on the Hub, for error messages that tell what a re-run will complete."""

    def __init__(
        self,
        config: ReleaseConfig,
        secrets: Sequence[str],
        guard: HubCallGuard | None = None,
        resume: str | None = None,
    ):
        self.config = config
        self.secrets = list(secrets)
        self.completed: list[str] = []
        self.guard = guard
        self.resume = resume

    def fail(self, step: str, err: BaseException, attempts: int, cls: type[ReleaseError] = ReleaseError):
        config = self.config
        done = "; ".join(self.completed) if self.completed else "nothing"
        tagged = "The tag was not created or moved."
        stalled = next((e for e in _exception_chain(err) if isinstance(e, HubStalledError)), None)
        if stalled is None and self.guard is not None and self.guard.remaining() <= 0:
            # a transient error (a timeout) met the end of the budget: the Hub stalled all the same
            stalled = HubStalledError(self.guard.retry_budget)
        cause = f"{type(err).__name__}: {err}"
        if stalled is not None:
            last = "" if isinstance(err, HubStalledError) else f"; last error {cause}"
            cause = f"{stalled} (each request waits at most {config.timeout:g}s, release.timeout{last})"
        resume = (
            f"Resume with the same command: {self.resume}"
            if self.resume
            else "Re-running the same release completes it"
        )
        message = (
            f"release {config.version} of dataset {config.repo_id} failed while trying to {step} "
            f"(after {attempts} attempt{'s' if attempts > 1 else ''}): {cause}\n"
            f"Already done on branch {config.revision!r}: {done}. {tagged} "
            f"{resume} (unchanged files are not uploaded again)."
        )
        return cls(
            scrub(message, self.secrets),
            step=step,
            completed=self.completed,
            repo_id=config.repo_id,
            version=config.version,
        )

    def run(self, step: str, action: Callable[[], T]) -> T:
        config = self.config
        attempt = 0
        while True:
            try:
                return action()
            except ReleaseError:
                raise
            except Exception as err:
                delay = retry_delay_for(err)
                left = self.guard.remaining() if self.guard is not None else math.inf
                if delay is None or attempt >= config.max_retries or left <= 0:
                    raise self.fail(step, err, attempt + 1) from err
                backoff = min(config.retry_max_delay, config.retry_base_delay * 2**attempt)
                wait = min(config.retry_max_delay, max(delay, backoff * (0.5 + random.random() / 2)))
                wait = min(wait, left)  # waking after the budget is spent would only fail later
                attempt += 1
                logger.warning(
                    "%s",
                    scrub(
                        f"could not {step} ({type(err).__name__}: {err}); retry {attempt}/"
                        f"{config.max_retries} in {wait:.2f}s",
                        self.secrets,
                    ),
                )
                time.sleep(wait)


# --------------------------------------------------------------------------------------------------- steps
def _repo_visibility(api: HfApi, repo_id: str) -> bool | None:
    """True/False for an existing private/public repo, None when it does not exist (or is not visible to us)."""
    try:
        return bool(api.repo_info(repo_id, repo_type="dataset").private)
    except RepositoryNotFoundError:
        return None


def _check_visibility(config: ReleaseConfig, private_now: bool | None) -> None:
    if config.private is not None and private_now is not None and private_now != config.private:
        wanted, actual = ("private", "public") if config.private else ("public", "private")
        raise ValueError(
            f"the release asks for a {wanted} repo but {config.repo_id} is {actual}; change its visibility on the Hub "
            "(HfApi.update_repo_settings) or pass private=None to release into it as it is"
        )


def _tags(api: HfApi, repo_id: str) -> dict[str, str]:
    refs = api.list_repo_refs(repo_id, repo_type="dataset")
    return {tag.name: tag.target_commit for tag in refs.tags}


def _push_config(config: ReleaseConfig, name: str, splits: Mapping[str, Any], token: str) -> str | None:
    """Push one config with `datasets`' own push_to_hub; returns the id of the commit holding its data."""
    from datasets import DatasetDict

    rows = sum(d.num_rows for d in splits.values())
    logger.info(
        "pushing config %r (%s rows in %s) to %s@%s", name, f"{rows:,}", list(splits), config.repo_id, config.revision
    )
    info = DatasetDict(splits).push_to_hub(
        config.repo_id,
        config_name=name,
        commit_message=f"hf-ipt {config.version}: data of config {name}",
        private=config.private,
        token=token,
        revision=config.revision,
        max_shard_size=config.max_shard_size,
    )
    return getattr(info, "oid", None)


def _read_existing_card(api: HfApi, repo_id: str, commit: str) -> DatasetCard | None:
    try:
        path = api.hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=commit)
    except EntryNotFoundError:
        return None
    return DatasetCard.load(path)


def _list_release_files(api: HfApi, repo_id: str, commit: str) -> list[str]:
    try:
        entries = api.list_repo_tree(
            repo_id, path_in_repo=RELEASE_INFO_DIR, recursive=True, revision=commit, repo_type="dataset"
        )
        return [entry.path for entry in entries if isinstance(entry, RepoFile)]
    except EntryNotFoundError:
        return []


def _commit_card(
    api: HfApi,
    config: ReleaseConfig,
    bundles: Sequence[ReleaseBundle],
    options: CardOptions | None,
    secrets: Sequence[str],
) -> tuple[str, list[str]]:
    """One commit with README.md and release_info/{config}/... on the branch head; returns (commit, paths).

    The card is rendered from the README that `push_to_hub` left at the head (its `configs` / `dataset_info`) and
    from the stats.json of the configs this release does not touch, so it describes everything at that revision.
    """
    repo_id = config.repo_id
    reports = {bundle.config_name: bundle.report for bundle in bundles}
    sidecars = {bundle.config_name: bundle.files for bundle in bundles}
    head = api.repo_info(repo_id, repo_type="dataset", revision=config.revision).sha
    existing_card = _read_existing_card(api, repo_id, head)
    metadata = existing_card.data.to_dict() if existing_card is not None else {}
    hub_configs = [dict(entry) for entry in metadata.get("configs") or []]
    if config.default_config is not None:
        # Set here rather than with push_to_hub(set_default=...), which fails when the repo holds a single config.
        names = [entry.get("config_name") for entry in hub_configs]
        if "default" in names and config.default_config != "default":
            raise ValueError(
                f"{repo_id} has a config named 'default', which is always the default one: it cannot make "
                f"{config.default_config!r} the default config; rename it first"
            )
        for entry in hub_configs:
            entry.pop("default", None)
            if entry.get("config_name") == config.default_config:
                entry["default"] = True
    existing_files = _list_release_files(api, repo_id, head)

    operations: list[Any] = []
    written: list[str] = []
    for name, contents in sidecars.items():
        for path_in_repo, content in contents.items():
            # the export's token files are uploaded from where they lie, never read whole into memory
            body = content.readable() if isinstance(content, FileCopy) else content
            operations.append(CommitOperationAdd(path_in_repo=path_in_repo, path_or_fileobj=body))
            written.append(path_in_repo)
        # files of an earlier release of this config that this release does not produce (e.g. a plot without data)
        folder = sidecar_dir(name)
        for stale in sorted(p for p in existing_files if p.startswith(folder + "/") and p not in contents):
            operations.append(CommitOperationDelete(path_in_repo=stale))

    all_reports: dict[str, dict[str, Any] | None] = {}
    for entry in hub_configs:
        name = entry.get("config_name")
        if name in reports or name is None:
            continue
        stats_path = f"{sidecar_dir(name)}/stats.json"
        if stats_path in existing_files:
            local = api.hf_hub_download(repo_id, stats_path, repo_type="dataset", revision=head)
            all_reports[name] = json.loads(Path(local).read_text(encoding="utf-8"))
        else:
            all_reports[name] = None
    all_reports.update(reports)
    card = render_card(
        all_reports,
        repo_id=repo_id,
        version=config.version,
        hub_configs=hub_configs,
        dataset_info=metadata.get("dataset_info"),
        options=options,
    )
    card_text = scrub(str(card), secrets)
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card_text.encode("utf-8")))
    written.append("README.md")
    for operation in operations:
        if isinstance(operation, CommitOperationAdd) and isinstance(operation.path_or_fileobj, bytes):
            body = operation.path_or_fileobj  # what hf-ipt rendered (card, stats, recipe); token files are ids
            if any(secret and secret.encode() in body for secret in secrets):
                raise RuntimeError(f"refusing to upload {operation.path_in_repo}: it contains the Hub token")

    info = api.create_commit(
        repo_id,
        operations,
        commit_message=f"hf-ipt {config.version}: dataset card, recipes and statistics",
        commit_description=f"Configs released: {', '.join(reports)}",
        repo_type="dataset",
        revision=config.revision,
        parent_commit=head,
    )
    return info.oid, written


def _tag_release(api: HfApi, config: ReleaseConfig, commit: str) -> None:
    tags = _tags(api, config.repo_id)
    current = tags.get(config.version)
    if current == commit:
        return  # tagged by an attempt whose answer was lost
    message = f"hf-ipt release {config.version}"
    if current is not None:
        if not config.force:
            raise VersionExistsError(
                f"version {config.version} of {config.repo_id} was tagged (at {current}) while this release was "
                "running; pass force=True to move it",
                step="tag the release",
                repo_id=config.repo_id,
                version=config.version,
            )
        api.delete_tag(config.repo_id, tag=config.version, repo_type="dataset")
        try:
            api.create_tag(
                config.repo_id, tag=config.version, revision=commit, tag_message=message, repo_type="dataset"
            )
        except Exception:
            # never leave a version without its tag: put the old one back before reporting the failure
            api.create_tag(
                config.repo_id, tag=config.version, revision=current, tag_message=message, repo_type="dataset"
            )
            raise
        logger.info("moved tag %s of %s from %s to %s", config.version, config.repo_id, current, commit)
        return
    api.create_tag(config.repo_id, tag=config.version, revision=commit, tag_message=message, repo_type="dataset")
    logger.info("tagged %s of %s at %s", config.version, config.repo_id, commit)


# --------------------------------------------------------------------------------------------------- public API
def publish_release(
    data: Any,
    config: ReleaseConfig,
    *,
    info: ReleaseInfo | Mapping[str, ReleaseInfo] | None = None,
    card: CardOptions | None = None,
    recipe: Mapping[str, Any] | str | os.PathLike | None = None,
) -> ReleaseResult:
    """Release `data` as `config.version` of `config.repo_id`. See `push_release` for the arguments.

    Example:
        >>> config = ReleaseConfig(repo_id="me/ipt-corpus", version="v1.0", config_name="continual-m3")
        >>> publish_release(ds, config, info=ReleaseInfo(sources=[])).url  # doctest: +SKIP
        'https://huggingface.co/datasets/me/ipt-corpus/tree/v1.0'
    """
    if not isinstance(config, ReleaseConfig):
        raise TypeError(f"config must be a ReleaseConfig, got {type(config).__name__}")
    if card is not None and not isinstance(card, CardOptions):
        raise TypeError(f"card must be a CardOptions, got {type(card).__name__}")
    configs = _configs_to_push(data, config)
    infos = _infos_for(info, configs, recipe)
    token = config.token or get_token()
    if not token:
        raise ValueError(
            "no Hub token: pass token=..., set HF_TOKEN, or log in with `hf auth login` (a write token is needed)"
        )
    # Everything that can fail on bad input is computed before anything is uploaded.
    bundles = [
        build_bundle(
            splits, infos[name], config_name=name, version=config.version, plots=config.plots, secrets=[token]
        )
        for name, splits in configs.items()
    ]
    return write_to_hub(bundles, config, card=card, token=token)


def write_to_hub(
    bundles: Sequence[ReleaseBundle],
    config: ReleaseConfig,
    *,
    card: CardOptions | None = None,
    token: str | None = None,
) -> ReleaseResult:
    """Commit release bundles to `config.repo_id`: each config's data, then one commit with the card and every
    bundle's files, then the tag `config.version` on that commit (never before everything succeeded).

    Example:
        >>> bundle = build_bundle({"train": ds}, info, config_name="m2", version="v1.0")  # doctest: +SKIP
        >>> write_to_hub([bundle], ReleaseConfig("me/ipt", "v1.0", "m2")).url  # doctest: +SKIP
        'https://huggingface.co/datasets/me/ipt/tree/v1.0'
    """
    token = token or config.token or get_token()
    if not token:
        raise ValueError(
            "no Hub token: pass token=..., set HF_TOKEN, or log in with `hf auth login` (a write token is needed)"
        )
    secrets = [token]
    # every HTTP call of the release (ours, huggingface_hub's, datasets') waits at most release.timeout, and the
    # retries stop once the Hub has not answered for release.retry_budget seconds
    guard = HubCallGuard(config.timeout, config.retry_budget)
    with guard.installed():
        return _write_to_hub(bundles, config, card, token, secrets, guard)


def _write_to_hub(
    bundles: Sequence[ReleaseBundle],
    config: ReleaseConfig,
    card: CardOptions | None,
    token: str,
    secrets: Sequence[str],
    guard: HubCallGuard,
) -> ReleaseResult:
    configs = {bundle.config_name: bundle.splits for bundle in bundles}
    api = HfApi(token=token, library_name="hf-ipt", library_version=__version__)
    commands = [bundle.command for bundle in bundles if bundle.command]
    progress = _Progress(config, secrets, guard=guard, resume=commands[0] if commands else None)
    private_now = progress.run("read the repository", functools.partial(_repo_visibility, api, config.repo_id))
    if private_now is not None:
        tags = progress.run("list the released versions", functools.partial(_tags, api, config.repo_id))
        if config.version in tags and not config.force:
            raise VersionExistsError(
                f"version {config.version} of {config.repo_id} already exists (tag at {tags[config.version]}); "
                "release a new version, or pass force=True to move the tag to this release",
                step="check the version",
                repo_id=config.repo_id,
                version=config.version,
            )
    if private_now is None:
        progress.run(
            "create the repository",
            functools.partial(
                api.create_repo, config.repo_id, repo_type="dataset", private=config.private, exist_ok=True
            ),
        )
        logger.info("created dataset repo %s (%s)", config.repo_id, "private" if config.private else "public")
        private_now = progress.run("read the repository", functools.partial(_repo_visibility, api, config.repo_id))
    try:
        _check_visibility(config, private_now)
    except ValueError as err:
        raise ReleaseError(
            f"release {config.version} of {config.repo_id} refused, nothing was uploaded: {err}",
            step="check the repository visibility",
            repo_id=config.repo_id,
            version=config.version,
        ) from err
    if config.revision != "main":
        progress.run(
            f"create the branch {config.revision!r}",
            functools.partial(
                api.create_branch, config.repo_id, branch=config.revision, repo_type="dataset", exist_ok=True
            ),
        )
    for name, splits in configs.items():
        pushed = progress.run(
            f"push the data of config {name!r}", functools.partial(_push_config, config, name, splits, token)
        )
        progress.completed.append(f"data of config {name!r} committed ({pushed})")
    commit, files = progress.run(
        "commit the dataset card, recipes and statistics",
        functools.partial(_commit_card, api, config, bundles, card, secrets),
    )
    progress.completed.append(f"dataset card, recipes and statistics committed ({commit})")
    progress.run(f"tag {commit} as {config.version}", functools.partial(_tag_release, api, config, commit))
    endpoint = api.endpoint.rstrip("/")
    return ReleaseResult(
        repo_id=config.repo_id,
        version=config.version,
        revision=config.revision,
        commit=commit,
        configs=tuple(configs),
        files=tuple(files),
        url=f"{endpoint}/datasets/{config.repo_id}/tree/{config.version}",
    )


def push_release(
    data: Any,
    repo_id: str,
    *,
    version: str,
    config_name: str = "default",
    private: bool | None = None,
    info: ReleaseInfo | Mapping[str, ReleaseInfo] | None = None,
    card: CardOptions | None = None,
    recipe: Mapping[str, Any] | str | os.PathLike | None = None,
    force: bool = False,
    token: str | None = None,
    **options: Any,
) -> ReleaseResult:
    """Push `data` to `repo_id` as release `version`: data, card, recipe and statistics on one branch, then a tag.

    Args:
        data: a `Dataset` (pushed as split `split`, default "train"), a `DatasetDict` (its splits), or a mapping
            {config name: Dataset or DatasetDict} to release several configs at once.
        repo_id: 'namespace/name' of the dataset repo (created if missing, with `private`).
        version: the tag, e.g. 'v1.0'. An existing version is refused unless `force=True`.
        config_name: config name for a single Dataset/DatasetDict.
        info: `ReleaseInfo` for every config, or {config name: ReleaseInfo}.
        card: `CardOptions` (title, metadata, a custom template, extra sections).
        recipe: resolved recipe (dict or YAML/JSON file) of the run; a config's `ReleaseInfo.recipe` overrides it.
        token: Hub token (default: HF_TOKEN or the saved login).
        **options: other `ReleaseConfig` fields (`revision`, `split`, `max_shard_size`, `default_config`, `plots`,
            `max_retries`, `retry_base_delay`, `retry_max_delay`).

    Returns a `ReleaseResult` (commit id, configs, files written by hf-ipt). Raises `VersionExistsError` for an
    existing version and `ReleaseError` when a step fails for good (the message says what was already done).

    Example:
        >>> push_release({"continual-m3": ds_m3, "from-scratch-m2": ds_m2}, "me/ipt-corpus", version="v1.0",
        ...              info=ReleaseInfo(sources=[SourceInfo("me/raw", license="odc-by")]))  # doctest: +SKIP
    """
    config = ReleaseConfig(
        repo_id=repo_id, version=version, config_name=config_name, private=private, force=force, token=token, **options
    )
    return publish_release(data, config, info=info, card=card, recipe=recipe)


def list_versions(repo_id: str, *, token: str | None = None) -> dict[str, str]:
    """{version tag: commit id} of a repo's releases, oldest version first.

    Example:
        >>> list_versions("me/ipt-corpus")  # doctest: +SKIP
        {'v1.0': '9c1e...', 'v1.1': '4ab2...'}
    """
    tags = _tags(HfApi(token=token), repo_id)
    versions = {name: commit for name, commit in tags.items() if VERSION_RE.match(name)}
    return dict(sorted(versions.items(), key=lambda item: [int(p) for p in item[0][1:].split(".")]))


def load_release(
    repo_id: str,
    version: str,
    config_name: str | None = None,
    *,
    split: str | None = None,
    token: str | None = None,
    **load_kwargs: Any,
) -> Any:
    """`load_dataset(repo_id, config_name, revision=version)`: exactly the rows released as `version`.

    `config_name=None` loads the repo's default config (the one named "default", the one marked default, or the only
    one).

    Example:
        >>> ds = load_release("me/ipt-corpus", "v1.0", "continual-m3", split="train")  # doctest: +SKIP
    """
    from datasets import load_dataset

    check_version(version)
    return load_dataset(repo_id, config_name, revision=version, split=split, token=token, **load_kwargs)


def _first_difference(expected: Any, actual: Any, batch_size: int = 1000) -> str | None:
    if expected.num_rows != actual.num_rows:
        return f"{actual.num_rows} rows on the Hub, {expected.num_rows} pushed"
    if expected.column_names != actual.column_names:
        return f"columns {actual.column_names} on the Hub, {expected.column_names} pushed"
    if expected.features != actual.features:
        return f"features {actual.features} on the Hub, {expected.features} pushed"
    left, right = expected.with_format("arrow"), actual.with_format("arrow")
    for start in range(0, expected.num_rows, batch_size):
        a, b = left[start : start + batch_size], right[start : start + batch_size]
        if a.equals(b, check_metadata=False):
            continue
        a_rows, b_rows = a.to_pylist(), b.to_pylist()
        for offset, (row_a, row_b) in enumerate(zip(a_rows, b_rows, strict=True)):
            if row_a != row_b:
                columns = [c for c in row_a if row_a[c] != row_b.get(c)]
                return f"row {start + offset} differs in column(s) {columns}"
        return f"rows {start}-{start + len(a_rows) - 1} differ"
    return None


def verify_release(
    data: Any,
    repo_id: str,
    version: str,
    config_name: str | None = None,
    *,
    split: str = "train",
    token: str | None = None,
    **load_kwargs: Any,
) -> Any:
    """Load `version`/`config_name` back from the Hub and check it equals `data` (split by split, row by row).

    `data` is the Dataset (compared with split `split`) or DatasetDict that was pushed. Returns the loaded
    DatasetDict; raises `ReleaseMismatchError` naming the split and the first differing row.

    Example:
        >>> loaded = verify_release(ds, "me/ipt-corpus", "v1.0", "continual-m3")  # doctest: +SKIP
        >>> loaded["train"].num_rows == ds.num_rows  # doctest: +SKIP
        True
    """
    from datasets import Dataset, DatasetDict

    if isinstance(data, Dataset):
        expected = {split: data}
    elif isinstance(data, DatasetDict):
        expected = dict(data)
    else:
        raise TypeError(f"verify_release compares a Dataset or a DatasetDict, got {type(data).__name__}")
    loaded = load_release(repo_id, version, config_name, token=token, **load_kwargs)
    if set(loaded) != set(expected):
        raise ReleaseMismatchError(
            f"{repo_id}@{version} config {config_name!r} has splits {sorted(loaded)}, pushed {sorted(expected)}"
        )
    for name, dataset in expected.items():
        difference = _first_difference(dataset, loaded[name])
        if difference is not None:
            raise ReleaseMismatchError(f"{repo_id}@{version} config {config_name!r} split {name!r}: {difference}")
    return loaded
