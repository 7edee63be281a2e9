"""Execution: where the work of a stage runs, and the sharded runner that makes it resumable.

- `runner`: `ShardedRunner` cuts a dataset into contiguous shards of whole batches, maps and commits each one, so an
  interrupted run resumes; `plan_shards`, `assemble_shards`, `run_status`.
- the executors of the runner, one file each: `local` (this process is one worker), `processes` (one pinned process
  per GPU or share of the cores on this machine), `ray` (Ray tasks, retried when their process dies);
  `make_executor` turns a name (a recipe's `run.executor`) into one.
- `phases`: `ShardPhase`, any stage's work cut in shards (a picklable task per shard index), each shard committed
  with its marker on an executor, so templify, the mix (and any stage that adopts it) resume and run on several
  workers with the bytes of one (`hf_ipt.stages.base.StageContext.run_shards` wires it to a stage).
- `ranks`: `map_on_ranks`, `Dataset.map` with one pinned process per rank.
- `ray_data`: `ray_map_batches` / `ray_map_parquet`, a map function under Ray Data with `Dataset.map`'s batches.

Pinning a process to its devices is `hf_ipt.placement` (which synthesis may import; it starts nothing).

Example:
    >>> make_executor("local")
    LocalExecutor()
"""

from __future__ import annotations

from typing import Any

from hf_ipt.execution.base import Executor, ShardWorker, load_input
from hf_ipt.execution.local import LocalExecutor
from hf_ipt.execution.processes import ProcessExecutor
from hf_ipt.execution.ranks import map_on_ranks
from hf_ipt.execution.ray import RayExecutor, connect_ray
from hf_ipt.execution.ray_data import ArrowBatchMapper, ray_map_batches, ray_map_parquet

EXECUTORS: dict[str, type] = {"local": LocalExecutor, "processes": ProcessExecutor, "ray": RayExecutor}


def make_executor(spec: str | Executor = "local", **options: Any) -> Executor:
    """The executor for `spec`: a name in `EXECUTORS` ('local', 'ray'), created with `options`, or an executor as is.

    This is the one dispatch point from a setting to an executor (e.g. a recipe's executor name).

    Example:
        >>> make_executor("ray", num_gpus_per_worker=1)
        RayExecutor(num_gpus_per_worker=1, num_cpus_per_worker=1, max_retries=3, address=None, devices_per_worker=1)
        >>> make_executor("local")
        LocalExecutor()
    """
    if isinstance(spec, str):
        if spec not in EXECUTORS:
            raise ValueError(
                f"unknown executor {spec!r}; choose one of {sorted(EXECUTORS)}, or pass an executor object"
            )
        return EXECUTORS[spec](**options)
    if options:
        raise TypeError(f"options {sorted(options)} only go with an executor name, not with an executor object")
    if not callable(getattr(spec, "run", None)):
        raise TypeError(f"executor must be a name in {sorted(EXECUTORS)} or an executor object, got {spec!r}")
    return spec


__all__ = [
    "EXECUTORS",
    "ArrowBatchMapper",
    "Executor",
    "LocalExecutor",
    "ProcessExecutor",
    "RayExecutor",
    "ShardWorker",
    "connect_ray",
    "load_input",
    "make_executor",
    "map_on_ranks",
    "ray_map_batches",
    "ray_map_parquet",
]
