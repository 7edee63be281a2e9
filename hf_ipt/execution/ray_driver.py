"""The Ray driver of a command, in a process of its own: whatever Ray does to its driver when the command's own Ray
node dies (it ends the process itself, `_exit(1)`, once the raylet or the cluster's head is gone, at a moment of its
own), the command goes on, and says what died and how to resume.

`run_driver_process` (the command's side) hands the executor, the runner and the dataset to the driver process
(`main`, started on first use and kept for the process's later runs: one Ray connection, or one local Ray node, for
all the phases of a command), copies the driver's output lines to its own stdout/stderr through the one scrubber,
and returns the workers' reports, or raises what the driver raised (`WorkersLostError` when a worker's node died),
or `WorkersLostError` when the driver ended without an answer. The driver stops Ray and ends when its command's
process exits.

Example:
    >>> run_driver_process(RayExecutor(), runner, dataset)  # doctest: +SKIP
    [ShardRunReport(...), ShardRunReport(...)]
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

from hf_ipt.execution.base import WorkersLostError
from hf_ipt.redaction import scrub

OUTCOME = "outcome.pkl"
# a driver told to end stops the Ray node it started; one whose node is dead may never get through that, so it is
# ended after this long
DRIVER_EXIT_SECONDS = 60.0
# how often the command looks for the driver's answer, or its end
POLL_SECONDS = 0.2

# process id -> its driver process (a forked child starts its own)
_DRIVERS: dict[int, DriverProcess] = {}


def run_driver_process(executor: Any, runner: Any, dataset: Any) -> list[Any]:
    """`executor.drive(runner, dataset)` in this process's Ray driver process (see the module's docstring); its
    result, or its error.

    Example:
        >>> reports = run_driver_process(RayExecutor(max_retries=0), runner, dataset)  # doctest: +SKIP
    """
    driver = _DRIVERS.get(os.getpid())
    if driver is None or not driver.alive():
        driver = _DRIVERS[os.getpid()] = DriverProcess()
    try:
        return driver.run(executor, runner, dataset)
    finally:
        if not driver.alive():
            _DRIVERS.pop(os.getpid(), None)


class DriverProcess:
    """One Ray driver process: `run` hands it a payload (through its stdin) and waits for its answer (a file in a
    temporary folder of this process) or its end; `close` ends it.

    Example:
        >>> driver = DriverProcess()  # doctest: +SKIP
        >>> driver.run(executor, runner, dataset), driver.close()  # doctest: +SKIP
    """

    def __init__(self) -> None:
        command = [sys.executable, "-c", "from hf_ipt.execution.ray_driver import main; main()"]
        self.child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.copiers = [copy_lines(self.child.stdout, "stdout"), copy_lines(self.child.stderr, "stderr")]
        self.owner = os.getpid()  # a forked child inherits this object (and its exit hook), not the process
        atexit.register(self.close)

    def alive(self) -> bool:
        return self.child.poll() is None

    def run(self, executor: Any, runner: Any, dataset: Any) -> list[Any]:
        from ray import cloudpickle  # what Ray ships the runner to its workers with: what can go there can go here

        # the payload goes through the pipe, never a file: the runner's settings may hold an engine's credentials
        payload = pickle.dumps(list(sys.path))  # first, so the driver finds the modules the rest comes from
        payload += cloudpickle.dumps((executor, runner, dataset))
        with tempfile.TemporaryDirectory(prefix="hf-ipt-ray-driver-") as folder:
            try:
                self.child.stdin.write(f"{folder} {len(payload)}\n".encode() + payload)
                self.child.stdin.flush()
                outcome = self.await_answer(Path(folder) / OUTCOME)
            except BaseException:  # interrupted, or the pipe broke: the driver (and the Ray node it started) goes
                self.kill()
                raise
        if outcome is None:
            self.kill()  # ended by Ray, or about to be
            raise WorkersLostError(
                "the Ray node this command runs on died, or the head of its cluster (Ray ended the command's Ray "
                f"driver, process {self.child.pid}, with {describe_status(self.child.returncode)}); the shards "
                "committed so far are kept: run the same command again to resume"
            )
        kind, value = outcome
        if kind == "raised":
            raise value
        return value

    def await_answer(self, path: Path) -> tuple[str, Any] | None:
        """The driver's answer once it is written, or None when the driver ends without one."""
        while True:
            answer = read_outcome(path)
            if answer is not None:
                return answer
            if not self.alive():
                return read_outcome(path)  # written just before it ended
            time.sleep(POLL_SECONDS)

    def close(self) -> None:
        """Tell the driver to stop Ray and end; kill it when it does not within `DRIVER_EXIT_SECONDS`."""
        if os.getpid() != self.owner:
            return
        if self.alive():
            with contextlib.suppress(OSError):
                self.child.stdin.close()
            try:
                self.child.wait(timeout=DRIVER_EXIT_SECONDS)
            except subprocess.TimeoutExpired:
                self.kill()
        self.drain()

    def kill(self) -> None:
        if self.alive():
            self.child.kill()
        self.child.wait()
        self.drain()

    def drain(self) -> None:
        """Let the output the driver printed before it ended reach the command's streams."""
        for copier in self.copiers:
            copier.join(10.0)  # a process the driver started may hold its pipes open: stop waiting after 10 s


def copy_lines(source: IO[bytes], stream: str) -> threading.Thread:
    """A thread copying each line of `source` to `sys.<stream>` (the one at that moment: a command may replace it)
    through the one scrubber, until `source` ends."""

    def copy() -> None:
        with source:
            for raw in iter(source.readline, b""):
                target = getattr(sys, stream)
                target.write(scrub(raw.decode("utf-8", errors="replace")))
                target.flush()

    thread = threading.Thread(target=copy, name=f"hf-ipt-ray-driver-{stream}", daemon=True)
    thread.start()
    return thread


def describe_status(status: int | None) -> str:
    """A process's exit status in words.

    Example:
        >>> describe_status(1), describe_status(-9)
        ('exit status 1', 'signal 9')
    """
    if status is None:
        return "no exit status yet"
    return f"signal {-status}" if status < 0 else f"exit status {status}"


def read_outcome(path: Path) -> tuple[str, Any] | None:
    """What the driver answered, or None while it has not (its answer lands whole: it is renamed into place)."""
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


def answer(folder: Path, payload: bytes) -> None:
    """Run what `payload` asks and write the answer in `folder`."""
    stream = io.BytesIO(payload)
    sys.path[:] = pickle.load(stream)
    executor, runner, dataset = pickle.load(stream)
    try:
        outcome = ("done", executor.drive(runner, dataset))
    except BaseException as err:  # noqa: BLE001 - every error goes back to the command, which raises it
        outcome = ("raised", err)
    sys.stdout.flush()
    sys.stderr.flush()
    write_outcome(folder, *outcome)


def main() -> None:
    """The driver's side: answer each payload on stdin (a line naming the answer's folder and the payload's size,
    then the payload), in turn; at its end, stop Ray and end."""
    stdin = sys.stdin.buffer
    for line in iter(stdin.readline, b""):
        if line.strip():
            folder, size = line.decode().rsplit(" ", 1)
            answer(Path(folder), stdin.read(int(size)))
    with contextlib.suppress(BaseException):
        import ray

        ray.shutdown()  # the Ray node it started, if any; the command waits for this at most DRIVER_EXIT_SECONDS
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # nothing else to run: Ray's own exit hooks may hang on a dead node
