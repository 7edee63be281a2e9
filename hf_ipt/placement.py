"""Where a worker process runs: its GPUs (`CUDA_VISIBLE_DEVICES`) or its share of the CPU cores.

`Dataset.map(synth, batched=True, with_rank=True, num_proc=n)` gives each worker process a rank; the `Synthesizer`
pins its process to the rank's devices (`pin_rank`) before it creates its engine: on GPU machines rank r gets GPUs
r*k .. r*k+k-1, where k is the devices one engine occupies (its class says: `Engine.devices`, tensor × pipeline
parallel for vLLM);
on CPU machines an equal share of the cores (`sched_setaffinity` and vLLM's `VLLM_CPU_OMP_THREADS_BIND`; the share
needs the number of ranks, from `HF_IPT_NUM_RANKS`). The executors (`hf_ipt.execution`) pin their workers the same
way. This module is what synthesis may import of execution: it starts nothing.

Example:
    >>> plan_placement(1, num_ranks=2, cpus=range(4)).cpus
    (2, 3)
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hf_ipt.process import process_state

logger = logging.getLogger(__name__)

ENV_NUM_RANKS = "HF_IPT_NUM_RANKS"


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


def numa_nodes() -> int:
    """The NUMA nodes of this machine (vLLM's CPU backend binds each tensor/pipeline-parallel rank to one); 1 where
    the system does not say.

    Example:
        >>> numa_nodes() >= 1
        True
    """
    try:
        found = [name for name in os.listdir("/sys/devices/system/node") if name[4:].isdigit()]
    except OSError:
        return 1
    return max(1, len(found))


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


def rank_from_args(args: Sequence[Any]) -> int | None:
    """The rank `Dataset.map(..., with_rank=True)` passes as the last extra argument (indices come as a list).

    Example:
        >>> rank_from_args(([0, 1, 2], 1)), rank_from_args(([0, 1, 2],)), rank_from_args(())
        (1, None, None)
    """
    if args and isinstance(args[-1], int) and not isinstance(args[-1], bool):
        return args[-1]
    return None


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
    state = process_state()
    pinned = state.placement
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
                "hf_ipt.execution.map_on_ranks(...) (it spawns), or multiprocess.set_start_method('spawn', "
                "force=True) before Dataset.map"
            )
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(placement.gpus)
    elif placement.cpus:
        cores = list(placement.cpus)
        if state.forked_after_torch and len(cores) > 1:
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
            "(use hf_ipt.execution.map_on_ranks, or set %s=num_proc)",
            rank,
            ENV_NUM_RANKS,
            ENV_NUM_RANKS,
        )
    logger.info("process %d runs rank %d on %s", os.getpid(), rank, _describe_placement(placement))
    state.placement = placement
    return placement


def current_placement() -> Placement | None:
    """The placement `pin_rank` gave this process, None if it was not pinned.

    Example:
        >>> pin_rank(1, num_ranks=2)  # doctest: +SKIP
        >>> current_placement().rank  # doctest: +SKIP
        1
    """
    return process_state().placement


def _describe_placement(placement: Placement) -> str:
    if placement.gpus:
        return f"GPU(s) {','.join(placement.gpus)}"
    if placement.cpus:
        return f"core(s) {','.join(map(str, placement.cpus))}"
    return "all its devices"
