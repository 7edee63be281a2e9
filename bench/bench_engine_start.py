"""Engine start: hf-ipt's `VLLMEngine` (and `make_engine("vllm")`, what the Synthesizer calls) against a bare
`vllm.LLM()` with the same arguments. Prints figures measured side by side in one run; not a test.

Each start runs in a fresh process (a first start in its process, as in a pipeline run) and only the constructor is
timed: vllm, torch and `vllm.entrypoints.llm` are imported before the clock starts on every side. The variants
alternate within each repeat (in a rotating order), so load from other processes falls on all of them alike, after
one unmeasured start of each (it fills the bytecode cache, see below, and the page cache). Target: VLLMEngine <= 1.2x
the bare `LLM()`.

- bare_lean:   `vllm.LLM(...)` in a process that imported vllm and torch only;
- bare:        `vllm.LLM(...)` in a process that also imported hf_ipt (as a Synthesizer's process has): vLLM runs 5
               full garbage collections while it starts, and each walks every object of the process;
- bare_frozen: bare after `gc.freeze()`, the one thing VLLMEngine adds around `LLM()`: what is left between it and
               `engine` is hf-ipt's own cost;
- engine:      `VLLMEngine(model, max_model_len=...)`;
- make_engine: `make_engine("vllm", ...)`: adds the prompt-tokenizer check (`check_prompt_tokenizer`), which loads
               the synthesizer's tokenizer;
- synthesizer: make_engine in a process that already loaded that tokenizer, as the Synthesizer's prompt fitter has
               when its first batch calls make_engine (both use `load_fast_tokenizer`, once per process).

The bare variants pass what VLLMEngine passes on a machine without CUDA: `enforce_eager=True`, `seed=0`, the
tokenizer (the model folder), `revision=None` and `max_model_len`; the KV cache is sized by `VLLM_CPU_KVCACHE_SPACE=1`
on every side (set below), so none passes `kv_cache_memory_bytes`.

Usage:
    python bench/bench_engine_start.py [--repeats 5] [--model DIR] [--variants bare,engine]
                                       [--profile VARIANT] [--no-bytecode-cache]

`--profile VARIANT` runs one start of that variant under cProfile and prints where its time goes (cumulative).
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

# vLLM on this CPU: engine in-process, KV cache sized by the environment, no Hub access (tests/conftest.py does the
# same). Set here, so the children inherit them.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

MAX_MODEL_LEN = 512
VARIANTS = ("bare_lean", "bare", "bare_frozen", "engine", "make_engine", "synthesizer")

# one start in a fresh process; prints one JSON line {"variant": ..., "seconds": ...}
CHILD = """
import json, os, sys, time
variant, model, max_len, profile = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
import torch, vllm, vllm.entrypoints.llm  # imported before the clock on every side
if variant != "bare_lean":  # bare_lean: a process that imported vllm and torch only (fewer objects for vLLM's gc)
    from hf_ipt.engines import VLLMEngine, make_engine
if variant == "synthesizer":
    # what a Synthesizer holds when its first batch calls make_engine: the fitter's tokenizer, loaded once per process
    # (make_engine's tokenizer check reads the same one)
    from hf_ipt.tokenization import load_fast_tokenizer
    load_fast_tokenizer(model)


def start():
    if variant.startswith("bare"):
        import gc
        if variant == "bare_frozen":  # VLLMEngine's one addition: vLLM's start-up collections skip older objects
            gc.freeze()
        # what VLLMEngine passes on a machine without CUDA, with VLLM_CPU_KVCACHE_SPACE set
        llm = vllm.LLM(model=model, revision=None, tokenizer=model, max_model_len=max_len, enforce_eager=True, seed=0)
        gc.unfreeze()
        return llm
    if variant == "engine":
        return VLLMEngine(model, max_model_len=max_len)
    return make_engine("vllm", model=model, max_model_len=max_len)


if profile:
    import cProfile, pstats
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    engine = start()
    profiler.disable()
    seconds = time.perf_counter() - started
    pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(45)
else:
    started = time.perf_counter()
    engine = start()
    seconds = time.perf_counter() - started
print(json.dumps({"variant": variant, "seconds": seconds}), flush=True)
os._exit(0)  # skip the engine's teardown: it is not part of the start, and costs every child the same
"""


def one_start(variant: str, model: str, profile: bool = False, env: dict[str, str] | None = None) -> float:
    """Seconds one fresh process spent constructing `variant`."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, variant, model, str(MAX_MODEL_LEN), "1" if profile else "0"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if profile:
        sys.stdout.write(done.stderr[-20000:])
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{variant} start failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return float(json.loads(lines[-1])["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", help="a built tiny synthesizer (default: build one into the tests' cache)")
    parser.add_argument("--profile", choices=VARIANTS, help="profile one start of this variant and stop")
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="keep this environment's bytecode setting (with PYTHONDONTWRITEBYTECODE=1 every module vLLM imports "
        "while it starts is compiled from source, ~1 s here, on every side alike)",
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS)
    )
    args = parser.parse_args()

    model = args.model
    if model is None:
        from hf_ipt.testing import build_tiny_synthesizer

        cache = Path(os.environ.get("HF_IPT_TEST_CACHE", Path.home() / ".cache" / "hf-ipt-tests"))
        started = time.perf_counter()
        model = build_tiny_synthesizer(cache / "tiny-synthesizer")
        print(f"tiny model at {model} ({time.perf_counter() - started:.1f} s)")
    env = None
    if not args.no_bytecode_cache:
        # an installed package has its .pyc files: give the children a bytecode cache of their own (outside the
        # environment's folders), filled by one unmeasured start of each variant below
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(Path.home() / ".cache" / "hf-ipt-bench" / "pycache")
    if args.profile:
        one_start(args.profile, model, env=env)  # fills the bytecode cache
        print(f"{args.profile}: {one_start(args.profile, model, profile=True, env=env):.2f} s under cProfile")
        return

    variants = [v for v in args.variants.split(",") if v]
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} cores")
    for variant in variants:
        one_start(variant, model, env=env)  # unmeasured: fills the bytecode cache and the page cache
    times: dict[str, list[float]] = {v: [] for v in variants}
    for repeat in range(args.repeats):
        # rotate the order each repeat: no variant always runs first (or right after another one's teardown)
        order = variants[repeat % len(variants) :] + variants[: repeat % len(variants)]
        for variant in order:
            times[variant].append(one_start(variant, model, env=env))
        print(f"repeat {repeat + 1}: " + "  ".join(f"{v} {times[v][-1]:.2f} s" for v in variants), flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    medians = {v: statistics.median(t) for v, t in times.items()}
    for variant in variants:
        low, high = min(times[variant]), max(times[variant])
        line = f"{variant:12s} median {medians[variant]:.2f} s  (min {low:.2f}, max {high:.2f})"
        for bare in ("bare_lean", "bare"):
            if bare in medians and not variant.startswith("bare"):
                line += f"  {medians[variant] / medians[bare]:.2f}x {bare}"
        print(line)


if __name__ == "__main__":
    main()
