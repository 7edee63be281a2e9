"""Memory-mapped pages a process has finished with, given back to the kernel while a stage runs.

`datasets` reads its Arrow files through memory maps: every page of a file a stage reads stays in the process's
resident set for as long as the file is mapped, so a stage reading a corpus from start to end grows by the corpus's
size, though the kernel could drop those pages (they are clean copies of the file). Working-set limits (a cluster's
memory accounting, a container's eviction) count them all the same. `MappedPagesReleaser` runs a thread that watches
the resident file-backed pages and, when they grew, asks the kernel to reclaim the resident pages of this process's
read-only mappings of Arrow files (`madvise(MADV_PAGEOUT)`, Linux 5.4+): a page read again is read back from the page
cache or the file, so nothing changes but the resident set, which stays bounded.

Arrow's own allocator keeps freed memory for reuse (mimalloc, its default, returns it only when the allocating
thread asks), so the resident set of a process that read large batches stays at their high-water mark.
`return_freed_memory` makes Arrow allocate with jemalloc set to hand freed pages back at once: the `hf-ipt` command
calls it first thing.

MADV_PAGEOUT never discards data: on a range that was unmapped and reused meanwhile (the advice races the program),
it only reclaims pages the kernel can write back or drop safely, unlike MADV_DONTNEED, which would zero anonymous
memory. Where the advice or /proc/self/maps is missing (not Linux, an older kernel), the releaser does nothing.

This module imports no other hf-ipt module.

Example:
    >>> with MappedPagesReleaser():
    ...     pass  # read a memory-mapped dataset here
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import mmap
import re
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
            text = maps.read()
    except OSError:
        return
    ends = "|".join(re.escape(suffix) for suffix in suffixes)
    # "start-end perms offset dev inode   path": a writable mapping may hold changes and is never advised
    pattern = rf"^([0-9a-f]+)-([0-9a-f]+) r-\S+ \S+ \S+ \S+ +\S.*(?:{ends})(?: \(deleted\))?$"
    for match in re.finditer(pattern, text, re.MULTILINE):
        yield int(match[1], 16), int(match[2], 16)


@functools.cache
def _madvise():
    """libc's madvise as a ctypes function, or None where there is none (looked up once)."""
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


def resident_file_pages() -> int | None:
    """This process's resident file-backed (and shared) pages, from /proc/self/statm (one short line, cheap to read
    often); None where it cannot be read.

    Example:
        >>> (resident_file_pages() or 0) >= 0
        True
    """
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[2])
    except (OSError, IndexError, ValueError):
        return None


class MappedPagesReleaser:
    """A context manager: while it is open, a daemon thread watches this process's resident file-backed pages every
    `interval` seconds (a read of /proc/self/statm) and, when they grew by more than `threshold` bytes since its last
    pass, calls `release_mapped_pages` (which reads the whole /proc/self/maps, the costly part, so it runs only then);
    once more on exit. What `hf_ipt.stages.base.Stage.run` wraps every stage's work in: a stage that reads a
    memory-mapped corpus keeps about `threshold` of it resident, whatever its size.

    Example:
        >>> with MappedPagesReleaser(interval=0.05) as releaser:
        ...     pass
        >>> releaser.passes >= 1
        True
    """

    def __init__(
        self, interval: float = 0.02, threshold: int = 32 << 20, suffixes: tuple[str, ...] = MAPPED_SUFFIXES
    ) -> None:
        self.interval = interval
        self.threshold_pages = max(1, threshold // mmap.PAGESIZE)
        self.suffixes = suffixes
        self.passes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        level = resident_file_pages()
        while level is not None and not self._stop.wait(self.interval):
            now = resident_file_pages()
            if now is None:
                return
            if now - level > self.threshold_pages:
                self._pass()
                # what stays resident (libraries loaded meanwhile, pages still in use) is the new level
                now = resident_file_pages() or now
            level = min(level, now) if now <= level + self.threshold_pages else now

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


def return_freed_memory() -> str:
    """Make Arrow hand the memory it frees back to the operating system at once: its default memory pool becomes
    jemalloc with a decay time of 0 where pyarrow has jemalloc (buffers already allocated are freed into the pool
    they came from). Returns the name of the pool in use.

    Example:
        >>> return_freed_memory() in ("jemalloc", "mimalloc", "system")
        True
    """
    import pyarrow as pa

    try:
        pool = pa.jemalloc_memory_pool()
        pa.jemalloc_set_decay_ms(0)
    except NotImplementedError:  # a pyarrow built without jemalloc: its default pool stays
        return pa.default_memory_pool().backend_name
    pa.set_memory_pool(pool)
    return pool.backend_name
