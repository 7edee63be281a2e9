"""Resumable, sharded execution of a batched map function: hours of synthesis survive a crash.

`ShardedRunner` cuts a `datasets.Dataset` into contiguous shards of `shard_size` rows (whole batches), maps each on its
own and commits it to an output folder (`hf_ipt.store.Store`: a local path or any fsspec URL): the shard's Parquet
file is renamed into place, then its completion marker (rows, size, SHA-256, input hash) is written last. A shard
counts as finished only when its marker matches its file, so a re-run skips finished shards and redoes at most the
one in flight. The manifest records the configuration's fingerprint; another configuration is refused unless
`overwrite=True`.

Worker `w` of `n` takes the shards `i % n == w`, so workers sharing a folder never write the same shard. Where the
workers run is the runner's `executor` (`hf_ipt.execution.make_executor`): 'local' runs one worker in this process
(start the others yourself, e.g. `hf-ipt synthesize --worker-index w --num-workers n`); 'processes' starts all of
them as pinned processes on this machine; 'ray' starts all of them as Ray tasks. `assemble_shards` reads the finished
run in input order.

Layout of the output folder (loadable as is with `datasets.load_dataset(folder)`, which ignores `.hf_ipt/`):

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
    >>> on_ray = ShardedRunner(synthesizer, Store("s3://bucket/run", {"profile": "ipt"}), shard_size=1024,
    ...     batch_size=256, num_workers=16, executor=RayExecutor(num_gpus_per_worker=1))  # doctest: +SKIP
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

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hf_ipt.execution import Executor, LocalExecutor, make_executor
from hf_ipt.redaction import is_secret_key
from hf_ipt.store import (
    DATA_DIR,
    FORMAT_NAME,
    FORMAT_VERSION,
    STATE_DIR,
    IncompleteRunError,
    Store,
    checksum,
    config_diff,
    config_to_dict,
    file_damage,
    fingerprint,
    json_bytes,
)
from hf_ipt.validation import check_shard_size

logger = logging.getLogger(__name__)

MANIFEST_PATH = f"{STATE_DIR}/manifest.json"
MARKER_DIR = f"{STATE_DIR}/done"


class ResumeConflictError(RuntimeError):
    """The output folder holds a run that this one cannot safely continue (other config, other input).

    Example:
        >>> ShardedRunner(fn, "out", shard_size=8, batch_size=4, config={"seed": 1}).run(ds)  # doctest: +SKIP
        Traceback (most recent call last):
        ResumeConflictError: ...
        >>> ShardedRunner(fn, "out", shard_size=8, batch_size=4, config={"seed": 1}, overwrite=True)  # doctest: +SKIP
    """


@dataclass(frozen=True)
class Shard:
    """One contiguous slice `[start, stop)` of the input rows and where its output goes.

    Example:
        >>> shard = plan_shards(10, 4)[2]
        >>> shard.num_rows, shard.data_path, shard.marker_path
        (2, 'data/train-00002-of-00003.parquet', '.hf_ipt/done/shard-00002.json')
    """

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


def _ignored(key: str, ignore: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in ignore)


@dataclass
class ShardRunReport:
    """What one `ShardedRunner.run` call did.

    Example:
        >>> report = ShardRunReport("out", 3, processed=[0, 2], missing=[1])
        >>> report.complete
        False
    """

    output_dir: str
    num_shards: int
    processed: list[int] = field(default_factory=list)  # shards this call mapped and committed
    skipped: list[int] = field(default_factory=list)  # this worker's shards found finished
    retried: list[int] = field(default_factory=list)  # shards committed with failed rows, mapped again by this call
    missing: list[int] = field(default_factory=list)  # shards not finished after this call (other workers')
    rows_processed: int = 0
    seconds: float = 0.0
    workers: list[ShardRunReport] = field(default_factory=list)  # each worker's own report, in worker order

    @property
    def complete(self) -> bool:
        """True when every shard of the run is finished, so `assemble_shards` can be called."""
        return not self.missing

    @classmethod
    def combine(cls, reports: Sequence[ShardRunReport], *, seconds: float) -> ShardRunReport:
        """One report for the workers of one run: their shards together; a shard is missing only if it was missing
        in every worker's report (commits are never undone, so a shard one worker saw finished stays finished).

        Example:
            >>> a = ShardRunReport("out", 3, processed=[0, 2], missing=[1])
            >>> b = ShardRunReport("out", 3, processed=[1], missing=[])
            >>> ShardRunReport.combine([a, b], seconds=1.0).processed
            [0, 1, 2]
        """
        missing = set.intersection(*(set(r.missing) for r in reports)) if reports else set()
        return cls(
            output_dir=reports[0].output_dir if reports else "",
            num_shards=reports[0].num_shards if reports else 0,
            processed=sorted(i for r in reports for i in r.processed),
            skipped=sorted(i for r in reports for i in r.skipped),
            retried=sorted(i for r in reports for i in r.retried),
            missing=sorted(missing),
            rows_processed=sum(r.rows_processed for r in reports),
            seconds=seconds,
            workers=list(reports),
        )


def as_store(output: str | Store) -> Store:
    """The `Store` of an output folder given as a local path, or the store itself (a remote folder comes as a store,
    with its storage options).

    Example:
        >>> as_store("memory://doc-runner/x").url
        'memory://doc-runner/x'
    """
    return output if isinstance(output, Store) else Store(output)


def read_manifest(output: str | Store) -> dict | None:
    """The manifest of a sharded run folder, or None when the folder holds no run.

    Example:
        >>> manifest = read_manifest("output/quickstart/synthesized")  # doctest: +SKIP
        >>> manifest["num_input_rows"], manifest["shard_size"]  # doctest: +SKIP
        (300, 60)
        >>> read_manifest("an/empty/folder") is None  # doctest: +SKIP
        True
    """
    return as_store(output).read_json(MANIFEST_PATH)


def shard_state(store: Store, shard: Shard, manifest: Mapping[str, Any]) -> tuple[dict | None, str | None]:
    """`(marker, damage)` of one shard: the marker when the shard is committed for this run and its file is still
    what was committed (size and SHA-256, `hf_ipt.store.file_damage`), else None; `damage` says what is wrong with
    the file of a committed shard ("data/train-00002-of-00005.parquet: missing"), else None.

    Example:
        >>> shard_state(store, plan_shards(10, 4)[0], manifest)  # doctest: +SKIP
        (None, 'data/train-00000-of-00003.parquet: its bytes changed since it was committed (SHA-256 differs, ...)')
    """
    marker = store.read_json(shard.marker_path)
    if marker is None:
        return None, None
    if marker.get("fingerprint") != manifest["fingerprint"] or marker.get("file") != shard.data_path:
        return None, None
    reason = file_damage(store, shard.data_path, marker)
    if reason is not None:
        return None, f"{shard.data_path}: {reason}"
    return marker, None


def _finished(store: Store, shard: Shard, manifest: Mapping[str, Any]) -> dict | None:
    """The shard's marker if the shard is committed and its file is intact; None otherwise."""
    return shard_state(store, shard, manifest)[0]


def run_status(output: str | Store) -> dict[str, Any]:
    """Progress of a sharded run folder: shards finished and missing, rows, damaged shards, and the shards committed
    with failed rows (`failed`: {shard: rows}, redone by the next run).

    Example:
        >>> run_status("output/quickstart/synthesized")["missing"]  # doctest: +SKIP
        [3, 7]
    """
    store = as_store(output)
    manifest = store.read_json(MANIFEST_PATH)
    if manifest is None:
        return {
            "output_dir": store.url,
            "started": False,
            "done": [],
            "missing": [],
            "damaged": {},
            "failed": {},
            "num_shards": 0,
        }
    shards = plan_shards(manifest["num_input_rows"], manifest["shard_size"], manifest["split"])
    done, missing, rows_out, damaged, failed = [], [], 0, {}, {}
    for shard in shards:
        marker, damage = shard_state(store, shard, manifest)
        if damage is not None:
            damaged[shard.index] = damage
        if marker is None:
            missing.append(shard.index)
        else:
            done.append(shard.index)
            rows_out += marker["num_rows"]
            if marker.get("failed_rows"):
                failed[shard.index] = marker["failed_rows"]
    return {
        "output_dir": store.url,
        "started": True,
        "num_shards": len(shards),
        "done": done,
        "missing": missing,
        "damaged": damaged,
        "failed": failed,
        "num_input_rows": manifest["num_input_rows"],
        "rows_done": rows_out,
        "fingerprint": manifest["fingerprint"],
        "split": manifest["split"],
    }


class ShardedRunner:
    """Map `map_fn` over a `datasets.Dataset` shard by shard, committing each shard so an interrupted run resumes.

    Args:
        map_fn: a batched map function (dict of lists in, dict of lists out, one output row per input row), e.g. an
            `hf_ipt.synthesis.Synthesizer`. It is called exactly as `Dataset.map(map_fn, batched=True,
            batch_size=batch_size)` would call it on each shard.
        output: the output folder: a local path, or a `hf_ipt.store.Store` (a remote folder with its storage options).
        shard_size: input rows per shard; a multiple of `batch_size`, so that a sharded run feeds `map_fn` the very
            batches an unsharded `map` would (batch boundaries decide which rows form M-shot chains).
        batch_size: rows per call of `map_fn`.
        config: plain data describing everything that determines the output (source, model, settings). Its
            fingerprint is stored in the manifest; resuming with a different one is refused.
        split: split name of the assembled `DatasetDict` and of the data files.
        worker_index, num_workers: worker `w` of `n` takes the shards `i % n == w`. With the local executor this
            process is worker `worker_index` (start the others yourself); an executor that starts the workers itself
            (Ray) starts `num_workers` of them, and `worker_index` stays 0.
        executor: where the workers run: 'local' (this process), 'processes' (pinned processes here), 'ray' (Ray
            tasks), or an executor object such as `hf_ipt.execution.RayExecutor(num_gpus_per_worker=1)`; see
            `hf_ipt.execution.make_executor`.
        overwrite: when the folder holds a run with another configuration, delete it and start over instead of
            refusing. A run with the same configuration is always resumed (so every worker of a job may pass it).
        resume_ignore: dotted config keys whose change does not block resuming (settings that do not change output).
        verify_inputs: re-hash the input rows of finished shards on resume and refuse if they changed.
        failure_status: `(column, value)` of the output rows that failed (e.g. `("synth_status", "engine_error")`):
            a shard is committed with their count (its marker's `failed_rows`), and the next `run` maps a shard that
            holds any again, whole (rows of one shard depend on each other: chains), keeping the other shards.
        desc: label of the progress bars.
        log_folder: the run's folder: a worker an executor starts in its own process or Ray task writes its log file
            under `logs/` there (`hf_ipt.logs.worker_log`); None: no worker log files.

    Reads: the columns `map_fn` reads. Writes: the input columns plus those `map_fn` returns, one row per input row.

    Example:
        >>> import tempfile
        >>> from datasets import Dataset
        >>> out = tempfile.mkdtemp()
        >>> runner = ShardedRunner(lambda b: {"n": [len(t) for t in b["text"]]}, out, shard_size=2, batch_size=2)
        >>> report = runner.run(Dataset.from_dict({"text": ["a", "bb", "ccc"]}))
        >>> report.processed, report.complete
        ([0, 1], True)
        >>> assemble_shards(out)["train"].to_dict()["n"]
        [1, 2, 3]
        >>> import shutil; shutil.rmtree(out)
    """

    def __init__(
        self,
        map_fn: Callable[[dict[str, list]], dict[str, list]],
        output: str | Store,
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
        failure_status: tuple[str, str] | None = None,
        desc: str = "shards",
        executor: str | Executor = "local",
        log_folder: Store | None = None,
    ):
        if not callable(map_fn):
            raise TypeError(f"map_fn must be a batched map function (callable), got {type(map_fn).__name__}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not isinstance(shard_size, int) or shard_size < 1:
            raise ValueError(f"shard_size must be an integer >= 1, got {shard_size!r}")
        check_shard_size(shard_size, batch_size)
        if not isinstance(split, str) or not re.fullmatch(r"\w+(\.\w+)*", split):
            raise ValueError(f"split must be a plain split name such as 'train', got {split!r}")
        _check_worker(worker_index, num_workers)
        executor = make_executor(executor)
        if worker_index and not isinstance(executor, LocalExecutor):
            raise ValueError(
                f"worker_index={worker_index} with the {executor.name} executor, which starts all {num_workers} "
                "workers itself; leave worker_index at 0"
            )
        self.executor = executor
        self.map_fn = map_fn
        self.store = as_store(output)
        self.output_dir = self.store.url
        self.shard_size = shard_size
        self.batch_size = batch_size
        self.config = config_to_dict(config) if config is not None else {}
        self.split = split
        self.worker_index = worker_index
        self.num_workers = num_workers
        self.overwrite = overwrite
        self.resume_ignore = list(resume_ignore)
        self.verify_inputs = verify_inputs
        self.failure_status = tuple(failure_status) if failure_status is not None else None
        self.desc = desc
        self.log_folder = log_folder  # where workers started in their own process or Ray task write their log

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
        for key in config_diff(old.get("config", {}), new["config"]):
            # a credential never changes the output (and an older manifest may hold one: never print it)
            if not _ignored(key, self.resume_ignore) and not any(is_secret_key(part) for part in key.split(".")):
                reasons.append(f"{key}: {_lookup(old.get('config', {}), key)!r} -> {_lookup(new['config'], key)!r}")
        return reasons

    def resume_conflict(self, num_rows: int | None = None) -> str | None:
        """Why `run` would refuse to start in the output folder (`ResumeConflictError`'s message), or None when it
        would start, resume, or (`overwrite`) replace what is there. Reads the manifest only, so a preflight can ask
        before anything is loaded; with `num_rows` None the input size is not compared (it is known only once the
        input is loaded and chunked).

        Example:
            >>> ShardedRunner(synth, "out", shard_size=8, batch_size=4).resume_conflict()  # doctest: +SKIP
            'out holds a run with another configuration, refusing to resume into it: ...'
        """
        store = self.store
        existing = store.read_json(MANIFEST_PATH)
        if existing is None:
            orphans = self._orphan_data_files(store)
            return None if self.overwrite else orphans
        wanted = self._manifest_for(existing.get("num_input_rows", 0) if num_rows is None else num_rows)
        reasons = self._conflicts(existing, wanted)
        return None if self.overwrite or not reasons else self._conflict_message(reasons)

    def _orphan_data_files(self, store: Store) -> str | None:
        if not store.fs.glob(store.path(f"{DATA_DIR}/{self.split}-*-of-*.parquet")):
            return None
        return (
            f"{self.output_dir} already holds {DATA_DIR}/{self.split}-*.parquet files but no hf-ipt manifest; "
            "refusing to mix outputs. Choose another output folder, or pass overwrite=True "
            "(--run.overwrite) to replace them"
        )

    def _conflict_message(self, reasons: Sequence[str]) -> str:
        return (
            f"{self.output_dir} holds a run with another configuration, refusing to resume into it:\n  "
            + "\n  ".join(reasons)
            + "\nUse another output folder, restore the old settings, list keys that do not change the "
            "output in run.resume_ignore, or pass overwrite=True (--run.overwrite) to delete it and start over"
        )

    def _open(self, store: Store, num_rows: int) -> dict[str, Any]:
        """Create the manifest, or check the existing one allows resuming; returns the manifest in force."""
        wanted = self._manifest_for(num_rows)
        existing = store.read_json(MANIFEST_PATH)
        if existing is None and (orphans := self._orphan_data_files(store)):
            if not self.overwrite:
                raise ResumeConflictError(orphans)
            self._clear(store)
        if existing is not None:
            reasons = self._conflicts(existing, wanted)
            if not reasons:
                return existing
            if not self.overwrite:
                raise ResumeConflictError(self._conflict_message(reasons))
            logger.warning("overwrite: deleting the previous run in %s (%s)", self.output_dir, "; ".join(reasons))
            self._clear(store)
        if not store.write_atomic(MANIFEST_PATH, json_bytes(wanted), exclusive=True):
            # another worker created it between our read and our write: it must describe the same run
            return self._open(store, num_rows)
        return wanted

    def _clear(self, store: Store) -> None:
        store.remove_data_files()
        store.remove(STATE_DIR)

    # --- running ----------------------------------------------------------------------------------------------

    def run(self, dataset) -> ShardRunReport:
        """Map and commit the unfinished shards of `dataset` on the runner's executor; returns what was done and what
        is missing (each worker's own report in `report.workers`).

        `dataset` is a `datasets.Dataset`, or a zero-argument function that loads it (in each worker, with Ray).

        Example:
            >>> ShardedRunner(synth, "out", shard_size=8, batch_size=4).run(dataset).complete  # doctest: +SKIP
            True
        """
        started = time.perf_counter()
        reports = self.executor.run(self, dataset)
        return ShardRunReport.combine(reports, seconds=time.perf_counter() - started)

    def run_worker(self, dataset) -> ShardRunReport:
        """Map and commit the unfinished shards of worker `worker_index` in this process (what an executor calls)."""
        import datasets
        from datasets.utils import tqdm as hf_tqdm

        if not isinstance(dataset, datasets.Dataset):
            raise TypeError(
                f"ShardedRunner.run needs a map-style datasets.Dataset (shards are index ranges), got "
                f"{type(dataset).__name__}; load the source without streaming=True"
            )
        started = time.perf_counter()
        store = self.store
        manifest = self._open(store, len(dataset))
        store.remove_stale_tmp()  # leftovers of killed writes (never those of a live worker)
        shards = plan_shards(len(dataset), self.shard_size, self.split)
        mine = [shards[i] for i in shards_of_worker(len(shards), self.worker_index, self.num_workers)]
        report = ShardRunReport(output_dir=self.output_dir, num_shards=len(shards))

        todo = []
        for shard in mine:
            marker, damage = shard_state(store, shard, manifest)
            if damage is not None:
                logger.warning(
                    "shard %d of %s is damaged (%s); synthesizing it again", shard.index, self.output_dir, damage
                )
            if marker is None:
                todo.append(shard)
                continue
            if marker.get("failed_rows"):
                # failed rows are not finished work: the whole shard again (its chains depend on them)
                todo.append(shard)
                report.retried.append(shard.index)
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
        if report.retried:
            logger.info(
                "%s: mapping again the %d shard(s) committed with failed rows (%s)",
                self.output_dir,
                len(report.retried),
                ", ".join(map(str, report.retried[:20])) + (", ..." if len(report.retried) > 20 else ""),
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
                shard_started = time.perf_counter()
                self._process(store, dataset, shard, manifest)
                seconds = time.perf_counter() - shard_started
                logger.debug(
                    "shard %d/%d committed: %d rows in %.1f s (%.1f rows/s)",
                    shard.index + 1,
                    len(shards),
                    shard.num_rows,
                    seconds,
                    shard.num_rows / seconds if seconds else 0.0,
                )
                report.processed.append(shard.index)
                report.rows_processed += shard.num_rows
                # the postfix first: off a terminal, the update may print the line (the last one at 100 %)
                bar.set_postfix_str(f"shard {shard.index + 1}/{len(shards)} committed", refresh=False)
                bar.update(shard.num_rows)
        finally:
            bar.close()
        report.missing = [s.index for s in shards if _finished(store, s, manifest) is None]
        report.seconds = time.perf_counter() - started
        return report

    def _process(self, store: Store, dataset, shard: Shard, manifest: Mapping[str, Any]) -> None:
        started = time.perf_counter()
        # leftovers of an attempt that crashed while writing this shard (only this worker ever writes it)
        store.remove_tmp(shard.data_path.replace("/", "__"))
        store.remove_tmp(shard.marker_path.replace("/", "__"))
        rows = dataset.select(range(shard.start, shard.stop))
        counted_before = map_fn_counters(self.map_fn)
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
        counted = map_fn_counters(self.map_fn)
        marker = {
            "shard": shard.index,
            "start": shard.start,
            "stop": shard.stop,
            "num_rows": len(mapped),
            "file": shard.data_path,
            **checksum(data),  # bytes and sha256, checked on every resume and read (`shard_state`)
            "input_sha256": input_sha256(rows),
            "fingerprint": manifest["fingerprint"],
            "attempt": uuid.uuid4().hex,
            "worker": worker_identity(self.worker_index, self.num_workers),
            "seconds": round(time.perf_counter() - started, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if self.failure_status is not None:
            column, value = self.failure_status
            table = mapped.data.table
            failed = pc.equal(table.column(column), pa.scalar(value)) if column in table.column_names else None
            marker["failed_rows"] = int(pc.sum(pc.cast(failed, "int64")).as_py() or 0) if failed is not None else 0
        if counted is not None:
            # what the map function counted for this shard alone (its counters run for the life of the process), kept
            # with the shard so a report adds up every worker's counts, in any process or machine, across resumes
            marker["counters"] = {k: v - (counted_before or {}).get(k, 0) for k, v in sorted(counted.items())}
        store.write_atomic(shard.marker_path, json_bytes(marker))  # the commit point: written last

    def assemble(self):
        """Shortcut for `assemble_shards(self.store)`."""
        return assemble_shards(self.store)


def worker_identity(index: int, num_workers: int) -> dict[str, Any]:
    """Who committed a shard, as its marker records it: the worker slot, the host and the process.

    Example:
        >>> worker_identity(1, 4)["of"]
        4
    """
    return {"index": index, "of": num_workers, "host": socket.gethostname(), "pid": os.getpid()}


def map_fn_counters(map_fn: Any) -> dict[str, int] | None:
    """What a map function has counted so far in this process (its `counters()`, e.g. an engine's speculative-decoding
    counts through `Synthesizer.counters`), None when it counts nothing. The runner records each shard's share.

    Example:
        >>> map_fn_counters(lambda batch: batch) is None
        True
    """
    counters = getattr(map_fn, "counters", None)
    return counters() if callable(counters) else None


def _lookup(data: Mapping[str, Any], dotted: str) -> Any:
    current: Any = data
    for part in dotted.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return None
        current = current[part]
    return current


def finished_shards(output: str | Store) -> tuple[dict[str, Any], list[Shard], list[dict[str, Any]]]:
    """`(manifest, shards, markers)` of a finished run: every shard committed and its file intact (`shard_state`);
    IncompleteRunError listing the unfinished and damaged shards otherwise.

    Example:
        >>> manifest, shards, markers = finished_shards("output/quickstart/synthesized")  # doctest: +SKIP
        >>> sum(m["num_rows"] for m in markers) == manifest["num_input_rows"]  # doctest: +SKIP
        True
    """
    store = as_store(output)
    manifest = store.read_json(MANIFEST_PATH)
    if manifest is None:
        raise IncompleteRunError(f"{store.url} holds no sharded run ({MANIFEST_PATH} not found)")
    shards = plan_shards(manifest["num_input_rows"], manifest["shard_size"], manifest["split"])
    states = [shard_state(store, s, manifest) for s in shards]
    missing = [s.index for s, (marker, _) in zip(shards, states, strict=True) if marker is None]
    if missing:
        damaged = [damage for _, damage in states if damage is not None]
        raise IncompleteRunError(
            f"{len(missing)} of {len(shards)} shards of {store.url} are not finished (shards "
            + ", ".join(map(str, missing[:20]))
            + (", ..." if len(missing) > 20 else "")
            + (f"; damaged since their commit: {'; '.join(damaged[:5])}" if damaged else "")
            + "); run the missing workers (or a single worker) with the same config to finish them"
            + (" (damaged shards are synthesized again)" if damaged else "")
        )
    return manifest, shards, [marker for marker, _ in states]


def iter_shard_tables(output: str | Store, *, columns: Sequence[str] | None = None):
    """The finished shards' rows as pyarrow Tables, in input order, reading only `columns` (those present) — for
    statistics over a large run without assembling (and caching a copy of) the whole dataset.

    Example:
        >>> [t.column("pairs").length() for t in iter_shard_tables(out, columns=["pairs"])]  # doctest: +SKIP
        [60, 60, 60, 60, 60]
    """
    store = as_store(output)
    manifest = store.read_json(MANIFEST_PATH)
    if manifest is None:
        raise IncompleteRunError(f"{store.url} holds no sharded run ({MANIFEST_PATH} not found)")
    for shard in plan_shards(manifest["num_input_rows"], manifest["shard_size"], manifest["split"]):
        marker, damage = shard_state(store, shard, manifest)
        if marker is None:
            raise IncompleteRunError(
                f"shard {shard.index} of {store.url} is not finished" + (f" (damaged: {damage})" if damage else "")
            )
        with store.fs.open(store.path(shard.data_path), "rb") as handle:
            parquet = pq.ParquetFile(handle)
            present = None if columns is None else [c for c in columns if c in parquet.schema_arrow.names]
            yield parquet.read(columns=present)


def assemble_shards(output: str | Store):
    """The finished run as a `DatasetDict` (`{split: Dataset}`), rows in input order.

    Read through `datasets`' Parquet loader (`Store.read_dataset`): memory-mapped, from a local folder or any fsspec
    URL, never a whole file in memory; the shards' schemas are aligned with explicit features. Every file's size and
    SHA-256 are checked against its marker first (`finished_shards`), so a shard damaged since its commit counts as
    unfinished: `IncompleteRunError` lists the unfinished shards.

    Example:
        >>> assemble_shards("output/quickstart/synthesized")["train"].num_rows  # doctest: +SKIP
        300
    """
    import datasets

    store = as_store(output)
    manifest, shards, markers = finished_shards(store)
    # datasets' Parquet reader rejects row-less files; an empty shard adds no rows, so leave it out
    relatives = [s.data_path for s, m in zip(shards, markers, strict=True) if m["num_rows"]]
    if not relatives:
        dataset = datasets.Dataset(store.read_table(shards[0].data_path))
    else:
        # the markers' checksums name the content, so a redone shard is never served from an older cache
        content = fingerprint([m["sha256"] for m in markers if m["num_rows"]])
        dataset = store.read_dataset(relatives, split=manifest["split"], content_key=content)
    return datasets.DatasetDict({manifest["split"]: dataset})
