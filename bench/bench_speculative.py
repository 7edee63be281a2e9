"""Speculative decoding (n-gram prompt lookup) on the synthesizer's own outputs, engine start, and map overhead (issue
16). Prints figures measured side by side in one run; not a test.

(1) engine start: hf-ipt's `VLLMEngine` against a bare `vllm.LLM()` with the same arguments, each in a fresh process,
    alternated: from process start to a ready engine (imports included), and the constructor alone (target <= 1.2x);
(2) copyable share: over the tiny model's outputs (greedy, M = 3, real texts), the share of output tokens that lie
    inside an n-gram also found in the prompt: an upper bound for what prompt lookup can draft, for any model;
(3) speculative vs plain: wall time of the same synthesis (continuous scheduler, fp32, the model's natural end of
    answer) for each setting swept (num_speculative_tokens, lookup window; M = 1, --sweep-repeats pairs) and the key
    setting at M = 3 (--repeats pairs), each speculative run next to a plain run on a second engine, with vLLM's
    acceptance statistics and a check that the rows are identical (target <= 0.8x where the copyable share allows);
(4) `Dataset.map(Synthesizer)` against a bare engine call on the same requests, M = 1 and M = 3
    (`bench_synthesis.map_vs_bare`, target <= 1.03).

Usage:
    nice python bench/bench_speculative.py [--rows 512] [--repeats 2] [--settings 2:2-4,4:2-4,8:2-4,4:1-3]
                                           [--key-settings 4:2-4] [--skip start,map]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)  # each engine sizes its own cache below
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MAX_MODEL_LEN = 1024
KV_BYTES = 512 << 20

# one engine start in a fresh process: prints "<seconds since process start> <seconds in the constructor>"
START_SCRIPT = """
import time; T0 = time.perf_counter()
import os, sys
which, model, kv = sys.argv[1], sys.argv[2], int(sys.argv[3])
if which in ("bare", "bare-frozen"):
    import gc
    from vllm import LLM
    t = time.perf_counter()
    if which == "bare-frozen":  # what VLLMEngine does: vLLM's start-up gc.collect() calls skip the imported objects
        gc.freeze()
    LLM(model=model, revision=None, tokenizer=model, max_model_len={max_len}, enforce_eager=True, seed=0,
        kv_cache_memory_bytes=kv, dtype="float32")
else:
    from hf_ipt.engines.vllm import VLLMEngine
    import vllm.entrypoints.llm  # imported by the first engine anyway; here before the constructor's clock starts
    t = time.perf_counter()
    VLLMEngine(model, max_model_len={max_len}, engine_kwargs={"kv_cache_memory_bytes": kv, "dtype": "float32"})
end = time.perf_counter()
print("START", end - T0, end - t, flush=True)
""".replace("{max_len}", str(MAX_MODEL_LEN))


def parse_settings(text: str) -> list[dict]:
    """'4:2-4' -> k = 4 draft tokens, prompt lookup from 2- to 4-grams."""
    settings = []
    for item in text.split(","):
        k, window = item.split(":")
        low, high = window.split("-")
        settings.append(
            {
                "method": "ngram",
                "num_speculative_tokens": int(k),
                "prompt_lookup_max": int(high),
                "prompt_lookup_min": int(low),
            }
        )
    return settings


def engine_start(model: str, repeats: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    variants = (("hf-ipt VLLMEngine", "hf"), ("bare vllm.LLM", "bare"), ("bare + gc.freeze()", "bare-frozen"))
    times: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in variants}
    for _ in range(repeats):
        for label, which in variants:
            out = subprocess.run(
                [sys.executable, "-c", START_SCRIPT, which, model, str(KV_BYTES)],
                capture_output=True,
                text=True,
                env=env,
            )
            if out.returncode:
                raise RuntimeError(f"the {which} engine did not start:\n{out.stderr[-3000:]}")
            line = [x for x in out.stdout.splitlines() if x.startswith("START")][-1].split()
            times[label].append((float(line[1]), float(line[2])))
    med = {label: tuple(statistics.median(t[i] for t in runs) for i in (0, 1)) for label, runs in times.items()}
    hf, bare = med["hf-ipt VLLMEngine"], med["bare vllm.LLM"]
    for label, (total, construct) in med.items():
        print(f"(1) {label:18s}: process start to ready {total:6.2f} s | constructor {construct:6.2f} s")
    print(
        f"(1) hf-ipt / bare: from process start {hf[0] / bare[0]:.2f} | constructor {hf[1] / bare[1]:.2f}  "
        f"(target <= 1.2; medians of {repeats} fresh processes each, alternated)",
        flush=True,
    )


def copyable_share(pairs: list[tuple[list[int], list[int]]], n: int) -> float:
    """Share of output tokens inside some n-gram of the output that also occurs in its prompt."""
    covered = total = 0
    for prompt, output in pairs:
        grams = {tuple(prompt[i : i + n]) for i in range(len(prompt) - n + 1)}
        marked = [False] * len(output)
        for i in range(len(output) - n + 1):
            if tuple(output[i : i + n]) in grams:
                marked[i : i + n] = [True] * n
        covered += sum(marked)
        total += len(output)
    return covered / total if total else 0.0


def synthesize(engine, model: str, texts: list[str], rounds: int, max_new_tokens: int) -> tuple[float, dict]:
    """One timed synthesis of `texts` (continuous scheduler, cold prefix cache); (seconds, output columns)."""
    from hf_ipt import Synthesizer

    synth = Synthesizer(
        model=model,
        rounds=rounds,
        max_model_len=MAX_MODEL_LEN,
        max_new_tokens=max_new_tokens,
        batch_size=len(texts),
        scheduling="continuous",
        engine=engine,
    )
    engine.llm.reset_prefix_cache()  # every run starts cold
    start = time.perf_counter()
    out = synth({"text": texts})
    return time.perf_counter() - start, out


def alternated_pairs(model: str, texts: list[str], setting: dict, rounds: int, repeats: int, max_new_tokens: int):
    """In a fresh process: a plain and a speculative engine, `repeats` plain/speculative pairs; returns (plain times,
    speculative times, rows identical, speculative counters of the timed runs)."""
    from hf_ipt.engines import VLLMEngine

    kwargs = {"dtype": "float32", "kv_cache_memory_bytes": KV_BYTES}
    plain = VLLMEngine(model, max_model_len=MAX_MODEL_LEN, engine_kwargs=kwargs)
    spec = VLLMEngine(model, max_model_len=MAX_MODEL_LEN, engine_kwargs={**kwargs, "speculative_config": setting})
    for engine in (plain, spec):
        synthesize(engine, model, texts[:16], rounds, max_new_tokens)  # warm-up
    before = spec.counters() or {}
    plain_times, spec_times, same = [], [], True
    for _ in range(repeats):
        seconds, rows_plain = synthesize(plain, model, texts, rounds, max_new_tokens)
        plain_times.append(seconds)
        seconds, rows_spec = synthesize(spec, model, texts, rounds, max_new_tokens)
        spec_times.append(seconds)
        same = same and rows_spec == rows_plain
    after = spec.counters() or {}
    return plain_times, spec_times, same, {k: after.get(k, 0) - before.get(k, 0) for k in after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="alternated plain/speculative runs, key comparisons")
    parser.add_argument("--settings", default="2:2-4,4:2-4,8:2-4,4:1-3", help="swept, k:min-max, comma-separated")
    parser.add_argument("--sweep-rounds", type=int, default=1, help="M of the sweep")
    parser.add_argument("--sweep-repeats", type=int, default=2, help="alternated pairs per swept setting")
    parser.add_argument("--key-settings", default="4:2-4", help="compared at --rounds, --repeats times, alternated")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--start-repeats", type=int, default=2)
    parser.add_argument("--skip", default="", help="parts to skip, e.g. 'start,map'")
    args = parser.parse_args()
    skip = set(args.skip.split(","))

    from datasets import disable_progress_bars

    from hf_ipt import Synthesizer
    from hf_ipt.engines import Engine, VLLMEngine
    from hf_ipt.synthesis.report import speculative_stats
    from hf_ipt.testing import build_tiny_synthesizer, corpus_paragraphs

    disable_progress_bars()
    # the test suite's copy of the tiny synthesizer when it is built (same builder, same model)
    cache = Path(os.environ.get("HF_IPT_TEST_CACHE", Path.home() / ".cache" / "hf-ipt-tests"))
    model = build_tiny_synthesizer(cache / "tiny-synthesizer")
    paragraphs = corpus_paragraphs()
    texts = (paragraphs * (args.rows // len(paragraphs) + 1))[: args.rows]
    print(
        f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start | tiny Mistral model, "
        f"vLLM (vllm-cpu) fp32 eager | {len(texts)} real texts (pydoc_data.topics) | M = {args.rounds} | up to "
        f"{args.max_new_tokens} new tokens (the model's own end of answer)",
        flush=True,
    )

    if "start" not in skip:
        engine_start(model, args.start_repeats)

    kwargs = {"dtype": "float32", "kv_cache_memory_bytes": KV_BYTES}
    plain = VLLMEngine(model, max_model_len=MAX_MODEL_LEN, engine_kwargs=kwargs)

    # ---------------- (2) copyable share of the model's outputs ----------------
    class Recorder(Engine):
        name = "recorder"

        def __init__(self):
            self.pairs: list[tuple[list[int], list[int]]] = []

        def generate(self, requests, max_new_tokens):
            completions = plain.generate(requests, max_new_tokens)
            self.pairs += [(r.token_ids, c.token_ids) for r, c in zip(requests, completions, strict=True)]
            return completions

    recorder = Recorder()
    synthesize_rounds = Synthesizer(
        model=model,
        rounds=args.rounds,
        max_model_len=MAX_MODEL_LEN,
        max_new_tokens=args.max_new_tokens,
        batch_size=len(texts),
        scheduling="rounds",
        engine=recorder,
    )
    synthesize_rounds({"text": texts})  # also warms the plain engine up
    out_tokens = [len(o) for _, o in recorder.pairs]
    shares = {n: copyable_share(recorder.pairs, n) for n in (2, 3, 4)}
    print(
        f"(2) copyable share over {len(recorder.pairs)} outputs (mean {statistics.mean(out_tokens):.1f} tokens): "
        + ", ".join(f"{n}-grams of the prompt cover {100 * s:.1f} %" for n, s in shares.items())
        + " of the output tokens",
        flush=True,
    )

    # ---------------- (3) speculative vs plain, alternated ----------------
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    def compare(setting: dict, rounds: int, repeats: int) -> None:
        # a fresh process per setting: once an n-gram engine started (its proposer compiles with numba/llvmlite),
        # vllm-cpu 0.32 cannot start another engine in that process
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            plain_times, spec_times, same, counters = pool.submit(
                alternated_pairs, model, texts, setting, rounds, repeats, args.max_new_tokens
            ).result()
        stats = speculative_stats(counters, setting)
        p, s = statistics.median(plain_times), statistics.median(spec_times)
        print(
            f"(3) M={rounds} k={setting['num_speculative_tokens']} lookup {setting['prompt_lookup_min']}-"
            f"{setting['prompt_lookup_max']}: plain {p:6.2f} s | speculative {s:6.2f} s | ratio {s / p:.3f} "
            f"(target <= 0.8) | acceptance {100 * (stats['acceptance_rate'] or 0):5.1f} % of "
            f"{stats['draft_tokens']:,} draft tokens | mean accepted length {stats['mean_accepted_length'] or 1:.2f} "
            f"| rows identical: {'yes' if same else 'NO'} | runs plain {', '.join(f'{t:.2f}' for t in plain_times)}"
            f" spec {', '.join(f'{t:.2f}' for t in spec_times)}",
            flush=True,
        )

    for setting in parse_settings(args.key_settings):
        compare(setting, args.rounds, args.repeats)
    for setting in parse_settings(args.settings):
        compare(setting, args.sweep_rounds, args.sweep_repeats)

    # ---------------- (4) map vs bare ----------------
    if "map" not in skip:
        from bench_synthesis import map_vs_bare
        from vllm import SamplingParams

        # a fixed output length, as the real synthesizer writes several hundred tokens per text
        plain.sampling_params = lambda n: SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
        map_vs_bare(plain, model, texts, MAX_MODEL_LEN, args.max_new_tokens, max(args.repeats, 2))
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    sys.exit(main())
