"""An engine that sends raw completion requests to OpenAI-compatible servers: `vllm serve`, SGLang, TGI.

Each prompt goes out as one `POST {endpoint}/v1/completions` request (the completions API, not chat: the synthesizer's
prompt format is raw text), greedy, at most `max_new_tokens` tokens. By default the prompt is sent as its exact token
ids (vLLM and SGLang accept a list of ids as `prompt`), so the server adds no second BOS. Requests run concurrently
(at most `max_concurrency` at once, in total), spread over several endpoints (the one with the fewest requests in
flight gets the next; an endpoint that fails is rested for a moment), retried with exponential back-off on connection
failures, timeouts and 408/429/5xx answers, each retry preferring another endpoint. A request that still fails, or
that the server rejects (e.g. a 400 for a prompt that is too long), becomes a per-row error; the other rows of the
batch are unaffected.

With `scheduling="continuous"` (the default), each chain's next round is sent as soon as its previous round answered
(see `hf_ipt.synthesis.scheduling`), which also lets the server's prefix cache reuse the previous prompt.

Example:
    >>> synth = Synthesizer(model="instruction-pretrain/instruction-synthesizer", engine="server",
    ...                     engine_kwargs={"endpoints": ["http://gpu-1:8000", "http://gpu-2:8000"]})  # doctest: +SKIP
    >>> ds.map(synth, batched=True, batch_size=synth.config.batch_size)  # doctest: +SKIP

The tokenizer hf-ipt fits prompts with (`model`, or `tokenizer`) must be the served model's.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from hf_ipt.engines.base import NO_OUTLOOK, ChainOutlook, Completion, Engine, Request, RequestStream, describe_error
from hf_ipt.markers import BOS
from hf_ipt.validation import check_fields

logger = logging.getLogger(__name__)

PROMPT_FORMATS = ("token_ids", "text")
# answers worth trying again: the request may succeed later or on another endpoint
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


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
        default=64, metadata={"help": "Most requests in flight at once, over all endpoints together.", "min": 1}
    )
    max_retries: int = field(
        default=4,
        metadata={"help": "Further attempts after a failed one (connection error, timeout, 408/429/5xx).", "min": 0},
    )
    backoff_seconds: float = field(
        default=0.5, metadata={"help": "Wait before the first retry; doubles with each retry (with jitter).", "min": 0}
    )
    max_backoff_seconds: float = field(default=30.0, metadata={"help": "Longest wait between two attempts.", "min": 0})
    timeout_seconds: float = field(
        default=600.0, metadata={"help": "Socket timeout of one attempt (connect, send, and each read).", "gt": 0}
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


class _AttemptFailed(Exception):
    """One attempt failed; `retryable` says whether another attempt may succeed."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class _Endpoint:
    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port
        self.path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.in_flight = 0
        self.resting_until = 0.0  # monotonic time before which new requests avoid this endpoint


class ServerEngine(Engine):
    """Completions from OpenAI-compatible servers, with bounded concurrency, retries and per-row errors.

    Constructed by `make_engine("server", model=..., engine_kwargs={...})`; `engine_kwargs` are the fields of
    `ServerEngineConfig` (`endpoints` is required).

    Example:
        >>> engine = ServerEngine("org/llm", engine_kwargs={"endpoints": ["http://127.0.0.1:8000"]})  # doctest: +SKIP
        >>> engine.generate_safely([Request(prompt, ids)], max_new_tokens=400)[0].text  # doctest: +SKIP
    """

    name = "server"

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
        self.model = self.config.served_model_name or model
        self._tokenizer_name, self._revision = tokenizer or model, (None if tokenizer else revision)
        self._strip_bos: bool | None = None  # text format: decided on the first request
        self.api_key = self.config.api_key or os.environ.get("OPENAI_API_KEY")
        self._endpoints = [_Endpoint(url) for url in self.config.endpoints]
        self._lock = threading.Lock()
        self._setup_lock = threading.Lock()
        self._turn = 0  # round-robin among equally loaded endpoints
        self._local = threading.local()
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
            self._local = threading.local()
            for endpoint in self._endpoints:
                endpoint.in_flight = 0
        return self._pool

    # --- one request ------------------------------------------------------------------------------------------

    def _body(self, request: Request, max_new_tokens: int) -> bytes:
        if self.config.prompt_format == "token_ids":
            prompt: Any = list(request.token_ids)
        else:
            # a server whose tokenizer adds a BOS gets the prompt without the literal one: exactly one BOS either way
            strip = self._strip_bos and request.prompt.startswith(BOS)
            prompt = request.prompt[len(BOS) :] if strip else request.prompt
        body = {
            "temperature": 0.0,
            **self.config.extra_body,
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_new_tokens,
            "stream": False,
        }
        return json.dumps(body).encode("utf-8")

    def _server_adds_bos(self, request: Request) -> bool:
        """Whether to leave out the literal BOS in the text format: the variant the server's tokenization
        (`add_special_tokens=True`, like the completions API) turns into exactly the ids hf-ipt fitted."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_name, revision=self._revision)
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
        """One request with retries; never raises: a final failure is a Completion with `error` set."""
        try:
            if self.config.prompt_format == "text" and self._strip_bos is None:
                with self._setup_lock:  # the first text-format request decides the BOS handling, once
                    if self._strip_bos is None:
                        self._strip_bos = self._server_adds_bos(request)
            body = self._body(request, max_new_tokens)
        except Exception as error:  # noqa: BLE001 - a request that cannot be encoded is a per-row error
            return Completion("", error=describe_error(error))
        failures: list[str] = []
        tried: set[str] = set()
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                delay = min(self.config.max_backoff_seconds, self.config.backoff_seconds * 2 ** (attempt - 1))
                time.sleep(delay * random.uniform(0.5, 1.0))  # jitter: retries of many rows do not arrive together
            endpoint = self._acquire(avoid=tried)
            try:
                return self._attempt(endpoint, body)
            except _AttemptFailed as failure:
                failures.append(f"{endpoint.url}: {failure}")
                tried.add(endpoint.url)
                logger.debug("attempt %d at %s failed: %s", attempt + 1, endpoint.url, failure)
                if not failure.retryable:
                    break
                self._rest(endpoint)
            finally:
                self._release(endpoint)
        else:
            logger.warning("a request failed %d times; its row gets an error: %s", len(failures), failures[-1])
        summary = failures[-1] if len(failures) == 1 else f"{len(failures)} attempts failed; last: {failures[-1]}"
        return Completion("", error=summary[:2000])

    def _acquire(self, avoid: set[str]) -> _Endpoint:
        now = time.monotonic()
        with self._lock:
            self._turn += 1
            candidates = [e for e in self._endpoints if e.resting_until <= now] or self._endpoints
            if len(candidates) > 1:
                candidates = [e for e in candidates if e.url not in avoid] or candidates
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
            endpoint.resting_until = time.monotonic() + max(self.config.backoff_seconds, 0.05)

    def _connection(self, endpoint: _Endpoint) -> http.client.HTTPConnection:
        connections = self._local.__dict__.setdefault("connections", {})
        connection = connections.get(endpoint.url)
        if connection is None:
            cls = http.client.HTTPSConnection if endpoint.https else http.client.HTTPConnection
            connection = cls(endpoint.host, endpoint.port, timeout=self.config.timeout_seconds)
            connections[endpoint.url] = connection
        return connection

    def _drop_connection(self, endpoint: _Endpoint) -> None:
        connection = self._local.__dict__.get("connections", {}).pop(endpoint.url, None)
        if connection is not None:
            connection.close()

    def _attempt(self, endpoint: _Endpoint, body: bytes) -> Completion:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            connection = self._connection(endpoint)
            connection.request("POST", endpoint.path, body=body, headers=headers)
            response = connection.getresponse()
            status, payload = response.status, response.read()
        except (OSError, http.client.HTTPException) as error:  # refused, reset, timed out, cut mid-answer
            self._drop_connection(endpoint)
            kind = "timed out" if isinstance(error, TimeoutError) else type(error).__name__
            raise _AttemptFailed(f"{kind}: {error}" if str(error) else kind, retryable=True) from error
        if response.will_close:
            self._drop_connection(endpoint)
        if status != 200:
            raise _AttemptFailed(f"HTTP {status}: {_server_message(payload)}", retryable=status in RETRYABLE_STATUS)
        try:
            answer = json.loads(payload)
            choice = answer["choices"][0]
            text = choice["text"]
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise _AttemptFailed(f"unexpected answer ({error!r}): {payload[:300]!r}", retryable=False) from error
        if not isinstance(text, str):
            raise _AttemptFailed(f"unexpected answer: choices[0].text is {type(text).__name__}", retryable=False)
        token_ids = choice.get("token_ids") or []
        return Completion(text, list(token_ids) if isinstance(token_ids, list) else [])

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
        """Stop the worker threads (they also stop with the process)."""
        if self._pool is not None and self._pool_pid == os.getpid():
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None


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
