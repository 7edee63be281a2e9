"""Resumable, sharded execution of a batched map function: hours of synthesis survive a crash.

`datasets.Dataset.map` loses all partial progress when the process dies. `ShardedRunner` cuts the input into
contiguous shards of `shard_size` rows, maps each shard on its own and commits it to an output folder (a local path
or any fsspec URL) in three steps, so that a crash at any point never leaves a shard that looks finished but is not:

1. the shard's Parquet file is written under a temporary name, then renamed to its final name;
2. a completion marker (JSON: rows, size, SHA-256, input hash, timing) is written last, also via a temporary name.

A shard counts as finished only when its marker exists and matches its file. A re-run skips finished shards and
redoes at most the one that was in flight. A manifest at the output root records the fingerprint of the
configuration; a run with a different configuration is refused unless `overwrite=True`.

Several processes or machines can share one output folder: worker `w` of `n` takes the shards `i` with
`i % n == w`, so no two workers ever write the same shard. `assemble_shards` reads the finished shards in order.

Layout of the output folder (loadable as is with `datasets.load_dataset(output_dir)`, which ignores `.hf_ipt/`):

```
data/train-00000-of-00012.parquet      one file per shard, Hub naming
.hf_ipt/manifest.json                  configuration, fingerprint, input size, shard layout
.hf_ipt/done/shard-00000.json          completion marker of shard 0, written last
.hf_ipt/tmp/                           files being written
```

Example:
    >>> runner = ShardedRunner(synthesizer, "output/synthesized", shard_size=1024, batch_size=256,
    ...                        config=recipe_dict)  # doctest: +SKIP
    >>> report = runner.run(dataset)  # doctest: +SKIP
    >>> synthesized = assemble_shards("output/synthesized")["train"]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow.parquet as pq

from hf_ipt.config import config_to_dict, fingerprint

logger = logging.getLogger(__name__)

FORMAT_NAME = "hf-ipt-shards"
FORMAT_VERSION = 1
STATE_DIR = ".hf_ipt"
MANIFEST_PATH = f"{STATE_DIR}/manifest.json"
MARKER_DIR = f"{STATE_DIR}/done"
TMP_DIR = f"{STATE_DIR}/tmp"
DATA_DIR = "data"


class ResumeConflictError(RuntimeError):
    """The output folder holds a run that this one cannot safely continue (other config, other input)."""


class IncompleteRunError(RuntimeError):
    """Assembly was asked for while some shards are not finished; the message lists them."""


@dataclass(frozen=True)
class Shard:
    """One contiguous slice `[start, stop)` of the input rows and where its output goes."""

    index: int
    start: int
    stop: int
    num_shards: int
    split: str

    @property
    def num_rows(self) -> int:
        return self.stop - self.start

    @property
    def data_path(self) -> str:
        return f"{DATA_DIR}/{self.split}-{self.index:05d}-of-{self.num_shards:05d}.parquet"

    @property
    def marker_path(self) -> str:
        return f"{MARKER_DIR}/shard-{self.index:05d}.json"


def plan_shards(num_rows: int, shard_size: int, split: str = "train") -> list[Shard]:
    """Contiguous shards of `shard_size` rows (the last one may be shorter). An empty input gives one empty shard,
    so that even an empty run produces a (empty) dataset.

    Example:
        >>> [(s.start, s.stop) for s in plan_shards(10, 4)]
        [(0, 4), (4, 8), (8, 10)]
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if num_rows < 0:
        raise ValueError(f"num_rows must be >= 0, got {num_rows}")
    count = max(1, math.ceil(num_rows / shard_size))
    return [Shard(i, i * shard_size, min(num_rows, (i + 1) * shard_size), count, split) for i in range(count)]


def shards_of_worker(num_shards: int, worker_index: int, num_workers: int) -> list[int]:
    """Indexes of the shards a worker takes: `i % num_workers == worker_index`, disjoint and covering all shards.

    Example:
        >>> shards_of_worker(7, 1, 3)
        [1, 4]
    """
    _check_worker(worker_index, num_workers)
    return list(range(worker_index, num_shards, num_workers))


def _check_worker(worker_index: int, num_workers: int) -> None:
    if not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers (world size) must be an integer >= 1, got {num_workers!r}")
    if not isinstance(worker_index, int) or not 0 <= worker_index < num_workers:
        raise ValueError(
            f"worker_index (rank) must be an integer in [0, {num_workers - 1}] for num_workers={num_workers}, "
            f"got {worker_index!r}"
        )


def input_sha256(dataset) -> str:
    """Content hash of a `datasets.Dataset`'s rows: column names and values only, so it does not depend on how the
    Arrow data is chunked, sliced or laid out in memory, nor on the pyarrow version that wrote it.

    Example:
        >>> from datasets import Dataset
        >>> input_sha256(Dataset.from_dict({"t": ["a", "b"]})) == input_sha256(Dataset.from_dict({"t": ["a", "b"]}))
        True
    """
    table = dataset.with_format("arrow")[:] if len(dataset) else dataset.data.table.slice(0, 0)
    digest = hashlib.sha256()
    for name, column in zip(table.column_names, table.columns, strict=True):
        digest.update(json.dumps(name).encode("utf-8"))
        # JSON of the Python values: canonical for every Arrow layout; repr() covers bytes, dates, decimals
        digest.update(
            json.dumps(column.to_pylist(), ensure_ascii=False, default=repr).encode("utf-8", "surrogatepass")
        )
    return digest.hexdigest()


def _config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain-data configs."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _config_diff(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _ignored(key: str, ignore: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in ignore)


@dataclass
class ShardRunReport:
    """What one `ShardedRunner.run` call did."""

    output_dir: str
    num_shards: int
    processed: list[int] = field(default_factory=list)  # shards this call mapped and committed
    skipped: list[int] = field(default_factory=list)  # this worker's shards found finished
    missing: list[int] = field(default_factory=list)  # shards not finished after this call (other workers')
    rows_processed: int = 0
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        """True when every shard of the run is finished, so `assemble_shards` can be called."""
        return not self.missing


class _Store:
    """The output folder on any fsspec filesystem, with the few atomic-ish operations the runner needs."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None):
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.root = root.rstrip("/")
        self.is_local = "file" in _protocols(self.fs)

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def exists(self, relative: str) -> bool:
        return self.fs.exists(self.path(relative))

    def read_json(self, relative: str) -> dict | None:
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
        is why the completion marker, not the data file, is the commit point."""
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
            _fsync_dir(os.path.dirname(target))
        else:
            self.fs.mv(tmp, target)
        return True

    def remove_tmp(self, prefix: str) -> None:
        for path in self.fs.glob(self.path(f"{TMP_DIR}/{prefix}*")):
            self.fs.rm_file(path)

    def remove(self, relative: str) -> None:
        if self.exists(relative):
            self.fs.rm(self.path(relative), recursive=True)

    def size(self, relative: str) -> int | None:
        try:
            return self.fs.size(self.path(relative))
        except FileNotFoundError:
            return None


def _fsync_dir(path: str) -> None:
    """Persist a rename: the directory entry must reach the disk too (a no-op where directories cannot be opened)."""
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


def _protocols(fs) -> tuple[str, ...]:
    protocol = fs.protocol
    return tuple(protocol) if isinstance(protocol, tuple | list) else (protocol,)


def read_manifest(output_dir: str, storage_options: Mapping[str, Any] | None = None) -> dict | None:
    """The manifest of a sharded run folder, or None when the folder holds no run."""
    return _Store(output_dir, storage_options).read_json(MANIFEST_PATH)


def _finished(store: _Store, shard: Shard, manifest: Mapping[str, Any]) -> dict | None:
    """The shard's marker if the shard is committed and its file is intact; None otherwise."""
    marker = store.read_json(shard.marker_path)
    if marker is None:
        return None
    if marker.get("fingerprint") != manifest["fingerprint"] or marker.get("file") != shard.data_path:
        return None
    if store.size(shard.data_path) != marker.get("bytes"):
        logger.warning(
            "shard %d: %s is missing or changed since it was committed; redoing it", shard.index, shard.data_path
        )
        return None
    return marker


def run_status(output_dir: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Progress of a sharded run folder: shards finished and missing, rows, and who should take the missing ones.

    Example:
        >>> run_status("output/quickstart/synthesized")["missing"]  # doctest: +SKIP
        [3, 7]
    """
    store = _Store(output_dir, storage_options)
    manifest = store.read_json(MANIFEST_PATH)
    if manifest is None:
        return {"output_dir": output_dir, "started": False, "done": [], "missing": [], "num_shards": 0}
    shards = plan_shards(manifest["num_input_rows"], manifest["shard_size"], manifest["split"])
    done, missing, rows_out = [], [], 0
    for shard in shards:
        marker = _finished(store, shard, manifest)
        if marker is None:
            missing.append(shard.index)
        else:
            done.append(shard.index)
            rows_out += marker["num_rows"]
    return {
        "output_dir": output_dir,
        "started": True,
        "num_shards": len(shards),
        "done": done,
        "missing": missing,
        "num_input_rows": manifest["num_input_rows"],
        "rows_done": rows_out,
        "fingerprint": manifest["fingerprint"],
        "split": manifest["split"],
    }


class ShardedRunner:
    """Map `map_fn` over a `datasets.Dataset` shard by shard, committing each shard so an interrupted run resumes.

    Args:
        map_fn: a batched map function (dict of lists in, dict of lists out, one output row per input row), e.g. an
            `hf_ipt.synthesize.Synthesizer`. It is called exactly as `Dataset.map(map_fn, batched=True,
            batch_size=batch_size)` would call it on each shard.
        output_dir: local path or fsspec URL of the run folder.
        shard_size: input rows per shard; a multiple of `batch_size`, so that a sharded run feeds `map_fn` the very
            batches an unsharded `map` would (batch boundaries decide which rows form M-shot chains).
        batch_size: rows per call of `map_fn`.
        config: plain data describing everything that determines the output (source, model, settings). Its
            fingerprint is stored in the manifest; resuming with a different one is refused.
        split: split name of the assembled `DatasetDict` and of the data files.
        worker_index, num_workers: this worker takes shards `i % num_workers == worker_index`.
        overwrite: when the folder holds a run with another configuration, delete it and start over instead of
            refusing. A run with the same configuration is always resumed (so every worker of a job may pass it).
        resume_ignore: dotted config keys whose change does not block resuming (settings that do not change output).
        verify_inputs: re-hash the input rows of finished shards on resume and refuse if they changed.
        storage_options: fsspec options for a remote `output_dir`.
        desc: label of the progress bars.

    Reads: the columns `map_fn` reads. Writes: the input columns plus those `map_fn` returns, one row per input row.
    """

    def __init__(
        self,
        map_fn: Callable[[dict[str, list]], dict[str, list]],
        output_dir: str,
        *,
        shard_size: int,
        batch_size: int,
        config: Mapping[str, Any] | Any = None,
        split: str = "train",
        worker_index: int = 0,
        num_workers: int = 1,
        overwrite: bool = False,
        resume_ignore: Sequence[str] = (),
        verify_inputs: bool = True,
        storage_options: Mapping[str, Any] | None = None,
        desc: str = "shards",
    ):
        if not callable(map_fn):
            raise TypeError(f"map_fn must be a batched map function (callable), got {type(map_fn).__name__}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not isinstance(shard_size, int) or shard_size < 1:
            raise ValueError(f"shard_size must be an integer >= 1, got {shard_size!r}")
        if shard_size % batch_size:
            lower = max(batch_size, shard_size - shard_size % batch_size)
            raise ValueError(
                f"shard_size ({shard_size}) must be a multiple of the batch size ({batch_size}): batch boundaries "
                f"decide which rows are chained together, and a shard ending mid-batch would chain other rows than "
                f"an unsharded run; use shard_size {lower} or {lower + batch_size}"
            )
        if not isinstance(split, str) or not re.fullmatch(r"\w+(\.\w+)*", split):
            raise ValueError(f"split must be a plain split name such as 'train', got {split!r}")
        _check_worker(worker_index, num_workers)
        self.map_fn = map_fn
        self.output_dir = output_dir
        self.shard_size = shard_size
        self.batch_size = batch_size
        self.config = config_to_dict(config) if config is not None else {}
        self.split = split
        self.worker_index = worker_index
        self.num_workers = num_workers
        self.overwrite = overwrite
        self.resume_ignore = list(resume_ignore)
        self.verify_inputs = verify_inputs
        self.storage_options = dict(storage_options or {})
        self.desc = desc

    # --- manifest ---------------------------------------------------------------------------------------------

    def _manifest_for(self, num_rows: int) -> dict[str, Any]:
        layout = {"num_input_rows": num_rows, "shard_size": self.shard_size, "batch_size": self.batch_size}
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "fingerprint": fingerprint({"config": self.config, "layout": layout, "split": self.split}),
            "config": self.config,
            "split": self.split,
            **layout,
            "num_shards": len(plan_shards(num_rows, self.shard_size, self.split)),
        }

    def _conflicts(self, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
        """Why `old` cannot be resumed by `new`; empty when it can."""
        if old.get("format") != FORMAT_NAME or old.get("version") != FORMAT_VERSION:
            return [
                f"format {old.get('format')!r} v{old.get('version')} (this hf-ipt writes {FORMAT_NAME} "
                f"v{FORMAT_VERSION})"
            ]
        reasons = []
        for key in ("num_input_rows", "shard_size", "batch_size", "split"):
            if old.get(key) != new[key]:
                reasons.append(f"{key}: {old.get(key)!r} -> {new[key]!r}")
        for key in _config_diff(old.get("config", {}), new["config"]):
            if not _ignored(key, self.resume_ignore):
                reasons.append(f"{key}: {_lookup(old.get('config', {}), key)!r} -> {_lookup(new['config'], key)!r}")
        return reasons

    def _open(self, store: _Store, num_rows: int) -> dict[str, Any]:
        """Create the manifest, or check the existing one allows resuming; returns the manifest in force."""
        wanted = self._manifest_for(num_rows)
        existing = store.read_json(MANIFEST_PATH)
        if existing is None and store.fs.glob(store.path(f"{DATA_DIR}/{self.split}-*-of-*.parquet")):
            if not self.overwrite:
                raise ResumeConflictError(
                    f"{self.output_dir} already holds {DATA_DIR}/{self.split}-*.parquet files but no hf-ipt manifest; "
                    "refusing to mix outputs. Choose another output folder, or pass overwrite=True "
                    "(--run.overwrite) to replace them"
                )
            self._clear(store)
        if existing is not None:
            reasons = self._conflicts(existing, wanted)
            if not reasons:
                return existing
            if not self.overwrite:
                raise ResumeConflictError(
                    f"{self.output_dir} holds a run with another configuration, refusing to resume into it:\n  "
                    + "\n  ".join(reasons)
                    + "\nUse another output folder, restore the old settings, list keys that do not change the "
                    "output in run.resume_ignore, or pass overwrite=True (--run.overwrite) to delete it and start over"
                )
            logger.warning("overwrite: deleting the previous run in %s (%s)", self.output_dir, "; ".join(reasons))
            self._clear(store)
        if not store.write_atomic(MANIFEST_PATH, _json_bytes(wanted), exclusive=True):
            # another worker created it between our read and our write: it must describe the same run
            return self._open(store, num_rows)
        return wanted

    def _clear(self, store: _Store) -> None:
        for path in store.fs.glob(store.path(f"{DATA_DIR}/*-*-of-*.parquet")):
            store.fs.rm_file(path)
        store.remove(STATE_DIR)

    # --- running ----------------------------------------------------------------------------------------------

    def run(self, dataset) -> ShardRunReport:
        """Map and commit this worker's unfinished shards of `dataset`; returns what was done and what is missing."""
        import datasets
        from datasets.utils import tqdm as hf_tqdm

        if not isinstance(dataset, datasets.Dataset):
            raise TypeError(
                f"ShardedRunner.run needs a map-style datasets.Dataset (shards are index ranges), got "
                f"{type(dataset).__name__}; load the source without streaming=True"
            )
        started = time.perf_counter()
        store = _Store(self.output_dir, self.storage_options)
        manifest = self._open(store, len(dataset))
        shards = plan_shards(len(dataset), self.shard_size, self.split)
        mine = [shards[i] for i in shards_of_worker(len(shards), self.worker_index, self.num_workers)]
        report = ShardRunReport(output_dir=self.output_dir, num_shards=len(shards))

        todo = []
        for shard in mine:
            marker = _finished(store, shard, manifest)
            if marker is None:
                todo.append(shard)
                continue
            if self.verify_inputs and marker.get("input_sha256") != input_sha256(
                dataset.select(range(shard.start, shard.stop))
            ):
                raise ResumeConflictError(
                    f"the input rows {shard.start}..{shard.stop - 1} of finished shard {shard.index} differ from the "
                    f"rows it was synthesized from (a moved dataset revision, other data files, reordered input?). "
                    f"Pin source.revision, or pass overwrite=True (--run.overwrite) after changing the config, or "
                    f"verify_inputs=False (--run.verify_inputs false) to resume anyway"
                )
            report.skipped.append(shard.index)
        if report.skipped:
            logger.info(
                "resuming %s: %d of this worker's %d shards already finished",
                self.output_dir,
                len(report.skipped),
                len(mine),
            )

        bar = hf_tqdm(
            total=sum(s.num_rows for s in mine),
            initial=sum(s.num_rows for s in mine if s not in todo),
            unit=" rows",
            desc=f"{self.desc} (worker {self.worker_index}/{self.num_workers})" if self.num_workers > 1 else self.desc,
            dynamic_ncols=True,
        )
        try:
            for shard in todo:
                self._process(store, dataset, shard, manifest)
                report.processed.append(shard.index)
                report.rows_processed += shard.num_rows
                bar.update(shard.num_rows)
                bar.set_postfix_str(f"shard {shard.index + 1}/{len(shards)} committed", refresh=True)
        finally:
            bar.close()
        report.missing = [s.index for s in shards if _finished(store, s, manifest) is None]
        report.seconds = time.perf_counter() - started
        return report

    def _process(self, store: _Store, dataset, shard: Shard, manifest: Mapping[str, Any]) -> None:
        started = time.perf_counter()
        # leftovers of an attempt that crashed while writing this shard (only this worker ever writes it)
        store.remove_tmp(shard.data_path.replace("/", "__"))
        store.remove_tmp(shard.marker_path.replace("/", "__"))
        rows = dataset.select(range(shard.start, shard.stop))
        mapped = rows.map(
            self.map_fn,
            batched=True,
            batch_size=self.batch_size,
            keep_in_memory=True,
            load_from_cache_file=False,
            # a fixed fingerprint: no hashing of a map_fn that may hold a loaded model, and byte-stable metadata
            new_fingerprint=fingerprint([manifest["fingerprint"], shard.index])[:32],
            desc=f"shard {shard.index + 1}/{shard.num_shards}",
        )
        if len(mapped) != shard.num_rows:
            raise RuntimeError(
                f"map_fn returned {len(mapped)} rows for the {shard.num_rows} input rows of shard {shard.index}; "
                "the runner needs one output row per input row (run one-to-many steps such as chunking before it)"
            )
        buffer = io.BytesIO()
        # the table carries the features in its schema metadata, so the Parquet file restores them on load
        pq.write_table(mapped.data.table, buffer)
        data = buffer.getvalue()
        store.write_atomic(shard.data_path, data)
        marker = {
            "shard": shard.index,
            "start": shard.start,
            "stop": shard.stop,
            "num_rows": len(mapped),
            "file": shard.data_path,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "input_sha256": input_sha256(rows),
            "fingerprint": manifest["fingerprint"],
            "attempt": uuid.uuid4().hex,
            "worker": {
                "index": self.worker_index,
                "of": self.num_workers,
                "host": socket.gethostname(),
                "pid": os.getpid(),
            },
            "seconds": round(time.perf_counter() - started, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        store.write_atomic(shard.marker_path, _json_bytes(marker))  # the commit point: written last

    def assemble(self, **kwargs):
        """Shortcut for `assemble_shards(self.output_dir, ...)`."""
        return assemble_shards(self.output_dir, storage_options=self.storage_options, **kwargs)


def _lookup(data: Mapping[str, Any], dotted: str) -> Any:
    current: Any = data
    for part in dotted.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return None
        current = current[part]
    return current


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def iter_shard_tables(
    output_dir: str, *, columns: Sequence[str] | None = None, storage_options: Mapping[str, Any] | None = None
):
    """The finished shards' rows as pyarrow Tables, in input order, reading only `columns` (those present) — for
    statistics over a large run without assembling (and caching a copy of) the whole dataset."""
    store = _Store(output_dir, storage_options)
    manifest = store.read_json(MANIFEST_PATH)
    if manifest is None:
        raise IncompleteRunError(f"{output_dir} holds no sharded run ({MANIFEST_PATH} not found)")
    for shard in plan_shards(manifest["num_input_rows"], manifest["shard_size"], manifest["split"]):
        if _finished(store, shard, manifest) is None:
            raise IncompleteRunError(f"shard {shard.index} of {output_dir} is not finished")
        with store.fs.open(store.path(shard.data_path), "rb") as handle:
            parquet = pq.ParquetFile(handle)
            present = None if columns is None else [c for c in columns if c in parquet.schema_arrow.names]
            yield parquet.read(columns=present)


def assemble_shards(
    output_dir: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    verify_checksums: bool = False,
):
    """The finished run as a `DatasetDict` (`{split: Dataset}`), rows in input order.

    Local folders are read memory-mapped through `Dataset.from_parquet`; remote ones are read into memory. Raises
    `IncompleteRunError` listing the unfinished shards (and which worker index takes each) when the run is not done.
    With `verify_checksums`, every file's SHA-256 is checked against its marker.

    Example:
        >>> assemble_shards("output/quickstart/synthesized")["train"].num_rows  # doctest: +SKIP
        300
    """
    import datasets

    store = _Store(output_dir, storage_options)
    manifest = store.read_json(MANIFEST_PATH)
    if manifest is None:
        raise IncompleteRunError(f"{output_dir} holds no sharded run ({MANIFEST_PATH} not found)")
    shards = plan_shards(manifest["num_input_rows"], manifest["shard_size"], manifest["split"])
    markers = [_finished(store, s, manifest) for s in shards]
    missing = [s.index for s, m in zip(shards, markers, strict=True) if m is None]
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (", ..." if len(missing) > 20 else "")
        raise IncompleteRunError(
            f"{len(missing)} of {len(shards)} shards of {output_dir} are not finished (shards {shown}); run the "
            "missing workers (or a single worker) with the same config to finish them"
        )
    paths = [store.path(s.data_path) for s in shards]
    if verify_checksums:
        for shard, marker, path in zip(shards, markers, paths, strict=True):
            if hashlib.sha256(store.fs.cat_file(path)).hexdigest() != marker["sha256"]:
                raise IncompleteRunError(f"{shard.data_path} in {output_dir} does not match its completion marker")

    # datasets' Parquet reader rejects row-less files; an empty shard adds no rows, so leave it out
    paths = [p for p, m in zip(paths, markers, strict=True) if m["num_rows"]]
    if not paths:
        empty = pq.read_table(io.BytesIO(store.fs.cat_file(store.path(shards[0].data_path))))
        return datasets.DatasetDict({manifest["split"]: datasets.Dataset(empty)})
    schemas = [pq.read_schema(store.fs.open(p, "rb")) for p in paths]
    same_schema = all(s.equals(schemas[0], check_metadata=False) for s in schemas)
    if store.is_local and same_schema:
        dataset = datasets.Dataset.from_parquet(paths, split=manifest["split"])
    elif store.is_local:
        # e.g. a list column that is empty in every row of one shard gets a null item type there: align them
        dataset = datasets.concatenate_datasets([datasets.Dataset.from_parquet(p) for p in paths])
    else:
        parts = [datasets.Dataset(pq.read_table(io.BytesIO(store.fs.cat_file(p)))) for p in paths]
        dataset = datasets.concatenate_datasets(parts)
    return datasets.DatasetDict({manifest["split"]: dataset})


# --------------------------------------------------------------------------------------------------------------------
# Whole-stage outputs (templify, mix, release): written once, committed by a marker, skipped when already current
# --------------------------------------------------------------------------------------------------------------------

STAGE_MARKER_PATH = f"{STATE_DIR}/stage.json"


def read_stage_marker(output_dir: str, storage_options: Mapping[str, Any] | None = None) -> dict | None:
    """The commit marker of a stage output written by `save_stage` (fingerprint, config, files, rows, report)."""
    return _Store(output_dir, storage_options).read_json(STAGE_MARKER_PATH)


def stage_fingerprint(output_dir: str, storage_options: Mapping[str, Any] | None = None) -> str | None:
    """Fingerprint of the committed stage output in `output_dir`, or None when there is none (or it is unfinished)."""
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
    never mistaken for a finished one. `load_dataset(output_dir)` reads the result.

    Example:
        >>> save_stage(templified, "output/run/templified", config={"templify": {...}})  # doctest: +SKIP
    """
    import datasets

    if isinstance(dataset_dict, datasets.Dataset):
        dataset_dict = datasets.DatasetDict({"train": dataset_dict})
    if not isinstance(dataset_dict, datasets.DatasetDict):
        raise TypeError(f"save_stage needs a Dataset or DatasetDict, got {type(dataset_dict).__name__}")
    store = _Store(output_dir, storage_options)
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
    """Un-commit a stage output (marker first, so a crash in between leaves it uncommitted) and delete its data."""
    store = _Store(output_dir, storage_options)
    store.remove(STAGE_MARKER_PATH)
    for path in store.fs.glob(store.path(f"{DATA_DIR}/*-*-of-*.parquet")):
        store.fs.rm_file(path)


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
    fingerprint of `config`); call it after everything else of the stage is written. Returns the marker."""
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
    _Store(output_dir, storage_options).write_atomic(STAGE_MARKER_PATH, _json_bytes(marker))
    return marker


def write_file(output_dir: str, relative: str, data: bytes, *, storage_options: Mapping[str, Any] | None = None):
    """Write one file under `output_dir` (local path or fsspec URL) atomically: temporary name, then rename."""
    _Store(output_dir, storage_options).write_atomic(relative, data)


def load_stage(output_dir: str, *, storage_options: Mapping[str, Any] | None = None):
    """The `DatasetDict` committed by `save_stage` in `output_dir`; IncompleteRunError if there is none."""
    import datasets

    store = _Store(output_dir, storage_options)
    marker = store.read_json(STAGE_MARKER_PATH)
    if marker is None:
        raise IncompleteRunError(f"{output_dir} holds no finished stage output ({STAGE_MARKER_PATH} not found)")
    splits = {}
    for split, relatives in marker["files"].items():
        paths = [store.path(r) for r in relatives]
        if not marker["num_rows"][split] or not store.is_local:
            tables = [pq.read_table(io.BytesIO(store.fs.cat_file(p))) for p in paths]
            splits[split] = datasets.concatenate_datasets([datasets.Dataset(t) for t in tables])
        else:
            splits[split] = datasets.Dataset.from_parquet(paths, split=split)
    return datasets.DatasetDict(splits)
