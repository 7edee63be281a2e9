"""Chain-aware continuous scheduling: each chain's next round is submitted the moment its previous round finished.

The round-by-round driver (`hf_ipt.synthesis.job.run_round_by_round`) makes M blocking engine calls per batch: round r
of every chain waits for the slowest request of round r-1, and by the time round r runs, the KV cache of round r-1's
prompts (which are exactly the beginning of round r's prompts) has usually been evicted by the rest of the round.

`run_continuous` drives the same `BatchJob` through an engine's request-level interface (a `RequestStream`): it
starts chains while the stream has room for them (for vLLM: room in the KV cache for each chain's largest round), and
as soon as a request finishes it parses the answer and submits the chain's next entry. The engine stays full across
rounds, no request waits for another chain, and the new prompt arrives while the previous one's KV blocks are still in
vLLM's prefix cache (automatic prefix caching reuses them instead of prefilling the demonstrations again). A
`BatchJob`'s results depend only on each chain's own history, so the rows are identical
to the round-by-round driver's, whatever order requests finish in.

Each engine opens its own stream (`Engine.open_stream`):
- `VLLMEngine` (vLLM's offline `LLM`): requests go to `LLM.llm_engine.add_request`, and `LLMEngine.step()` is run
  until one of them finishes. Room: the KV cache (see `hf_ipt.engines.vllm.VLLMRequestStream`) and `max_num_seqs`.
- `ServerEngine` (`hf_ipt.engines.server`): concurrent HTTP requests to OpenAI-compatible servers.
Engines whose `open_stream` returns None (transformers, callables) fall back to round-by-round, with identical results.

Example:
    >>> synth = Synthesizer(model="instruction-pretrain/instruction-synthesizer", rounds=3,
    ...                     scheduling="continuous")  # doctest: +SKIP
    >>> ds.map(synth, batched=True, batch_size=synth.config.batch_size)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

from hf_ipt.engines import ChainOutlook, Engine, Request
from hf_ipt.engines.base import describe_error
from hf_ipt.synthesis.job import BatchJob, run_round_by_round

logger = logging.getLogger(__name__)

SCHEDULING_MODES = ("continuous", "rounds")


@dataclass
class ScheduleStats:
    """What a driver did with one batch (returned by `run_scheduled`; benches and tests read it).

    Example:
        >>> ScheduleStats("continuous", requests=3, prompt_tokens=120).mode
        'continuous'
    """

    mode: str  # the driver that ran: "continuous" or "rounds" (also after a fallback)
    requests: int = 0  # requests that reached the engine (refused ones included)
    prompt_tokens: int = 0  # their prompt tokens
    cached_prompt_tokens: int | None = None  # of those, served from the engine's prefix cache (None: not reported)
    max_in_flight: int = 0  # most requests the driver had in the engine at once


def run_continuous(job: BatchJob, engine: Engine, max_new_tokens: int) -> ScheduleStats:
    """Drive `job` chain by chain: a chain's next entry is submitted as soon as its previous one finished.

    A finished request's chain continues first; a new chain starts only when no continuation is waiting and the
    engine has room (`RequestStream.has_room`). Falls back to `run_round_by_round` for engines without request-level
    submission (`Engine.open_stream` returns None). If the engine fails while stepping, the requests in flight are
    retried through `engine.generate_safely` (which isolates a failing request as a per-row error) and the rest of the
    batch runs round by round.

    Example:
        >>> stats = run_continuous(BatchJob(texts, 3, fitter), make_engine("vllm", model=path), 400)  # doctest: +SKIP
        >>> stats.mode, stats.max_in_flight  # doctest: +SKIP
        ('continuous', 64)
    """
    stream = engine.open_stream(max_new_tokens)
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
                    describe_error(error),
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
    """Run `job` with the driver named by `scheduling` ('continuous' or 'rounds'); the job then holds the batch's
    synthesis columns (`BatchJob.columns`).

    Example:
        >>> run_scheduled(job, engine, max_new_tokens=400, scheduling="rounds").mode  # doctest: +SKIP
        'rounds'
    """
    if scheduling == "continuous":
        return run_continuous(job, engine, max_new_tokens)
    if scheduling == "rounds":
        return _run_rounds(job, engine, max_new_tokens)
    raise ValueError(f"scheduling must be one of {SCHEDULING_MODES}, got {scheduling!r}")
