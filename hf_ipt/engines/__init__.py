"""Engines that run the synthesizer: vLLM offline, transformers, OpenAI-compatible servers, or any user callable.

- `base`: the interface (`Engine`, `Request`, `Completion`) and the request-level stream (`RequestStream`).
- `vllm`, `transformers`, `server`: the engines; each one that can take requests one by one opens its own stream.
- `registry`: `ENGINES` by name and `make_engine`, one engine per process and settings.

Nothing here imports the synthesis package: synthesis drives engines, never the other way round.

Example:
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
from hf_ipt.engines.registry import ENGINES, holds_engines, make_engine
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
    "holds_engines",
    "make_engine",
]
