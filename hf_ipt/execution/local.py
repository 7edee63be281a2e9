"""The local executor: this process is one worker of the sharded runner (start the others yourself, e.g. one
`hf-ipt synthesize RECIPE --worker-index i --num-workers n` per machine or Slurm array task).

Example:
    >>> LocalExecutor().name
    'local'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from hf_ipt.execution.base import ShardWorker, load_input


@dataclass(frozen=True)
class LocalExecutor:
    """Runs one worker in this process: worker `runner.worker_index` of `runner.num_workers`. The other workers, if
    any, are processes you start yourself on any machines that reach the output folder (e.g.
    `hf-ipt synthesize RECIPE --worker-index i --num-workers n`).

    Example:
        >>> ShardedRunner(synth, "out", shard_size=8, batch_size=4, executor=LocalExecutor())  # doctest: +SKIP
    """

    name: ClassVar[str] = "local"

    def run(self, runner: ShardWorker, dataset: Any) -> list[Any]:
        """Run this process's worker; a one-item list of its report."""
        return [runner.run_worker(load_input(dataset))]
