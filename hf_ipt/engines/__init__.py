"""Engines that run the synthesizer: vLLM offline, transformers, OpenAI-compatible servers, or any user callable.

- `base`: the interface (`Engine`, `Request`, `Completion`) and the request-level stream (`RequestStream`).
- `vllm`, `transformers`, `server`: the engines; each one that can take requests one by one opens its own stream.
- `registry`: `ENGINES` by name (`engine_class`) and `make_engine`, one engine per process and settings.

Each engine class owns its contract, usable without starting it: `packages`, `reserved_arguments`,
`check_settings(engine_kwargs, model=..., revision=...)` (the recipe's problems, in seconds), `devices(engine_kwargs)`
(devices one engine occupies) and, on an instance, `counters()`.

Nothing here imports the synthesis package: synthesis drives engines, never the other way round.

Example:
    >>> [str(p) for p in engine_class("vllm").check_settings({"batch_size": 8}, model="m")]  # doctest: +SKIP
    ["synth.engine_kwargs.batch_size: the vllm engine has no argument 'batch_size'; the vllm equivalent is ..."]
    >>> engine = make_engine("transformers", model="path/to/model")  # doctest: +SKIP
    >>> engine.generate_safely([Request(prompt, ids)], max_new_tokens=400)  # doctest: +SKIP
"""

from hf_ipt.engines.base import (
    NO_OUTLOOK,
    CallableEngine,
    ChainOutlook,
    Completion,
    Engine,
    EngineStartError,
    Request,
    RequestStream,
)
from hf_ipt.engines.registry import ENGINES, devices_of, engine_class, holds_engines, make_engine
from hf_ipt.engines.server import ServerEngine, ServerEngineConfig
from hf_ipt.engines.transformers import TransformersEngine
from hf_ipt.engines.vllm import VLLMEngine, VLLMRequestStream

__all__ = [
    "ENGINES",
    "NO_OUTLOOK",
    "CallableEngine",
    "ChainOutlook",
    "Completion",
    "Engine",
    "EngineStartError",
    "Request",
    "RequestStream",
    "ServerEngine",
    "ServerEngineConfig",
    "TransformersEngine",
    "VLLMEngine",
    "VLLMRequestStream",
    "engine_class",
    "devices_of",
    "holds_engines",
    "make_engine",
]
