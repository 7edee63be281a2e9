"""The Ray driver of a command, in a process of its own: whatever Ray does to its driver when the command's own Ray
node dies (it ends the process itself, `_exit(1)`, once the raylet or the cluster's head is gone, at a moment of its
own), the command goes on, and says what died and how to resume.

`run_driver_process` (the command's side) pickles the executor, the runner and the dataset into a temporary folder,
starts `python -m hf_ipt.execution.ray_driver FOLDER` (the driver's side, `main`), copies the driver's output lines to
its own stdout/stderr through the one scrubber, and returns the workers' reports, or raises what the driver raised
(`WorkersLostError` when a worker's node died), or `WorkersLostError` when the driver ended without an answer.

Example:
    >>> run_driver_process(RayExecutor(), runner, dataset)  # doctest: +SKIP
    [ShardRunReport(...), ShardRunReport(...)]
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Any

from hf_ipt.execution.base import WorkersLostError
from hf_ipt.redaction import scrub

PAYLOAD, OUTCOME = "payload.pkl", "outcome.pkl"
# once the driver has answered, it stops the Ray node it started; a driver whose node is dead may never get through
# that, so it is ended after this long
DRIVER_EXIT_SECONDS = 60.0
# the driver's output pipes may stay open in a process it started (a Ray node process): stop copying after this long
PIPE_DRAIN_SECONDS = 10.0


def run_driver_process(executor: Any, runner: Any, dataset: Any) -> list[Any]:
    """`executor.drive(runner, dataset)` in a child process (see the module's docstring); its result, or its error.

    Example:
        >>> reports = run_driver_process(RayExecutor(max_retries=0), runner, dataset)  # doctest: +SKIP
    """
    from ray import cloudpickle  # what Ray ships the runner to its workers with: what can go there can go here

    with tempfile.TemporaryDirectory(prefix="hf-ipt-ray-driver-") as folder:
        with open(Path(folder) / PAYLOAD, "wb") as payload:
            pickle.dump(list(sys.path), payload)  # first, so the driver finds the modules the rest comes from
            cloudpickle.dump((executor, runner, dataset), payload)
        command = [
            sys.executable,
            "-c",
            "import sys; from hf_ipt.execution.ray_driver import main; main(sys.argv[1])",
            folder,
        ]
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        copiers = [copy_lines(child.stdout, sys.stdout), copy_lines(child.stderr, sys.stderr)]
        try:
            status = await_driver(child, Path(folder) / OUTCOME)
        finally:
            if child.poll() is None:  # interrupted: the driver (and the Ray node it started) goes too
                child.kill()
                child.wait()
            for copier in copiers:
                copier.join(PIPE_DRAIN_SECONDS)
        outcome = read_outcome(Path(folder) / OUTCOME)
    if outcome is None:
        raise WorkersLostError(
            f"the Ray node this command runs on died, or the head of its cluster (Ray ended the command's Ray driver, "
            f"process {child.pid}, with {describe_status(status)}); the shards committed so far are kept: run the "
            "same command again to resume"
        )
    kind, value = outcome
    if kind == "raised":
        raise value
    return value


def await_driver(child: subprocess.Popen, outcome: Path) -> int:
    """Wait for the driver to end; one that has answered gets `DRIVER_EXIT_SECONDS` to stop its Ray node, then is
    killed. Returns its exit status."""
    while True:
        try:
            return child.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            if outcome.exists():
                try:
                    return child.wait(timeout=DRIVER_EXIT_SECONDS)
                except subprocess.TimeoutExpired:
                    child.kill()
                    return child.wait()


def copy_lines(source: IO[bytes], target: IO[str]) -> threading.Thread:
    """A thread copying each line of `source` to `target` through the one scrubber, until `source` ends."""

    def copy() -> None:
        with source:
            for raw in iter(source.readline, b""):
                target.write(scrub(raw.decode("utf-8", errors="replace")))
                target.flush()

    thread = threading.Thread(target=copy, name="hf-ipt-ray-driver-output", daemon=True)
    thread.start()
    return thread


def describe_status(status: int) -> str:
    """A process's exit status in words.

    Example:
        >>> describe_status(1), describe_status(-9)
        ('exit status 1', 'signal 9')
    """
    return f"signal {-status}" if status < 0 else f"exit status {status}"


def read_outcome(path: Path) -> tuple[str, Any] | None:
    """What the driver answered, or None when it ended without (a half-written answer is none)."""
    try:
        with open(path, "rb") as answer:
            return pickle.load(answer)
    except FileNotFoundError:
        return None
    except Exception as err:  # noqa: BLE001 - an answer that cannot be read back: say what it was
        return "raised", RuntimeError(f"the Ray driver's answer could not be read back ({type(err).__name__}: {err})")


def write_outcome(folder: Path, kind: str, value: Any) -> None:
    """Write the driver's answer atomically; an error that cannot be pickled is sent as its type and message."""
    from ray import cloudpickle

    try:
        data = cloudpickle.dumps((kind, value))
        pickle.loads(data)  # an exception whose class cannot be rebuilt from its pickle fails here, not in the command
    except Exception:  # noqa: BLE001 - whatever cannot travel travels as text
        data = cloudpickle.dumps(("raised", RuntimeError(f"{type(value).__name__}: {value}")))
    partial = folder / f"{OUTCOME}.partial"
    partial.write_bytes(data)
    os.replace(partial, folder / OUTCOME)


def main(folder: str) -> None:
    """The driver's side: run what the payload in `folder` asks, write the answer, stop Ray, end."""
    with open(Path(folder) / PAYLOAD, "rb") as payload:
        sys.path[:] = pickle.load(payload)
        executor, runner, dataset = pickle.load(payload)
    try:
        answer = ("done", executor.drive(runner, dataset))
    except BaseException as err:  # noqa: BLE001 - every error goes back to the command, which raises it
        answer = ("raised", err)
    write_outcome(Path(folder), *answer)
    sys.stdout.flush()
    sys.stderr.flush()
    with contextlib.suppress(BaseException):
        import ray

        ray.shutdown()  # the Ray node it started, if any; the command waits for this at most DRIVER_EXIT_SECONDS
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # nothing else to run: Ray's own exit hooks may hang on a dead node


if __name__ == "__main__":
    main(sys.argv[1])
