"""The process executor: every worker of the sharded runner as a process on this machine, each pinned to its GPUs
or its share of the cores (`hf_ipt.placement.pin_rank`), so one machine with 8 GPUs needs no Ray.

Example:
    >>> ProcessExecutor(devices_per_worker=2).name
    'processes'
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from hf_ipt.execution.base import ShardWorker, WorkersLostError, check_positive, load_input
from hf_ipt.execution.ranks import START_METHODS, parent_needs_spawn
from hf_ipt.logs import worker_log
from hf_ipt.placement import pin_rank

logger = logging.getLogger(__name__)


def _run_pinned_worker(runner: ShardWorker, dataset: Any, devices: int, results: Any) -> None:
    """The body of one `ProcessExecutor` process: pin to the rank's devices, run the worker, send back its report."""
    log = worker_log(runner)
    try:
        if log is not None:
            log.start()
        pin_rank(runner.worker_index, num_ranks=runner.num_workers, devices_per_rank=devices)
        results.put((runner.worker_index, runner.run_worker(load_input(dataset)), None))
    except BaseException as err:
        if log is not None:
            log.record_error(err)  # noqa: BLE001 - whatever stopped the worker goes back to the parent, then raises
        try:
            results.put((runner.worker_index, None, err))
        except Exception:  # noqa: BLE001 - an exception that cannot be pickled: send its text
            results.put((runner.worker_index, None, RuntimeError(f"{type(err).__name__}: {err}")))
    finally:
        if log is not None:
            log.close()


@dataclass(frozen=True)
class ProcessExecutor:
    """Runs `runner.num_workers` workers as processes on this machine, worker i pinned to rank i's devices
    (`pin_rank`: its GPUs, `devices_per_worker` each, or its share of the cores), so one machine with 8 GPUs needs no
    Ray. The input is loaded once here and handed to the processes (a forked process shares it; a spawned one gets
    a memory-mapped dataset as its file paths).

    `start_method` as for `map_on_ranks` ('auto' spawns on GPU machines and where a forked torch would run
    single-threaded). A process that dies loses only its shard in flight: run the command again to redo it.

    Example:
        >>> ShardedRunner(synth, "out", shard_size=8, batch_size=4, num_workers=8,
        ...               executor=ProcessExecutor(devices_per_worker=1)).run(dataset)  # doctest: +SKIP
    """

    name: ClassVar[str] = "processes"
    devices_per_worker: int = 1
    start_method: str = "auto"

    def __post_init__(self) -> None:
        check_positive("devices_per_worker", self.devices_per_worker)
        if self.start_method not in START_METHODS:
            raise ValueError(f"start_method must be one of {START_METHODS}, got {self.start_method!r}")

    def run(self, runner: ShardWorker, dataset: Any) -> list[Any]:
        """Start one process per worker, wait for all; their reports in worker order (the first error raises)."""
        import multiprocess

        dataset = load_input(dataset)
        count = runner.num_workers
        method = self.start_method
        if method == "auto":
            reason = parent_needs_spawn(count)
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
                            WorkersLostError(
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
