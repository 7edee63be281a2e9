"""Synthesis overhead benchmark (issue 2). Prints figures measured side by side in one run; not a test.

(a) wall time of `Dataset.map(Synthesizer)` / a bare engine call on the identical prompts, same engine, same run
    (target <= 1.03);
(b) throughput of everything that is not the engine (reading the batch, prompt building, token-accurate fitting,
    chain bookkeeping, parsing, building the output columns) in raw text tokens per second on one core
    (target >= 300,000), measured with an engine that answers instantly with realistic outputs.

Usage:
    python bench/bench_synthesis.py [--rows 1024] [--engine vllm|transformers] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")


def realistic_output(text: str) -> str:
    """What the real synthesizer writes: a few pairs about the text, one multiple-choice, one chain-of-thought."""
    words = [w for w in text.split() if len(w) > 4][:12] or ["it"]
    pairs = [
        f"<QUE> What does the passage say about {words[0]}? <ANS> It explains how {words[-1]} relates to "
        f"{words[len(words) // 2]} and why that matters here. </END>",
        f"<QUE> Which term is discussed?\nOptions:\n- {words[0]}\n- {words[-1]}\n- neither <ANS> {words[0]} </END>",
        f"<QUE> Is {words[-1]} required? Let's think step by step. <ANS> The text names {words[-1]} as a part of the "
        f"process.\nTherefore, the answer is yes </END>",
        f"<QUE> Summarize the passage in one sentence. <ANS> {' '.join(words[:8])}. </END>",
    ]
    return "\n\n".join(pairs)


def instant_engine(prompts: list[str]) -> list[str]:
    return [realistic_output(p.rsplit("<CON> ", 1)[1]) for p in prompts]


def map_vs_bare(
    engine, model: str, texts: list[str], max_model_len: int, max_new_tokens: int, repeats: int, rounds_list=(1, 3)
) -> dict[int, tuple[float, float]]:
    """(a): `Dataset.map(Synthesizer)` against bare engine calls on the identical requests, same engine, alternated;
    prints one line per M and returns {M: (bare seconds, map seconds)} (medians). Also used by bench_speculative."""
    from datasets import Dataset

    from hf_ipt import Synthesizer
    from hf_ipt.engines import Engine

    class Recorder(Engine):
        name = "recorder"

        def __init__(self):
            self.calls = []

        def generate(self, requests, max_new_tokens):
            self.calls.append(list(requests))
            return engine.generate(requests, max_new_tokens)

    results = {}
    for rounds in rounds_list:
        recorder = Recorder()
        # one engine call per round on both sides: the bare calls replay exactly what the map sends
        common = dict(
            model=model,
            rounds=rounds,
            max_model_len=max_model_len,
            max_new_tokens=max_new_tokens,
            batch_size=len(texts),
            scheduling="rounds",
        )
        Synthesizer(engine=recorder, **common)({"text": texts})  # the exact requests, round by round; warms up
        synth = Synthesizer(engine=engine, **common)
        ds = Dataset.from_dict({"text": texts})
        map_times, bare_times = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            for call in recorder.calls:  # the same engine calls, with nothing around them
                engine.generate(call, max_new_tokens)
            bare_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            ds.map(synth, batched=True, batch_size=len(texts), load_from_cache_file=False, keep_in_memory=True)
            map_times.append(time.perf_counter() - start)
        bare, mapped = statistics.median(bare_times), statistics.median(map_times)
        results[rounds] = (bare, mapped)
        print(
            f"(a) M={rounds}: bare engine {bare:.3f} s ({len(recorder.calls)} calls) | Dataset.map {mapped:.3f} s "
            f"| ratio {mapped / bare:.3f}  (target <= 1.03)",
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--engine", default="vllm", choices=["vllm", "transformers"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument(
        "--natural-eos",
        action="store_true",
        help="let the tiny model stop at its EOS (~25 tokens) instead of writing exactly --max-new-tokens tokens like "
        "the real synthesizer's long answers; makes the engine share of the time unrealistically small",
    )
    parser.add_argument("--cpu-rows", type=int, default=20000, help="rows for the non-engine throughput (b)")
    args = parser.parse_args()

    from datasets import disable_progress_bars

    from hf_ipt import Synthesizer
    from hf_ipt.engines import make_engine
    from hf_ipt.testing import build_tiny_synthesizer, corpus_paragraphs

    disable_progress_bars()
    model = build_tiny_synthesizer(os.path.join(tempfile.gettempdir(), "hf-ipt-bench-tiny"))
    paragraphs = corpus_paragraphs()
    texts = (paragraphs * (args.rows // len(paragraphs) + 1))[: args.rows]
    max_model_len = 1024
    print(
        f"machine: {os.cpu_count()} cores | tiny Mistral model, engine {args.engine} | {len(texts)} real texts "
        f"(pydoc_data.topics) | {'up to' if args.natural_eos else 'exactly'} {args.max_new_tokens} new tokens"
    )

    # ---------------- (a) map overhead over a bare engine call ----------------
    engine = make_engine(args.engine, model=model, max_model_len=max_model_len)
    if not args.natural_eos and args.engine == "vllm":
        # a fixed output length, as the real synthesizer writes several hundred tokens per text; same engine object
        # for the bare calls and the map, so both do identical engine work
        from vllm import SamplingParams

        engine.sampling_params = lambda n: SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)

    map_vs_bare(engine, model, texts, max_model_len, args.max_new_tokens, args.repeats)

    # ---------------- (b) everything but the engine, one core ----------------
    # (a) leaves the tokenizer its default threads, as a user's map has them; (b) pins the process to one core
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    cpu_texts = (paragraphs * (args.cpu_rows // len(paragraphs) + 1))[: args.cpu_rows]
    raw_tokens = sum(len(ids) for ids in tokenizer(cpu_texts, add_special_tokens=False)["input_ids"])
    for rounds in (1, 3):
        synth = Synthesizer(
            model=model, rounds=rounds, max_model_len=4096, max_new_tokens=400, engine=instant_engine, batch_size=1024
        )
        synth({"text": cpu_texts[:64]})  # load the tokenizer outside the timing
        engine_time = 0.0

        def timed_engine(prompts, _inner=instant_engine):
            nonlocal engine_time
            start = time.perf_counter()
            out = _inner(prompts)
            engine_time += time.perf_counter() - start
            return out

        synth.custom_engine = timed_engine
        best = None
        for _ in range(args.repeats):
            engine_time = 0.0
            start = time.perf_counter()
            for i in range(0, len(cpu_texts), 1024):
                synth({"text": cpu_texts[i : i + 1024]})
            elapsed = time.perf_counter() - start - engine_time
            best = elapsed if best is None else min(best, elapsed)
        print(
            f"(b) M={rounds}: {raw_tokens} raw tokens in {best:.3f} s of non-engine work on one core = "
            f"{raw_tokens / best:,.0f} raw tokens/s  (target >= 300,000)"
        )


if __name__ == "__main__":
    sys.exit(main())
