"""Token-counting throughput of the mixing pipeline vs the bare tokenizer, on the same real texts in the same run.

Target (issue 4): `count_tokens` (a cached, batched `Dataset.map` writing a token-count column) runs at >= 0.8x the
tokenizer's own batched throughput, `tokenizer(texts, add_special_tokens=False, return_attention_mask=False)`, on
>= 5 MB of real text. Also printed: the ratio to the Rust backend's `encode_batch_fast` (the floor any counting can
reach), the parallel figure with num_proc, and the time of a whole 1:1 mix.

Texts: paragraphs of Python's documentation (`hf_ipt.testing.corpus_paragraphs`), each paired with a different
paragraph per copy so that no two texts are equal, until the requested size is reached.

Run:
    .venv/bin/python bench/bench_mixing.py                 # tiny test tokenizer (2k vocab)
    .venv/bin/python bench/bench_mixing.py --train-vocab 32000   # also a byte-level BPE trained on the texts
                                                             # (vocab up to 32k; the texts support about 7k)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from datasets import Dataset, disable_progress_bars, load_from_disk

from hf_ipt.mixing import MixConfig, count_tokens, mix
from hf_ipt.testing import build_tiny_synthesizer, corpus_paragraphs

TARGET_RATIO = 0.8


def real_texts(megabytes: float) -> list[str]:
    paragraphs = corpus_paragraphs()
    texts: list[str] = []
    size = 0
    shift = 1
    while size < megabytes * 1e6:
        for i, paragraph in enumerate(paragraphs):
            text = paragraph + " " + paragraphs[(i + shift) % len(paragraphs)]
            texts.append(text)
            size += len(text.encode("utf-8"))
        shift += 1
    return texts


def trained_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE with a realistic vocabulary size, trained here (nothing can be downloaded)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    tokenizer.name_or_path = f"bench-bpe-{vocab_size}"
    return tokenizer


def time_raw_call(tokenizer, texts: list[str], batch_size: int) -> tuple[float, int]:
    start = time.perf_counter()
    tokens = 0
    for i in range(0, len(texts), batch_size):
        ids = tokenizer(texts[i : i + batch_size], add_special_tokens=False, return_attention_mask=False)["input_ids"]
        tokens += sum(len(row) for row in ids)
    return time.perf_counter() - start, tokens


def time_backend(tokenizer, texts: list[str], batch_size: int) -> tuple[float, int]:
    backend = tokenizer.backend_tokenizer
    start = time.perf_counter()
    tokens = 0
    for i in range(0, len(texts), batch_size):
        tokens += sum(len(e) for e in backend.encode_batch_fast(texts[i : i + batch_size], add_special_tokens=False))
    return time.perf_counter() - start, tokens


def time_pipeline(tokenizer, dataset: Dataset, batch_size: int, num_proc: int | None) -> tuple[float, int]:
    start = time.perf_counter()
    counted = count_tokens(dataset, tokenizer, batch_size=batch_size, num_proc=num_proc, load_from_cache_file=False)
    elapsed = time.perf_counter() - start
    tokens = sum(counted.with_format("arrow")[:]["num_tokens"].to_pylist())
    for cache_file in counted.cache_files:  # keep the temp dir from filling up over the repeats
        if cache_file["filename"] not in {f["filename"] for f in dataset.cache_files}:
            os.remove(cache_file["filename"])
    return elapsed, tokens


def bench_tokenizer(tokenizer, texts: list[str], dataset: Dataset, args) -> None:
    megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    runs: dict[str, list[float]] = {"raw call": [], "backend fast": [], "pipeline": []}
    tokens_seen: dict[str, int] = {}
    for _ in range(args.repeats):  # interleaved, so load from other processes hits all three alike
        for name, run in (
            ("raw call", lambda: time_raw_call(tokenizer, texts, args.batch_size)),
            ("backend fast", lambda: time_backend(tokenizer, texts, args.batch_size)),
            ("pipeline", lambda: time_pipeline(tokenizer, dataset, args.batch_size, None)),
        ):
            elapsed, tokens = run()
            runs[name].append(elapsed)
            tokens_seen[name] = tokens
    assert len(set(tokens_seen.values())) == 1, f"the three ways counted different totals: {tokens_seen}"
    best = {name: min(times) for name, times in runs.items()}
    median = {name: statistics.median(times) for name, times in runs.items()}
    print(
        f"\ntokenizer {tokenizer.name_or_path} (vocab {len(tokenizer)}): {len(texts):,} texts, {megabytes:.1f} MB, "
        f"{tokens_seen['raw call']:,} tokens, batch {args.batch_size}, best/median of {args.repeats}"
    )
    for name in runs:
        print(
            f"  {name:<13} {megabytes / best[name]:7.2f} MB/s best  {megabytes / median[name]:7.2f} MB/s median  "
            f"({tokens_seen[name] / best[name] / 1e6:.2f} M tokens/s)"
        )
    ratio_best = best["raw call"] / best["pipeline"]
    ratio_median = median["raw call"] / median["pipeline"]
    verdict = "meets" if ratio_best >= TARGET_RATIO else "MISSES"
    print(
        f"  pipeline / raw tokenizer call: {ratio_best:.2f} best, {ratio_median:.2f} median "
        f"(target >= {TARGET_RATIO}: {verdict})"
    )
    print(f"  pipeline / backend encode_batch_fast: {best['backend fast'] / best['pipeline']:.2f} best")
    for num_proc in args.num_proc:
        elapsed = min(time_pipeline(tokenizer, dataset, args.batch_size, num_proc)[0] for _ in range(2))
        print(
            f"  pipeline num_proc={num_proc}: {megabytes / elapsed:.2f} MB/s "
            f"({best['raw call'] / elapsed:.2f}x the raw single call; {os.cpu_count()} CPUs, shared)"
        )


def bench_mix(tokenizer, texts: list[str], workdir: Path) -> None:
    half = len(texts) // 2
    Dataset.from_dict({"text": texts[:half]}).save_to_disk(workdir / "aug")
    Dataset.from_dict({"text": texts[half:]}).save_to_disk(workdir / "other")
    augmented, other = load_from_disk(str(workdir / "aug")), load_from_disk(str(workdir / "other"))
    start = time.perf_counter()
    config = MixConfig(weights={"augmented": 1, "secondary": 1}, tokenizer=tokenizer, seed=0)
    mixed, report = mix({"augmented": augmented, "secondary": other.select(range(half // 2))}, config)
    elapsed = time.perf_counter() - start
    print(
        f"\nwhole 1:1 mix (count both sources, select, label, shuffle): {elapsed:.2f} s for {len(texts):,} texts; "
        f"{report.total_tokens:,} tokens in {report.total_rows:,} rows, achieved ratio "
        f"{report.achieved_ratio}, max share error {report.max_share_error:.4%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=6.0, help="Text to count (>= 5 for the target).")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--num-proc", type=int, nargs="*", default=[2], help="Also time count_tokens with these.")
    parser.add_argument("--train-vocab", type=int, default=0, help="Also bench a BPE trained up to this vocab size.")
    args = parser.parse_args()
    disable_progress_bars()

    texts = real_texts(args.megabytes)
    workdir = Path(tempfile.mkdtemp(prefix="bench-mixing-"))
    try:
        # on disk, as a real corpus is: the pipeline reads Arrow from a file and writes a cache file
        Dataset.from_dict({"text": texts}).save_to_disk(workdir / "texts")
        dataset = load_from_disk(str(workdir / "texts"))
        from transformers import AutoTokenizer

        cache = Path(os.environ.get("HF_IPT_TEST_CACHE", Path.home() / ".cache" / "hf-ipt-tests"))
        tokenizers = [AutoTokenizer.from_pretrained(build_tiny_synthesizer(cache / "tiny-synthesizer"))]
        if args.train_vocab:
            tokenizers.append(trained_tokenizer(texts, args.train_vocab))
        print(f"TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM', '(unset: Rust threads on)')}")
        for tokenizer in tokenizers:
            bench_tokenizer(tokenizer, texts, dataset, args)
        bench_mix(tokenizers[0], texts, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
