"""The Ray executor: every worker of the sharded runner as a Ray task, retried when its process or node dies.

Example:
    >>> RayExecutor(num_gpus_per_worker=None, devices_per_worker=2).gpus_per_worker(8)
    2
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any, ClassVar

from hf_ipt._deps import require
from hf_ipt.execution.base import ShardWorker, WorkersLostError, check_positive, check_resource, load_input
from hf_ipt.execution.ray_driver import run_driver_process
from hf_ipt.logs import worker_log


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
    log = worker_log(runner)
    if log is None:
        return runner.run_worker(load_input(dataset))
    with log:
        return runner.run_worker(load_input(dataset))


@dataclass(frozen=True)
class RayExecutor:
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
        ...                        executor=RayExecutor(num_gpus_per_worker=1))  # doctest: +SKIP
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
            check_resource("num_gpus_per_worker", self.num_gpus_per_worker)
        check_resource("num_cpus_per_worker", self.num_cpus_per_worker)
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {self.max_retries!r}")
        check_positive("devices_per_worker", self.devices_per_worker)

    def gpus_per_worker(self, cluster_gpus: float) -> float:
        """The GPUs each worker reserves on a cluster with `cluster_gpus` GPUs; refuses what could never be
        scheduled (Ray would wait forever).

        Example:
            >>> RayExecutor(num_gpus_per_worker=None, devices_per_worker=2).gpus_per_worker(8)
            2
            >>> RayExecutor(num_gpus_per_worker=None).gpus_per_worker(0)
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
        """Run every worker as a Ray task and wait for them; their reports in worker order. The Ray driver runs in a
        process of its own (`hf_ipt.execution.ray_driver`), so that the death of this command's own Ray node ends it
        with `WorkersLostError` too; unless this process already joined Ray (a caller's `ray.init`): then here."""
        ray = require("ray", "running on Ray")
        if ray.is_initialized():
            return self.drive(runner, dataset)
        return run_driver_process(self, runner, dataset)

    def drive(self, runner: ShardWorker, dataset: Any) -> list[Any]:
        """Connect to Ray, start every worker as a Ray task and wait for them, in this process (the Ray driver);
        WorkersLostError, saying what died, when a process or node is gone beyond retrying."""
        ray = connect_ray(self.address)
        gpus = self.gpus_per_worker(float(ray.cluster_resources().get("GPU", 0)))
        remote = ray.remote(num_gpus=gpus, num_cpus=self.num_cpus_per_worker, max_retries=self.max_retries)(
            _run_ray_worker
        )
        own_node = ray.get_runtime_context().get_node_id()
        dataset_ref = ray.put(dataset)
        futures = []
        for index in range(runner.num_workers):
            worker = copy.copy(runner)
            worker.worker_index = index
            futures.append(remote.remote(worker, dataset_ref, os.getcwd()))
        try:
            return ray.get(futures)
        except ray.exceptions.RayTaskError:
            raise  # a Python error inside a worker: raised as itself (retrying would fail again)
        except ray.exceptions.RayError as err:  # a process, a node or the cluster is gone
            raise WorkersLostError(
                f"{lost_part(err, self.max_retries, own_node)} ({type(err).__name__}: {_first_line(err)}); the shards "
                "committed so far are kept: run the same command again to resume (raise run.max_retries for flaky "
                "nodes)"
            ) from err


def lost_part(err: BaseException, max_retries: int, own_node: str | None = None) -> str:
    """What a Ray error that is no Python error of the task says died, in words; `own_node`: the ID of the Ray node
    this command's driver runs on (a worker's node that died may be that one).

    Example:
        >>> lost_part(RuntimeError("?"), 3)
        'the Ray cluster failed the run'
        >>> class NodeDiedError(Exception): ...
        >>> lost_part(NodeDiedError("... node ID: 5e1f. This can happen ..."), 3, own_node="5e1f")
        'the Ray node this command runs on died'
    """
    names = {cls.__name__ for cls in type(err).__mro__}
    if "LocalRayletDiedError" in names:
        return "the Ray node this command runs on died (its raylet)"
    if "NodeDiedError" in names:
        if own_node and f"node ID: {own_node}" in str(err):  # Ray's message is all that names the node
            return "the Ray node this command runs on died"
        return "a Ray node running a worker died"
    if "WorkerCrashedError" in names:
        return f"a Ray worker process died {max_retries + 1} time(s)"
    if "ActorDiedError" in names or "OwnerDiedError" in names:
        return "a Ray process holding the run's state died"
    return "the Ray cluster failed the run"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
