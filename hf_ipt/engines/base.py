"""The engine interface: requests in, greedy completions out, and the request-level stream some engines offer.

An engine receives `Request`s (the prompt string and its exact token ids, one BOS per segment) and returns one
`Completion` per request, greedy, at most `max_new_tokens` tokens, stopping at EOS. Engines that take token ids
(vLLM, transformers) send the ids as they are, so no second BOS is ever added.

Engines that can take requests one by one (vLLM's offline engine, the server engine) also return a `RequestStream`
from `Engine.open_stream`: the continuous scheduler (`hf_ipt.synthesis.scheduling`) submits each chain's next round
through it the moment the previous round finished. The concrete engines live next to this module (`vllm.py`,
`transformers.py`, `server.py`); `hf_ipt.engines.make_engine` builds one by name.

Example:
    >>> engine = CallableEngine(lambda prompts: ["<QUE> Q? <ANS> A. </END>" for _ in prompts])
    >>> engine.generate_safely([Request("<s> <CON> x </CON>\\n\\n", [1, 2])], max_new_tokens=8)[0].text
    '<QUE> Q? <ANS> A. </END>'
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

logger = logging.getLogger(__name__)


@dataclass
class Request:
    """One prompt for an engine: the string and its exact token ids (engines that take ids send these as they are).

    Example:
        >>> Request("<s> <CON> Cats. </CON>\\n\\n", [1, 523, 4]).token_ids
        [1, 523, 4]
    """

    prompt: str
    token_ids: list[int]


@dataclass
class Completion:
    """An engine's answer to one request; `error` is set (and `text` empty) when the engine failed on it.

    Example:
        >>> Completion("", error="HTTP 400: prompt too long").error
        'HTTP 400: prompt too long'
    """

    text: str
    token_ids: list[int] = field(default_factory=list)
    error: str | None = None  # set when the engine failed on this request; text is then ""


class ChainOutlook(NamedTuple):
    """What is left of a chain after the request at hand: its later entries and their texts' zero-shot tokens.

    A stream uses it to reserve room for the whole chain when the chain starts: each later round's prompt is the
    previous prompt plus its answer plus the next text.

    Example:
        >>> ChainOutlook(later_rounds=2, later_text_tokens=300).later_rounds
        2
    """

    later_rounds: int = 0
    later_text_tokens: int = 0


NO_OUTLOOK = ChainOutlook()  # nothing after this request (or a stream that does not look ahead)


class RequestStream(ABC):
    """An engine's request-level interface: submit requests one by one, collect completions as they finish.

    `key` is an opaque integer the caller uses to match completions to requests (the row index).

    Example:
        >>> stream = engine.open_stream(max_new_tokens=400)  # doctest: +SKIP
        >>> stream.submit(0, Request(prompt, ids)); stream.collect()  # doctest: +SKIP
        [(0, Completion(text='<QUE> ...', ...))]
    """

    #: prompt tokens of finished requests served from the engine's prefix cache; None when the engine does not say
    cached_prompt_tokens: int | None = None

    @abstractmethod
    def has_room(self, request: Request, continuation: bool = False, outlook: ChainOutlook = NO_OUTLOOK) -> bool:
        """Whether the engine can start `request` now (rather than queue it behind others). `continuation`: the
        request continues a chain whose previous entry just finished (engines may keep room for those); `outlook`:
        what the chain still holds after this request."""

    @abstractmethod
    def submit(self, key: int, request: Request, outlook: ChainOutlook = NO_OUTLOOK) -> Completion | None:
        """Queue one request. Returns None when it was accepted, or a Completion with `error` set when the engine
        refused it at once (e.g. a prompt longer than the engine accepts); a refusal costs only that request."""

    @abstractmethod
    def collect(self) -> list[tuple[int, Completion]]:
        """Wait until at least one accepted request finished and return all finished ones as (key, completion).
        Returns [] only when nothing is in flight. May raise when the engine itself fails."""

    @abstractmethod
    def close(self) -> list[int]:
        """Stop: abort whatever is still in flight and return the keys of those requests."""


class Engine(ABC):
    """One way of running the synthesizer. Subclasses implement `generate` for a whole list of requests, and
    `open_stream` when they can take requests one at a time.

    Example:
        >>> class Echo(Engine):
        ...     name = "echo"
        ...     def generate(self, requests, max_new_tokens):
        ...         return [Completion(r.prompt.upper()) for r in requests]
        >>> Echo().generate_safely([Request("hi", [1])], max_new_tokens=4)[0].text
        'HI'
    """

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
                return [Completion("", error=describe_error(batch_error))]
            logger.warning(
                "%s engine failed on a batch of %d (%s); retrying one by one",
                self.name,
                len(requests),
                describe_error(batch_error),
            )
        completions = []
        for request in requests:
            try:
                completions.extend(self._checked(self.generate([request], max_new_tokens), 1))
            except Exception as error:  # noqa: BLE001
                completions.append(Completion("", error=describe_error(error)))
        return completions

    def open_stream(self, max_new_tokens: int) -> RequestStream | None:
        """This engine's request-level interface (a new `RequestStream` per batch), or None when it has none: the
        scheduler then runs the batch round by round through `generate_safely`.

        Example:
            >>> CallableEngine(lambda prompts: prompts).open_stream(400) is None
            True
        """
        return None

    def _checked(self, completions: Sequence[Completion], expected: int) -> list[Completion]:
        completions = list(completions)
        if len(completions) != expected:
            raise RuntimeError(f"{self.name} engine returned {len(completions)} completions for {expected} prompts")
        return completions


class EngineStartError(RuntimeError):
    """An engine could not start with the recipe's settings; the message names the engine, the setting at fault and
    the fix, and the library's own error is the `__cause__`.

    Example:
        >>> raise EngineStartError("the vllm engine did not start: ...")  # doctest: +SKIP
    """


def describe_error(error: BaseException) -> str:
    """An exception as the one-line message a Completion's `error` carries (type and message, at most 2000
    characters).

    Example:
        >>> describe_error(ValueError("prompt too long"))
        'ValueError: prompt too long'
    """
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


def cuda_available() -> bool:
    """Whether torch is installed and sees a CUDA device (False without torch: engines then run on the CPU).

    Example:
        >>> cuda_available()  # doctest: +SKIP
        False
    """
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()
