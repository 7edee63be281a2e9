"""Quality figures' throughput on one core, in MB of text per second. Target: >= 20 MB/s for the per-row pass.

Input: real English paragraphs (`hf_ipt.testing.corpus_paragraphs`) with synthesizer-style pairs of every task type
(short extractive spans of the text, free-form answers partly made of the text's words, multiple choice, chain of
thought, yes/no; 0 to 6 pairs per text) and a few repeated questions, so every rule and every grounding level runs.
MB counts the UTF-8 bytes of each row's text plus its questions and answers. Each figure is given per wall-clock
second and per CPU second of the process (on a machine shared with other work the two differ; the CPU figure is what
one core needs).

Figures, all measured in this run:
- the per-row pass: `QualityFigures` on dict batches of 1,000 rows (the map function alone, as `Dataset.map`, Ray
  Data or a streaming map calls it), whitespace lengths (the default);
- the same with a tokenizer counting lengths (`--tokenizer PATH`, optional);
- `quality_report(Dataset)` end to end, num_proc=1: the map through `datasets` (Arrow <-> Python, writing Arrow)
  plus the corpus-wide reduction (duplicates, distributions, worst examples).

Usage: .venv/bin/python bench/bench_quality.py [--rows 20000] [--repeats 5] [--tokenizer PATH]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

from hf_ipt import columns as C
from hf_ipt.quality import QualityFigures, quality_report
from hf_ipt.testing import corpus_paragraphs

TARGET_MB_PER_S = 20.0
BATCH = 1000


def _pairs(text: str, rng: random.Random) -> list[dict[str, str]]:
    words = [w.strip(".,;:()`'\"") for w in text.split() if len(w) > 3] or ["value"]
    pairs = []
    for k in range(rng.choice([0, 1, 2, 3, 3, 4, 4, 5, 6])):
        word, other = rng.choice(words), rng.choice(words)
        kind = rng.random()
        question = f"What does the text say about {word} in part {k}?"
        if rng.random() < 0.05:
            question = "What is the main topic of the text?"  # repeated across the corpus
        if kind < 0.3:  # a span of the text: exact
            start = rng.randrange(max(1, len(words) - 4))
            answer = " ".join(words[start : start + rng.randint(1, 4)])
        elif kind < 0.55:  # free form from the text's words and others: overlap or ungrounded
            answer = f"It explains how {word} relates to {other} in the {rng.choice(words)} part of the text."
        elif kind < 0.7:
            options = [word, other, "something else", "a keyword"]
            question = "Which term is central here?\nOptions:\n- " + "\n- ".join(options)
            answer = rng.choice(options)
        elif kind < 0.85:
            question = f"{question}\nLet's think step by step."
            answer = f"The text mentions {word}. It then links it to {other}.\nTherefore, the answer is {other}."
        else:
            question = f"Does the text mention {word}?"
            answer = rng.choice(["Yes.", "No.", "Yes, it does."])
        pairs.append({C.INSTRUCTION: question, C.RESPONSE: answer})
    return pairs


def make_rows(n: int, seed: int = 0) -> dict[str, list]:
    rng = random.Random(seed)
    paragraphs = corpus_paragraphs()
    texts = [paragraphs[i % len(paragraphs)] for i in range(n)]
    pairs = [_pairs(t, rng) for t in texts]
    return {C.TEXT: texts, C.PAIRS: pairs, C.SYNTH_STATUS: ["ok" if p else "no_pairs" for p in pairs]}


def megabytes(rows: dict[str, list]) -> float:
    size = sum(len(t.encode("utf-8")) for t in rows[C.TEXT])
    size += sum(len(p[C.INSTRUCTION].encode()) + len(p[C.RESPONSE].encode()) for ps in rows[C.PAIRS] for p in ps)
    return size / 1e6


def time_map(mapper: QualityFigures, rows: dict[str, list], repeats: int) -> list[tuple[float, float]]:
    """(wall seconds, CPU seconds of this process) per repeat."""
    n = len(rows[C.TEXT])
    batches = [{k: v[i : i + BATCH] for k, v in rows.items()} for i in range(0, n, BATCH)]
    times = []
    for _ in range(repeats):
        started, cpu = time.perf_counter(), time.process_time()
        for batch in batches:
            mapper(batch)
        times.append((time.perf_counter() - started, time.process_time() - cpu))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokenizer", default=None, help="also time lengths in tokens of this tokenizer")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as the target says
    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # the tokenizer's Rust threads too

    rows = make_rows(args.rows)
    size = megabytes(rows)
    pairs = sum(len(p) for p in rows[C.PAIRS])
    print(f"{args.rows:,} rows, {pairs:,} pairs, {size:.1f} MB of text (texts + questions + answers), one core")

    def show(name: str, times: list[tuple[float, float]]) -> None:
        # wall time counts the waits of a loaded machine; CPU time is what the pass itself costs one core
        wall, cpu = statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)
        rate, cpu_rate = size / wall, size / cpu
        print(
            f"  {name:<42} wall {wall:6.3f} s {rate:6.1f} MB/s | CPU {cpu:6.3f} s {cpu_rate:6.1f} MB/s "
            f"({cpu_rate / TARGET_MB_PER_S:.2f}x the {TARGET_MB_PER_S:.0f} MB/s target; median of {len(times)})"
        )

    show("QualityFigures, whitespace lengths", time_map(QualityFigures(), rows, args.repeats))
    if args.tokenizer:
        show("QualityFigures, tokenizer lengths", time_map(QualityFigures(args.tokenizer), rows, args.repeats))

    from datasets import Dataset

    dataset = Dataset.from_dict(rows)
    times = []
    for _ in range(max(1, args.repeats // 2)):
        started, cpu = time.perf_counter(), time.process_time()
        report = quality_report(dataset)  # in memory: map results are not cached between repeats
        times.append((time.perf_counter() - started, time.process_time() - cpu))
    show("quality_report(Dataset), map + reduction", times)
    grounded, repeated = report["grounding"]["rate"], report["duplicates"]["rate"]
    print(f"  grounded rate {grounded:.3f}, repeated-question rate {repeated:.3f}")


if __name__ == "__main__":
    main()
