"""An engine that sends raw completion requests to OpenAI-compatible servers: `vllm serve`, SGLang, TGI.

Requests go through the `openai` Python client (`client.completions.create`, an optional dependency: `pip install
'hf-ipt[server]'`): one `POST {endpoint}/v1/completions` per prompt (the completions API, not chat: the synthesizer's
prompt format is raw text), greedy, at most `max_new_tokens` tokens. By default the prompt is sent as its exact token
ids (vLLM and SGLang accept a list of ids as `prompt`), so the server adds no second BOS. Requests run concurrently
(at most `max_concurrency` at once, in total, over one pool of kept-alive connections), spread over several endpoints
(the one with the fewest requests in flight gets the next). The client retries connection failures, timeouts and
408/409/429/5xx answers on the same endpoint, `max_retries` times, waiting as long as the server's `Retry-After` says
(else its own exponential back-off); when an endpoint still fails that way the request moves to another endpoint, and
the failed one is rested for a while. A request that fails everywhere, or that the server rejects (e.g. a 400 for a
prompt that is too long), becomes a per-row error; the other rows of the batch are unaffected.

With `scheduling="continuous"` (the default), each chain's next round is sent as soon as its previous round answered
(see `hf_ipt.synthesis.scheduling`), which also lets the server's prefix cache reuse the previous prompt.

Example:
    >>> synth = Synthesizer(model="instruction-pretrain/instruction-synthesizer", engine="server",
    ...                     engine_kwargs={"endpoints": ["http://gpu-1:8000", "http://gpu-2:8000"]})  # doctest: +SKIP
    >>> ds.map(synth, batched=True, batch_size=synth.config.batch_size)  # doctest: +SKIP

The tokenizer hf-ipt fits prompts with (`model`, or `tokenizer`) must be the served model's.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from hf_ipt._deps import require
from hf_ipt.engines.base import NO_OUTLOOK, ChainOutlook, Completion, Engine, Request, RequestStream, describe_error
from hf_ipt.markers import BOS
from hf_ipt.redaction import register_secrets, scrub, secret_values
from hf_ipt.validation import Problem, check_fields

logger = logging.getLogger(__name__)

PROMPT_FORMATS = ("token_ids", "text")
# vLLM's server flag for speculative decoding: where `synth.speculative`'s settings go when the engine is a server
SPECULATIVE_FLAG = "--speculative-config"
# answers that say "this endpoint, now" rather than "this request": the openai client retries them, and a request
# that still gets one moves to another endpoint (the client's own list: 408, 409, 429, 5xx)
ENDPOINT_FAILURE_STATUS = frozenset({408, 409, 429})
# how long an endpoint that failed a request through all its retries gets no new requests while others are healthy:
# long enough that a dead server does not cost every row its retries, short enough that a restarted one is soon used
ENDPOINT_REST_SECONDS = 10.0


@dataclass
class ServerEngineConfig:
    """Settings of the server engine; pass them as `engine_kwargs` of the synthesis config.

    Example:
        >>> config = ServerEngineConfig(endpoints=["http://127.0.0.1:8000"])
        >>> config.endpoints, config.max_concurrency
        (['http://127.0.0.1:8000/v1/completions'], 64)
    """

    endpoints: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Base URLs of the OpenAI-compatible servers, e.g. ['http://127.0.0.1:8000']; '/v1/completions' "
            "is appended unless the URL already ends with it (or with '/v1')."
        },
    )
    served_model_name: str | None = field(
        default=None,
        metadata={
            "help": "The `model` field of each request; defaults to the synthesis model id/path.",
            "nonempty": True,
        },
    )
    max_concurrency: int = field(
        default=64,
        metadata={
            "help": "Most requests in flight at once, over all endpoints together (also the size of the connection "
            "pool).",
            "min": 1,
        },
    )
    max_retries: int = field(
        default=4,
        metadata={
            "help": "Further attempts at one endpoint after a failed one (connection error, timeout, 408/409/429/"
            "5xx), made by the openai client, which waits as the server's Retry-After says (else 0.5 s "
            "doubling, at most 8 s); a request that still fails moves to another endpoint, if any.",
            "min": 0,
        },
    )
    timeout_seconds: float = field(
        default=600.0,
        metadata={
            "help": "Most seconds one attempt may take, from connecting to the last byte of the answer: a total, "
            "not a bound on each read, so a server that answers one byte at a time is cut off too (the attempt "
            "fails like a timeout and is retried).",
            "gt": 0,
        },
    )
    prompt_format: str = field(
        default="token_ids",
        metadata={
            "help": "'token_ids' sends the exact ids (vLLM, SGLang: no second BOS). 'text' sends the prompt string "
            "(servers that only take strings, e.g. TGI): without its leading literal BOS when the tokenizer adds "
            "one itself; checked on the first request, whose text must tokenize to the exact ids.",
            "choices": PROMPT_FORMATS,
        },
    )
    api_key: str | None = field(
        default=None,
        metadata={
            "help": "Bearer token sent as `Authorization`; defaults to the OPENAI_API_KEY environment variable."
        },
    )
    extra_body: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Extra JSON fields of every request (server-specific sampling options, priority, ...)."},
    )

    def __post_init__(self) -> None:
        if isinstance(self.endpoints, str):
            self.endpoints = [self.endpoints]
        if not isinstance(self.endpoints, list | tuple) or not self.endpoints:
            raise ValueError(
                "engine_kwargs.endpoints must list at least one server URL, e.g. "
                f"{{'endpoints': ['http://127.0.0.1:8000']}}; got {self.endpoints!r}"
            )
        check_fields(self, "engine_kwargs")
        self.endpoints = [completions_url(url) for url in self.endpoints]
        reserved = {"model", "prompt", "max_tokens", "stream"} & set(self.extra_body)
        if reserved:
            raise ValueError(f"engine_kwargs.extra_body must not set {sorted(reserved)}: hf-ipt sets them per request")


def completions_url(url: str) -> str:
    """The completions endpoint of a server URL.

    Example:
        >>> completions_url("http://127.0.0.1:8000")
        'http://127.0.0.1:8000/v1/completions'
        >>> completions_url("https://host/v1/")
        'https://host/v1/completions'
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"a server endpoint must be a URL such as 'http://127.0.0.1:8000', got {url!r}")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"a server endpoint must be an http(s) URL such as 'http://127.0.0.1:8000', got {url!r}")
    base = url.strip().rstrip("/")
    if base.endswith("/v1/completions"):
        return base
    if base.endswith("/v1"):
        return base + "/completions"
    return base + "/v1/completions"


# An answer holds at most max_new_tokens tokens, and no token of a synthesizer's tokenizer is this long (Mistral's
# longest is 16 characters, the tiny test model's 92): a longer answer, from a server that reports no token count, is
# not one max_new_tokens allows.
MAX_CHARS_PER_TOKEN = 256
# bytes on the wire per character of the answer's text (one outside the BMP is escaped as two \uXXXX in JSON), and
# for the JSON envelope, headers and token ids: what an attempt may receive before it is cut off
_WIRE_BYTES_PER_CHAR = 12
_ANSWER_OVERHEAD_BYTES = 1 << 16


def answer_byte_budget(max_new_tokens: int) -> int:
    """The most bytes an attempt may receive for an answer of at most `max_new_tokens` tokens: more is a server
    that does not honour max_tokens, cut off before it fills the memory.

    Example:
        >>> answer_byte_budget(64)
        262144
    """
    return _ANSWER_OVERHEAD_BYTES + max_new_tokens * MAX_CHARS_PER_TOKEN * _WIRE_BYTES_PER_CHAR


def too_long(text: str, usage: Any, max_new_tokens: int) -> str | None:
    """Why an answer is longer than `max_new_tokens` tokens could be (then it is the row's error), None when it is
    not: the server's own count of the answer's tokens (`usage.completion_tokens`) when it gives one, else the
    characters against `MAX_CHARS_PER_TOKEN` per token.

    Example:
        >>> too_long("x" * 100, {"completion_tokens": 80}, 64)
        'the server counted 80 tokens in its answer, more than max_new_tokens=64 allows'
        >>> too_long("x" * 100, None, 64) is None
        True
    """
    counted = (
        usage.get("completion_tokens") if isinstance(usage, Mapping) else getattr(usage, "completion_tokens", None)
    )
    if isinstance(counted, int) and not isinstance(counted, bool):
        if counted > max_new_tokens:
            return (
                f"the server counted {counted} tokens in its answer, more than max_new_tokens={max_new_tokens} allows"
            )
        return None
    if len(text) > max_new_tokens * MAX_CHARS_PER_TOKEN:
        return (
            f"the answer holds {len(text):,} characters, more than max_new_tokens={max_new_tokens} tokens can "
            f"(at most {MAX_CHARS_PER_TOKEN} characters per token)"
        )
    return None


class _Attempt(threading.local):
    """The clock and byte count of the attempt this thread is sending (each request's attempts run in one thread)."""

    deadline: float | None = None  # monotonic time by which the attempt's answer must have arrived whole
    seconds: float = 0.0
    received: int = 0
    max_bytes: int | None = None


_ATTEMPT = _Attempt()


def _until_deadline(timeout: float | None, error: type[Exception]) -> float | None:
    """A socket operation's timeout cut to what is left of this thread's attempt; `error` when nothing is left."""
    if _ATTEMPT.deadline is None:
        return timeout
    remaining = _ATTEMPT.deadline - time.monotonic()
    if remaining <= 0:
        raise error(_deadline_message())
    return remaining if timeout is None else min(timeout, remaining)


def _deadline_message() -> str:
    return f"no complete answer within timeout_seconds={_ATTEMPT.seconds:g} s (a total per attempt)"


class _DeadlineStream:
    """A connection whose every read and write stops at the current attempt's deadline (and whose reads stop at its
    byte budget), raising the HTTP library's own timeout and read errors so the client retries as for any timeout."""

    def __init__(self, stream: Any, errors: Any) -> None:
        self._stream, self._errors = stream, errors

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        bounded = _until_deadline(timeout, self._errors.ReadTimeout)
        try:
            data = self._stream.read(max_bytes, bounded)
        except self._errors.ReadTimeout:
            if bounded == timeout:
                raise
            data = None  # the deadline ran out, not the per-read timeout: said below, as the root cause
        if data is None:
            raise self._errors.ReadTimeout(_deadline_message())
        _ATTEMPT.received += len(data)
        if _ATTEMPT.max_bytes is not None and _ATTEMPT.received > _ATTEMPT.max_bytes:
            raise self._errors.ReadError(
                f"the answer passed {_ATTEMPT.max_bytes:,} bytes, more than max_new_tokens tokens can take: the "
                "server does not honour max_tokens"
            )
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _until_deadline(timeout, self._errors.WriteTimeout))

    def start_tls(self, *args: Any, **kwargs: Any) -> _DeadlineStream:
        return _DeadlineStream(self._stream.start_tls(*args, **kwargs), self._errors)

    def __getattr__(self, name: str) -> Any:  # close, get_extra_info, ...
        return getattr(self._stream, name)


class _DeadlineBackend:
    """The HTTP library's network backend, whose connections are `_DeadlineStream`s."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self._errors = sys.modules[type(backend).__module__.split(".")[0]]  # httpcore or httpcore2

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, **kwargs: Any) -> _DeadlineStream:
        timeout = _until_deadline(timeout, self._errors.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_tcp(host, port, timeout, **kwargs), self._errors)

    def connect_unix_socket(self, path: str, timeout: float | None = None, **kwargs: Any) -> _DeadlineStream:
        timeout = _until_deadline(timeout, self._errors.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_unix_socket(path, timeout, **kwargs), self._errors)

    def __getattr__(self, name: str) -> Any:  # sleep, ...
        return getattr(self._backend, name)


def bound_whole_attempts(http_client: Any, timeout_seconds: float) -> bool:
    """Make every attempt of `http_client` (an httpx / httpx2 client) stop `timeout_seconds` after it starts, and
    stop reading an answer beyond the byte budget its sender set (`_ATTEMPT.max_bytes`): the HTTP libraries bound
    each read, which a server sending one byte at a time never exceeds. Returns False when the client's transport is
    not one whose connections can be wrapped (then only each read is bounded).

    Example:
        >>> bound_whole_attempts(openai.DefaultHttpxClient(), 600.0)  # doctest: +SKIP
        True
    """

    def start_clock(request: Any) -> None:  # an event hook: runs in the sending thread before each attempt
        _ATTEMPT.deadline, _ATTEMPT.seconds, _ATTEMPT.received = time.monotonic() + timeout_seconds, timeout_seconds, 0

    # the connections are made by the transport's connection pool (httpcore's), through its network backend
    transports = [getattr(http_client, "_transport", None), *(getattr(http_client, "_mounts", None) or {}).values()]
    wrapped = False
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if backend is None:
            continue
        if not isinstance(backend, _DeadlineBackend):
            pool._network_backend = _DeadlineBackend(backend)
        wrapped = True
    if wrapped:
        http_client.event_hooks["request"].append(start_clock)
    return wrapped


class _EndpointFailed(Exception):
    """A request failed at one endpoint after the client's retries; `moves_on`: another endpoint may succeed."""

    def __init__(self, message: str, attempts: int, moves_on: bool) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.moves_on = moves_on


class _Endpoint:
    def __init__(self, url: str) -> None:
        self.url = url
        self.base_url = url.removesuffix("/completions")  # the openai client appends it
        self.in_flight = 0
        self.resting_until = 0.0  # monotonic time before which new requests avoid this endpoint


class ServerEngine(Engine):
    """Completions from OpenAI-compatible servers through the `openai` client, with bounded concurrency, retries that
    honour `Retry-After`, load balancing over endpoints and per-row errors.

    Constructed by `make_engine("server", model=..., engine_kwargs={...})`; `engine_kwargs` are the fields of
    `ServerEngineConfig` (`endpoints` is required). Needs the `openai` package (`pip install 'hf-ipt[server]'`).

    Example:
        >>> engine = ServerEngine("org/llm", engine_kwargs={"endpoints": ["http://127.0.0.1:8000"]})  # doctest: +SKIP
        >>> engine.generate_safely([Request(prompt, ids)], max_new_tokens=400)[0].text  # doctest: +SKIP
    """

    name = "server"
    packages = ("openai",)
    # nothing reserved: the requests' `model` is served_model_name (default synth.model), the rest are server settings

    @classmethod
    def accepted_arguments(cls) -> set[str] | None:
        """The fields of `ServerEngineConfig`.

        Example:
            >>> "endpoints" in ServerEngine.accepted_arguments()
            True
        """
        return {f.name for f in fields(ServerEngineConfig)}

    @classmethod
    def speculative_problem(cls, settings_json: str) -> str | None:
        return (
            f"speculative decoding runs inside the server, so start it there (vllm serve MODEL {SPECULATIVE_FLAG} "
            f"'{settings_json}') and remove synth.speculative"
        )

    @classmethod
    def check_settings(
        cls, engine_kwargs: Mapping[str, Any] | None, *, model: str, revision: str | None = None
    ) -> list[Problem]:
        """`openai` installed, every name a field of `ServerEngineConfig`, and, when they all are, the config's own
        checks of the values (endpoint URLs, bounds, choices), keyed by the field at fault.

        Example:
            >>> [p.key for p in ServerEngine.check_settings({"endpoint": "http://x:1"}, model="m")]
            ['synth.engine_kwargs.endpoint']
        """
        problems = super().check_settings(engine_kwargs, model=model, revision=revision)
        if any(problem.key.startswith("synth.engine_kwargs.") for problem in problems):
            return problems  # the config cannot be built with an unknown name
        try:
            ServerEngineConfig(**dict(engine_kwargs or {}))
        except (TypeError, ValueError) as err:
            message = str(err)
            match = re.match(r"engine_kwargs\.(\w+)", message)
            key = f"synth.engine_kwargs.{match.group(1)}" if match else "synth.engine_kwargs"
            problems.append(Problem(key, message, "fix the value (see ServerEngineConfig)"))
        return problems

    def __init__(
        self,
        model: str,
        *,
        revision: str | None = None,
        tokenizer: str | None = None,
        max_model_len: int = 4096,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        kwargs = dict(engine_kwargs or {})
        self._init_args = {
            "model": model,
            "revision": revision,
            "tokenizer": tokenizer,
            "max_model_len": max_model_len,
            "engine_kwargs": dict(kwargs),
        }
        known = {f.name for f in fields(ServerEngineConfig)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(
                f"unknown engine_kwargs for the server engine: {unknown}; the settings are {sorted(known)}"
            )
        self.config = ServerEngineConfig(**kwargs)
        self._openai = require("openai", "the server engine (engine='server')")
        self.model = self.config.served_model_name or model
        self._tokenizer_name, self._revision = tokenizer or model, (None if tokenizer else revision)
        self._strip_bos: bool | None = None  # text format: decided on the first request
        self._special_ids: dict[str, int] = {}  # text format: the tokenizer's control strings and their ids
        # the openai client insists on a key; servers started without --api-key ignore the placeholder
        self.api_key = self.config.api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self._secrets = [*filter(None, (self.config.api_key, os.environ.get("OPENAI_API_KEY")))]
        self._secrets += secret_values(self.config.extra_body)
        # every later line of this process (terminal, log file) leaves them out, wherever a server echoes them
        register_secrets(self._secrets)
        self._endpoints = [_Endpoint(url) for url in self.config.endpoints]
        self._lock = threading.Lock()
        self._setup_lock = threading.Lock()
        self._turn = 0  # round-robin among equally loaded endpoints
        self._clients: dict[str, Any] = {}  # endpoint URL -> openai.OpenAI, all on one connection pool
        self._clients_pid = -1
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = -1

    def __getstate__(self) -> dict[str, Any]:
        # settings only: threads, locks and connections belong to the process that made them
        return {"init_args": self._init_args}

    def __setstate__(self, state: dict[str, Any]) -> None:
        init_args = dict(state["init_args"])
        self.__init__(init_args.pop("model"), **init_args)

    @property
    def endpoints(self) -> list[str]:
        return [endpoint.url for endpoint in self._endpoints]

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None or self._pool_pid != os.getpid():
            # a forked process inherits no running threads: it needs its own pool
            self._pool = ThreadPoolExecutor(self.config.max_concurrency, thread_name_prefix="hf-ipt-server")
            self._pool_pid = os.getpid()
            self._lock = threading.Lock()
            self._setup_lock = threading.Lock()
            for endpoint in self._endpoints:
                endpoint.in_flight = 0
        return self._pool

    def _client(self, endpoint: _Endpoint) -> Any:
        """The openai client of an endpoint, made on first use in this process; all share one connection pool."""
        with self._setup_lock:
            if self._clients_pid != os.getpid():
                # a forked process must not share its parent's sockets: new clients, new pool
                self._clients, self._clients_pid = {}, os.getpid()
            if not self._clients:
                openai = self._openai
                # one pool for every endpoint, as large as the concurrency bound, so no request waits for a
                # connection and every connection is kept alive for the next request
                limits = type(openai.DEFAULT_CONNECTION_LIMITS)(
                    max_connections=self.config.max_concurrency,
                    max_keepalive_connections=self.config.max_concurrency,
                )
                http_client = openai.DefaultHttpxClient(limits=limits, timeout=self.config.timeout_seconds)
                if not bound_whole_attempts(http_client, self.config.timeout_seconds):
                    logger.warning(
                        "this version of the openai client's HTTP library cannot be given a deadline per request: "
                        "timeout_seconds bounds each read only"
                    )
                for e in self._endpoints:
                    self._clients[e.url] = openai.OpenAI(
                        base_url=e.base_url,
                        api_key=self.api_key,
                        max_retries=self.config.max_retries,
                        timeout=self.config.timeout_seconds,
                        http_client=http_client,
                    )
            return self._clients[endpoint.url]

    # --- one request ------------------------------------------------------------------------------------------

    def _body(self, request: Request, max_new_tokens: int) -> dict[str, Any]:
        """The arguments of `client.completions.create` for one request; `extra_body` is sent as given (over the
        greedy default temperature)."""
        extra_body = dict(self.config.extra_body)
        if self.config.prompt_format == "token_ids":
            # the ids travel in extra_body, which the client sends as given and which overrides `prompt`: given as
            # `prompt`, the client walks every id in Python before sending, 5-10x fewer requests/s per process with
            # 2000-id prompts (bench/bench_server_client.py)
            prompt: Any = ""
            extra_body["prompt"] = list(request.token_ids)
        else:
            self.check_text_prompt(request)
            # a server whose tokenizer adds a BOS gets the prompt without the literal one: exactly one BOS either way
            strip = self._strip_bos and request.prompt.startswith(BOS)
            prompt = request.prompt[len(BOS) :] if strip else request.prompt
        return {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_new_tokens,
            "temperature": 0.0,
            "stream": False,
            "extra_body": extra_body,
        }

    def check_text_prompt(self, request: Request) -> None:
        """Refuse (as this row's error) a text prompt whose content holds a control string such as a literal `<s>`
        or `</s>` (HTML strikethrough in web text): hf-ipt fitted it as text, but the server would read it as a
        control token. Counted by occurrences: the prompt string may hold each control string only as often as the
        fitted ids hold its id.

        Example:
            >>> engine.check_text_prompt(Request("<s> <CON> Price: <s>$40</s> </CON>", ids))  # doctest: +SKIP
            ValueError: ... holds the control string '<s>' as text ...
        """
        for text, token_id in self._special_ids.items():
            in_text = request.prompt.count(text)
            if in_text and in_text > request.token_ids.count(token_id):
                raise ValueError(
                    f"prompt_format='text': this row's content holds the control string {text!r} as text, which the "
                    "server would read as a control token; use prompt_format='token_ids' (vLLM, SGLang) to send "
                    "the exact ids"
                )

    def _server_adds_bos(self, request: Request) -> bool:
        """Whether to leave out the literal BOS in the text format: the variant the server's tokenization
        (`add_special_tokens=True`, like the completions API) turns into exactly the ids hf-ipt fitted."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_name, revision=self._revision)
        self._special_ids = {
            text: token_id
            for text, token_id in zip(tokenizer.all_special_tokens, tokenizer.all_special_ids, strict=True)
            if text
        }
        for strip in (True, False):
            text = request.prompt[len(BOS) :] if strip and request.prompt.startswith(BOS) else request.prompt
            if tokenizer(text, add_special_tokens=True)["input_ids"] == list(request.token_ids):
                return strip
        raise ValueError(
            f"prompt_format='text': the tokenizer {self._tokenizer_name!r} does not turn the prompt text back into "
            "the exact token ids hf-ipt fitted (with or without the literal BOS), so the server would see other "
            "tokens; use prompt_format='token_ids' with a server that accepts token ids (vLLM, SGLang)"
        )

    def complete_one(self, request: Request, max_new_tokens: int) -> Completion:
        """One request, retried by the client at one endpoint and moved to another when that one keeps failing;
        never raises: a final failure is a Completion with `error` set."""
        try:
            if self.config.prompt_format == "text" and self._strip_bos is None:
                with self._setup_lock:  # the first text-format request decides the BOS handling, once
                    if self._strip_bos is None:
                        self._strip_bos = self._server_adds_bos(request)
            arguments = self._body(request, max_new_tokens)
        except Exception as error:  # noqa: BLE001 - a request that cannot be encoded is a per-row error
            return Completion("", error=describe_error(error))
        failures: list[str] = []
        attempts = 0
        tried: set[str] = set()
        failure: _EndpointFailed | None = None
        while (endpoint := self._acquire(avoid=tried)) is not None:
            tried.add(endpoint.url)
            try:
                return self._attempt(endpoint, arguments)
            except _EndpointFailed as error:
                failure = error
                attempts += failure.attempts
                failures.append(f"{endpoint.url}: {failure}")
                logger.debug("%d attempt(s) at %s failed: %s", failure.attempts, endpoint.url, failure)
                if not failure.moves_on:
                    break
                self._rest(endpoint)
            finally:
                self._release(endpoint)
        if failure is not None and failure.moves_on:
            logger.warning("a request failed %d times; its row gets an error: %s", attempts, failures[-1])
        summary = failures[-1] if attempts == 1 else f"{attempts} attempts failed; last: {failures[-1]}"
        # the error is stored with the row: a server that echoes the key it was sent must not put it there
        return Completion("", error=scrub(summary, self._secrets)[:2000])

    def _acquire(self, avoid: set[str]) -> _Endpoint | None:
        """The endpoint for a request's next try (counted as in flight), or None when it was tried at every one."""
        now = time.monotonic()
        with self._lock:
            self._turn += 1
            untried = [e for e in self._endpoints if e.url not in avoid]
            if not untried:
                return None
            # a resting endpoint is the last resort: it failed recently, but the request has nowhere else to go
            candidates = [e for e in untried if e.resting_until <= now] or untried
            # fewest requests in flight first; among equals, take turns
            order = {id(e): (i - self._turn) % len(self._endpoints) for i, e in enumerate(self._endpoints)}
            endpoint = min(candidates, key=lambda e: (e.in_flight, order[id(e)]))
            endpoint.in_flight += 1
        return endpoint

    def _release(self, endpoint: _Endpoint) -> None:
        with self._lock:
            endpoint.in_flight -= 1

    def _rest(self, endpoint: _Endpoint) -> None:
        with self._lock:
            endpoint.resting_until = time.monotonic() + ENDPOINT_REST_SECONDS

    def _attempt(self, endpoint: _Endpoint, arguments: dict[str, Any]) -> Completion:
        """One request at one endpoint, with the client's retries; a failure raises `_EndpointFailed`."""
        openai = self._openai
        _ATTEMPT.max_bytes = answer_byte_budget(arguments["max_tokens"])
        try:
            answer = self._client(endpoint).completions.create(**arguments)
        except openai.APIStatusError as error:  # the server answered, with an error status, after any retries
            status = error.status_code
            raise _EndpointFailed(
                f"HTTP {status}: {_server_message(error.response.content)}",
                _attempts_made(error.response.request),
                moves_on=status in ENDPOINT_FAILURE_STATUS or status >= 500,
            ) from error
        except openai.APIConnectionError as error:  # refused, reset, timed out, cut mid-answer, after any retries
            raise _EndpointFailed(_connection_failure(error), _attempts_made(error.request), moves_on=True) from error
        except Exception as error:  # noqa: BLE001 - e.g. an answer that is not JSON: this row's error, not a crash
            raise _EndpointFailed(f"unreadable answer: {describe_error(error)}", 1, moves_on=False) from error
        finally:
            _ATTEMPT.deadline = _ATTEMPT.max_bytes = None
        choices = getattr(answer, "choices", None)
        text = getattr(choices[0], "text", None) if isinstance(choices, list) and choices else None
        if not isinstance(text, str):
            raise _EndpointFailed(f"unexpected answer (no choices[0].text): {str(answer)[:300]!r}", 1, moves_on=False)
        token_ids = getattr(choices[0], "token_ids", None)  # vLLM's extra field, when the request asks for it
        token_ids = list(token_ids) if isinstance(token_ids, list) else []
        longer = too_long(text, getattr(answer, "usage", None), arguments["max_tokens"])
        if longer is None and len(token_ids) > arguments["max_tokens"]:
            longer = f"the answer holds {len(token_ids)} token ids, more than max_new_tokens={arguments['max_tokens']}"
        if longer is not None:
            raise _EndpointFailed(f"{longer}; its text is left out", 1, moves_on=False)
        return Completion(text, token_ids)

    # --- Engine interface -------------------------------------------------------------------------------------

    def generate(self, requests: Sequence[Request], max_new_tokens: int) -> list[Completion]:
        """All requests concurrently (bounded by `max_concurrency`), completions in request order; a failed request
        is a Completion with `error` set, never an exception."""
        pool = self._executor()
        futures = [pool.submit(self.complete_one, request, max_new_tokens) for request in requests]
        return [future.result() for future in futures]

    def open_stream(self, max_new_tokens: int) -> ServerRequestStream:
        """Request-level submission for `hf_ipt.synthesis.scheduling.run_continuous`: requests go to this engine's
        thread pool one by one.

        Example:
            >>> stream = engine.open_stream(400)  # doctest: +SKIP
        """
        return ServerRequestStream(self, max_new_tokens)

    def close(self) -> None:
        """Stop the worker threads and close the connections (both also end with the process); a later request
        opens new ones."""
        if self._pool is not None and self._pool_pid == os.getpid():
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None
        with self._setup_lock:
            clients, self._clients = (self._clients if self._clients_pid == os.getpid() else {}), {}
        if clients:
            next(iter(clients.values())).close()  # the endpoints' clients share one connection pool


class ServerRequestStream(RequestStream):
    """Requests submitted to the server engine's thread pool one by one, collected as they finish.

    Example:
        >>> stream = ServerRequestStream(engine, max_new_tokens=400)  # doctest: +SKIP
        >>> stream.submit(0, Request(prompt, ids)); stream.collect()  # doctest: +SKIP
        [(0, Completion(...))]
    """

    def __init__(self, engine: ServerEngine, max_new_tokens: int) -> None:
        self.engine = engine
        self.max_new_tokens = max_new_tokens
        self.capacity = engine.config.max_concurrency
        self._pool = engine._executor()
        self._futures: dict[Future, int] = {}

    def has_room(self, request: Request, continuation: bool = False, outlook: ChainOutlook = NO_OUTLOOK) -> bool:
        # a server's KV cache is its own business: only the concurrency bound applies
        return len(self._futures) < self.capacity

    def submit(self, key: int, request: Request, outlook: ChainOutlook = NO_OUTLOOK) -> Completion | None:
        self._futures[self._pool.submit(self.engine.complete_one, request, self.max_new_tokens)] = key
        return None

    def collect(self) -> list[tuple[int, Completion]]:
        if not self._futures:
            return []
        done, _ = wait(list(self._futures), return_when=FIRST_COMPLETED)
        return [(self._futures.pop(future), future.result()) for future in done]

    def close(self) -> list[int]:
        keys = []
        for future, key in list(self._futures.items()):
            future.cancel()  # a request already being sent finishes in the background; its answer is dropped
            keys.append(key)
        self._futures.clear()
        return keys


def _server_message(payload: bytes) -> str:
    """The error message of a server's JSON error body (OpenAI style or TGI style), else the start of the body."""
    try:
        data = json.loads(payload)
    except ValueError:
        return payload[:500].decode("utf-8", "replace")
    if isinstance(data, dict):
        error = data.get("error", data.get("message", data.get("detail")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error is not None:
            return str(error)[:500]
    return str(data)[:500]


def _attempts_made(request: Any) -> int:
    """How many attempts the openai client made, from the retry count it sends with each request."""
    try:
        return int(request.headers.get("x-stainless-retry-count", 0)) + 1
    except (AttributeError, TypeError, ValueError):
        return 1


def _connection_failure(error: BaseException) -> str:
    """A connection error with its root cause: the client's own message is only 'Connection error.'.

    Example:
        >>> try:
        ...     raise RuntimeError("Connection error.") from ConnectionRefusedError(111, "Connection refused")
        ... except RuntimeError as error:
        ...     _connection_failure(error)
        'RuntimeError: Connection error. (ConnectionRefusedError: [Errno 111] Connection refused)'
    """
    root, seen = error, {id(error)}
    while (cause := root.__cause__ or root.__context__) is not None and id(cause) not in seen:
        root = cause
        seen.add(id(root))
    if root is error:
        return describe_error(error)
    return f"{describe_error(error)} ({describe_error(root)})"
