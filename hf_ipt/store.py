"""Output folders on any fsspec filesystem: atomic writes, commit markers, fingerprints, whole-stage outputs.

Every stage of hf-ipt writes into a folder (a local path or an fsspec URL such as `s3://bucket/run`). A file is
written under a temporary name and renamed into place; a JSON marker written last is the commit point, so a crash
never leaves output that looks finished. `fingerprint` hashes the configuration that determines an output; a stage
whose committed fingerprint matches is skipped on the next run. Every committed file's size and SHA-256 are in its
marker and checked whenever the output is resumed or reused (`file_damage`, `stage_damage`), so a file changed or
truncated after its commit is redone, never released.

This module sits low in the import order: it imports no other hf_ipt module, so the runner, the config and the
stages can all build on it.

Example:
    >>> save_stage(templified, "output/run/templified", config={"templify": {...}})  # doctest: +SKIP
    >>> stage_fingerprint("output/run/templified") == fingerprint({"templify": {...}})  # doctest: +SKIP
    True
    >>> load_stage("output/run/templified")["train"]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any, BinaryIO

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
STALE_TMP_SECONDS = 3600.0  # a temporary file is written in one go: one this old belongs to a killed writer
_HOST = socket.gethostname().replace(".", "_").replace("/", "_")
_TMP_OWNER = re.compile(r"\.(?P<host>[^./]+)-(?P<pid>\d+)\.[0-9a-f]{32}\.tmp$")
_HASH_BLOCK = 256 << 10  # bounded memory per checked file; larger blocks hash no faster
_SETTLED_SECONDS = 2.0
_DIGESTS: dict[tuple, str] = {}  # (filesystem, path, size, stamps) -> SHA-256, for files settled when hashed


class IncompleteRunError(RuntimeError):
    """An output was asked for that is not finished (no commit marker, unfinished shards); the message says which.

    Example:
        >>> from hf_ipt.execution.runner import assemble_shards
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


def config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain-data configs (what a refusal to resume or replace names).

    Example:
        >>> config_diff({"synth": {"rounds": 2, "model": "m"}}, {"synth": {"rounds": 3, "model": "m"}})
        ['synth.rounds']
    """
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in config_diff(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".")]


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


def tmp_owner() -> str:
    """`HOST-PID` of this process, as written into the names of its temporary files.

    Example:
        >>> tmp_owner().endswith(f"-{os.getpid()}")
        True
    """
    return f"{_HOST}-{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one owned by another user counts as running).

    Example:
        >>> pid_alive(os.getpid())
        True
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True  # cannot tell: keep its files
    return True


def checksum(data: bytes) -> dict[str, Any]:
    """What a commit marker records of a file's bytes: size and SHA-256 (cost: `bench/bench_verify.py`).

    Example:
        >>> checksum(b"abc")["bytes"], checksum(b"abc")["sha256"][:12]
        (3, 'ba7816bf8f01')
    """
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def file_checksum(path: str | os.PathLike) -> dict[str, Any]:
    """`checksum` of a local file, read in blocks (bounded memory, whatever its size).

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile() as handle:
        ...     _ = handle.write(b"abc"); handle.flush()
        ...     file_checksum(handle.name) == checksum(b"abc")
        True
    """
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
            size += len(block)
    return {"bytes": size, "sha256": digest.hexdigest()}


@dataclasses.dataclass
class PendingFile:
    """A file being written through `Store.writing`: the local `path` to write, and once it is in place, its
    `checksum` (size and SHA-256).

    Example:
        >>> PendingFile("/tmp/x.tmp").checksum is None
        True
    """

    path: str
    checksum: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class FileCopy:
    """A committed file of another folder, to be copied into an output block by block (never read whole into
    memory): what a release carries of the export stage's token files. `checksum` is what its folder's marker
    recorded; the copy is refused when the bytes read differ.

    Example:
        >>> FileCopy(Store("memory://doc-store/export"), "olmo_core/train-00000.npy").relative
        'olmo_core/train-00000.npy'
    """

    store: Store
    relative: str
    checksum: Mapping[str, Any] | None = None

    def readable(self) -> str | BinaryIO:
        """The file for an uploader that reads it itself: its path on the local disk, else an open binary file."""
        if self.store.is_local:
            return self.store.path(self.relative)
        return self.store.fs.open(self.store.path(self.relative), "rb")


def file_damage(store: Store, relative: str, expected: Mapping[str, Any]) -> str | None:
    """Why a committed file is no longer what its marker recorded (`expected`: `bytes` and, when known, `sha256`),
    in words; None when it is intact. A missing or unreadable file, another size and a same-size byte change are
    damage.

    Example:
        >>> store = Store("memory://doc-store/damage")
        >>> _ = store.write_atomic("f.bin", b"the")
        >>> file_damage(store, "f.bin", checksum(b"the")) is None
        True
        >>> _ = store.write_atomic("f.bin", b"THE")
        >>> file_damage(store, "f.bin", checksum(b"the"))
        'its bytes changed since it was committed (SHA-256 differs, same size)'
    """
    try:
        size = store.fs.size(store.path(relative))
    except FileNotFoundError:
        return "missing"
    except OSError as err:
        return f"unreadable ({err})"
    if expected.get("bytes") is not None and size != expected["bytes"]:
        return f"{size} bytes instead of the {expected['bytes']} committed (truncated or rewritten)"
    if expected.get("sha256") is None:
        return None
    try:
        digest = store.sha256(relative)
    except OSError as err:
        return f"unreadable ({err})"
    if digest != expected["sha256"]:
        return "its bytes changed since it was committed (SHA-256 differs, same size)"
    return None


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
        except (FileNotFoundError, NotADirectoryError):  # under a file: nothing was ever written there either
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            # never produced by a commit (markers are renamed into place whole); only manual edits get here
            logger.warning("ignoring unreadable %s in %s", relative, self.url)
            return None

    def write_atomic(self, relative: str, data: bytes, *, exclusive: bool = False) -> bool:
        """Write under a unique temporary name, then rename into place; with `exclusive`, never replace an
        existing file (returns False instead). Local renames are atomic; on object stores the rename is a copy, which
        is why a marker written last, not the data file, is the commit point."""
        # the writer's host and pid are in the name, so `remove_stale_tmp` can tell a killed writer's leftovers from
        # the file a live worker is writing right now
        tmp = self.path(f"{TMP_DIR}/{relative.replace('/', '__')}.{tmp_owner()}.{uuid.uuid4().hex}.tmp")
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

    @contextlib.contextmanager
    def writing(self, relative: str) -> Iterator[PendingFile]:
        """A local file to write `relative` through, for writers that open a path themselves (a library's own
        builder) or stream more than fits in memory; when the block ends without an error the file is moved into
        place (atomically on the local disk, like `write_atomic`) and its checksum set. An error leaves nothing at
        `relative` and deletes the temporary file; a killed writer's is removed by `remove_stale_tmp`.

        Example:
            >>> store = Store("memory://doc-store/streamed")
            >>> with store.writing("parts/a.bin") as pending:
            ...     with open(pending.path, "wb") as handle:
            ...         _ = handle.write(b"abc")
            >>> store.fs.cat_file(store.path("parts/a.bin")), pending.checksum == checksum(b"abc")
            (b'abc', True)
        """
        name = f"{relative.replace('/', '__')}.{tmp_owner()}.{uuid.uuid4().hex}.tmp"
        if self.is_local:
            self.fs.makedirs(self.path(TMP_DIR), exist_ok=True)
            local = self.path(f"{TMP_DIR}/{name}")
        else:
            local = os.path.join(tempfile.gettempdir(), f"hf-ipt-{name}")
        pending = PendingFile(local)
        try:
            yield pending
            pending.checksum = file_checksum(local)
            self.fs.makedirs(self.path(relative).rsplit("/", 1)[0], exist_ok=True)
            if self.is_local:
                with open(local, "rb") as handle:
                    os.fsync(handle.fileno())  # the content reaches the disk before the rename (see write_atomic)
                os.replace(local, self.path(relative))
                fsync_dir(os.path.dirname(self.path(relative)))
            else:
                remote = self.path(f"{TMP_DIR}/{name}")
                self.fs.makedirs(self.path(TMP_DIR), exist_ok=True)  # a file system without implicit folders
                self.fs.put_file(local, remote)
                self.fs.mv(remote, self.path(relative))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(local)

    def copy_from(self, source: FileCopy, relative: str) -> dict[str, Any]:
        """Copy a committed file of another folder to `relative`, block by block (`writing`); returns its checksum.
        A ValueError when the bytes copied are not the ones `source.checksum` recorded (damaged since its commit).

        Example:
            >>> origin = Store("memory://doc-store/origin")
            >>> _ = origin.write_atomic("f.bin", b"ids")
            >>> Store("memory://doc-store/copy").copy_from(FileCopy(origin, "f.bin"), "g.bin") == checksum(b"ids")
            True
        """
        origin = source.store.path(source.relative)
        with self.writing(relative) as pending:
            with source.store.fs.open(origin, "rb") as src, open(pending.path, "wb") as dst:
                shutil.copyfileobj(src, dst, _HASH_BLOCK)
        expected = dict(source.checksum or {})
        if expected and {key: pending.checksum.get(key) for key in expected} != expected:
            self.remove(relative)  # never left looking like the committed file (no marker lists it yet)
            raise ValueError(
                f"{source.store.url}/{source.relative} is not the file its folder committed (size or SHA-256 differ); "
                "run the stage that writes it again"
            )
        return pending.checksum

    def remove_tmp(self, prefix: str) -> None:
        """Delete the temporary files of interrupted writes whose flattened name starts with `prefix`."""
        for path in self.fs.glob(self.path(f"{TMP_DIR}/{prefix}*")):
            self.fs.rm_file(path)

    def remove_stale_tmp(self, *, max_age: float = STALE_TMP_SECONDS) -> list[str]:
        """Delete the temporary files of writes that were killed: those of a process of this host that is no longer
        running, and any older than `max_age` seconds (another host's worker, or a name without an owner). Files of
        a live writer are kept. Returns the deleted paths.

        Example:
            >>> Store("memory://doc-store/run").remove_stale_tmp()
            []
        """
        removed = []
        for path in self.fs.glob(self.path(f"{TMP_DIR}/*.tmp")):
            if self._tmp_is_stale(path, max_age):
                try:
                    self.fs.rm_file(path)
                except FileNotFoundError:
                    continue  # its writer renamed it into place (or another cleaner removed it) meanwhile
                removed.append(path)
        if removed:
            logger.info("removed %d temporary file(s) of interrupted writes in %s", len(removed), self.url)
        return removed

    def _tmp_is_stale(self, path: str, max_age: float) -> bool:
        match = _TMP_OWNER.search(path.rsplit("/", 1)[-1])
        if match and match["host"] == _HOST:
            return not pid_alive(int(match["pid"]))
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            return False
        modified = info.get("mtime", info.get("LastModified", info.get("created")))
        if hasattr(modified, "timestamp"):
            modified = modified.timestamp()
        return modified is None or time.time() - float(modified) > max_age

    def sha256(self, relative: str) -> str:
        """SHA-256 of a file, read in blocks. Remembered in this process for a file unchanged since (local: same
        inode, size, mtime and ctime; remote: same size and modification stamp), so one run checks a file once."""
        path = self.path(relative)
        key = self._identity(path)
        if key is not None and key in _DIGESTS:
            return _DIGESTS[key]
        digest = hashlib.sha256()
        with self.fs.open(path, "rb") as handle:
            while block := handle.read(_HASH_BLOCK):
                digest.update(block)
        value = digest.hexdigest()
        if key is not None:
            _DIGESTS[key] = value
        return value

    def _identity(self, path: str) -> tuple | None:
        """What identifies a file's content without reading it, or None when it cannot be trusted for that: a
        file changed less than a few seconds ago could change again within the clock's granularity unseen."""
        try:
            if self.is_local:
                stat = os.stat(path)
                stamps = (stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns)
                modified = max(stat.st_mtime_ns, stat.st_ctime_ns) / 1e9
                size = stat.st_size
            else:
                info = self.fs.info(path)
                stamps = tuple(str(info.get(k)) for k in ("ETag", "mtime", "LastModified", "created") if k in info)
                if not stamps:
                    return None
                size, modified = info.get("size"), None
        except OSError:
            return None
        if modified is not None and time.time() - modified < _SETTLED_SECONDS:
            return None
        return (self.fs.protocol, path, size, stamps)

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
        # reading back our own files is bookkeeping, not a step: no "Generating train split" bar between the stages'
        bars_were_on = not datasets.utils.are_progress_bars_disabled()
        datasets.disable_progress_bars()
        try:
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
        finally:
            if bars_were_on:
                datasets.enable_progress_bars()


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
# Rows read and written batch by batch
# --------------------------------------------------------------------------------------------------------------------

ROW_GROUP_ROWS = 10_000  # rows per Parquet row group written: what a writer holds in memory at once


def parquet_num_rows(store: Store, relative: str) -> int:
    """The rows of a Parquet file of `store`, read from its footer (no row is read).

    Example:
        >>> parquet_num_rows(store, "data/train-00000-of-00001.parquet")  # doctest: +SKIP
        321
    """
    with store.fs.open(store.path(relative), "rb") as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def read_batches(store: Store, relative: str, *, columns: Sequence[str] | None = None, batch_size: int = 10_000):
    """The rows of a Parquet file of `store` as pyarrow RecordBatches of at most `batch_size` rows, reading only
    `columns` (those the file has; None: all): a shard read a batch at a time, never whole.

    Example:
        >>> sum(b.num_rows for b in read_batches(store, "data/train-00000-of-00001.parquet"))  # doctest: +SKIP
        321
    """
    with store.fs.open(store.path(relative), "rb") as handle:
        parquet = pq.ParquetFile(handle)
        present = None if columns is None else [c for c in columns if c in parquet.schema_arrow.names]
        yield from parquet.iter_batches(batch_size=batch_size, columns=present)


class Rows:
    """Rows read batch by batch: `num_rows`, `features` (`datasets.Features`), `tables(batch_size, columns)` and
    `row(index)`; `ParquetRows` (files of a store) and `DatasetRows` (a `datasets.Dataset`) give them (`as_rows`)."""

    num_rows: int
    features: Any

    def __len__(self) -> int:
        return self.num_rows

    @property
    def column_names(self) -> list[str]:
        return list(self.features)


class ParquetRows(Rows):
    """The rows of one split held in Parquet files of a store, read batch by batch in file order: memory is bounded by
    a batch (and a file's row group), never by the rows, and nothing is memory-mapped (mapped pages of a `datasets`
    cache stay in the resident set once read: a release of a large corpus would hold it all). Its interface is the
    one `DatasetRows` gives a `datasets.Dataset` (`as_rows`), so a consumer takes either.

    Args:
        store: the store holding the files.
        relatives: the files, in order (paths relative to the store).
        num_rows: the rows they hold (from their commit marker).
        features: the `datasets.Features` of the rows (default: read from the files' footers, `read_features`).

    Example:
        >>> ParquetRows(folder, ["data/train-00000-of-00001.parquet"], 3).column_names  # doctest: +SKIP
        ['text']
    """

    def __init__(self, store: Store, relatives: Sequence[str], num_rows: int, features: Any = None) -> None:
        self.store, self.relatives, self.num_rows = store, list(relatives), int(num_rows)
        self.features = features if features is not None else store.read_features(self.relatives)

    def tables(self, batch_size: int, columns: Sequence[str] | None = None) -> Iterator[Any]:
        """`pyarrow.Table`s of `batch_size` rows each (the last one fewer), in order, across the files' boundaries,
        typed by `features`; only `columns` when given."""
        import pyarrow as pa

        names = list(columns) if columns is not None else self.column_names
        schema = pa.schema([self.features.arrow_schema.field(name) for name in names])
        pending: list[Any] = []
        held = read = 0
        for relative in self.relatives:
            for batch in read_batches(self.store, relative, columns=names, batch_size=batch_size):
                read += batch.num_rows
                if read > self.num_rows:
                    raise self.miscounted("more")
                # a file where a column is empty lists has it as list<null>: typed like the other files
                pending.append(pa.Table.from_batches([batch]).cast(schema))
                held += batch.num_rows
                while held >= batch_size:
                    table = pa.concat_tables(pending)
                    yield table.slice(0, batch_size)
                    pending, held = [table.slice(batch_size)], held - batch_size
        if read < self.num_rows:
            raise self.miscounted("fewer")
        if held:
            yield pa.concat_tables(pending)

    def miscounted(self, how: str) -> IncompleteRunError:
        """The files hold `how` ("more" or "fewer") rows than their commit recorded: never released as they are."""
        return IncompleteRunError(
            f"{self.store.url}: the files {self.relatives} hold {how} rows than the {self.num_rows:,} their commit "
            "marker recorded (changed since the commit); run the stage that wrote them again"
        )

    def row(self, index: int) -> dict[str, Any]:
        """Row `index` as a dict (one row group of one file is read)."""
        if not 0 <= index < self.num_rows:
            raise IndexError(f"row {index} of {self.num_rows}")
        for relative in self.relatives:
            with self.store.fs.open(self.store.path(relative), "rb") as handle:
                parquet = pq.ParquetFile(handle)
                for group in range(parquet.num_row_groups):
                    rows = parquet.metadata.row_group(group).num_rows
                    if index < rows:
                        table = parquet.read_row_group(group).cast(self.features.arrow_schema).slice(index, 1)
                        return {name: values[0] for name, values in table.to_pydict().items()}
                    index -= rows
        raise IndexError(f"row {index} not found in {self.relatives}: the files hold fewer rows than recorded")

    def dataset(self):
        """The rows as a memory-mapped `datasets.Dataset` (for what needs the `datasets` API, e.g. `push_to_hub`)."""
        if not self.num_rows:
            import datasets

            return datasets.Dataset(self.store.read_table(self.relatives[0]).cast(self.features.arrow_schema))
        return self.store.read_dataset(self.relatives, split="train")


class DatasetRows(Rows):
    """A `datasets.Dataset` behind the interface of `ParquetRows` (`as_rows`).

    Example:
        >>> from datasets import Dataset
        >>> [t.num_rows for t in DatasetRows(Dataset.from_dict({"n": [1, 2, 3]})).tables(2)]
        [2, 1]
    """

    def __init__(self, dataset: Any) -> None:
        self.data = dataset
        self.num_rows, self.features = dataset.num_rows, dataset.features

    def tables(self, batch_size: int, columns: Sequence[str] | None = None) -> Iterator[Any]:
        dataset = self.data.select_columns(list(columns)) if columns is not None else self.data
        yield from dataset.with_format("arrow").iter(batch_size=batch_size)

    def row(self, index: int) -> dict[str, Any]:
        return self.data[index]

    def dataset(self):
        return self.data


def as_rows(data: Any) -> Rows:
    """`data` (a `datasets.Dataset` or `ParquetRows`) as rows read batch by batch.

    Example:
        >>> from datasets import Dataset
        >>> as_rows(Dataset.from_dict({"text": ["a"]})).column_names
        ['text']
    """
    if isinstance(data, Rows):
        return data
    import datasets

    if isinstance(data, datasets.Dataset):
        return DatasetRows(data)
    raise TypeError(f"rows are a datasets.Dataset or ParquetRows, got {type(data).__name__}")


class ParquetFileWriter:
    """Writes tables to one Parquet file as `datasets`' own `to_parquet` does (its schema with the features, its
    content-defined chunking, page index and per-column options: a file reads, deduplicates and shows on the Hub
    like one `datasets` wrote), each table written one row group; the same rows in the same tables give the same
    bytes, whatever they were read from.

    Example:
        >>> import datasets, pyarrow as pa
        >>> features = datasets.Features({"n": datasets.Value("int64")})
        >>> with ParquetFileWriter(io.BytesIO(), features) as writer:
        ...     writer.write(pa.table({"n": [1, 2]}))
    """

    def __init__(self, where: str | BinaryIO, features: Any) -> None:
        from datasets import config
        from datasets.io.parquet import get_parquet_column_options

        schema = features.arrow_schema
        self.schema, self.chunking = schema, config.DEFAULT_CDC_OPTIONS
        self.writer = pq.ParquetWriter(
            where,
            schema=schema,
            use_content_defined_chunking=self.chunking,
            write_page_index=True,
            **get_parquet_column_options(features, schema),
        )

    def write(self, table: Any) -> None:
        self.writer.write_table(table.cast(self.schema))

    def __enter__(self) -> ParquetFileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.writer.add_key_value_metadata({"content_defined_chunking": json.dumps(self.chunking)})
        self.writer.close()


# --------------------------------------------------------------------------------------------------------------------
# Whole-stage outputs: written once, committed by a marker, skipped when already current
# --------------------------------------------------------------------------------------------------------------------


class StageFolder(Store):
    """The output folder of one stage: its rows as Hub-layout Parquet files, other files it wrote (a release's card),
    and the commit marker written last (`.hf_ipt/stage.json`: fingerprint, settings, files with their size and
    SHA-256, rows, report). A stage counts as finished only when its marker is there and every file it lists is
    still what was committed (`damage`).

    Example:
        >>> folder = StageFolder("memory://doc-store/stage")
        >>> _ = folder.commit(config={"step": 1}, extra={"rows": 0})
        >>> folder.fingerprint() == fingerprint({"step": 1}), folder.report()
        (True, {'rows': 0})
    """

    def marker(self) -> dict | None:
        """The commit marker (fingerprint, config, settings, files, rows, checksums, report), None before a commit.

        Example:
            >>> StageFolder("memory://doc-store/none").marker() is None
            True
        """
        return self.read_json(STAGE_MARKER_PATH)

    def committed_marker(self) -> dict:
        """The commit marker, or IncompleteRunError when nothing is committed here (what reading the rows needs).

        Example:
            >>> StageFolder("memory://doc-store/empty").committed_marker()
            Traceback (most recent call last):
            hf_ipt.store.IncompleteRunError: memory://doc-store/empty holds no finished stage output (...)
        """
        marker = self.marker()
        if marker is None:
            raise IncompleteRunError(f"{self.url} holds no finished stage output ({STAGE_MARKER_PATH} not found)")
        return marker

    def fingerprint(self) -> str | None:
        """The fingerprint of the committed output, None when nothing is committed."""
        marker = self.marker()
        return None if marker is None else marker.get("fingerprint")

    def report(self) -> dict[str, Any]:
        """The report committed with the output (its marker's `extra`), {} when there is none."""
        return dict((self.marker() or {}).get("extra") or {})

    def damage(self, marker: Mapping[str, Any] | None = None) -> dict[str, str]:
        """The files of the committed output that are damaged since the commit, `{relative path: why}`: every file
        the marker lists is checked against its recorded size and SHA-256 (a listed file without a checksum counts
        as damaged: it cannot be vouched for). Empty when all are intact or nothing is committed.

        Example:
            >>> StageFolder("memory://doc-store/nothing").damage()
            {}
        """
        marker = self.marker() if marker is None else marker
        if marker is None:
            return {}
        recorded = dict(marker.get("checksums") or {})
        listed = [r for relatives in (marker.get("files") or {}).values() for r in relatives]
        damage = {relative: "committed without a checksum" for relative in listed if relative not in recorded}
        for relative, expected in sorted(recorded.items()):
            reason = file_damage(self, relative, expected)
            if reason is not None:
                damage[relative] = reason
        return dict(sorted(damage.items()))

    def describe_damage(self, damage: Mapping[str, str]) -> str:
        """One line naming each damaged file of `damage` and why.

        Example:
            >>> StageFolder("out/mixed").describe_damage({"data/train-00000-of-00001.parquet": "missing"})
            'out/mixed/data/train-00000-of-00001.parquet is damaged (missing)'
        """
        return "; ".join(f"{self.url.rstrip('/')}/{relative} is damaged ({why})" for relative, why in damage.items())

    def discard(self, keep: Collection[str] = ()) -> None:
        """Un-commit the output (`clear`) and delete every other file its marker listed, but those of `keep` (about
        to be written again): what a stage does before it writes a new output in the folder.

        Example:
            >>> StageFolder("memory://doc-store/discarded").discard()
        """
        previous = self.marker() or {}
        self.clear()
        for relative in sorted(previous.get("checksums") or {}):
            if relative not in keep:
                self.remove(relative)

    def clear(self) -> None:
        """Un-commit the output (marker first, so a crash in between leaves it uncommitted) and delete its data.

        Example:
            >>> StageFolder("memory://doc-store/cleared").clear()
        """
        self.remove(STAGE_MARKER_PATH)
        self.remove_data_files()
        if self.exists(TMP_DIR):
            self.remove_stale_tmp()

    def commit(
        self,
        *,
        config: Mapping[str, Any] | Any,
        files: Mapping[str, list[str]] | None = None,
        num_rows: Mapping[str, int] | None = None,
        extra: Mapping[str, Any] | None = None,
        checksums: Mapping[str, Mapping[str, Any]] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write the marker that makes the output count as finished (`fingerprint()` then returns the fingerprint of
        `config`); call it after everything else of the stage is written. `checksums` (`{relative:
        checksum(bytes)}`) are the files `damage` checks later; `settings` what the stage records of itself
        (already free of secrets); `extra` its report. Returns the marker.

        Example:
            >>> StageFolder("memory://doc-store/stage2").commit(config={"step": 1})["num_rows"]
            {}
        """
        marker = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "fingerprint": fingerprint(config),
            "config": config_to_dict(config),
            **({"settings": config_to_dict(settings)} if settings else {}),
            "files": dict(files or {}),
            "num_rows": dict(num_rows or {}),
            **({"checksums": {k: dict(v) for k, v in sorted(checksums.items())}} if checksums else {}),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **({"extra": config_to_dict(extra)} if extra else {}),
        }
        previous = self.marker()
        if previous is not None and {**previous, "finished_at": None} == {**marker, "finished_at": None}:
            return previous  # committed again as it was (an output redone to the same bytes): nothing changes
        self.write_atomic(STAGE_MARKER_PATH, json_bytes(marker))
        return marker

    def save(
        self,
        dataset_dict,
        *,
        config: Mapping[str, Any] | Any,
        rows_per_file: int = 100_000,
        extra: Mapping[str, Any] | None = None,
        checksums: Mapping[str, Mapping[str, Any]] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write rows as Hub-layout Parquet files, then commit them (`commit`) with each data file's size and SHA-256
        plus `checksums` of other files already written in the folder (e.g. a release's card). The rows: a
        `DatasetDict`, a `Dataset` (saved as split `train`), or {split: `Dataset` or `ParquetRows`} (another folder's
        committed rows, read batch by batch: memory stays bounded by a row group whatever the rows). Data files of an
        earlier output are removed first (marker first). `load_dataset(folder)` reads the result; the same rows give
        the same bytes whatever they were read from (`write_parquet`). Reads and writes every column; returns the
        marker.

        Example:
            >>> from datasets import Dataset
            >>> folder = StageFolder("memory://doc-store/saved")
            >>> folder.save(Dataset.from_dict({"text": ["a"]}), config={"x": 1})["files"]
            {'train': ['data/train-00000-of-00001.parquet']}
        """
        import datasets

        if isinstance(dataset_dict, datasets.Dataset):
            dataset_dict = {"train": dataset_dict}
        if not isinstance(dataset_dict, Mapping):
            raise TypeError(f"a stage saves a Dataset or DatasetDict, got {type(dataset_dict).__name__}")
        splits = {split: as_rows(rows) for split, rows in dataset_dict.items()}
        self.clear()  # marker first, then the old rows and the temporary files of killed writes
        files: dict[str, list[str]] = {}
        recorded = dict(checksums or {})
        for split, rows in splits.items():
            count = max(1, math.ceil(rows.num_rows / rows_per_file))
            tables = iter(rows.tables(ROW_GROUP_ROWS))
            carried = None  # the rest of a batch that crossed a file's end
            files[split] = []
            for index in range(count):
                wanted = min(rows_per_file, rows.num_rows - index * rows_per_file)
                relative = f"{DATA_DIR}/{split}-{index:05d}-of-{count:05d}.parquet"
                with self.writing(relative) as pending, ParquetFileWriter(pending.path, rows.features) as writer:
                    while wanted > 0:
                        table, carried = (carried if carried is not None else next(tables)), None
                        if table.num_rows > wanted:
                            table, carried = table.slice(0, wanted), table.slice(wanted)
                        writer.write(table)
                        wanted -= table.num_rows
                recorded[relative] = pending.checksum
                files[split].append(relative)
            if carried is not None or next(tables, None) is not None:  # rows beyond `num_rows`: never left out unsaid
                raise ValueError(
                    f"split {split!r} holds more rows than the {rows.num_rows:,} it says; nothing was committed"
                )
        num_rows = {split: rows.num_rows for split, rows in splits.items()}
        return self.commit(
            config=config, files=files, num_rows=num_rows, extra=extra, checksums=recorded, settings=settings
        )

    def write_output(
        self,
        *,
        config: Mapping[str, Any] | Any,
        data: Any = None,
        files: Mapping[str, bytes | FileCopy] | None = None,
        num_rows: Mapping[str, int] | None = None,
        extra: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Replace whatever output the folder holds by a new one and commit it: the old marker goes first (a crash
        from here on leaves nothing that looks finished), then every file the old output listed; `files` (e.g. a
        release's card and sidecars; a `FileCopy` is copied block by block) are written, then the rows `data` (a
        `Dataset` or `DatasetDict`, optional),
        then the marker with every file's checksum. `num_rows` are recorded when no rows are saved here (a Hub
        release). Returns the marker.

        Example:
            >>> folder = StageFolder("memory://doc-store/replaced")
            >>> sorted(folder.write_output(config={"v": 1}, files={"README.md": b"# card"})["checksums"])
            ['README.md']
        """
        self.discard(keep=files or {})
        written = {}
        for relative, content in (files or {}).items():
            if isinstance(content, FileCopy):
                written[relative] = self.copy_from(content, relative)
            else:
                self.write_atomic(relative, content)
                written[relative] = checksum(content)
        if data is not None:
            return self.save(data, config=config, extra=extra, checksums=written, settings=settings)
        return self.commit(config=config, num_rows=num_rows, extra=extra, checksums=written, settings=settings)

    def rows(self) -> dict[str, ParquetRows]:
        """The committed rows, {split: `ParquetRows`}: read batch by batch from the data files, never mapped whole
        (`load` maps them as `datasets` objects). IncompleteRunError when nothing is committed.

        Example:
            >>> from datasets import Dataset
            >>> folder = StageFolder("memory://doc-store/rows")
            >>> _ = folder.save(Dataset.from_dict({"text": ["a", "b", "c"]}), config={})
            >>> rows = folder.rows()["train"]
            >>> rows.num_rows, [table.num_rows for table in rows.tables(2)], rows.row(2)
            (3, [2, 1], {'text': 'c'})
        """
        marker = self.committed_marker()
        return {
            split: ParquetRows(self, relatives, marker["num_rows"][split])
            for split, relatives in marker["files"].items()
        }

    def load(self):
        """The committed rows as a `DatasetDict`, memory-mapped (`Store.read_dataset`); IncompleteRunError when
        nothing is committed.

        Example:
            >>> StageFolder("output/run/templified").load()["train"]  # doctest: +SKIP
        """
        import datasets

        marker = self.committed_marker()
        splits = {}
        for split, relatives in marker["files"].items():
            if marker["num_rows"][split]:
                # the files' checksums name the content: a re-saved stage is never served from an old cache
                key = fingerprint([(marker.get("checksums") or {}).get(r) for r in relatives])
                splits[split] = self.read_dataset(relatives, split=split, content_key=key)
            else:
                # datasets' Parquet reader rejects row-less files
                splits[split] = datasets.Dataset(self.read_table(relatives[0]))
        return datasets.DatasetDict(splits)


# --------------------------------------------------------------------------------------------------------------------
# One writer per run folder: a lease
# --------------------------------------------------------------------------------------------------------------------

LEASE_PATH = f"{STATE_DIR}/lease.json"  # the lease of the command writing the run folder
WORKER_LEASES = f"{STATE_DIR}/workers"  # the leases of synthesis workers started by hand, who share the folder
LEASE_RENEW_SECONDS = 30.0  # a holder rewrites its lease this often while it runs
# a lease not renewed for this long belongs to a holder that is gone (or stopped): another host cannot ask whether
# the process still runs, so this age, 20 renewals, is how it tells
LEASE_STALE_SECONDS = 600.0
# on a store with no atomic create (`atomic_create`), a lease is written, then read back after this long, and whoever's
# record is there has it (two writers starting within this window may still both run: see RunFolder.lease)
LEASE_SETTLE_SECONDS = 1.0
# fsspec back ends whose `pipe_file(path, data, mode="create")` fails with FileExistsError when the file exists, as
# one atomic step: protocol -> the packages (and their first versions) that make it so. s3fs 2024.12.0 sends S3's
# conditional write (If-None-Match: *), which botocore takes from 1.35.21 on; fsspec's memory file system lives in
# one process. Elsewhere fsspec's generic "create" checks, then writes (not atomic): there, the write-and-read-back.
_S3_CREATE = (("s3fs", "2024.12.0"), ("botocore", "1.35.21"))
ATOMIC_CREATE = {"s3": _S3_CREATE, "s3a": _S3_CREATE, "memory": (("fsspec", "2024.12.0"),)}


def atomic_create(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether `fs` creates a file only if it is absent, atomically (`ATOMIC_CREATE`): an object store's conditional
    write.

    Example:
        >>> atomic_create(fsspec.filesystem("memory")), atomic_create(fsspec.filesystem("file"))
        (True, False)
    """
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    known = [ATOMIC_CREATE[protocol] for protocol in protocols if protocol in ATOMIC_CREATE]
    return bool(known) and all(installed_at_least(package, first) for package, first in known[0])


def installed_at_least(package: str, first: str) -> bool:
    """Whether `package` is installed at version `first` or later (numeric parts compared: calendar or semantic).

    Example:
        >>> installed_at_least("fsspec", "2024.12.0"), installed_at_least("no-such-package-here", "1.0")
        (True, False)
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version(package)
    except PackageNotFoundError:
        return False
    numbers = [tuple(int(part) for part in re.findall(r"\d+", text)[:3]) for text in (installed, first)]
    return numbers[0] >= numbers[1]


class LeaseHeldError(RuntimeError):
    """Another process writes this run folder: its message names the holder (command, host, pid, since when).

    Example:
        >>> with RunFolder("output/run").lease("hf-ipt run r.yaml"):  # doctest: +SKIP
        ...     pass
        Traceback (most recent call last):
        LeaseHeldError: output/run is being written by `hf-ipt run r.yaml` (host gpu-1, pid 4242, since ...) ...
    """


def describe_holder(holder: Mapping[str, Any]) -> str:
    """A lease's holder in words: its command, host, pid and start.

    Example:
        >>> describe_holder({"command": "hf-ipt run r.yaml", "host": "h", "pid": 7, "started_at": "2025-01-01T00:00Z"})
        '`hf-ipt run r.yaml` (host h, pid 7, since 2025-01-01T00:00Z)'
    """
    command = holder.get("command") or "a process"
    return f"`{command}` (host {holder.get('host')}, pid {holder.get('pid')}, since {holder.get('started_at')})"


def lease_staleness(holder: Mapping[str, Any], now: float | None = None) -> str | None:
    """Why a lease's holder is gone (its process no longer runs on this host, or it was not renewed for
    `LEASE_STALE_SECONDS`), None while it may still run.

    Example:
        >>> lease_staleness({"host": socket.gethostname(), "pid": os.getpid(), "renewed_at": time.time()}) is None
        True
    """
    now = time.time() if now is None else now
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        if not pid_alive(holder["pid"]):
            return f"its process {holder['pid']} no longer runs on this host"
    renewed = holder.get("renewed_at")
    if not isinstance(renewed, int | float) or now - renewed > LEASE_STALE_SECONDS:
        return f"it was not renewed for more than {LEASE_STALE_SECONDS:.0f} s"
    return None


# (process id, run folder URL) -> [the lease this process holds there, how many callers hold it]; a forked child
# inherits the dict, not the lease
_HELD: dict[tuple[int, str], list] = {}


class Lease:
    """A run folder's lease held by this process: its record, renewed by a thread until `release`.

    Example:
        >>> lease = RunFolder("memory://doc-store/leased").acquire_lease("doc")
        >>> lease.record["pid"] == os.getpid()
        True
        >>> lease.release()
    """

    def __init__(self, folder: Store, path: str, record: dict[str, Any]) -> None:
        self.folder, self.path, self.record = folder, path, record
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="hf-ipt-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_RENEW_SECONDS):
            try:
                if not self.is_mine():
                    logger.warning("the lease of %s was taken over by another process", self.folder.url)
                    return
                self.record["renewed_at"] = time.time()
                self.folder.write_atomic(self.path, json_bytes(self.record))
            except OSError as err:  # a storage hiccup: try again at the next renewal
                logger.warning("could not renew the lease of %s (%s)", self.folder.url, err)

    def is_mine(self) -> bool:
        """Whether the lease file still holds this lease's record."""
        found = self.folder.read_json(self.path)
        return found is not None and found.get("token") == self.record["token"]

    def release(self) -> None:
        """Stop renewing and remove the lease file (when it is still this lease's)."""
        self._stop.set()
        try:
            if self.is_mine():
                self.folder.fs.rm_file(self.folder.path(self.path))
        except OSError as err:
            logger.warning(
                "could not remove the lease of %s (%s); the next command takes it over", self.folder.url, err
            )


class RunFolder(Store):
    """The root of a run (`run.output_dir`: a local path or an fsspec URL, with its storage options), and the output
    folder of each stage under it. The one object that carries a run's location: pass it, not the URL and its
    options apart.

    Example:
        >>> run = RunFolder("memory://doc-store/run")
        >>> run.stage("templified").url
        'memory://doc-store/run/templified'
    """

    def __repr__(self) -> str:
        return f"RunFolder({self.url!r})"

    def stage(self, folder: str) -> StageFolder:
        """The output folder of one stage (e.g. "synthesized")."""
        return StageFolder(f"{self.url.rstrip('/')}/{folder}", self.storage_options)

    @contextlib.contextmanager
    def lease(self, command: str = "", *, shared: bool = False):
        """Hold this run folder's lease while the block runs: one writer per run folder. Re-entrant within one
        process (a command's stages run under the command's lease). `shared`: a synthesis worker started by hand,
        which shares the folder with the other workers (each writes its own shards) but with no other command.
        LeaseHeldError, naming the holder, when another live process holds it; a stale lease (its process gone on
        this host, or not renewed for `LEASE_STALE_SECONDS`) is taken over with a warning.

        The lease is created atomically on a local disk (a hard link that fails if the file exists), and on the
        stores of `ATOMIC_CREATE` (S3 through s3fs >= 2024.12.0 and botocore >= 1.35.21: a conditional write,
        If-None-Match: *; memory://). On other stores (gcs://, abfs://, ...: their back ends' exclusive writes are not
        checked here yet) it is written, then read back after `LEASE_SETTLE_SECONDS`, so two commands started within
        that second may both run; so may two on an S3-compatible server that ignores If-None-Match.

        Example:
            >>> with RunFolder("memory://doc-store/leased-run").lease("hf-ipt run r.yaml") as lease:
            ...     lease.record["command"]
            'hf-ipt run r.yaml'
        """
        key = (os.getpid(), self.url)
        held = _HELD.get(key)
        if held is not None:
            held[1] += 1
            try:
                yield held[0]
            finally:
                held[1] -= 1
            return
        lease = self.acquire_lease(command, shared=shared)
        _HELD[key] = [lease, 1]
        try:
            yield lease
        finally:
            del _HELD[key]
            lease.release()

    def acquire_lease(self, command: str = "", *, shared: bool = False) -> Lease:
        """Take this run folder's lease (see `lease`, which releases it too); LeaseHeldError when it is held."""
        record = {
            "command": command,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "renewed_at": time.time(),
            "shared": shared,
            "token": uuid.uuid4().hex,
        }
        if shared:
            path = f"{WORKER_LEASES}/{tmp_owner()}.json"
            self.write_atomic(path, json_bytes(record))
            lease = Lease(self, path, record)
            holder = self.read_json(LEASE_PATH)
            if holder is not None and lease_staleness(holder) is None:
                lease.release()
                raise self._held(holder)
            return lease
        while not self._create_lease(record):
            holder = self.read_json(LEASE_PATH)
            stale = "its record cannot be read" if holder is None else lease_staleness(holder)
            if stale is None:
                raise self._held(holder)
            logger.warning(
                "taking over the lease of %s held by %s: %s", self.url, describe_holder(holder or {}), stale
            )
            self.remove(LEASE_PATH)
        lease = Lease(self, LEASE_PATH, record)
        workers = self._worker_leases()
        if workers:  # workers started by hand hold the folder: wait for them (they took their leases first)
            lease.release()
            raise self._held(workers[0], len(workers))
        return lease

    def _create_lease(self, record: Mapping[str, Any]) -> bool:
        if self.is_local:
            return self.write_atomic(LEASE_PATH, json_bytes(record), exclusive=True)
        if atomic_create(self.fs):
            try:
                self.fs.pipe_file(self.path(LEASE_PATH), json_bytes(record), mode="create")
            except FileExistsError:
                return False
            return True
        if self.exists(LEASE_PATH):
            return False
        self.write_atomic(LEASE_PATH, json_bytes(record))
        time.sleep(LEASE_SETTLE_SECONDS)  # let a writer that raced us land its record, then see whose is there
        found = self.read_json(LEASE_PATH) or {}
        if found.get("token") == record["token"]:
            return True
        raise self._held(found)

    def _worker_leases(self) -> list[dict[str, Any]]:
        """The live leases of synthesis workers started by hand (those of workers that are gone are removed)."""
        live = []
        for path in self.fs.glob(self.path(f"{WORKER_LEASES}/*.json")) if self.exists(WORKER_LEASES) else []:
            try:
                record = json.loads(self.fs.cat_file(path))
            except (FileNotFoundError, ValueError):
                continue  # ended meanwhile, or unreadable: no live worker writes it
            if lease_staleness(record) is None:
                live.append(record)
            else:
                logger.warning("removing the lease of a gone worker, %s", describe_holder(record))
                self.fs.rm_file(path)
        return live

    def _held(self, holder: Mapping[str, Any], count: int = 1) -> LeaseHeldError:
        who = describe_holder(holder) + (f" and {count - 1} other worker(s)" if count > 1 else "")
        return LeaseHeldError(
            f"{self.url} is being written by {who}; one command writes a run folder at a time. Wait for it to end "
            f"(or stop it), then run this command again. A holder that was killed is noticed by itself: its lease "
            f"({LEASE_PATH}) is taken over once its process is gone from this host, or once it was not renewed for "
            f"{LEASE_STALE_SECONDS:.0f} s (another host)"
        )
