"""Scaling out: one process per GPU (or per share of the CPU cores) with `datasets`, and Ray for many machines.

**One machine, several GPUs.** `Dataset.map(synth, batched=True, with_rank=True, num_proc=n)` gives each worker
process a rank; the `Synthesizer` pins its process to the rank's devices (`pin_rank`) before it creates its engine:
`CUDA_VISIBLE_DEVICES` on GPU machines (rank r gets GPUs r*k .. r*k+k-1, where k = tensor_parallel_size ×
pipeline_parallel_size from `engine_kwargs`, which go to vLLM unchanged), an equal share of the cores on CPU machines
(`sched_setaffinity` and vLLM's `VLLM_CPU_OMP_THREADS_BIND`; the share needs the number of ranks, from
`HF_IPT_NUM_RANKS`). `map_on_ranks` does all of it, and uses the spawn start method where a forked worker could
not use CUDA or several torch threads (so scripts need `if __name__ == "__main__":`).

    >>> out = map_on_ranks(ds, synth, num_proc=8, batch_size=synth.config.batch_size)  # doctest: +SKIP

**Many machines.** `ray_map_batches` runs the same map function under Ray Data `map_batches`, one actor per GPU
(`num_actors`, `num_gpus_per_actor`), on pyarrow batches aligned exactly like `Dataset.map`'s (the dataset is first
cut into blocks of `batch_size` rows, in order), so the rows, M-shot chains included, equal a plain map's.
`ray_map_parquet` reads Parquet files (local, or any fsspec URL such as `hf://datasets/org/corpus/data`) and writes
Parquet files.

    >>> ray.init(address="auto")  # doctest: +SKIP
    >>> ray_map_parquet("s3://bucket/raw/", "s3://bucket/synthesized/", synth, batch_size=1024,
    ...                 num_actors=16, num_gpus_per_actor=1)  # doctest: +SKIP

**Resumable runs.** The backends of `hf_ipt.runner.ShardedRunner` say where its workers run: `LocalBackend` (this
process is one worker), `ProcessBackend` (n pinned processes on this machine) or `RayBackend` (n Ray tasks, retried
when their process dies); `make_backend` turns a name into one. A recipe's `run.executor` / `run.num_workers` choose
among them (`hf_ipt.pipeline.synthesis_backend`).

    >>> ShardedRunner(synth, "s3://bucket/run", shard_size=4096, batch_size=1024, num_workers=16,
    ...               backend=RayBackend(num_gpus_per_worker=1)).run(loader)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from hf_ipt._deps import require
from hf_ipt.engines import holds_engines
from hf_ipt.store import Store

logger = logging.getLogger(__name__)

ENV_NUM_RANKS = "HF_IPT_NUM_RANKS"
START_METHODS = ("auto", "fork", "spawn")


# --------------------------------------------------------------------------------------------------------------------
# Rank pinning
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where one rank runs: the GPUs it sees (as written to CUDA_VISIBLE_DEVICES) or the CPU cores it is bound to.
    Both empty means the process was left as it was.

    Example:
        >>> placement = Placement(rank=0, num_ranks=2, cpus=(0, 1, 2, 3), devices_per_rank=2)
        >>> placement.omp_threads_bind
        '0,1|2,3'
    """

    rank: int
    num_ranks: int | None
    gpus: tuple[str, ...] = ()
    cpus: tuple[int, ...] = ()
    devices_per_rank: int = 1

    @property
    def omp_threads_bind(self) -> str:
        """vLLM's `VLLM_CPU_OMP_THREADS_BIND` for the cores: one core list per tensor/pipeline-parallel worker."""
        groups = _split_evenly(list(self.cpus), self.devices_per_rank)
        return "|".join(",".join(str(c) for c in group) for group in groups)


def _split_evenly(items: list, parts: int) -> list[list]:
    share, extra = divmod(len(items), parts)
    out, start = [], 0
    for index in range(parts):
        size = share + (index < extra)
        out.append(items[start : start + size])
        start += size
    return out


def plan_placement(
    rank: int,
    *,
    num_ranks: int | None = None,
    devices_per_rank: int = 1,
    visible_gpus: Sequence[str] = (),
    cpus: Sequence[int] = (),
) -> Placement:
    """The placement of `rank` among `num_ranks`, given the visible GPUs (or, without GPUs, the usable cores).

    GPUs: rank r gets `visible_gpus[r*k : r*k+k]` with k = devices_per_rank. CPU: the cores are split evenly among
    the ranks (cores left over go to the first ranks); without `num_ranks` the process is not bound.

    Example:
        >>> plan_placement(1, num_ranks=2, devices_per_rank=2, visible_gpus=["0", "1", "2", "3"]).gpus
        ('2', '3')
        >>> plan_placement(1, num_ranks=2, cpus=range(6)).cpus
        (3, 4, 5)
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ValueError(f"rank must be an integer >= 0, got {rank!r}")
    if num_ranks is not None:
        if isinstance(num_ranks, bool) or not isinstance(num_ranks, int) or num_ranks < 1:
            raise ValueError(f"num_ranks must be an integer >= 1, got {num_ranks!r}")
        if rank >= num_ranks:
            raise ValueError(f"rank {rank} is out of range for {num_ranks} ranks (num_proc / {ENV_NUM_RANKS})")
    if isinstance(devices_per_rank, bool) or not isinstance(devices_per_rank, int) or devices_per_rank < 1:
        raise ValueError(f"devices_per_rank must be an integer >= 1, got {devices_per_rank!r}")
    visible_gpus = [str(g) for g in visible_gpus]
    if visible_gpus:
        needed = devices_per_rank * (num_ranks if num_ranks is not None else rank + 1)
        if needed > len(visible_gpus):
            raise ValueError(
                f"rank {rank} needs GPUs {rank * devices_per_rank}..{(rank + 1) * devices_per_rank - 1} "
                f"({devices_per_rank} per rank = tensor_parallel_size × pipeline_parallel_size) but only "
                f"{len(visible_gpus)} are visible ({','.join(visible_gpus)}); "
                f"use num_proc <= {len(visible_gpus) // devices_per_rank}"
            )
        start = rank * devices_per_rank
        return Placement(
            rank,
            num_ranks,
            gpus=tuple(visible_gpus[start : start + devices_per_rank]),
            devices_per_rank=devices_per_rank,
        )
    cpus = sorted(int(c) for c in cpus)
    if num_ranks is None or not cpus:
        return Placement(rank, num_ranks, devices_per_rank=devices_per_rank)
    if num_ranks > len(cpus):
        # more ranks than cores: share them round-robin, one core each
        share = [cpus[rank % len(cpus)]]
    else:
        share = _split_evenly(cpus, num_ranks)[rank]
    if len(share) < devices_per_rank:
        raise ValueError(
            f"rank {rank} has {len(share)} core(s) but its engine wants {devices_per_rank} parallel workers "
            f"(tensor_parallel_size × pipeline_parallel_size); use fewer ranks or less parallelism"
        )
    return Placement(rank, num_ranks, cpus=tuple(share), devices_per_rank=devices_per_rank)


def visible_gpus() -> list[str]:
    """The GPUs this process may use, found without initializing CUDA (so `CUDA_VISIBLE_DEVICES` can still be set):
    the `CUDA_VISIBLE_DEVICES` list when set, else NVML's count, else `nvidia-smi -L`; [] on CPU-only machines.

    Example:
        >>> os.environ["CUDA_VISIBLE_DEVICES"] = "2,3"  # doctest: +SKIP
        >>> visible_gpus()  # doctest: +SKIP
        ['2', '3']
    """
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        devices = []
        for item in listed.split(","):
            item = item.strip()
            if not item or item.startswith("-"):
                break  # CUDA ignores everything from the first invalid entry on
            devices.append(item)
        return devices
    count = _gpu_count_without_cuda()
    return [str(i) for i in range(count)]


def _gpu_count_without_cuda() -> int:
    try:
        import pynvml  # shipped with CUDA builds of vLLM and torch (nvidia-ml-py)

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no NVML library, no driver, or no GPU: try the next way
        pass
    if shutil.which("nvidia-smi"):
        try:
            listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
            return sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))
        except (OSError, subprocess.SubprocessError):
            return 0
    return 0


def devices_per_rank(engine_kwargs: Mapping[str, Any] | None) -> int:
    """Devices one engine uses: `tensor_parallel_size × pipeline_parallel_size` of vLLM's `engine_kwargs`.

    Example:
        >>> devices_per_rank({"tensor_parallel_size": 2})
        2
    """
    kwargs = dict(engine_kwargs or {})
    product = 1
    for name in ("tensor_parallel_size", "pipeline_parallel_size"):
        value = kwargs.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"engine_kwargs.{name} must be an integer >= 1, got {value!r}")
        product *= value
    data_parallel = kwargs.get("data_parallel_size", 1)
    if data_parallel != 1:
        raise ValueError(
            f"engine_kwargs.data_parallel_size={data_parallel!r}: hf-ipt runs data parallelism itself, one engine per "
            "rank: map with num_proc=<replicas> and with_rank=True (or Ray actors), and keep "
            "tensor_parallel_size / pipeline_parallel_size for a model that needs several GPUs"
        )
    return product


def rank_from_args(args: Sequence[Any]) -> int | None:
    """The rank `Dataset.map(..., with_rank=True)` passes as the last extra argument (indices come as a list).

    Example:
        >>> rank_from_args(([0, 1, 2], 1)), rank_from_args(([0, 1, 2],)), rank_from_args(())
        (1, None, None)
    """
    if args and isinstance(args[-1], int) and not isinstance(args[-1], bool):
        return args[-1]
    return None


_PINNED: dict[int, Placement] = {}  # pid -> placement, so a forked child never takes its parent's for its own
_FORKED_AFTER_TORCH = False


def _after_fork_in_child() -> None:
    global _FORKED_AFTER_TORCH
    # libgomp's thread pool does not survive fork: a child of a parent that imported torch stays single-threaded
    _FORKED_AFTER_TORCH = _FORKED_AFTER_TORCH or "torch" in sys.modules


os.register_at_fork(after_in_child=_after_fork_in_child)


def _env_num_ranks() -> int | None:
    value = os.environ.get(ENV_NUM_RANKS)
    if value in (None, ""):
        return None
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{ENV_NUM_RANKS} must be an integer (the num_proc of the map), got {value!r}") from None
    if number < 1:
        raise ValueError(f"{ENV_NUM_RANKS} must be >= 1, got {number}")
    return number


def pin_rank(rank: int, *, num_ranks: int | None = None, devices_per_rank: int = 1) -> Placement:
    """Pin this process to the devices of `rank`, before any engine exists in it; once per process.

    GPU machines: sets `CUDA_VISIBLE_DEVICES` (raises if CUDA is already initialized here: the parent used CUDA
    before forking — use `map_on_ranks`, which spawns). CPU machines: binds the process to its share of the cores and
    sets `VLLM_CPU_OMP_THREADS_BIND` and torch's thread count to match; needs `num_ranks` (or `HF_IPT_NUM_RANKS`),
    otherwise the process is left unbound. Returns the placement; a second call in the same process returns the
    first placement.

    Example:
        >>> pin_rank(0, num_ranks=1).rank  # doctest: +SKIP
        0
    """
    pinned = _PINNED.get(os.getpid())
    if pinned is not None:
        if pinned.rank != rank:
            logger.warning(
                "process %d already runs rank %d's placement; its shard of rank %d runs there too",
                os.getpid(),
                pinned.rank,
                rank,
            )
        return pinned
    if num_ranks is None:
        num_ranks = _env_num_ranks()
    gpus = visible_gpus()
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    placement = plan_placement(
        rank, num_ranks=num_ranks, devices_per_rank=devices_per_rank, visible_gpus=gpus, cpus=cpus
    )
    if placement.gpus:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            raise RuntimeError(
                f"CUDA is already initialized in process {os.getpid()} (rank {rank}), so it cannot be pinned to "
                f"GPU(s) {','.join(placement.gpus)}: the parent process used CUDA before forking. Use "
                "hf_ipt.parallel.map_on_ranks(...) (it spawns), or multiprocess.set_start_method('spawn', force=True) "
                "before Dataset.map"
            )
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(placement.gpus)
    elif placement.cpus:
        cores = list(placement.cpus)
        if _FORKED_AFTER_TORCH and len(cores) > 1:
            logger.warning(
                "rank %d was forked from a process that uses torch: it runs single-threaded on core %d instead of %d "
                "cores (a forked OpenMP pool would hang); use map_on_ranks(...) or the spawn start method",
                rank,
                cores[0],
                len(cores),
            )
            cores = cores[:1]
            placement = Placement(rank, placement.num_ranks, cpus=(cores[0],), devices_per_rank=1)
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cores)
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = placement.omp_threads_bind
        os.environ["OMP_NUM_THREADS"] = str(len(cores))
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(len(cores))
        vllm_envs = sys.modules.get("vllm.envs")
        if vllm_envs is not None and hasattr(vllm_envs, "disable_envs_cache"):
            vllm_envs.disable_envs_cache()  # a cache filled in the parent would hide the new binding
    elif num_ranks is None and not gpus:
        logger.info(
            "rank %d: %s is not set, so the process is not bound to a share of the cores "
            "(use hf_ipt.parallel.map_on_ranks, or set %s=num_proc)",
            rank,
            ENV_NUM_RANKS,
            ENV_NUM_RANKS,
        )
    logger.info("process %d runs rank %d on %s", os.getpid(), rank, _describe_placement(placement))
    _PINNED[os.getpid()] = placement
    return placement


def current_placement() -> Placement | None:
    """The placement `pin_rank` gave this process, None if it was not pinned.

    Example:
        >>> pin_rank(1, num_ranks=2)  # doctest: +SKIP
        >>> current_placement().rank  # doctest: +SKIP
        1
    """
    return _PINNED.get(os.getpid())


def _describe_placement(placement: Placement) -> str:
    if placement.gpus:
        return f"GPU(s) {','.join(placement.gpus)}"
    if placement.cpus:
        return f"core(s) {','.join(map(str, placement.cpus))}"
    return "all its devices"


def _parent_needs_spawn(num_proc: int) -> str | None:
    """Why a forked map worker could not work here, or None when fork is fine."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "CUDA is initialized in this process"
    if holds_engines():
        return "this process holds an engine"
    if visible_gpus():
        return "GPU workers (CUDA does not survive fork)"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if torch is not None and cores // num_proc > 1:
        # a forked worker may only run torch single-threaded; with several cores per rank it would waste them
        return "torch is loaded in this process and each rank gets several cores (OpenMP does not survive fork)"
    return None


def map_on_ranks(
    dataset: Any,
    function: Callable[..., dict[str, list]],
    *,
    num_proc: int,
    start_method: str = "auto",
    **map_kwargs: Any,
) -> Any:
    """`dataset.map(function, batched=True, with_rank=True, num_proc=num_proc, **map_kwargs)`, each rank pinned to
    its GPUs or its share of the cores (the `Synthesizer` pins itself from its rank).

    `start_method`: 'auto' spawns on GPU machines, when this process holds an engine, and when torch is loaded here
    and a rank gets several cores (a forked worker may only run torch single-threaded); it forks otherwise (faster:
    nothing is imported again). 'fork' / 'spawn' force one. With spawn the calling script needs
    `if __name__ == "__main__":`.

    Example:
        >>> out = map_on_ranks(ds, synth, num_proc=4, batch_size=synth.config.batch_size)  # doctest: +SKIP
    """
    if isinstance(num_proc, bool) or not isinstance(num_proc, int) or num_proc < 1:
        raise ValueError(f"num_proc must be an integer >= 1, got {num_proc!r}")
    if start_method not in START_METHODS:
        raise ValueError(f"start_method must be one of {START_METHODS}, got {start_method!r}")
    _refuse_reserved("map_on_ranks", {"batched", "with_rank", "num_proc"}, map_kwargs, "leave them out")
    _check_shard_alignment(dataset, function, num_proc, map_kwargs.get("batch_size", 1000))
    import multiprocess

    method = start_method
    if method == "auto":
        reason = _parent_needs_spawn(num_proc)
        method = "spawn" if reason else "fork"
        if reason:
            logger.info("map_on_ranks: spawning %d workers because %s", num_proc, reason)
    previous_method = multiprocess.get_start_method(allow_none=True)
    previous_ranks = os.environ.get(ENV_NUM_RANKS)
    os.environ[ENV_NUM_RANKS] = str(num_proc)  # inherited by the workers, read by pin_rank
    try:
        multiprocess.set_start_method(method, force=True)
        return dataset.map(function, batched=True, with_rank=True, num_proc=num_proc, **map_kwargs)
    finally:
        multiprocess.set_start_method(previous_method, force=True)
        if previous_ranks is None:
            os.environ.pop(ENV_NUM_RANKS, None)
        else:
            os.environ[ENV_NUM_RANKS] = previous_ranks


def _check_shard_alignment(dataset: Any, function: Any, num_proc: int, batch_size: int | None) -> None:
    """With M-shot chains the batches decide which rows are chained; `num_proc` must not move batch boundaries."""
    rounds = getattr(getattr(function, "config", None), "rounds", 1)
    if not isinstance(rounds, int) or rounds <= 1 or not batch_size or not hasattr(dataset, "__len__"):
        return
    rows = len(dataset)
    share, extra = divmod(rows, num_proc)
    # datasets' contiguous shards: the first `extra` shards hold one row more
    starts = [index * share + min(index, extra) for index in range(1, num_proc)]
    misaligned = [start for start in starts if start % batch_size and start < rows]
    if misaligned:
        raise ValueError(
            f"num_proc={num_proc} cuts the {rows} rows into shards starting at rows {starts}, not all multiples of "
            f"batch_size={batch_size}: with rounds={rounds} the batches decide which rows are chained, so the rows "
            f"would differ from a single-process map. Use a row count that is a multiple of num_proc × batch_size "
            f"({num_proc * batch_size}; map the rest separately), or the sharded runner (hf_ipt.runner), whose "
            f"shards are whole batches"
        )


# --------------------------------------------------------------------------------------------------------------------
# Ray
# --------------------------------------------------------------------------------------------------------------------


class ArrowBatchMapper:
    """Runs an hf-ipt batched map function (dict of lists in and out) on Ray Data's pyarrow batches.

    Input columns the function returns unchanged keep their exact Arrow type; new columns are converted from the
    Python values. Used as the callable class of `map_batches` (one instance per actor).

    Example:
        >>> ray_ds.map_batches(ArrowBatchMapper, fn_constructor_args=(synth,), batch_format="pyarrow",
        ...                    batch_size=1024, concurrency=4, num_gpus=1)  # doctest: +SKIP
    """

    def __init__(self, function: Callable[[dict[str, list]], dict[str, list]]) -> None:
        if not callable(function):
            raise TypeError(f"ArrowBatchMapper needs a batched map function, got {type(function).__name__}")
        self.function = function

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        batch = table.to_pydict()
        result = self.function(batch)
        if not isinstance(result, Mapping):
            raise TypeError(f"the map function must return a dict of columns, got {type(result).__name__}")
        arrays, names = [], []
        for name, values in result.items():
            if name in batch and values is batch[name]:
                arrays.append(table.column(name))  # untouched input column: keep its Arrow type as it is
            else:
                arrays.append(values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values))
            names.append(name)
        lengths = {len(a) for a in arrays}
        if lengths and lengths != {table.num_rows}:
            raise ValueError(
                f"the map function returned columns of {sorted(lengths)} rows for a batch of {table.num_rows}; "
                "it must return one row per input row"
            )
        return pa.table(arrays, names=names)


def _check_positive(name: str, value: Any, *, integer: bool = True) -> None:
    kinds = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        raise ValueError(f"{name} must be a positive {'integer' if integer else 'number'}, got {value!r}")


def _check_resource(name: str, value: Any) -> None:
    """A Ray resource amount (GPUs or CPUs per actor or worker): a number >= 0, fractions allowed."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")


def _refuse_reserved(caller: str, reserved: set[str], kwargs: Mapping[str, Any], hint: str) -> None:
    """The map helpers pass some arguments of the wrapped call themselves; refuse a caller's copy of them."""
    clashing = sorted(reserved & set(kwargs))
    if clashing:
        raise TypeError(f"{caller} sets {clashing} itself; {hint}")


def ray_map_batches(
    ray_dataset: Any,
    function: Callable[[dict[str, list]], dict[str, list]],
    *,
    batch_size: int,
    num_actors: int,
    num_gpus_per_actor: float = 0,
    num_cpus_per_actor: float | None = None,
    **map_batches_kwargs: Any,
) -> Any:
    """`function` over a Ray Dataset with `num_actors` actors, batches identical to `Dataset.map(batch_size=...)`'s.

    The dataset is first cut, in order, into blocks of exactly `batch_size` rows (the last may be shorter) so that
    each call sees the rows a plain `map` would give it — with `rounds > 1` the batch decides the chains. Row order is
    preserved. Each actor holds one engine: give it `num_gpus_per_actor=1` (Ray sets its CUDA_VISIBLE_DEVICES), or
    `tensor_parallel_size` GPUs for a model that needs several. Further keyword arguments go to `map_batches`.

    Example:
        >>> out = ray_map_batches(ray.data.read_parquet(path), synth, batch_size=1024, num_actors=8,
        ...                       num_gpus_per_actor=1)  # doctest: +SKIP
    """
    _check_positive("batch_size", batch_size)
    _check_positive("num_actors", num_actors)
    _check_resource("num_gpus_per_actor", num_gpus_per_actor)
    if num_cpus_per_actor is not None:
        _check_positive("num_cpus_per_actor", num_cpus_per_actor, integer=False)
    _refuse_reserved(
        "ray_map_batches",
        {"fn_constructor_args", "batch_format", "concurrency", "num_gpus", "num_cpus"},
        map_batches_kwargs,
        "use its own arguments instead",
    )
    # chains are formed inside a batch, so blocks must reach the actors whole and in order
    ray_dataset.context.execution_options.preserve_order = True
    aligned = ray_dataset.repartition(target_num_rows_per_block=batch_size, strict=True)
    aligned.context.execution_options.preserve_order = True
    resources: dict[str, Any] = {}
    if num_gpus_per_actor:
        resources["num_gpus"] = num_gpus_per_actor
    if num_cpus_per_actor is not None:
        resources["num_cpus"] = num_cpus_per_actor
    return aligned.map_batches(
        ArrowBatchMapper,
        fn_constructor_args=(function,),
        batch_size=batch_size,
        batch_format="pyarrow",
        concurrency=num_actors,
        **resources,
        **map_batches_kwargs,
    )


def _pyarrow_filesystem(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    """(pyarrow filesystem, path) for a local path or any fsspec URL (s3://, gs://, hf://datasets/...)."""
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    store = Store(url, storage_options)
    if store.is_local:
        return None, store.root
    return PyFileSystem(FSSpecHandler(store.fs)), store.root


def ray_map_parquet(
    input_path: str | Sequence[str],
    output_dir: str,
    function: Callable[[dict[str, list]], dict[str, list]],
    *,
    batch_size: int,
    num_actors: int,
    num_gpus_per_actor: float = 0,
    num_cpus_per_actor: float | None = None,
    storage_options: Mapping[str, Any] | None = None,
    **map_batches_kwargs: Any,
) -> None:
    """Read Parquet, map with `ray_map_batches`, write Parquet files (in row order by file name) to `output_dir`.

    Paths are local paths or fsspec URLs (`s3://`, `gs://`, `hf://datasets/org/name/...` — Hub writes need a token);
    `storage_options` go to fsspec. The output loads with `datasets.load_dataset("parquet",
    data_files=f"{output_dir}/*.parquet")`.

    Example:
        >>> ray_map_parquet("raw/", "synthesized/", synth, batch_size=1024, num_actors=2,
        ...                 num_gpus_per_actor=1)  # doctest: +SKIP
    """
    ray = require("ray", "running on Ray")
    paths = [input_path] if isinstance(input_path, str) else list(input_path)
    if not paths:
        raise ValueError("input_path must name at least one Parquet file or folder")
    read_fs, first = _pyarrow_filesystem(paths[0], storage_options)
    resolved = [first] + [_pyarrow_filesystem(p, storage_options)[1] for p in paths[1:]]
    write_fs, out_path = _pyarrow_filesystem(output_dir, storage_options)
    context = ray.data.DataContext.get_current()
    previous = context.execution_options.preserve_order
    context.execution_options.preserve_order = True
    try:
        source = ray.data.read_parquet(resolved if len(resolved) > 1 else resolved[0], filesystem=read_fs)
        mapped = ray_map_batches(
            source,
            function,
            batch_size=batch_size,
            num_actors=num_actors,
            num_gpus_per_actor=num_gpus_per_actor,
            num_cpus_per_actor=num_cpus_per_actor,
            **map_batches_kwargs,
        )
        mapped.write_parquet(out_path, filesystem=write_fs)
    finally:
        context.execution_options.preserve_order = previous


# --------------------------------------------------------------------------------------------------------------------
# Backends of the sharded runner: where its workers run
# --------------------------------------------------------------------------------------------------------------------


class ShardWorker(Protocol):
    """What a backend needs of a runner (`hf_ipt.runner.ShardedRunner`): its worker slots and one worker's run.

    Example:
        >>> runner = ShardedRunner(synth, "out", shard_size=8, batch_size=4, num_workers=2)  # doctest: +SKIP
        >>> [runner.worker_index, runner.num_workers], runner.run_worker(dataset).processed  # doctest: +SKIP
        ([0, 2], [0, 2])
    """

    worker_index: int
    num_workers: int

    def run_worker(self, dataset: Any) -> Any: ...


class Backend(Protocol):
    """Runs the workers of a sharded runner and returns each worker's `ShardRunReport`, in worker order.

    Example:
        >>> class InlineBackend:  # every worker in turn, in this process
        ...     name = "inline"
        ...     def run(self, runner, dataset):
        ...         return [runner.run_worker(dataset)]
        >>> ShardedRunner(synth, "out", shard_size=8, batch_size=4, backend=InlineBackend())  # doctest: +SKIP
    """

    name: ClassVar[str]

    def run(self, runner: ShardWorker, dataset: Any) -> list[Any]: ...


def load_input(dataset: Any) -> Any:
    """The dataset itself, or what a zero-argument loader returns (so each worker can load its input itself).

    Example:
        >>> load_input(lambda: [1, 2]), load_input([3])
        ([1, 2], [3])
    """
    if callable(dataset) and not hasattr(dataset, "select"):
        return dataset()
    return dataset


@dataclass(frozen=True)
class LocalBackend:
    """Runs one worker in this process: worker `runner.worker_index` of `runner.num_workers`. The other workers, if
    any, are processes you start yourself on any machines that reach the output folder (e.g.
    `hf-ipt synthesize RECIPE --worker-index i --num-workers n`).

    Example:
        >>> ShardedRunner(synth, "out", shard_size=8, batch_size=4, backend=LocalBackend())  # doctest: +SKIP
    """

    name: ClassVar[str] = "local"

    def run(self, runner: ShardWorker, dataset: Any) -> list[Any]:
        """Run this process's worker; a one-item list of its report."""
        return [runner.run_worker(load_input(dataset))]


def _run_pinned_worker(runner: ShardWorker, dataset: Any, devices: int, results: Any) -> None:
    """The body of one `ProcessBackend` process: pin to the rank's devices, run the worker, send back its report."""
    try:
        pin_rank(runner.worker_index, num_ranks=runner.num_workers, devices_per_rank=devices)
        results.put((runner.worker_index, runner.run_worker(load_input(dataset)), None))
    except BaseException as err:  # noqa: BLE001 - whatever stopped the worker goes back to the parent, then raises
        try:
            results.put((runner.worker_index, None, err))
        except Exception:  # noqa: BLE001 - an exception that cannot be pickled: send its text
            results.put((runner.worker_index, None, RuntimeError(f"{type(err).__name__}: {err}")))


@dataclass(frozen=True)
class ProcessBackend:
    """Runs `runner.num_workers` workers as processes on this machine, worker i pinned to rank i's devices
    (`pin_rank`: its GPUs, `devices_per_worker` each, or its share of the cores), so one machine with 8 GPUs needs no
    Ray. The input is loaded once here and handed to the processes (a forked process shares it; a spawned one gets
    a memory-mapped dataset as its file paths).

    `start_method` as for `map_on_ranks` ('auto' spawns on GPU machines and where a forked torch would run
    single-threaded). A process that dies loses only its shard in flight: run the command again to redo it.

    Example:
        >>> ShardedRunner(synth, "out", shard_size=8, batch_size=4, num_workers=8,
        ...               backend=ProcessBackend(devices_per_worker=1)).run(dataset)  # doctest: +SKIP
    """

    name: ClassVar[str] = "processes"
    devices_per_worker: int = 1
    start_method: str = "auto"

    def __post_init__(self) -> None:
        _check_positive("devices_per_worker", self.devices_per_worker)
        if self.start_method not in START_METHODS:
            raise ValueError(f"start_method must be one of {START_METHODS}, got {self.start_method!r}")

    def run(self, runner: ShardWorker, dataset: Any) -> list[Any]:
        """Start one process per worker, wait for all; their reports in worker order (the first error raises)."""
        import multiprocess

        dataset = load_input(dataset)
        count = runner.num_workers
        method = self.start_method
        if method == "auto":
            reason = _parent_needs_spawn(count)
            method = "spawn" if reason else "fork"
            if reason:
                logger.info("starting %d worker processes with spawn because %s", count, reason)
        context = multiprocess.get_context(method)
        results = context.SimpleQueue()
        processes = []
        for index in range(count):
            worker = copy.copy(runner)
            worker.worker_index = index
            process = context.Process(
                target=_run_pinned_worker, args=(worker, dataset, self.devices_per_worker, results), daemon=False
            )
            process.start()
            processes.append(process)
        outcomes: dict[int, tuple[Any, BaseException | None]] = {}
        try:
            while len(outcomes) < count:
                if not results.empty():
                    index, report, error = results.get()
                    outcomes[index] = (report, error)
                    continue
                # a SimpleQueue put is written before its process exits: dead, silent and nothing queued = lost
                for index, process in enumerate(processes):
                    if index not in outcomes and not process.is_alive() and results.empty():
                        outcomes[index] = (
                            None,
                            RuntimeError(
                                f"worker process {index} of {count} died (exit code {process.exitcode}) before it "
                                "reported; its committed shards are kept: run the same command again to redo the rest"
                            ),
                        )
                time.sleep(0.2)
        finally:
            for process in processes:
                process.join()
        for index in range(count):
            error = outcomes[index][1]
            if error is not None:
                raise error
        reports = {index: report for index, (report, _) in outcomes.items()}
        return [reports[i] for i in range(count)]


def connect_ray(address: str | None = None) -> Any:
    """The `ray` module, connected: to `address` when given, else to `RAY_ADDRESS` when set, else to the instance this
    process already joined, else to a new local one.

    Example:
        >>> ray = connect_ray("auto")  # doctest: +SKIP
        >>> ray.cluster_resources().get("GPU", 0)  # doctest: +SKIP
        16.0
    """
    ray = require("ray", "running on Ray")
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        ray.init(address=address, log_to_driver=True, configure_logging=False)
    except ConnectionError as err:
        raise ConnectionError(
            f"cannot reach the Ray cluster at {address!r} ({err}); start it with `ray start --head` on the head node "
            "(and `ray start --address=<head>:6379` on the others), or fix run.ray_address / RAY_ADDRESS"
        ) from err
    return ray


def _run_ray_worker(runner: ShardWorker, dataset: Any, driver_cwd: str | None) -> Any:
    # relative paths in a recipe (model, output folder) mean what they mean on the driver: on its machine, or on one
    # that mounts the same shared folder, run from the same directory
    if driver_cwd and os.path.isdir(driver_cwd):
        os.chdir(driver_cwd)
    return runner.run_worker(load_input(dataset))


@dataclass(frozen=True)
class RayBackend:
    """Starts `runner.num_workers` Ray tasks, worker i taking shards i, i+n, ...; each gets `num_gpus_per_worker`
    GPUs (Ray sets its CUDA_VISIBLE_DEVICES) and `num_cpus_per_worker` CPUs. Connects with `connect_ray(address)`:
    the instance this process already joined, `address`, `RAY_ADDRESS`, or a new local one.

    The dataset is shipped to the workers, or, given as a zero-argument loader (e.g.
    `functools.partial(load_dataset, "org/corpus", split="train", revision="<sha>")`), loaded by each worker. The
    output folder must be storage every worker reaches (a shared folder, or an fsspec URL). A task whose process or
    node dies is restarted up to `max_retries` times: it skips its committed shards and redoes the one in flight
    (Python errors are not retried: they would fail again). A failed run is resumed by running it again.

    `num_gpus_per_worker=None` reserves `devices_per_worker` GPUs when the cluster has GPUs, none on a CPU-only
    cluster.

    Example:
        >>> runner = ShardedRunner(synth, "s3://bucket/run", shard_size=4096, batch_size=1024, num_workers=16,
        ...                        backend=RayBackend(num_gpus_per_worker=1))  # doctest: +SKIP
        >>> runner.run(loader).complete  # doctest: +SKIP
        True
    """

    name: ClassVar[str] = "ray"
    num_gpus_per_worker: float | None = 0
    num_cpus_per_worker: float = 1
    max_retries: int = 3
    address: str | None = None
    devices_per_worker: int = 1

    def __post_init__(self) -> None:
        if self.num_gpus_per_worker is not None:
            _check_resource("num_gpus_per_worker", self.num_gpus_per_worker)
        _check_resource("num_cpus_per_worker", self.num_cpus_per_worker)
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {self.max_retries!r}")
        _check_positive("devices_per_worker", self.devices_per_worker)

    def gpus_per_worker(self, cluster_gpus: float) -> float:
        """The GPUs each worker reserves on a cluster with `cluster_gpus` GPUs; refuses what could never be
        scheduled (Ray would wait forever).

        Example:
            >>> RayBackend(num_gpus_per_worker=None, devices_per_worker=2).gpus_per_worker(8)
            2
            >>> RayBackend(num_gpus_per_worker=None).gpus_per_worker(0)
            0
        """
        wanted = self.num_gpus_per_worker
        if wanted is None:
            return self.devices_per_worker if cluster_gpus else 0
        if wanted > cluster_gpus:
            raise ValueError(
                f"run.gpus_per_worker={wanted} but the Ray cluster has {cluster_gpus:g} GPU(s): no worker could "
                "ever start. Lower run.gpus_per_worker (0 on a CPU-only cluster), or add GPU nodes"
            )
        return wanted

    def run(self, runner: ShardWorker, dataset: Any) -> list[Any]:
        """Run every worker as a Ray task and wait for them; their reports in worker order."""
        ray = connect_ray(self.address)
        gpus = self.gpus_per_worker(float(ray.cluster_resources().get("GPU", 0)))
        remote = ray.remote(num_gpus=gpus, num_cpus=self.num_cpus_per_worker, max_retries=self.max_retries)(
            _run_ray_worker
        )
        dataset_ref = ray.put(dataset)
        futures = []
        for index in range(runner.num_workers):
            worker = copy.copy(runner)
            worker.worker_index = index
            futures.append(remote.remote(worker, dataset_ref, os.getcwd()))
        try:
            return ray.get(futures)
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as err:
            raise RuntimeError(
                f"a Ray worker died {self.max_retries + 1} time(s) ({type(err).__name__}); its committed shards "
                "are kept: run the same command again to redo the rest (raise run.max_retries for flaky nodes)"
            ) from err


BACKENDS: dict[str, type] = {"local": LocalBackend, "processes": ProcessBackend, "ray": RayBackend}


def make_backend(spec: str | Backend = "local", **options: Any) -> Backend:
    """The backend for `spec`: a name in `BACKENDS` ('local', 'ray'), created with `options`, or a backend as is.

    This is the one dispatch point from a setting to a backend (e.g. a recipe's executor name).

    Example:
        >>> make_backend("ray", num_gpus_per_worker=1)
        RayBackend(num_gpus_per_worker=1, num_cpus_per_worker=1, max_retries=3, address=None, devices_per_worker=1)
        >>> make_backend("local")
        LocalBackend()
    """
    if isinstance(spec, str):
        if spec not in BACKENDS:
            raise ValueError(f"unknown backend {spec!r}; choose one of {sorted(BACKENDS)}, or pass a backend object")
        return BACKENDS[spec](**options)
    if options:
        raise TypeError(f"options {sorted(options)} only go with a backend name, not with a backend object")
    if not callable(getattr(spec, "run", None)):
        raise TypeError(f"backend must be a name in {sorted(BACKENDS)} or a backend object, got {spec!r}")
    return spec


def run_sharded_on_ray(
    runner: Any,
    dataset: Any,
    *,
    num_workers: int,
    num_gpus_per_worker: float = 0,
    num_cpus_per_worker: float = 1,
) -> list[Any]:
    """Deprecated: use `ShardedRunner(..., num_workers=n, backend=RayBackend(...)).run(dataset).workers`.

    Runs a `hf_ipt.runner.ShardedRunner` as `num_workers` Ray workers; returns their `ShardRunReport`s.

    Example:
        >>> reports = run_sharded_on_ray(runner, loader, num_workers=16, num_gpus_per_worker=1)  # doctest: +SKIP
    """
    warnings.warn(
        "run_sharded_on_ray is deprecated: pass num_workers=n and backend=RayBackend(num_gpus_per_worker=...) (or "
        "backend='ray') to ShardedRunner and call its run(dataset); the workers' reports are in report.workers",
        DeprecationWarning,
        stacklevel=2,
    )
    _check_positive("num_workers", num_workers)
    backend = RayBackend(num_gpus_per_worker=num_gpus_per_worker, num_cpus_per_worker=num_cpus_per_worker)
    if not hasattr(runner, "run_worker") or not hasattr(runner, "worker_index"):
        raise TypeError(f"runner must be an hf_ipt.runner.ShardedRunner, got {type(runner).__name__}")
    on_ray = copy.copy(runner)
    on_ray.worker_index, on_ray.num_workers, on_ray.backend = 0, num_workers, backend
    return on_ray.run(dataset).workers
