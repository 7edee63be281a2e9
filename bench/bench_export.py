"""Export time against a bare batched tokenization of the same texts, and memory as the corpus grows.

Target (issue 23): the export stage (`ExportStage.run`: reading the released rows, tokenizing them, checking the mix's
counts, writing the files, checksums and commit) takes <= 1.2x the time of tokenizing the same texts in batches of the
same size with the Rust backend (`encode_batch_fast`, the ids as Python lists: what any export must at least do),
measured side by side in one process (median of `--repeat` interleaved runs, and the best run, which is what the
code costs when other processes leave the cores alone); the tokenizer's own call
(`tokenizer(texts, add_special_tokens=False)`) is printed too. Memory: the export streams batch by batch, so its peak
RSS above what the process held before it stays flat when the corpus grows 4x; each size runs in a fresh process.

Texts: paragraphs of Python's documentation (`bench/bench_mixing.py`'s `real_texts`), wrapped in `<s>...</s>` as the
mix releases them, in a run folder whose mix stage committed them with their token counts.

Run:
    .venv/bin/python bench/bench_export.py                       # 8 MB of text, tiny test tokenizer, all formats
    .venv/bin/python bench/bench_export.py --megabytes 4 --formats olmo_core megatron
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

from datasets import Dataset, disable_progress_bars

from hf_ipt import ExportConfig, ExportStage, RunConfig
from hf_ipt.mixing import TokenCounter
from hf_ipt.stages import MixStage
from hf_ipt.store import RunFolder
from hf_ipt.testing import build_tiny_synthesizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mixing import real_texts  # noqa: E402

BATCH = 1000
TARGET_RATIO = 1.2


def released_texts(megabytes: float) -> list[str]:
    return [f"<s>{text}</s>" for text in real_texts(megabytes)]


def commit_mix(folder: Path, tokenizer_path: str, texts: list[str]) -> RunConfig:
    rows = Dataset.from_dict({"text": texts, "source": ["augmented"] * len(texts)})
    counts = TokenCounter(tokenizer_path).count(texts)
    rows = rows.add_column("num_tokens", counts)
    RunFolder(str(folder)).stage(MixStage.folder).save(rows, config={"upstream": None})
    return RunConfig(output_dir=str(folder))


def time_backend(tokenizer, texts: list[str]) -> float:
    backend = tokenizer.backend_tokenizer
    start = time.perf_counter()
    for i in range(0, len(texts), BATCH):
        [encoding.ids for encoding in backend.encode_batch_fast(texts[i : i + BATCH], add_special_tokens=False)]
    return time.perf_counter() - start


def time_call(tokenizer, texts: list[str]) -> float:
    start = time.perf_counter()
    for i in range(0, len(texts), BATCH):
        tokenizer(texts[i : i + BATCH], add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return time.perf_counter() - start


def time_export(run: RunConfig, tokenizer_path: str, formats: list[str]) -> float:
    config = ExportConfig(formats=formats, batch_size=BATCH)
    RunFolder(run.output_dir).stage("export").discard()  # never reused: every run exports
    start = time.perf_counter()
    summary = ExportStage(config, tokenizer_path).run(run)
    seconds = time.perf_counter() - start
    assert not summary.reused
    return seconds


def rss_mb() -> float:
    """Anonymous resident memory of this process now (Linux: RssAnon of /proc/self/status): what it allocated, not
    the pages of memory-mapped files it read (the release's Arrow cache), which the kernel drops when it needs them."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


class PeakSampler(threading.Thread):
    """The highest resident memory seen while it runs, sampled every 5 ms (ru_maxrss would keep the peak of the
    imports, which are higher than what the export adds)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.done = rss_mb(), threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.005):
            self.peak = max(self.peak, rss_mb())


def child(folder: str, tokenizer_path: str, formats: list[str]) -> None:
    """One export of the run folder `folder` (prepared by the parent) in this fresh process; prints JSON: the RSS
    once everything is imported and loaded, the highest RSS during the export, seconds."""
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tokenizer_path)
    if "megatron" in formats:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import megatron.core.datasets.indexed_dataset  # noqa: F401 - imported before the peak is read
    # datasets converts a stage's Parquet rows to its memory-mapped Arrow cache the first time they are read (row
    # group by row group); done here first, as in the speed figures, so what is measured is the export's own memory
    RunFolder(folder).stage(MixStage.folder).load()
    before, sampler = rss_mb(), PeakSampler()
    sampler.start()
    seconds = time_export(RunConfig(output_dir=folder), tokenizer_path, formats)
    sampler.done.set()
    sampler.join()
    print(json.dumps({"before": before, "after": max(sampler.peak, rss_mb()), "seconds": seconds}))


def memory(folder: Path, tokenizer_path: str, formats: list[str]) -> dict:
    """`child` in a fresh process (its peak RSS is the export's own, not the corpus building's)."""
    script = str(Path(__file__).resolve())
    args = [sys.executable, script, "--child", str(folder), "--tokenizer", tokenizer_path, "--formats", *formats]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=float, default=8.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--formats", nargs="+", default=["olmo_core", "megatron", "llamafactory"])
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the tiny test model's)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    disable_progress_bars()
    cache = Path(os.environ.get("HF_IPT_BENCH_CACHE", Path.home() / ".cache" / "hf-ipt-bench"))
    tokenizer_path = args.tokenizer or build_tiny_synthesizer(cache / "tiny-synthesizer")
    if args.child is not None:
        child(args.child, tokenizer_path, args.formats)
        return

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    texts = released_texts(args.megabytes)
    size = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    tokens = sum(TokenCounter(tokenizer).count(texts))
    with tempfile.TemporaryDirectory(prefix="bench-export-") as folder:
        run = commit_mix(Path(folder) / "speed", tokenizer_path, texts)
        time_export(run, tokenizer_path, args.formats)  # warm: imports, the Arrow cache of the rows
        backend, call, export = [], [], []
        for _ in range(args.repeat):
            backend.append(time_backend(tokenizer, texts))
            call.append(time_call(tokenizer, texts))
            export.append(time_export(run, tokenizer_path, args.formats))
        grown = {}
        for label, corpus in (("1x", released_texts(args.megabytes / 4)), ("4x", texts)):
            commit_mix(Path(folder) / label, tokenizer_path, corpus)
            grown[label] = (len(corpus), memory(Path(folder) / label, tokenizer_path, args.formats))
    b, c, e = (statistics.median(v) for v in (backend, call, export))
    print(f"corpus: {len(texts):,} texts, {size:.1f} MB, {tokens:,} tokens; formats {', '.join(args.formats)}")
    print(f"load average: {', '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    print(f"median of {args.repeat} runs each, interleaved (best run in brackets):")
    print(
        f"bare tokenization, backend encode_batch_fast: {b:.2f} s [{min(backend):.2f}]  ({tokens / b / 1e6:.2f} M/s)"
    )
    print(f"bare tokenization, tokenizer(...) call:       {c:.2f} s [{min(call):.2f}]  ({tokens / c / 1e6:.2f} M/s)")
    print(f"export stage:                                 {e:.2f} s [{min(export):.2f}]  ({tokens / e / 1e6:.2f} M/s)")
    print(
        f"export / backend tokenization: {e / b:.2f}x [{min(export) / min(backend):.2f}x] "
        f"(target <= {TARGET_RATIO}x); export / tokenizer call: {e / c:.2f}x [{min(export) / min(call):.2f}x]"
    )
    for label, (rows, figures) in grown.items():
        print(
            f"memory {label}: {rows:,} rows, anonymous RSS {figures['before']:.0f} MB once imported, peak "
            f"{figures['after']:.0f} MB during the export (+{figures['after'] - figures['before']:.0f} MB), "
            f"{figures['seconds']:.2f} s"
        )


if __name__ == "__main__":
    main()
