"""Output folders on any fsspec filesystem: atomic writes, commit markers, fingerprints, whole-stage outputs.

Every stage of hf-ipt writes into a folder (a local path or an fsspec URL such as `s3://bucket/run`). A file is
written under a temporary name and renamed into place; a JSON marker written last is the commit point, so a crash
never leaves output that looks finished. `fingerprint` hashes the configuration that determines an output; a stage
whose committed fingerprint matches is skipped on the next run.

This module sits low in the import order: it imports no other hf_ipt module, so the runner, the config and the
stages can all build on it.

Example:
    >>> save_stage(templified, "output/run/templified", config={"templify": {...}})  # doctest: +SKIP
    >>> stage_fingerprint("output/run/templified") == fingerprint({"templify": {...}})  # doctest: +SKIP
    True
    >>> load_stage("output/run/templified")["train"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

FORMAT_NAME = "hf-ipt-shards"
FORMAT_VERSION = 1
STATE_DIR = ".hf_ipt"  # bookkeeping; `datasets.load_dataset(folder)` ignores it
TMP_DIR = f"{STATE_DIR}/tmp"
DATA_DIR = "data"
DATA_FILES_GLOB = f"{DATA_DIR}/*-*-of-*.parquet"  # the Hub-layout data files hf-ipt writes
STAGE_MARKER_PATH = f"{STATE_DIR}/stage.json"


class IncompleteRunError(RuntimeError):
    """An output was asked for that is not finished (no commit marker, unfinished shards); the message says which.

    Example:
        >>> from hf_ipt.runner import assemble_shards
        >>> assemble_shards("output/quickstart/synthesized")  # doctest: +SKIP
        Traceback (most recent call last):
        IncompleteRunError: 2 of 5 shards of output/quickstart/synthesized are not finished (shards 1, 3); ...
    """


# --------------------------------------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------------------------------------


def config_to_dict(config: Any) -> Any:
    """Plain JSON/YAML-ready data (dicts, lists, scalars) of a config dataclass or nested plain data.

    Other objects become their `str()`.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Run:
        ...     output_dir: str
        ...     shard_size: int = 2048
        >>> config_to_dict({"run": Run("out"), "tags": ("a", "b")})
        {'run': {'output_dir': 'out', 'shard_size': 2048}, 'tags': ['a', 'b']}
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: config_to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Mapping):
        return {str(k): config_to_dict(v) for k, v in config.items()}
    if isinstance(config, list | tuple):
        return [config_to_dict(v) for v in config]
    if config is None or isinstance(config, bool | int | float | str):
        return config
    return str(config)


def fingerprint(data: Any) -> str:
    """SHA-256 of a config (dataclass or plain data), stable across processes, machines and key order.

    Example:
        >>> fingerprint({"a": 1, "b": [2]}) == fingerprint({"b": [2], "a": 1})
        True
    """
    canonical = json.dumps(config_to_dict(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def json_bytes(data: Any) -> bytes:
    """The bytes of a marker or report file: indented, sorted keys, UTF-8, ending in a newline.

    Example:
        >>> json_bytes({"b": 1, "a": "é"})
        b'{\\n  "a": "\\xc3\\xa9",\\n  "b": 1\\n}\\n'
    """
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


# --------------------------------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------------------------------


def is_local_filesystem(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether an fsspec filesystem is the local disk (where renames are atomic and files can be memory-mapped).

    Example:
        >>> is_local_filesystem(fsspec.filesystem("file")), is_local_filesystem(fsspec.filesystem("memory"))
        (True, False)
    """
    protocol = fs.protocol
    protocols = tuple(protocol) if isinstance(protocol, tuple | list) else (protocol,)
    return "file" in protocols or "local" in protocols


def fsync_dir(path: str) -> None:
    """Persist a rename: the directory entry must reach the disk too (a no-op where directories cannot be opened).

    Example:
        >>> fsync_dir(".")
    """
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


class Store:
    """An output folder on any fsspec filesystem, with the few atomic-ish operations a commit protocol needs.

    Paths given to its methods are relative to the folder (`"data/train-00000-of-00001.parquet"`).

    Args:
        url: local path or fsspec URL of the folder (`"output/run"`, `"s3://bucket/run"`, `"memory://x"`).
        storage_options: fsspec options for a remote `url` (credentials, endpoint).

    Example:
        >>> store = Store("memory://doc-store/run")
        >>> store.write_atomic("a/marker.json", json_bytes({"done": True}))
        True
        >>> store.read_json("a/marker.json"), store.read_json("a/missing.json")
        ({'done': True}, None)
    """

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None):
        self.url = url
        self.storage_options = dict(storage_options or {})
        self.fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.root = root.rstrip("/")
        self.is_local = is_local_filesystem(self.fs)

    def path(self, relative: str) -> str:
        """The filesystem path of `relative` (what `self.fs` methods take)."""
        return f"{self.root}/{relative}"

    def exists(self, relative: str) -> bool:
        """Whether a file or folder exists under the store."""
        return self.fs.exists(self.path(relative))

    def read_json(self, relative: str) -> dict | None:
        """A JSON file's content; None when it is missing (or unreadable, which a commit never produces)."""
        try:
            return json.loads(self.fs.cat_file(self.path(relative)))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            # never produced by a commit (markers are renamed into place whole); only manual edits get here
            logger.warning("ignoring unreadable %s in %s", relative, self.url)
            return None

    def write_atomic(self, relative: str, data: bytes, *, exclusive: bool = False) -> bool:
        """Write under a unique temporary name, then rename into place; with `exclusive`, never replace an
        existing file (returns False instead). Local renames are atomic; on object stores the rename is a copy, which
        is why a marker written last, not the data file, is the commit point."""
        tmp = self.path(f"{TMP_DIR}/{relative.replace('/', '__')}.{uuid.uuid4().hex}.tmp")
        self.fs.makedirs(self.path(TMP_DIR), exist_ok=True)
        self.fs.makedirs(self.path(relative).rsplit("/", 1)[0], exist_ok=True)
        if self.is_local:
            # flushed to disk before the rename, so a machine crash (not only a killed process) cannot leave a
            # renamed file whose content never reached the disk
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        else:
            self.fs.pipe_file(tmp, data)
        target = self.path(relative)
        if exclusive and self.is_local:
            try:
                os.link(tmp, target)  # fails if the target exists: of two concurrent writers only one wins
                self.fs.rm_file(tmp)
                return True
            except FileExistsError:
                self.fs.rm_file(tmp)
                return False
            except OSError:
                pass  # a file system without hard links: check, then rename, below
        if exclusive and self.fs.exists(target):
            self.fs.rm_file(tmp)
            return False
        if self.is_local:
            os.replace(tmp, target)
            fsync_dir(os.path.dirname(target))
        else:
            self.fs.mv(tmp, target)
        return True

    def remove_tmp(self, prefix: str) -> None:
        """Delete the temporary files of interrupted writes whose flattened name starts with `prefix`."""
        for path in self.fs.glob(self.path(f"{TMP_DIR}/{prefix}*")):
            self.fs.rm_file(path)

    def remove(self, relative: str) -> None:
        """Delete a file or a whole folder, if it exists."""
        if self.exists(relative):
            self.fs.rm(self.path(relative), recursive=True)

    def remove_data_files(self) -> None:
        """Delete the Hub-layout data files (`data/<split>-NNNNN-of-NNNNN.parquet`) hf-ipt writes."""
        for path in self.fs.glob(self.path(DATA_FILES_GLOB)):
            self.fs.rm_file(path)

    def size(self, relative: str) -> int | None:
        """A file's size in bytes, None when it is missing."""
        try:
            return self.fs.size(self.path(relative))
        except FileNotFoundError:
            return None

    def read_table(self, relative: str):
        """A Parquet file read whole into memory as a `pyarrow.Table`."""
        return pq.read_table(io.BytesIO(self.fs.cat_file(self.path(relative))))

    def file_url(self, relative: str) -> str:
        """The full URL of `relative` (with its protocol; a plain path on the local disk), as `datasets` takes it."""
        return self.path(relative) if self.is_local else self.fs.unstrip_protocol(self.path(relative))

    def read_features(self, relatives: Sequence[str]):
        """The `datasets.Features` that hold the rows of every file: each file's features (from its Parquet footer
        alone: a few ranged reads), merged so that a column whose type is null in one file (a list empty in every row
        of that file) takes the type another file gives it.

        Example:
            >>> store.read_features(["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"])
            ... # doctest: +SKIP
            {'text': Value('string'), 'pairs': List({'instruction': Value('string'), 'response': Value('string')})}
        """
        import datasets

        found = []
        for relative in relatives:
            with self.fs.open(self.path(relative), "rb") as handle:
                found.append(datasets.Features.from_arrow_schema(pq.ParquetFile(handle).schema_arrow))
        merged = dict(found[0])
        for features in found[1:]:
            if list(features) != list(merged):
                raise IncompleteRunError(
                    f"the data files of {self.url} have different columns ({list(merged)} vs {list(features)}); "
                    "they were not written by one hf-ipt run"
                )
            for name, feature in features.items():
                if _has_null_type(datasets.Features({name: merged[name]}).arrow_schema.field(name).type):
                    merged[name] = feature
        return datasets.Features(merged)

    def read_dataset(self, relatives: Sequence[str], *, split: str, content_key: str = ""):
        """Parquet files (each with rows) as one memory-mapped `datasets.Dataset`, rows in file order.

        Read through `datasets`' Parquet loader with explicit features (`read_features`): local files are read in
        place, remote ones (any fsspec URL, with this store's `storage_options`) are copied block by block into the
        `datasets` cache first. Either way the rows go batch by batch into an Arrow cache file that is memory-mapped:
        no file is ever read whole into memory, so a run larger than RAM loads. `content_key` names the content
        (e.g. the checksums of the files' commit markers): a later read of the same files with the same key reuses
        the cache, other content never does (object stores without ETags cannot tell).

        Example:
            >>> Store("s3://bucket/run").read_dataset(["data/train-00000-of-00001.parquet"], split="train")
            ... # doctest: +SKIP
        """
        import datasets

        features = self.read_features(relatives)
        stamps = []
        for relative in relatives:
            info = self.fs.info(self.path(relative))
            stamps.append(
                [relative, info.get("size")] + [str(info[k]) for k in ("ETag", "etag", "mtime") if k in info]
            )
        name = "hf-ipt-" + fingerprint({"url": self.url, "files": stamps, "content": content_key})[:24]
        return datasets.load_dataset(
            "parquet",
            name=name,
            data_files={split: [self.file_url(r) for r in relatives]},
            features=features,
            split=split,
            storage_options=self.storage_options or None,
            # object stores without ETags (and memory://) name a rewritten file like the old one: never reuse a
            # downloaded copy (the name above already keys the built cache to the content)
            download_config=datasets.DownloadConfig(force_download=True, storage_options=self.storage_options),
        )


def _has_null_type(data_type) -> bool:
    """Whether an Arrow type is null or holds null somewhere (list<null>, struct<a: null>)."""
    import pyarrow as pa

    if pa.types.is_null(data_type):
        return True
    if pa.types.is_struct(data_type):
        return any(_has_null_type(data_type.field(i).type) for i in range(data_type.num_fields))
    if hasattr(data_type, "value_type"):
        return _has_null_type(data_type.value_type)
    return False


# --------------------------------------------------------------------------------------------------------------------
# Whole-stage outputs (templify, mix, release): written once, committed by a marker, skipped when already current
# --------------------------------------------------------------------------------------------------------------------


def read_stage_marker(output_dir: str, storage_options: Mapping[str, Any] | None = None) -> dict | None:
    """The commit marker of a stage output written by `save_stage` (fingerprint, config, files, rows, report).

    Example:
        >>> read_stage_marker("output/run/templified")["num_rows"]  # doctest: +SKIP
        {'train': 300}
    """
    return Store(output_dir, storage_options).read_json(STAGE_MARKER_PATH)


def stage_fingerprint(output_dir: str, storage_options: Mapping[str, Any] | None = None) -> str | None:
    """Fingerprint of the committed stage output in `output_dir`, or None when there is none (or it is unfinished).

    Example:
        >>> stage_fingerprint("memory://doc-store/nothing-here") is None
        True
    """
    marker = read_stage_marker(output_dir, storage_options)
    return None if marker is None else marker.get("fingerprint")


def save_stage(
    dataset_dict,
    output_dir: str,
    *,
    config: Mapping[str, Any] | Any,
    storage_options: Mapping[str, Any] | None = None,
    rows_per_file: int = 100_000,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a `DatasetDict` (or a `Dataset`, saved as split `train`) as Hub-layout Parquet files in `output_dir`,
    then commit it with a marker holding the fingerprint of `config`; returns the marker.

    Previous contents written by hf-ipt are removed first; the marker is written last, so an interrupted save is
    never mistaken for a finished one. `load_dataset(output_dir)` reads the result. Reads and writes every column.

    Example:
        >>> save_stage(templified, "output/run/templified", config={"templify": {...}})  # doctest: +SKIP
    """
    import datasets

    if isinstance(dataset_dict, datasets.Dataset):
        dataset_dict = datasets.DatasetDict({"train": dataset_dict})
    if not isinstance(dataset_dict, datasets.DatasetDict):
        raise TypeError(f"save_stage needs a Dataset or DatasetDict, got {type(dataset_dict).__name__}")
    store = Store(output_dir, storage_options)
    clear_stage(output_dir, storage_options=storage_options)
    files: dict[str, list[str]] = {}
    for split, dataset in dataset_dict.items():
        count = max(1, math.ceil(len(dataset) / rows_per_file))
        files[split] = []
        for index in range(count):
            part = dataset.select(range(index * rows_per_file, min(len(dataset), (index + 1) * rows_per_file)))
            buffer = io.BytesIO()
            part.to_parquet(buffer)
            relative = f"{DATA_DIR}/{split}-{index:05d}-of-{count:05d}.parquet"
            store.write_atomic(relative, buffer.getvalue())
            files[split].append(relative)
    num_rows = {split: len(dataset) for split, dataset in dataset_dict.items()}
    return commit_stage(
        output_dir, config=config, files=files, num_rows=num_rows, extra=extra, storage_options=storage_options
    )


def clear_stage(output_dir: str, *, storage_options: Mapping[str, Any] | None = None) -> None:
    """Un-commit a stage output (marker first, so a crash in between leaves it uncommitted) and delete its data.

    Example:
        >>> clear_stage("output/run/templified")  # doctest: +SKIP
    """
    store = Store(output_dir, storage_options)
    store.remove(STAGE_MARKER_PATH)
    store.remove_data_files()


def commit_stage(
    output_dir: str,
    *,
    config: Mapping[str, Any] | Any,
    files: Mapping[str, list[str]] | None = None,
    num_rows: Mapping[str, int] | None = None,
    extra: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the marker that makes a stage output count as finished (`stage_fingerprint` then returns the
    fingerprint of `config`); call it after everything else of the stage is written. Returns the marker.

    Example:
        >>> commit_stage("memory://doc-store/stage", config={"step": 1})["fingerprint"] == fingerprint({"step": 1})
        True
    """
    marker = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "fingerprint": fingerprint(config),
        "config": config_to_dict(config),
        "files": dict(files or {}),
        "num_rows": dict(num_rows or {}),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **({"extra": config_to_dict(extra)} if extra else {}),
    }
    Store(output_dir, storage_options).write_atomic(STAGE_MARKER_PATH, json_bytes(marker))
    return marker


def write_file(output_dir: str, relative: str, data: bytes, *, storage_options: Mapping[str, Any] | None = None):
    """Write one file under `output_dir` (local path or fsspec URL) atomically: temporary name, then rename.

    Example:
        >>> write_file("memory://doc-store/release", "README.md", b"# card\\n")
    """
    Store(output_dir, storage_options).write_atomic(relative, data)


def load_stage(output_dir: str, *, storage_options: Mapping[str, Any] | None = None):
    """The `DatasetDict` committed by `save_stage` in `output_dir`; IncompleteRunError if there is none.

    Example:
        >>> load_stage("output/run/templified")["train"]  # doctest: +SKIP
    """
    import datasets

    store = Store(output_dir, storage_options)
    marker = store.read_json(STAGE_MARKER_PATH)
    if marker is None:
        raise IncompleteRunError(f"{output_dir} holds no finished stage output ({STAGE_MARKER_PATH} not found)")
    splits = {}
    for split, relatives in marker["files"].items():
        if marker["num_rows"][split]:
            # a commit's fingerprint and time name its content: a re-saved stage is never served from an old cache
            key = f"{marker.get('fingerprint')}@{marker.get('finished_at')}"
            splits[split] = store.read_dataset(relatives, split=split, content_key=key)
        else:
            # datasets' Parquet reader rejects row-less files
            splits[split] = datasets.concatenate_datasets([datasets.Dataset(store.read_table(r)) for r in relatives])
    return datasets.DatasetDict(splits)
