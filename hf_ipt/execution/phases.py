"""Shard phases: a step of a stage cut in shards, each computed on an executor and committed on its own.

A phase is a picklable `ShardTask` run over `num_shards` shards by `ShardPhase`. Calling the task with a shard's index
and the output folder returns a `ShardResult` — that shard's files (bytes), its rows and a few figures for the
driver — and the phase commits it: each file is written atomically, then the shard's marker
`.hf_ipt/phases/<phase>/shard-00000.json` (the phase's fingerprint, each file's size and SHA-256, rows, figures), the
commit point. Worker w of n takes the shards i % n == w on the executor given (`hf_ipt.execution.make_executor`:
this process, pinned processes, Ray tasks), so the shards' bytes never depend on where they ran. A phase run again
skips every shard whose marker carries its fingerprint and whose files are intact (`hf_ipt.store.file_damage`), and
redoes the others: an interrupted phase resumes, a damaged file is made again.

A task holds only what its shards need (settings, paths of small files) and reads its input itself, shard by shard,
so memory is bounded by a shard whatever the corpus; the driver reads the committed figures back in shard order
(`ShardPhase.run` returns the markers).

Example:
    >>> import pyarrow as pa
    >>> from hf_ipt.store import Store
    >>> class Squares:
    ...     def __call__(self, index, store):
    ...         table = pa.table({"n": [index * index]})
    ...         return ShardResult({f"data/train-{index:05d}-of-00003.parquet": parquet_bytes(table)}, 1, {"n": index})
    >>> phase = ShardPhase(Squares(), Store("memory://doc-phases/run"), name="squares", num_shards=3,
    ...                    fingerprint="f1", progress=False)
    >>> [marker["figures"]["n"] for marker in phase.run()]
    [0, 1, 2]
    >>> phase.run() == phase.run()  # every shard is committed: nothing is computed again
    True
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow.parquet as pq

from hf_ipt.execution import Executor, make_executor
from hf_ipt.execution.runner import ShardRunReport, shards_of_worker, worker_identity
from hf_ipt.store import STATE_DIR, IncompleteRunError, Store, checksum, file_damage, fingerprint, json_bytes

PHASES_DIR = f"{STATE_DIR}/phases"
WORK_DIR = f"{STATE_DIR}/work"  # files a stage only needs while it computes (removed once it is committed)


@dataclass
class ShardResult:
    """What a `ShardTask` made of one shard: its files ({path relative to the output folder: bytes}), the rows it
    holds, and figures for the driver (small, JSON-ready: counts, statistics to merge).

    Example:
        >>> ShardResult({"data/train-00000-of-00001.parquet": b"..."}, num_rows=4).figures
        {}
    """

    files: dict[str, bytes]
    num_rows: int = 0
    figures: dict[str, Any] = field(default_factory=dict)


class ShardTask(Protocol):
    """The work of one phase on one shard; picklable, since it travels to worker processes and Ray tasks.

    Example:
        >>> class Copy:  # shard i of the output is file i of the upstream output, unchanged
        ...     def __init__(self, upstream, files):
        ...         self.upstream, self.files = upstream, files
        ...     def __call__(self, index, store):
        ...         return ShardResult({self.files[index]: self.upstream.fs.cat_file(self.upstream.path(
        ...             self.files[index]))})
    """

    def __call__(self, index: int, store: Store) -> ShardResult: ...


def parquet_bytes(table: Any) -> bytes:
    """A pyarrow Table as the bytes of a Parquet file (its schema metadata, e.g. `datasets` features, kept).

    Example:
        >>> import pyarrow as pa
        >>> parquet_bytes(pa.table({"a": [1]}))[:4]
        b'PAR1'
    """
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


class ShardPhase:
    """Run a `ShardTask` on every unfinished shard of a phase, on `executor`, and return every shard's marker.

    Args:
        task: the work of one shard (`ShardTask`).
        store: the output folder the shards' files and markers go to (every worker must reach it).
        name: the phase's name (its markers' folder: `.hf_ipt/phases/<name>/`).
        num_shards: how many shards the phase has (>= 0).
        fingerprint: what decides the shards' bytes (the stage's settings, its input, the phase's own layout): a
            marker of another fingerprint counts as unfinished and its shard is made again.
        executor: where the workers run (a name of `hf_ipt.execution.EXECUTORS`, or an executor); `num_workers`
            workers take the shards i % n == w.
        desc: the progress bar's label; `progress=False` shows none.
        markers_dir: the folder of the phases' markers (`.hf_ipt/phases`; a scratch phase's go under `WORK_DIR`).

    Reads and writes what the task does; writes one marker per shard.

    Example:
        >>> markers = ShardPhase(task, output, name="templify", num_shards=6, fingerprint=fp,
        ...                      executor="processes", num_workers=2).run()  # doctest: +SKIP
    """

    def __init__(
        self,
        task: ShardTask,
        store: Store,
        *,
        name: str,
        num_shards: int,
        fingerprint: str,
        executor: str | Executor = "local",
        num_workers: int = 1,
        desc: str = "",
        progress: bool = True,
        markers_dir: str = PHASES_DIR,
    ) -> None:
        if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 0:
            raise ValueError(f"num_shards must be an integer >= 0, got {num_shards!r}")
        self.task = task
        self.store = store
        self.name = name
        self.num_shards = num_shards
        self.fingerprint = fingerprint
        self.executor = make_executor(executor)
        self.num_workers = num_workers if self.executor.name != "local" else 1
        self.worker_index = 0
        self.desc = desc or name
        self.progress = progress
        self.markers_dir = markers_dir

    def marker_path(self, index: int) -> str:
        """Where shard `index`'s marker is written (relative to the store)."""
        return f"{self.markers_dir}/{self.name}/shard-{index:05d}.json"

    def finished(self, index: int) -> dict[str, Any] | None:
        """Shard `index`'s marker when it was committed with this phase's fingerprint and its files are still what
        was committed; None otherwise (not done, another fingerprint, or a damaged file)."""
        marker = self.store.read_json(self.marker_path(index))
        if marker is None or marker.get("fingerprint") != self.fingerprint:
            return None
        for relative, expected in (marker.get("files") or {}).items():
            if file_damage(self.store, relative, expected) is not None:
                return None
        return marker

    def run(self, inputs: Any = None) -> list[dict[str, Any]]:
        """Compute the unfinished shards on the executor; every shard's marker, in shard order. `inputs` is handed
        to each worker as the executors hand a runner's dataset (None: the task reads its input itself).
        IncompleteRunError when a shard is still missing after the workers ended."""
        if self.num_shards:
            self.executor.run(self, inputs)
        markers = [self.finished(index) for index in range(self.num_shards)]
        missing = [index for index, marker in enumerate(markers) if marker is None]
        if missing:
            raise IncompleteRunError(
                f"shards {missing[:20]} of phase {self.name!r} in {self.store.url} are not committed after its "
                "workers ended; run the same command again to make them"
            )
        return markers

    def run_worker(self, inputs: Any = None) -> ShardRunReport:
        """Compute and commit this worker's unfinished shards in this process (what an executor calls)."""
        from datasets.utils import tqdm as hf_tqdm

        started = time.perf_counter()
        mine = shards_of_worker(self.num_shards, self.worker_index, self.num_workers)
        report = ShardRunReport(output_dir=self.store.url, num_shards=self.num_shards)
        todo = []
        for index in mine:
            (report.skipped if self.finished(index) is not None else todo).append(index)
        label = f"{self.desc} (worker {self.worker_index}/{self.num_workers})" if self.num_workers > 1 else self.desc
        bar = hf_tqdm(
            total=len(mine),
            initial=len(mine) - len(todo),
            unit=" shards",
            desc=label,
            disable=not self.progress or not todo,
            dynamic_ncols=True,
        )
        try:
            for index in todo:
                self.commit(index, self.task(index, self.store), time.perf_counter())
                report.processed.append(index)
                bar.update(1)
        finally:
            bar.close()
        report.seconds = time.perf_counter() - started
        return report

    def commit(self, index: int, result: ShardResult, started: float) -> dict[str, Any]:
        """Write shard `index`'s files, then its marker (the commit point); returns the marker."""
        store = self.store
        files = {}
        for relative, content in result.files.items():
            store.write_atomic(relative, content)
            files[relative] = checksum(content)
        marker = {
            "phase": self.name,
            "shard": index,
            "num_shards": self.num_shards,
            "fingerprint": self.fingerprint,
            "files": files,
            "num_rows": int(result.num_rows),
            "figures": result.figures,
            "worker": worker_identity(self.worker_index, self.num_workers),
            "seconds": round(time.perf_counter() - started, 3),
        }
        store.write_atomic(self.marker_path(index), json_bytes(marker))
        return marker


def phase_fingerprint(identity: Any, name: str, layout: Mapping[str, Any] | None = None) -> str:
    """The fingerprint of a stage's phase: the stage's identity, the phase's name and what else decides its shards
    (its layout: shard counts, the digest of a selection it reads).

    Example:
        >>> phase_fingerprint({"seed": 0}, "count") == phase_fingerprint({"seed": 0}, "count", {})
        True
    """
    return fingerprint({"identity": identity, "phase": name, "layout": dict(layout or {})})


def clear_phases(store: Store) -> None:
    """Forget every phase of a stage's folder: their markers and the scratch files (`WORK_DIR`).

    Example:
        >>> clear_phases(Store("memory://doc-phases/cleared"))
    """
    store.remove(PHASES_DIR)
    store.remove(WORK_DIR)


def read_columns(store: Store, relative: str, columns: Sequence[str] | None = None) -> Any:
    """A Parquet file of `store` as a pyarrow Table, reading only `columns` (those the file has; None: all).

    Example:
        >>> read_columns(store, "data/train-00000-of-00001.parquet", ["text"]).column_names  # doctest: +SKIP
        ['text']
    """
    with store.fs.open(store.path(relative), "rb") as handle:
        parquet = pq.ParquetFile(handle)
        present = None if columns is None else [c for c in columns if c in parquet.schema_arrow.names]
        return parquet.read(columns=present)


def committed_files(markers: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{relative path: checksum} of every file the shards of a phase committed, in shard order.

    Example:
        >>> committed_files([{"files": {"data/a.parquet": {"bytes": 3, "sha256": "ab"}}}])
        {'data/a.parquet': {'bytes': 3, 'sha256': 'ab'}}
    """
    return {relative: dict(value) for marker in markers for relative, value in marker["files"].items()}
