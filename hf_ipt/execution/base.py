"""What every executor of the sharded runner shares: the worker protocol, the executor protocol, input loading.

An executor runs the workers of a `hf_ipt.execution.runner.ShardedRunner` somewhere and returns each worker's report:
`LocalExecutor` (this process is one worker), `ProcessExecutor` (n pinned processes on this machine), `RayExecutor`
(n Ray tasks). `hf_ipt.execution.make_executor` turns a name into one.

Example:
    >>> load_input(lambda: [1, 2])
    [1, 2]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol


class ShardWorker(Protocol):
    """What an executor needs of a runner (`hf_ipt.execution.runner.ShardedRunner`): its worker slots and one
    worker's run.

    Example:
        >>> runner = ShardedRunner(synth, "out", shard_size=8, batch_size=4, num_workers=2)  # doctest: +SKIP
        >>> [runner.worker_index, runner.num_workers], runner.run_worker(dataset).processed  # doctest: +SKIP
        ([0, 2], [0, 2])
    """

    worker_index: int
    num_workers: int

    def run_worker(self, dataset: Any) -> Any: ...


class Executor(Protocol):
    """Runs the workers of a sharded runner and returns each worker's `ShardRunReport`, in worker order.

    Example:
        >>> class InlineExecutor:  # every worker in turn, in this process
        ...     name = "inline"
        ...     def run(self, runner, dataset):
        ...         return [runner.run_worker(dataset)]
        >>> ShardedRunner(synth, "out", shard_size=8, batch_size=4, executor=InlineExecutor())  # doctest: +SKIP
    """

    name: ClassVar[str]

    def run(self, runner: ShardWorker, dataset: Any) -> list[Any]: ...


class WorkersLostError(RuntimeError):
    """Workers of a sharded run were lost beyond retrying: a worker process, a Ray node, or the Ray node this
    command runs on died. The committed shards are kept; the message says what died and that running the same
    command again resumes (the CLI's exit status 5).

    Example:
        >>> raise WorkersLostError("the Ray node ... died; ... run the same command again")  # doctest: +SKIP
    """


def load_input(dataset: Any) -> Any:
    """The dataset itself, or what a zero-argument loader returns (so each worker can load its input itself).

    Example:
        >>> load_input(lambda: [1, 2]), load_input([3])
        ([1, 2], [3])
    """
    if callable(dataset) and not hasattr(dataset, "select"):
        return dataset()
    return dataset


def check_positive(name: str, value: Any, *, integer: bool = True) -> None:
    kinds = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        raise ValueError(f"{name} must be a positive {'integer' if integer else 'number'}, got {value!r}")


def check_resource(name: str, value: Any) -> None:
    """A Ray resource amount (GPUs or CPUs per actor or worker): a number >= 0, fractions allowed."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")


def refuse_reserved(caller: str, reserved: set[str], kwargs: Mapping[str, Any], hint: str) -> None:
    """The map helpers pass some arguments of the wrapped call themselves; refuse a caller's copy of them."""
    clashing = sorted(reserved & set(kwargs))
    if clashing:
        raise TypeError(f"{caller} sets {clashing} itself; {hint}")
