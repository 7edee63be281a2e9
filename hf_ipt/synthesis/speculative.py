"""Prompt-lookup speculative decoding for the synthesizer (`synth.speculative`), on the vLLM engine only.

The synthesizer's answers quote their text (extractive answers, options copied from it, rationales built from its
sentences). n-gram prompt lookup drafts the next tokens by finding the last few generated tokens earlier in the prompt
and proposing what followed them there; the model verifies the draft in one step. Under greedy decoding the output is
unchanged, token for token; only the number of engine steps changes. No draft model is needed.

It is off by default (`synth.speculative: null`) until a GPU figure exists: see docs/scaling.md for the CPU figures.

Example:
    >>> config = SpeculativeConfig(num_speculative_tokens=4, prompt_lookup_max=4, prompt_lookup_min=2)
    >>> speculative_config(config)
    {'method': 'ngram', 'num_speculative_tokens': 4, 'prompt_lookup_max': 4, 'prompt_lookup_min': 2}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from hf_ipt.engines import engine_class
from hf_ipt.validation import ConfigError, check_fields

SPECULATIVE_METHODS = ("ngram",)


@dataclass
class SpeculativeConfig:
    """Settings of prompt-lookup speculative decoding (`synth.speculative`), passed to vLLM as `speculative_config`.

    Example:
        >>> SpeculativeConfig().num_speculative_tokens
        4
        >>> SpeculativeConfig(prompt_lookup_min=5, prompt_lookup_max=3)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        hf_ipt.validation.ConfigError: synth.speculative.prompt_lookup_min (5) must be <= ...
    """

    method: str = field(
        default="ngram",
        metadata={
            "help": "Drafting method: 'ngram' (prompt lookup: draft tokens are copied from the prompt, no draft "
            "model).",
            "choices": SPECULATIVE_METHODS,
        },
    )
    num_speculative_tokens: int = field(
        default=4,
        metadata={
            "help": "Draft tokens proposed per engine step (k); verified by the model in one step.",
            "min": 1,
            "max": 16,
        },
    )
    prompt_lookup_max: int = field(
        default=4,
        metadata={
            "help": "Longest n-gram of the latest tokens looked up in the prompt to find a draft.",
            "min": 1,
            "max": 16,
        },
    )
    prompt_lookup_min: int = field(
        default=2,
        metadata={"help": "Shortest n-gram looked up (a shorter match proposes no draft).", "min": 1, "max": 16},
    )

    def __post_init__(self) -> None:
        check_fields(self, "synth.speculative")
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ConfigError(
                f"synth.speculative.prompt_lookup_min ({self.prompt_lookup_min}) must be <= "
                f"synth.speculative.prompt_lookup_max ({self.prompt_lookup_max}); e.g. prompt_lookup_min: 2, "
                "prompt_lookup_max: 4"
            )


def as_speculative_config(value: Any) -> SpeculativeConfig | None:
    """`synth.speculative` as given in Python (None, a mapping or a `SpeculativeConfig`) as a `SpeculativeConfig`;
    unknown keys are errors naming the key.

    Example:
        >>> as_speculative_config({"num_speculative_tokens": 3}).num_speculative_tokens
        3
        >>> as_speculative_config(None) is None
        True
    """
    if value is None or isinstance(value, SpeculativeConfig):
        return value
    if not isinstance(value, dict):
        raise ConfigError(
            f"synth.speculative must be a mapping such as {{'method': 'ngram', 'num_speculative_tokens': 4}} or "
            f"null (off), got {value!r}"
        )
    known = set(SpeculativeConfig.__dataclass_fields__)
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"unknown key synth.speculative.{unknown[0]}; the keys are {', '.join(sorted(known))}")
    return SpeculativeConfig(**value)


def speculative_config(config: SpeculativeConfig) -> dict[str, Any]:
    """The `speculative_config` argument of `vllm.LLM` (and the JSON of `vllm serve --speculative-config`).

    Example:
        >>> speculative_config(SpeculativeConfig())["method"]
        'ngram'
    """
    return asdict(config)


def check_speculative_engine(config: SpeculativeConfig | None, engine: str, engine_kwargs: dict[str, Any]) -> None:
    """The rule between `synth.speculative` and the engine: only the vLLM engine runs it in-process; the server engine
    takes it as a flag of the server; the transformers engine has none. Errors name the key and the fix.

    Example:
        >>> check_speculative_engine(SpeculativeConfig(), "vllm", {})
        >>> check_speculative_engine(SpeculativeConfig(), "transformers", {})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        hf_ipt.validation.ConfigError: synth.speculative is set but synth.engine is 'transformers': ...
    """
    if config is None:
        return
    problem = engine_class(engine).speculative_problem(_json(config))
    if problem is not None:
        raise ConfigError(f"synth.speculative is set but synth.engine is {engine!r}: {problem}")
    if "speculative_config" in engine_kwargs:
        raise ConfigError(
            "synth.speculative and synth.engine_kwargs.speculative_config are both set; keep one (synth.speculative "
            "is validated and reported in the run summary)"
        )


def _json(config: SpeculativeConfig) -> str:
    import json

    return json.dumps(speculative_config(config), separators=(",", ":"))
