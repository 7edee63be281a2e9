"""Chain-aware continuous scheduling: each chain's next round is submitted the moment its previous round finished.

The round-by-round driver (`hf_ipt.synthesize.run_round_by_round`) makes M blocking engine calls per batch: round r
of every chain waits for the slowest request of round r-1, and by the time round r runs, the KV cache of round r-1's
prompts (which are exactly the beginning of round r's prompts) has usually been evicted by the rest of the round.

`run_continuous` drives the same `BatchJob` through an engine's request-level interface (a `RequestStream`): it
starts chains while the stream has room for them (for vLLM: room in the KV cache for each chain's largest round), and
as soon as a request finishes it parses the answer and submits the chain's next entry. The engine stays full across
rounds, no request waits for another chain, and the new prompt arrives while the previous one's KV blocks are still in
vLLM's prefix cache (automatic prefix caching reuses them instead of prefilling the demonstrations again). A
`BatchJob`'s results depend only on each chain's own history, so the rows are identical
to the round-by-round driver's, whatever order requests finish in.

Engines with request-level submission:
- `VLLMEngine` (vLLM's offline `LLM`): requests go to `LLM.llm_engine.add_request`, and `LLMEngine.step()` is run
  until one of them finishes. Room: the KV cache (see `VLLMRequestStream`) and the engine's `max_num_seqs`.
- any engine with an `open_stream(max_new_tokens)` method returning a `RequestStream`, such as
  `hf_ipt.server_engine.ServerEngine` (concurrent HTTP requests to OpenAI-compatible servers).
Other engines (transformers, callables, wrappers) fall back to round-by-round, with identical results.

Example:
    >>> synth = Synthesizer(model="instruction-pretrain/instruction-synthesizer", rounds=3,
    ...                     scheduling="continuous")  # doctest: +SKIP
    >>> ds.map(synth, batched=True, batch_size=synth.config.batch_size)  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import logging
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator
from copy import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from hf_ipt.engines import Completion, Engine, Request, VLLMEngine

if TYPE_CHECKING:
    from hf_ipt.synthesize import BatchJob

logger = logging.getLogger(__name__)

SCHEDULING_MODES = ("continuous", "rounds")
# how many times vLLM's KV cache the projected peaks of the chains in flight may add up to when a new chain starts.
# Above 1 because chains in flight are at different rounds and rarely peak together; measured on the scaling bench
# (bench/bench_scaling.py, M = 3, a cache of a quarter round): 0.9 leaves the cache half empty (more engine steps),
# 1.3 keeps every reusable prefix cached, 2.0 overfills it and round r-1's blocks get evicted before round r runs.
DEFAULT_KV_RESERVE_RATIO = 1.3


class ChainOutlook(NamedTuple):
    """What is left of a chain after the request at hand: its later entries and their texts' zero-shot tokens.

    A scheduler uses it to reserve room for the whole chain when the chain starts: each later round's prompt is the
    previous prompt plus its answer plus the next text.
    """

    later_rounds: int = 0
    later_text_tokens: int = 0


NO_OUTLOOK = ChainOutlook()  # nothing after this request (or a stream that does not look ahead)


@dataclass
class ScheduleStats:
    """What a driver did with one batch."""

    mode: str  # the driver that ran: "continuous" or "rounds" (also after a fallback)
    requests: int = 0  # requests that reached the engine (refused ones included)
    prompt_tokens: int = 0  # their prompt tokens
    cached_prompt_tokens: int | None = None  # of those, served from the engine's prefix cache (None: not reported)
    max_in_flight: int = 0  # most requests the driver had in the engine at once


class RequestStream(ABC):
    """An engine's request-level interface: submit requests one by one, collect completions as they finish.

    `key` is an opaque integer the caller uses to match completions to requests (the row index).
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


class VLLMRequestStream(RequestStream):
    """vLLM's offline engine, one request at a time: `LLMEngine.add_request` with the exact token ids, then
    `LLMEngine.step()` until a request finishes. The sampling parameters are the ones `VLLMEngine.generate` uses, so
    each request's completion is the one a blocking `generate` call gives.

    Admission: vLLM would accept any number of requests and run them first come, first served; but a chain's next
    round queued behind new chains finds the previous round's KV blocks evicted by the time it runs, and its
    demonstrations are prefilled again. So a new chain starts only while the projected peaks of the chains in flight
    add up to at most `kv_reserve_ratio` times the KV cache (and fewer than `max_num_seqs` requests are in flight).
    A chain's peak is its last round: the current prompt, plus each later text's zero-shot tokens (`ChainOutlook`),
    plus one answer per round (the mean answer length seen so far, `max_new_tokens` until 8 answers were seen),
    capped at `max_model_len`. A continuation is always accepted at once: its room was reserved when its chain
    started, it is scheduled at the next engine step and reads the previous round's prompt and answer from the
    prefix cache.

    Example:
        >>> stream = VLLMRequestStream(engine.llm, engine.sampling_params(400))  # doctest: +SKIP
        >>> stream.submit(0, Request(prompt, ids)); stream.collect()  # doctest: +SKIP
        [(0, Completion(text='<QUE> ...', ...))]
    """

    def __init__(
        self,
        llm: Any,
        sampling_params: Any,
        *,
        max_num_seqs: int | None = None,
        kv_reserve_ratio: float | None = None,
    ) -> None:
        if kv_reserve_ratio is None:
            kv_reserve_ratio = DEFAULT_KV_RESERVE_RATIO
        if not 0 < kv_reserve_ratio <= 4:
            raise ValueError(f"kv_reserve_ratio must be in (0, 4], got {kv_reserve_ratio!r}")
        self.kv_reserve_ratio = kv_reserve_ratio
        self.engine = llm.llm_engine
        params = copy(sampling_params)
        try:
            from vllm.sampling_params import RequestOutputKind

            # only the finished output: no partial outputs streamed back at every step
            params.output_kind = RequestOutputKind.FINAL_ONLY
        except ImportError:  # older vLLM without output kinds: partial outputs are skipped below
            pass
        self.params = params
        self.max_new_tokens = int(getattr(params, "max_tokens", None) or 0)
        config = getattr(self.engine, "vllm_config", None)
        scheduler = getattr(config, "scheduler_config", None)
        cache = getattr(config, "cache_config", None)
        self.max_num_seqs = max(1, int(max_num_seqs or getattr(scheduler, "max_num_seqs", 0) or 256))
        blocks, block_size = getattr(cache, "num_gpu_blocks", None), getattr(cache, "block_size", None)
        # None: the size is unknown, only max_num_seqs limits admission
        self.kv_cache_tokens = int(blocks) * int(block_size) if blocks and block_size else None
        self.block_size = int(block_size or 1)
        # ids of our own requests: unique per stream, so they never clash with LLM.generate's counter
        self._prefix = f"hf-ipt-{uuid.uuid4().hex[:12]}-"
        self._ids: Iterator[int] = itertools.count()
        model = getattr(config, "model_config", None)
        self.max_model_len = int(getattr(model, "max_model_len", 0) or 0) or None
        # request id -> (key, projected peak of its chain in tokens)
        self._in_flight: dict[str, tuple[int, int]] = {}
        self._reserved_tokens = 0
        self._output_tokens = 0
        self._finished = 0
        self.cached_prompt_tokens = 0

    def _expected_output(self) -> int:
        if self._finished < 8:
            return self.max_new_tokens
        return min(self.max_new_tokens, self._output_tokens // self._finished + 1)

    def has_room(self, request: Request, continuation: bool = False, outlook: ChainOutlook = NO_OUTLOOK) -> bool:
        if continuation:
            # its room was reserved when the chain started; and were the cache full after all, vLLM's queue is the
            # best place to wait: the prefix blocks it needs were freed last and are evicted last
            return True
        if len(self._in_flight) >= self.max_num_seqs:
            return False
        if self.kv_cache_tokens is None:
            return True
        return self._reserved_tokens + self._peak(request, outlook) <= self.kv_cache_tokens * self.kv_reserve_ratio

    def _peak(self, request: Request, outlook: ChainOutlook) -> int:
        """Projected tokens of the chain's last round (prompt and answer), in whole blocks."""
        expected = self._expected_output()
        tokens = len(request.token_ids) + outlook.later_text_tokens + (outlook.later_rounds + 1) * expected
        if self.max_model_len:
            tokens = min(tokens, self.max_model_len)
        return self._blocks(tokens)

    def _blocks(self, tokens: int) -> int:
        """Tokens rounded up to whole KV blocks, as vLLM allocates them."""
        return -(-tokens // self.block_size) * self.block_size

    def submit(self, key: int, request: Request, outlook: ChainOutlook = NO_OUTLOOK) -> Completion | None:
        request_id = f"{self._prefix}{next(self._ids)}"
        try:
            self.engine.add_request(request_id, {"prompt_token_ids": list(request.token_ids)}, self.params)
        except Exception as error:  # noqa: BLE001 - a refused request becomes a per-row error
            return Completion("", error=_describe(error))
        peak = self._peak(request, outlook)
        self._in_flight[request_id] = (key, peak)
        self._reserved_tokens += peak
        return None

    def collect(self) -> list[tuple[int, Completion]]:
        finished: list[tuple[int, Completion]] = []
        while self._in_flight and not finished:
            if not self.engine.has_unfinished_requests():
                # cannot happen with a healthy engine; never wait forever for requests it no longer knows
                lost = [key for key, _ in self._in_flight.values()]
                self._forget_all()
                return [(key, Completion("", error="the vLLM engine dropped the request")) for key in lost]
            for output in self.engine.step():
                entry = self._in_flight.get(output.request_id)
                if entry is None or not output.finished:
                    continue
                del self._in_flight[output.request_id]
                self._reserved_tokens -= entry[1]
                self.cached_prompt_tokens += getattr(output, "num_cached_tokens", None) or 0
                completion = _completion_of(output)
                self._finished += 1
                self._output_tokens += len(completion.token_ids)
                finished.append((entry[0], completion))
        return finished

    def _forget_all(self) -> None:
        self._in_flight.clear()
        self._reserved_tokens = 0

    def close(self) -> list[int]:
        keys = [key for key, _ in self._in_flight.values()]
        if self._in_flight:
            try:
                self.engine.abort_request(list(self._in_flight))
            except Exception as error:  # noqa: BLE001 - closing after a failure must not hide the failure
                logger.warning("could not abort %d vLLM requests: %s", len(self._in_flight), _describe(error))
            self._forget_all()
        return keys


def _completion_of(output: Any) -> Completion:
    sample = output.outputs[0]
    if getattr(sample, "finish_reason", None) in ("abort", "error"):
        return Completion("", error=f"vLLM finished the request with finish_reason={sample.finish_reason!r}")
    return Completion(sample.text, list(sample.token_ids))


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:2000]


def open_stream(engine: Engine, max_new_tokens: int) -> RequestStream | None:
    """The engine's request-level interface, or None when it has none (the caller then runs round by round)."""
    opener = getattr(engine, "open_stream", None)
    if callable(opener):
        return opener(max_new_tokens)
    if isinstance(engine, VLLMEngine):
        return VLLMRequestStream(engine.llm, engine.sampling_params(max_new_tokens))
    return None


def run_continuous(job: BatchJob, engine: Engine, max_new_tokens: int) -> ScheduleStats:
    """Drive `job` chain by chain: a chain's next entry is submitted as soon as its previous one finished.

    A finished request's chain continues first; a new chain starts only when no continuation is waiting and the
    engine has room (`RequestStream.has_room`). Falls back to `run_round_by_round` for engines without request-level
    submission. If the engine fails while stepping, the requests in flight are retried through
    `engine.generate_safely` (which isolates a failing request as a per-row error) and the rest of the batch runs
    round by round.
    """
    stream = open_stream(engine, max_new_tokens)
    if stream is None:
        return _run_rounds(job, engine, max_new_tokens)

    stats = ScheduleStats("continuous")
    sent: dict[int, Request] = {}  # row -> request, for the requests in flight
    waiting: deque[tuple[int, Request]] = deque()  # next entries of chains whose previous entry finished

    def submit(row: int, request: Request) -> None:
        stats.requests += 1
        stats.prompt_tokens += len(request.token_ids)
        refused = stream.submit(row, request, job.outlook(job.chain_of[row]))
        if refused is None:
            sent[row] = request
            return
        job.complete([(row, refused)])  # a refused entry ends like an engine error; the chain goes on
        follow_up = job.next_request(job.chain_of[row])
        if follow_up is not None:
            waiting.appendleft(follow_up)

    def outlook(item: tuple[int, Request]) -> ChainOutlook:
        return job.outlook(job.chain_of[item[0]])

    unstarted = iter(range(len(job.layout)))
    parked: tuple[int, Request] | None = None  # a new chain's first entry, taken from the job but not yet admitted
    try:
        while True:
            while waiting and (not sent or stream.has_room(waiting[0][1], True, outlook(waiting[0]))):
                submit(*waiting.popleft())
            while not waiting:
                if parked is None:
                    chain = next(unstarted, None)
                    if chain is None:
                        break
                    parked = job.next_request(chain)
                    if parked is None:
                        continue
                if sent and not stream.has_room(parked[1], outlook=outlook(parked)):
                    break  # the new chain waits (as a new chain) until requests in flight finish
                submit(*parked)
                parked = None
            stats.max_in_flight = max(stats.max_in_flight, len(sent))
            if not sent:
                if waiting or parked is not None:
                    continue
                break
            try:
                finished = stream.collect()
            except Exception as error:  # noqa: BLE001 - an engine failure must not lose the batch
                logger.warning(
                    "%s engine failed while stepping (%s); retrying the %d requests in flight and running the rest "
                    "of the batch round by round",
                    engine.name,
                    _describe(error),
                    len(sent),
                )
                stream.close()
                unsent = list(waiting) + ([parked] if parked is not None else [])
                parked = None
                pending = list(sent.items()) + unsent
                sent.clear()
                waiting.clear()
                completions = engine.generate_safely([request for _, request in pending], max_new_tokens)
                job.complete([(row, c) for (row, _), c in zip(pending, completions, strict=True)])
                rest = _run_rounds(job, engine, max_new_tokens)
                stats.mode = "rounds"
                stats.requests += rest.requests + len(unsent)
                stats.prompt_tokens += rest.prompt_tokens + sum(len(r.token_ids) for _, r in unsent)
                stats.cached_prompt_tokens = None
                return stats
            for row, _ in finished:
                sent.pop(row, None)
            job.complete(finished)
            for row, _ in finished:
                follow_up = job.next_request(job.chain_of[row])
                if follow_up is not None:
                    waiting.append(follow_up)
    finally:
        stream.close()
    stats.cached_prompt_tokens = stream.cached_prompt_tokens
    return stats


def _run_rounds(job: BatchJob, engine: Engine, max_new_tokens: int) -> ScheduleStats:
    from hf_ipt.synthesize import run_round_by_round

    before = set(job.sent_text)
    run_round_by_round(job, engine, max_new_tokens)
    rows = [row for row in job.sent_text if row not in before]
    return ScheduleStats(
        "rounds",
        requests=len(rows),
        prompt_tokens=sum(job.prompt_tokens[row] for row in rows),
        # the first round sends one request per chain in one engine call
        max_in_flight=min(len(job.layout), len(rows)),
    )


def run_scheduled(job: BatchJob, engine: Engine, max_new_tokens: int, scheduling: str) -> ScheduleStats:
    """Run `job` with the driver named by `scheduling` ('continuous' or 'rounds')."""
    if scheduling == "continuous":
        return run_continuous(job, engine, max_new_tokens)
    if scheduling == "rounds":
        return _run_rounds(job, engine, max_new_tokens)
    raise ValueError(f"scheduling must be one of {SCHEDULING_MODES}, got {scheduling!r}")
