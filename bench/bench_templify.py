"""Templify throughput on one core, in MB of output text (UTF-8) per second. Target: >= 20 MB/s.

Input: real English paragraphs (`hf_ipt.testing.corpus_paragraphs`) with synthesizer-style pairs — plain QA,
multiple-choice (some "unanswerable"), chain-of-thought and both, 0 to 6 pairs per text, 2-round chains laid out as
synthesis lays them out — so the templates, options shuffling, chain linking and hashing all run.

Figures, all measured in this run:
- `Templifier` on dict batches (the map function alone, as Ray Data or a streaming map calls it);
- `templify(Dataset)` end to end with num_proc=1 (chain grouping, Arrow <-> Python conversion, writing Arrow).

Usage: .venv/bin/python bench/bench_templify.py [--rows 20000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

from hf_ipt import columns as C
from hf_ipt.synthesis.chains import chain_layout
from hf_ipt.templify import OPTIONS_MARKER, Templifier, TemplifyConfig, templify
from hf_ipt.testing import corpus_paragraphs

TARGET_MB_PER_S = 20.0


def _pairs(text: str, rng: random.Random) -> list[dict[str, str]]:
    words = [w.strip(".,;:()`'\"") for w in text.split() if len(w) > 4] or ["value"]
    pairs = []
    for k in range(rng.choice([0, 1, 2, 3, 3, 4, 4, 5, 6])):
        word, other = rng.choice(words), rng.choice(words)
        kind = rng.random()
        question = f"What does the text say about {word} in part {k}?"
        if kind < 0.6:
            pairs.append({C.INSTRUCTION: question, C.RESPONSE: f"It explains how {word} relates to {other}."})
            continue
        options = [word, other, "something else", "a keyword"]
        answer = rng.choice(options + ["unanswerable"])
        if kind < 0.8:
            q = f"Which term is central here?{OPTIONS_MARKER}" + "\n- ".join(options)
            pairs.append({C.INSTRUCTION: q, C.RESPONSE: answer})
        elif kind < 0.9:
            pairs.append(
                {
                    C.INSTRUCTION: f"{question}\nLet's think step by step.",
                    C.RESPONSE: f"The text mentions {word}. It then links it to {other}.\n"
                    f"Therefore, the answer is {other}",
                }
            )
        else:
            q = f"Which term is central here?{OPTIONS_MARKER}" + "\n- ".join(options)
            pairs.append(
                {
                    C.INSTRUCTION: f"{q}\nLet's think step by step.",
                    C.RESPONSE: f"The passage keeps returning to it.\nTherefore, the answer is {answer}",
                }
            )
    return pairs


def synthesized_rows(num_rows: int, rounds: int = 2, batch_size: int = 1024, seed: int = 0) -> dict[str, list]:
    rng = random.Random(seed)
    paragraphs = corpus_paragraphs()
    texts = [paragraphs[i % len(paragraphs)] for i in range(num_rows)]
    rows: dict[str, list] = {"text": [], C.PAIRS: [], C.CHAIN_ID: [], C.CHAIN_POSITION: [], C.NUM_DEMONSTRATIONS: []}
    for start in range(0, num_rows, batch_size):
        batch = texts[start : start + batch_size]
        pairs = [_pairs(t, rng) for t in batch]
        chain, position, demos = [""] * len(batch), [0] * len(batch), [0] * len(batch)
        for c, members in enumerate(chain_layout(len(batch), rounds)):
            linked = 0
            for k, row in enumerate(members):
                chain[row], position[row], demos[row] = f"{start}-{c}", k, linked
                linked = linked + 1 if pairs[row] else 0
        rows["text"] += batch
        rows[C.PAIRS] += pairs
        rows[C.CHAIN_ID] += chain
        rows[C.CHAIN_POSITION] += position
        rows[C.NUM_DEMONSTRATIONS] += demos
    return rows


def _mb(texts: list[str]) -> float:
    return sum(len(t.encode("utf-8")) for t in texts) / 1e6


def bench_map_function(rows: dict[str, list], repeats: int, batch_rows: int = 1024) -> list[tuple[float, float]]:
    """(MB/s of output, input rows/s) of each of `repeats` passes of Templifier over dict batches of whole chains."""
    function = Templifier(TemplifyConfig(seed=0))
    batches = [{k: v[i : i + batch_rows] for k, v in rows.items()} for i in range(0, len(rows["text"]), batch_rows)]
    figures = []
    for _ in range(repeats):
        out_mb = elapsed = 0.0
        for batch in batches:
            start = time.perf_counter()
            out = function(batch)
            elapsed += time.perf_counter() - start
            out_mb += _mb(out["text"])
        figures.append((out_mb / elapsed, len(rows["text"]) / elapsed))
    return figures


def _report(name: str, figures: list[tuple[float, float]]) -> None:
    best_mb, best_rows = max(figures)
    median_mb = statistics.median(mb for mb, _ in figures)
    print(
        f"{name:28s} best {best_mb:6.1f} MB/s ({best_rows:6.0f} rows/s), median {median_mb:6.1f} MB/s over "
        f"{len(figures)} runs   best/target = {best_mb / TARGET_MB_PER_S:.2f}, median/target = "
        f"{median_mb / TARGET_MB_PER_S:.2f}"
    )


def bench_dataset(rows: dict[str, list], repeats: int) -> list[tuple[float, float]]:
    """(MB/s of output, input rows/s) of each of `repeats` runs of templify() on an in-memory Dataset, num_proc=1."""
    import datasets

    datasets.disable_progress_bars()
    dataset = datasets.Dataset.from_dict(rows)
    figures = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = templify(dataset, TemplifyConfig(seed=0, batch_size=1000))
        elapsed = time.perf_counter() - start
        figures.append((_mb(out["text"]) / elapsed, len(dataset) / elapsed))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    rows = synthesized_rows(args.rows)
    in_mb = _mb(rows["text"])
    print(f"input: {args.rows} rows, {in_mb:.1f} MB of raw text, {sum(map(len, rows[C.PAIRS]))} pairs, 2 rounds")
    print(f"target: >= {TARGET_MB_PER_S:.0f} MB/s of output text on one core (best of runs: machines may be shared)")
    _report("Templifier (dict batches)", bench_map_function(rows, args.repeats))
    _report("templify(Dataset), 1 proc", bench_dataset(rows, args.repeats))


if __name__ == "__main__":
    main()
