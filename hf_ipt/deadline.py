"""Bounded waits, and telling a local path from a Hub id: the small helpers the preflight and the engines' own checks
share. This module imports no other hf-ipt module.

Example:
    >>> within(5, lambda: 42, "answering")
    42
    >>> looks_local("./model"), looks_local("org/model")
    (True, False)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def within(seconds: float, fn: Callable[[], T], what: str) -> T:
    """`fn()`, or TimeoutError naming `what` after `seconds` (it runs in a daemon thread, left behind if it hangs:
    a check must answer in seconds even when a network call or a file read never returns).

    Example:
        >>> within(5, lambda: 42, "answering")
        42
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=target, name="hf-ipt-bounded-wait", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"{what} took more than {seconds:.0f} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def looks_local(path: str) -> bool:
    """A path meant for this machine (absolute, ./, ../, ~, existing, or under an existing folder: `output/tny`
    when `output/` exists), not a Hub id: a mistyped local path is reported as missing, never looked up on the Hub.

    Example:
        >>> looks_local("./model"), looks_local("org/model"), looks_local("hf_ipt/no-such-model")
        (True, False, True)
    """
    return (
        os.path.isabs(path)
        or path.startswith(("./", "../", "~", "."))
        or Path(path).expanduser().exists()
        or path.count("/") > 1
        or "\\" in path
        or ("/" in path and Path(path.split("/", 1)[0]).is_dir())
    )
