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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hf_ipt.engines.base import CallableEngine, Engine, EngineStartError
from hf_ipt.engines.server import ServerEngine
from hf_ipt.engines.transformers import TransformersEngine
from hf_ipt.engines.vllm import VLLMEngine
from hf_ipt.process import process_state
from hf_ipt.tokenization import check_prompt_tokenizer

logger = logging.getLogger(__name__)

ENGINES: dict[str, type[Engine]] = {
    "vllm": VLLMEngine,
    "transformers": TransformersEngine,
    "server": ServerEngine,
}


def holds_engines() -> bool:
    """Whether this process holds an engine made by `make_engine` (a forked child of it could not use it; the one
    at-fork hook, `hf_ipt.process`, leaves the child none).

    Example:
        >>> holds_engines()  # in a process that has not called make_engine yet  # doctest: +SKIP
        False
    """
    return bool(process_state().engines)


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


def devices_of(spec: str | Engine | Callable[..., Any], engine_kwargs: Mapping[str, Any] | None) -> int:
    """The devices one engine of `spec` occupies with `engine_kwargs` (`Engine.devices`: tensor × pipeline
    parallel for vLLM, 1 for the others and for a callable), for placing workers.

    Example:
        >>> devices_of("vllm", {"tensor_parallel_size": 2}), devices_of(lambda prompts: prompts, None)
        (2, 1)
    """
    if isinstance(spec, str):
        return engine_class(spec).devices(engine_kwargs)
    return type(spec).devices(engine_kwargs) if isinstance(spec, Engine) else 1


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
        state = process_state()
        if "vllm" in state.inherited_engine_names:
            # vLLM's OpenMP thread pool (CPU) or CUDA context (GPU) does not survive fork: any engine here would hang
            raise RuntimeError(
                "this process was forked from one that already holds a vLLM engine, and engines hang in such a "
                "child. Create no engine in the parent before a forking map (do not call the Synthesizer there "
                "first), or run the map with the spawn start method: "
                "multiprocess.set_start_method('spawn', force=True)."
            )
        key = (spec, model, revision, tokenizer, max_model_len, repr(sorted((engine_kwargs or {}).items())))
        if key not in state.engines:
            logger.info("creating the %s engine for %s in process %d", spec, model, os.getpid())
            try:
                # once per engine, before it loads: prompts must be the ids the model's own tokenizer.json gives
                check_prompt_tokenizer(model, revision, tokenizer)
            except ValueError as error:
                raise EngineStartError(f"the {spec} engine did not start: {error}") from error
            try:
                state.engines[key] = factory(
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
        return state.engines[key]
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
