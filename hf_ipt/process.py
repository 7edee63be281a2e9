"""What this process holds that a process forked from it must not use, and the one at-fork hook that resets it.

hf-ipt keeps three things per process: its engines (one per settings, `hf_ipt.engines.make_engine`), the devices it was
pinned to (`hf_ipt.placement.pin_rank`), and whether it was forked from a process that had loaded torch. A process
forked from this one (a `Dataset.map(num_proc=...)` worker, a `ProcessExecutor` worker) cannot use any of them: an
engine's threads, CUDA context or OpenMP pool do not survive fork, and the placement is the parent's. So the child
starts with none: the parent's engines are kept alive but never used (their destructors would tear down the parent's
resources), the names of their engines are remembered (a vLLM engine in the parent means no engine can start in the
child), and torch runs single-threaded there (a forked OpenMP pool hangs in a region the parent already used).

This module imports no other hf-ipt module, so every layer may read the state.

Example:
    >>> state = process_state()
    >>> isinstance(state.engines, dict), state.placement is None or state.placement.rank >= 0
    (True, True)
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ProcessState:
    """This process's engines, placement and fork history.

    Example:
        >>> ProcessState().forked_after_torch
        False
    """

    engines: dict[tuple, Any] = field(default_factory=dict)  # settings -> engine made in this process
    inherited_engine_names: set[str] = field(default_factory=set)  # engines the parent held when it forked us
    inherited_engines: list[Any] = field(default_factory=list)  # kept alive, never used
    placement: Any = None  # the hf_ipt.placement.Placement this process was pinned to
    forked_after_torch: bool = False  # a forked OpenMP pool would hang: torch stays single-threaded


_STATE = ProcessState()


def process_state() -> ProcessState:
    """The state of this process (a forked child gets a fresh one from the at-fork hook below).

    Example:
        >>> process_state() is process_state()
        True
    """
    return _STATE


def _after_fork_in_child() -> None:
    inherited = _STATE.engines
    _STATE.inherited_engine_names.update(key[0] for key in inherited)
    _STATE.inherited_engines.extend(inherited.values())
    _STATE.engines = {}
    _STATE.placement = None
    torch = sys.modules.get("torch")
    _STATE.forked_after_torch = _STATE.forked_after_torch or torch is not None
    if torch is not None and torch.get_num_threads() > 1:
        torch.set_num_threads(1)


os.register_at_fork(after_in_child=_after_fork_in_child)
