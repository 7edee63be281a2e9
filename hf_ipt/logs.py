"""What a long run leaves behind to be watched and audited: one log file per command and per worker under the run's
folder, and progress that stays readable when the output is not a terminal.

- `LogFile`: `run.output_dir/logs/<UTC time>-<name>-<host>-<pid>.log`, every line timestamped and scrubbed of
  secrets (`hf_ipt.redaction`): hf-ipt's own lines (stage starts and ends with their figures, each committed shard,
  engine starts), other libraries' warnings and errors, Python warnings, and an error's traceback. The command's
  terminal output stays as it is; the file holds more (DEBUG and up of hf-ipt, tracebacks always).
- `ProgressLines`: a text stream put in place of `sys.stderr` when it is not a terminal (nohup, Slurm, CI): tqdm's
  progress bars redraw themselves with carriage returns, which a file keeps as thousands of fragments; here each bar
  becomes one timestamped line every `PROGRESS_SECONDS` (with its rate and time left) and one when it ends.

Imports only `hf_ipt.redaction` and `hf_ipt.store` (a run's folder may be remote: a log file for an fsspec URL is
written locally and copied there when it is closed).

Example:
    >>> log = LogFile(RunFolder("output/quickstart"), "run")  # doctest: +SKIP
    >>> log.start(); logging.getLogger("hf_ipt").info("hello"); log.close()  # doctest: +SKIP
    >>> Path(log.url).read_text()  # doctest: +SKIP
    '2026-12-05 10:00:00 INFO hf_ipt: hello\\n'
"""

from __future__ import annotations

import io
import logging
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, TextIO

from hf_ipt.redaction import scrub
from hf_ipt.store import Store

LOG_DIR = "logs"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# seconds between two lines of one progress bar off a terminal (HF_IPT_PROGRESS_SECONDS overrides it)
PROGRESS_SECONDS = 30.0
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_TQDM_BAR = re.compile(r"(\d+%)\|[^|]*\|")  # "37%|███▋      |" -> "37%"
_COUNT = re.compile(r"(?<![\d/])(\d+)/(\d+)(?![\d/])")


def _finished(state: str) -> bool:
    """Whether a bar's state is its last: 100%, or a count n/n.

    Example:
        >>> _finished("Synthesis: 100% 321/321 [00:04<00:00]"), _finished("shard 2/6: 50% 30/60"), _finished("x: 3/3")
        (True, False, True)
    """
    if re.search(r"(?<!\d)100%", state):
        return True
    counts = _COUNT.findall(state.split(":", 1)[-1])
    return bool(counts) and all(a == b for a, b in counts[-1:])


def progress_seconds() -> float:
    """Seconds between two lines of one progress bar: `HF_IPT_PROGRESS_SECONDS`, else `PROGRESS_SECONDS`.

    Example:
        >>> progress_seconds() > 0
        True
    """
    try:
        value = float(os.environ.get("HF_IPT_PROGRESS_SECONDS", PROGRESS_SECONDS))
    except ValueError:
        return PROGRESS_SECONDS
    return value if value >= 0 else PROGRESS_SECONDS


class ScrubbingFormatter(logging.Formatter):
    """A formatter whose whole output (message, traceback, stack) is scrubbed of secrets, in UTC.

    Example:
        >>> token = "hf_abcdefghijklmnopqrstuvwxyz"
        >>> record = logging.LogRecord("hf_ipt", logging.INFO, "", 0, f"token {token}", None, None)
        >>> token in ScrubbingFormatter().format(record)
        False
    """

    converter = time.gmtime

    def __init__(self, fmt: str = LOG_FORMAT) -> None:
        super().__init__(fmt, datefmt=TIME_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


class LogFile:
    """One log file under `folder/logs/`: `<UTC time>-<name>-<host>-<pid>.log`. `start()` attaches it to hf-ipt's
    logger (DEBUG and up) and to the root logger (WARNING and up: other libraries' warnings, Python warnings);
    `close()` detaches it (and copies it to a remote folder). A context manager does both.

    Example:
        >>> with LogFile(RunFolder("output/quickstart"), "synthesize-worker-1-of-4") as log:  # doctest: +SKIP
        ...     logging.getLogger("hf_ipt.execution").info("shard 3 committed")
    """

    def __init__(self, folder: Store, name: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        host = re.sub(r"[^\w.-]", "_", socket.gethostname())
        safe = re.sub(r"[^\w.-]", "_", name)
        self.folder = folder
        self.relative = f"{LOG_DIR}/{stamp}-{safe}-{host}-{os.getpid()}.log"
        self.url = f"{folder.url.rstrip('/')}/{self.relative}"
        if folder.is_local:
            folder.fs.makedirs(folder.path(LOG_DIR), exist_ok=True)
            self._local = folder.path(self.relative)
        else:  # written here, copied to the remote folder when closed
            handle, self._local = tempfile.mkstemp(suffix=".log", prefix="hf-ipt-")
            os.close(handle)
        self.handler = _file_handler(self._local, logging.DEBUG)
        self._root_handler = _file_handler(self._local, logging.WARNING)
        # records of hf-ipt reach the root logger too: that handler takes only the other libraries'
        self._root_handler.addFilter(lambda record: not record.name.startswith("hf_ipt"))
        self._saved: dict[str, Any] = {}
        self._stand_in: logging.Handler | None = None

    def start(self) -> LogFile:
        """Attach the file to hf-ipt's logger and, for warnings and errors, to the root logger."""
        ours, root = logging.getLogger("hf_ipt"), logging.getLogger()
        for logger in (ours, root):  # a forked worker inherits its parent's log files: it writes its own
            for inherited in [h for h in logger.handlers if getattr(h, "_hf_ipt_pid", os.getpid()) != os.getpid()]:
                logger.removeHandler(inherited)
        self._saved = {"level": ours.level}
        ours.addHandler(self.handler)
        if ours.level == logging.NOTSET or ours.level > logging.DEBUG:
            ours.setLevel(logging.DEBUG)  # the terminal's handler keeps its own level
        # logging prints a record no handler takes to stderr (its "last resort"); with this file on the root logger
        # that would stop: a stand-in keeps the terminal showing what it showed before
        self._stand_in = None
        if not root.handlers:
            self._stand_in = logging.StreamHandler()
            self._stand_in.setLevel(logging.WARNING)
            self._stand_in.addFilter(lambda record: not record.name.startswith("hf_ipt"))
            root.addHandler(self._stand_in)
        root.addHandler(self._root_handler)
        logging.captureWarnings(True)
        return self

    def record_error(self, error: BaseException) -> None:
        """The error that stopped the command or worker, with its traceback, in this file only (the terminal shows
        one line)."""
        record = logging.LogRecord(
            "hf_ipt", logging.ERROR, "", 0, "stopped by %s: %s", (type(error).__name__, error), None
        )
        record.exc_info = (type(error), error, error.__traceback__)
        self.handler.handle(record)

    def close(self) -> None:
        """Detach and close the file; a remote folder gets its copy now."""
        ours, root = logging.getLogger("hf_ipt"), logging.getLogger()
        for logger, handler in ((ours, self.handler), (root, self._root_handler), (root, self._stand_in)):
            if handler is not None:
                logger.removeHandler(handler)
                handler.close()
        if self._saved:
            ours.setLevel(self._saved["level"])
            logging.captureWarnings(False)
        if not self.folder.is_local:
            try:
                with open(self._local, "rb") as handle:
                    self.folder.write_atomic(self.relative, handle.read())
            finally:
                os.unlink(self._local)

    def __enter__(self) -> LogFile:
        return self.start()

    def __exit__(self, kind: Any, error: BaseException | None, trace: Any) -> None:
        if error is not None:
            self.record_error(error)
        self.close()


def _file_handler(path: str, level: int) -> logging.FileHandler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(ScrubbingFormatter())
    handler.setLevel(level)
    handler._hf_ipt_pid = os.getpid()  # type: ignore[attr-defined]
    return handler


def progress_lines_off_terminal() -> Callable[[], None]:
    """Put `ProgressLines` in place of `sys.stderr` when it is not a terminal (its lines go to hf-ipt's progress
    logger, so the log files get them too); returns what puts the stream back. The CLI and the worker processes an
    executor starts call it.

    Example:
        >>> restore = progress_lines_off_terminal(); restore()
    """
    stderr = sys.stderr
    if stderr is None or stderr.isatty() or isinstance(stderr, ProgressLines):
        return lambda: None
    sys.stderr = ProgressLines(stderr, emit=logging.getLogger("hf_ipt.progress").info)

    def restore() -> None:
        if isinstance(sys.stderr, ProgressLines):
            sys.stderr.flush()
        sys.stderr = stderr

    return restore


def worker_log(runner: Any) -> LogFile | None:
    """The log file of one worker of a sharded run started by an executor in its own process or Ray task:
    `<folder>/logs/...-<desc>-worker-<i>-of-<n>-...log`, where `runner.log_folder` is set (the synthesize stage sets
    the run's folder); None otherwise.

    Example:
        >>> worker_log(object()) is None
        True
    """
    folder = getattr(runner, "log_folder", None)
    if folder is None:
        return None
    name = f"{runner.desc.lower()}-worker-{runner.worker_index}-of-{runner.num_workers}"
    return WorkerLog(folder, name)


class WorkerLog(LogFile):
    """The log file of a worker process or Ray task; its progress bars become lines too when its stderr is not a
    terminal (a spawned process or a Ray task does not inherit the command's stream).

    Example:
        >>> WorkerLog(RunFolder("output/quickstart"), "synthesis-worker-0-of-2").start().close()  # doctest: +SKIP
    """

    def start(self) -> LogFile:
        self._restore = progress_lines_off_terminal()
        return super().start()

    def close(self) -> None:
        super().close()
        getattr(self, "_restore", lambda: None)()


class ProgressLines(io.TextIOBase):
    """A text stream for output that is not a terminal. Complete lines pass through unchanged; a progress bar's
    redraws (carriage return, then the bar, no newline: tqdm's way) are held back, and `emit` gets one line per bar
    every `seconds` and one with its last state when it ends, the bar's drawing removed:
    `Synthesis: 37% 120/321 [00:02<00:03, 59.30 rows/s]`. Cursor movements (nested bars) are dropped. No carriage
    return ever reaches the stream.

    `emit(text)` writes one such line (the CLI logs it, timestamped, to the terminal's stream and the log file);
    by default it is written to the stream with a UTC timestamp.

    Example:
        >>> out = io.StringIO()
        >>> stream = ProgressLines(out, seconds=0)
        >>> _ = stream.write("\\rwork:  50%|#####     | 1/2 [00:01<00:01, 1.00it/s]")
        >>> _ = stream.write("\\rwork: 100%|##########| 2/2 [00:02<00:00, 1.00it/s]")
        >>> _ = stream.write("\\n")
        >>> "\\r" in out.getvalue(), out.getvalue().count("work:")
        (False, 2)
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        seconds: float | None = None,
        emit: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.stream = stream
        self.seconds = progress_seconds() if seconds is None else seconds
        self.emit = emit or self._write_line
        self.clock = clock
        self._line = ""  # what the current (terminal) line holds
        self._in_bar = False  # the current line was started by a carriage return: it holds a bar's state
        self._shown: dict[str, float] = {}  # bar label -> when its last line was shown (or the bar first seen)
        self._last: dict[str, str] = {}  # bar label -> the last line shown of it
        self._done: set[str] = set()  # bars whose last state is shown
        self._seen: dict[str, float] = {}  # bar label -> when its last state arrived
        self._emitting = False

    # the stream protocol
    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")

    def fileno(self) -> int:
        return self.stream.fileno()

    def flush(self) -> None:
        self.stream.flush()

    def write(self, text: str) -> int:
        if self._emitting:  # a line `emit` writes back through this stream (the CLI's log handler)
            self.stream.write(text)
            return len(text)
        text = _ANSI.sub("", text)
        if self._in_bar and text[:1] not in ("\r", "\n"):
            # a bar redraw always starts with a carriage return (or a newline, to reach a nested bar's row): this is
            # someone else's line, and what the current line holds was the bar's state
            self._offer(self._line)
            self._line, self._in_bar = "", False
        for piece in re.split(r"([\r\n])", text):
            if piece == "\r":
                self._offer(self._line)
                self._line, self._in_bar = "", True
            elif piece == "\n":
                if self._in_bar:
                    self._offer(self._line)  # newlines between bars (nested rows, a closed bar) are not shown
                elif self._line or not self._shown:  # a blank line once bars were seen: a nested bar's row
                    self.stream.write(self._line + "\n")
                self._line = ""
            else:
                self._line += piece
        if self._in_bar:
            self._offer(self._line)
        return len(text)

    def _offer(self, state: str) -> None:
        """A bar's state: shown when it is the bar's last (n of n, 100%), or when `seconds` passed since the bar's
        last line (or its first state); never the same line twice."""
        text = " ".join(_TQDM_BAR.sub(r"\1", state).split())
        if not text:
            return
        label = text.split(":", 1)[0]
        now = self.clock()
        if now - self._seen.get(label, now) > max(self.seconds, 1.0):
            self._shown[label] = now  # silent that long: a new bar of the same name, whose clock starts now
        self._seen[label] = now
        first = self._shown.setdefault(label, now)
        if self._last.get(label) == text:
            return
        if _finished(text):
            if label in self._done:
                return  # its closing redraw (the overall rate): the bar's end is already shown
            self._done.add(label)
            self._shown.pop(label, None)  # a bar of the same name later starts its clock again
        else:
            self._done.discard(label)  # a new bar of that name
            if now - first < self.seconds:
                return
        self._shown[label], self._last[label] = now, text
        self._emitting = True
        try:
            self.emit(text)
        finally:
            self._emitting = False

    def _write_line(self, text: str) -> None:
        self.stream.write(f"{time.strftime(TIME_FORMAT, time.gmtime())} {text}\n")
