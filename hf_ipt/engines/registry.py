"""Engines by name (`ENGINES`, `engine_class`), and one engine per process and settings (`make_engine`).

Adding an engine: its class in a file of this package (a subclass of `Engine` that sets `name`, `packages`,
`reserved_arguments` and overrides what it needs of `check_settings`, `devices` and `counters`), and one line in
`ENGINES`. Preflight, placement and statistics ask the class; nothing else knows its arguments.

A named engine is created on first use and cached for the life of the process, so every batch and every Synthesizer
with the same settings shares it. A process forked from one that holds engines starts with an empty cache (the
inherited engines are kept alive but never used: their threads, CUDA context or OpenMP pool did not survive fork).

Example:
    >>> engine = make_engine("transformers", model="path/to/model")  # doctest: +SKIP
    >>> engine.generate_safely([Request(prompt, ids)], max_new_tokens=400)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from hf_ipt.engines.base import CallableEngine, Engine, EngineStartError
from hf_ipt.engines.server import ServerEngine
from hf_ipt.engines.transformers import TransformersEngine
from hf_ipt.engines.vllm import VLLMEngine
from hf_ipt.tokenization import check_prompt_tokenizer

logger = logging.getLogger(__name__)

ENGINES: dict[str, type[Engine]] = {
    "vllm": VLLMEngine,
    "transformers": TransformersEngine,
    "server": ServerEngine,
}

# one engine per process and settings, reused across batches and Synthesizer instances
_ENGINE_CACHE: dict[tuple, Engine] = {}
# names of the engines the parent process held when this process was forked from it
_INHERITED_ENGINES: set[str] = set()
_INHERITED_OBJECTS: list[Engine] = []


def holds_engines() -> bool:
    """Whether this process holds an engine made by `make_engine` (a forked child of it could not use it).

    Example:
        >>> holds_engines()  # in a process that has not called make_engine yet  # doctest: +SKIP
        False
    """
    return bool(_ENGINE_CACHE)


def _after_fork_in_child() -> None:
    """A forked `map` worker starts with no engine of its own.

    torch's OpenMP pool does not survive fork: a child that enters a parallel region the parent already used hangs.
    Running torch single-threaded in the child avoids that (a forking map already runs one worker per core).
    """
    _INHERITED_ENGINES.update(key[0] for key in _ENGINE_CACHE)
    # keep the inherited objects alive but unused: their destructors would tear down the parent's resources
    _INHERITED_OBJECTS.extend(_ENGINE_CACHE.values())
    _ENGINE_CACHE.clear()
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() > 1:
        torch.set_num_threads(1)


os.register_at_fork(after_in_child=_after_fork_in_child)


def engine_class(name: str) -> type[Engine]:
    """The engine class registered as `name` in `ENGINES`, for its class-level contract (`check_settings`,
    `devices`, `packages`) without starting it; a ValueError listing the names for an unknown one.

    Example:
        >>> engine_class("vllm").devices({"tensor_parallel_size": 2})
        2
        >>> engine_class("vlm")
        Traceback (most recent call last):
        ValueError: unknown engine 'vlm'; choose one of ['server', 'transformers', 'vllm'], or pass a callable
    """
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose one of {sorted(ENGINES)}, or pass a callable")
    return ENGINES[name]


def make_engine(
    spec: str | Engine | Callable[[list[str]], Sequence[str]],
    *,
    model: str,
    revision: str | None = None,
    tokenizer: str | None = None,
    max_model_len: int = 4096,
    engine_kwargs: dict[str, Any] | None = None,
) -> Engine:
    """The engine for `spec`: a registered name (a key of `ENGINES`: 'vllm', 'transformers', 'server'), an Engine
    instance (returned as is), or a callable `list[str] -> list[str]` (wrapped in a `CallableEngine`).

    Named engines are created once per process and settings and reused.

    Example:
        >>> make_engine(lambda prompts: ["" for _ in prompts], model="unused").name
        'callable'
        >>> make_engine("vllm", model="path/to/model") is make_engine("vllm", model="path/to/model")  # doctest: +SKIP
        True
    """
    if isinstance(spec, Engine):
        return spec
    if isinstance(spec, str):
        factory = engine_class(spec)
        if "vllm" in _INHERITED_ENGINES:
            # vLLM's OpenMP thread pool (CPU) or CUDA context (GPU) does not survive fork: any engine here would hang
            raise RuntimeError(
                "this process was forked from one that already holds a vLLM engine, and engines hang in such a "
                "child. Create no engine in the parent before a forking map (do not call the Synthesizer there "
                "first), or run the map with the spawn start method: "
                "multiprocess.set_start_method('spawn', force=True)."
            )
        key = (spec, model, revision, tokenizer, max_model_len, repr(sorted((engine_kwargs or {}).items())))
        if key not in _ENGINE_CACHE:
            logger.info("creating the %s engine for %s in process %d", spec, model, os.getpid())
            try:
                # once per engine, before it loads: prompts must be the ids the model's own tokenizer.json gives
                check_prompt_tokenizer(model, revision, tokenizer)
            except ValueError as error:
                raise EngineStartError(f"the {spec} engine did not start: {error}") from error
            try:
                _ENGINE_CACHE[key] = factory(
                    model,
                    revision=revision,
                    tokenizer=tokenizer,
                    max_model_len=max_model_len,
                    engine_kwargs=engine_kwargs,
                )
            except _START_ERRORS as error:
                explained = start_error(spec, model, engine_kwargs or {}, error)
                if explained is error:
                    raise
                raise explained from error
        return _ENGINE_CACHE[key]
    return CallableEngine(spec)


# what an engine's constructor raises for settings it refuses (an unknown or invalid argument, a model it cannot read,
# too little memory); anything else is left alone so an internal bug keeps its traceback. A missing package's
# ImportError already says what to install (hf_ipt._deps.require) and passes unchanged.
_START_ERRORS = (TypeError, ValueError, OSError, RuntimeError)
_UNEXPECTED_KEYWORD = re.compile(r"unexpected keyword argument '(\w+)'")


def start_error(engine: str, model: str, engine_kwargs: dict[str, Any], error: BaseException) -> Exception:
    """The error to raise when the `engine` named in a recipe fails to start: an `EngineStartError` naming the engine,
    the setting at fault and the fix. A TypeError that is not about an argument is returned unchanged (a bug).

    Example:
        >>> error = TypeError("EngineArgs.__init__() got an unexpected keyword argument 'batch_size'")
        >>> str(start_error("vllm", "m", {"batch_size": 8}, error)).split(" (")[0]
        'the vllm engine does not accept synth.engine_kwargs.batch_size'
    """
    unexpected = _UNEXPECTED_KEYWORD.search(str(error)) if isinstance(error, TypeError) else None
    if unexpected is not None and unexpected.group(1) in engine_kwargs:
        name = unexpected.group(1)
        return EngineStartError(
            f"the {engine} engine does not accept synth.engine_kwargs.{name} ({type(error).__name__}: {error}); "
            f"remove it, or set an argument the {engine} engine takes: engine_kwargs go to it unchanged, and each "
            f"engine ({', '.join(ENGINES)}) takes its own"
        )
    if isinstance(error, TypeError):
        return error
    # the keys only: values may be credentials (a server engine's api_key)
    shown = ", ".join(engine_kwargs) or "none set"
    return EngineStartError(
        f"the {engine} engine did not start for synth.model {model!r}: {type(error).__name__}: {error} "
        f"(synth.engine_kwargs: {shown}; check synth.model, synth.engine and synth.engine_kwargs)"
    )
