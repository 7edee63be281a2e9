"""`map_on_ranks`: `Dataset.map` with one pinned process per GPU (or per share of the CPU cores).

`Dataset.map(synth, batched=True, with_rank=True, num_proc=n)` gives each worker process a rank, and the `Synthesizer`
pins its process to the rank's devices before it creates its engine (`hf_ipt.placement.pin_rank`). `map_on_ranks`
does all of it and uses the spawn start method where a forked worker could not use CUDA or several torch threads (so
scripts need `if __name__ == "__main__":`).

Example:
    >>> out = map_on_ranks(ds, synth, num_proc=8, batch_size=synth.config.batch_size)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from hf_ipt.execution.base import refuse_reserved
from hf_ipt.placement import ENV_NUM_RANKS, visible_gpus
from hf_ipt.process import process_state

logger = logging.getLogger(__name__)

START_METHODS = ("auto", "fork", "spawn")


def parent_needs_spawn(num_proc: int) -> str | None:
    """Why a process forked from this one could not run an engine, or None when fork is fine.

    Example:
        >>> parent_needs_spawn(1) is None or isinstance(parent_needs_spawn(1), str)
        True
    """
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "CUDA is initialized in this process"
    if process_state().engines:
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
    refuse_reserved("map_on_ranks", {"batched", "with_rank", "num_proc"}, map_kwargs, "leave them out")
    _check_shard_alignment(dataset, function, num_proc, map_kwargs.get("batch_size", 1000))
    import multiprocess

    method = start_method
    if method == "auto":
        reason = parent_needs_spawn(num_proc)
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
            f"({num_proc * batch_size}; map the rest separately), or the sharded runner "
            "(hf_ipt.execution.runner), whose shards are whole batches"
        )


# --------------------------------------------------------------------------------------------------------------------
# Ray
# --------------------------------------------------------------------------------------------------------------------
