"""Memory-mapped pages a process has finished with, given back to the kernel while a stage runs.

`datasets` reads its Arrow files through memory maps: every page of a file a stage reads stays in the process's
resident set for as long as the file is mapped, so a stage reading a corpus from start to end grows by the corpus's
size, though the kernel could drop those pages (they are clean copies of the file). Working-set limits (a cluster's
memory accounting, a container's eviction) count them all the same. `MappedPagesReleaser` runs a thread that, every
`interval` seconds, asks the kernel to reclaim the resident pages of this process's read-only mappings of Arrow files
(`madvise(MADV_PAGEOUT)`, Linux 5.4+): a page read again is read back from the page cache or the file, so nothing
changes but the resident set, which stays bounded by what a stage reads between two passes.

MADV_PAGEOUT never discards data: on a range that was unmapped and reused meanwhile (the advice races the program),
it only reclaims pages the kernel can write back or drop safely, unlike MADV_DONTNEED, which would zero anonymous
memory. Where the advice or /proc/self/maps is missing (not Linux, an older kernel), the releaser does nothing.

This module imports no other hf-ipt module.

Example:
    >>> with MappedPagesReleaser(interval=0.5):
    ...     pass  # read a memory-mapped dataset here
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from collections.abc import Iterator

logger = logging.getLogger(__name__)

MADV_PAGEOUT = 21  # linux/mman.h
MAPPED_SUFFIXES = (".arrow",)  # the files `datasets` memory-maps


def read_only_mappings(suffixes: tuple[str, ...] = MAPPED_SUFFIXES) -> Iterator[tuple[int, int]]:
    """(start, end) of each read-only mapping of this process whose file name ends with `suffixes`, from
    /proc/self/maps (nothing where it cannot be read).

    Example:
        >>> all(start < end for start, end in read_only_mappings())
        True
    """
    try:
        with open("/proc/self/maps") as maps:
            lines = maps.readlines()
    except OSError:
        return
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or "w" in parts[1]:
            continue  # a writable mapping may hold changes: never advised
        name = parts[5].strip().removesuffix(" (deleted)")
        if name.endswith(suffixes):
            start, end = (int(value, 16) for value in parts[0].split("-"))
            yield start, end


def _madvise():
    """libc's madvise as a ctypes function, or None where there is none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def release_mapped_pages(suffixes: tuple[str, ...] = MAPPED_SUFFIXES) -> int:
    """Ask the kernel to reclaim the resident pages of this process's read-only mappings of files ending with
    `suffixes`; the bytes of the mappings advised (0 where the advice is not available).

    Example:
        >>> release_mapped_pages() >= 0
        True
    """
    madvise = _madvise()
    if madvise is None:
        return 0
    advised = 0
    for start, end in read_only_mappings(suffixes):
        if madvise(start, end - start, MADV_PAGEOUT) == 0:
            advised += end - start
    return advised


class MappedPagesReleaser:
    """A context manager: while it is open, a daemon thread calls `release_mapped_pages` every `interval` seconds
    (and once more on exit). What `hf_ipt.stages.base.run_stage` wraps every stage's work in.

    Example:
        >>> with MappedPagesReleaser(interval=0.25) as releaser:
        ...     pass
        >>> releaser.passes >= 1
        True
    """

    def __init__(self, interval: float = 0.25, suffixes: tuple[str, ...] = MAPPED_SUFFIXES) -> None:
        self.interval = interval
        self.suffixes = suffixes
        self.passes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._pass()

    def _pass(self) -> None:
        try:
            release_mapped_pages(self.suffixes)
        except Exception as error:  # noqa: BLE001 - a hint to the kernel must never fail the work it watches
            logger.debug("could not release mapped pages: %s", error)
        self.passes += 1

    def __enter__(self) -> MappedPagesReleaser:
        if _madvise() is not None:
            self._thread = threading.Thread(target=self._loop, name="hf-ipt-mapped-pages", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._pass()
