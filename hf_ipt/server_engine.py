"""Deprecated: the server engine moved to `hf_ipt.engines.server` (also exported by `hf_ipt.engines`)."""

import warnings

from hf_ipt.engines.server import ServerEngine, ServerEngineConfig, ServerRequestStream, completions_url

warnings.warn(
    "hf_ipt.server_engine is deprecated: import from hf_ipt.engines (hf_ipt.engines.server) instead",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["ServerEngine", "ServerEngineConfig", "ServerRequestStream", "completions_url"]
