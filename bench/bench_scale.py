"""Scale benchmark (issue 24): `hf-ipt run` on growing corpora, wall time and peak RSS per stage; not a test.

One command runs the whole pipeline (synthesize -> templify -> mix -> release, local release) at each size given,
each size in a fresh child process that runs exactly `hf-ipt run RECIPE` (`hf_ipt.cli.main`), and prints the table of
the issue: raw rows (and the chunks synthesis made of them), wall time, the peak RSS of the whole run, and per stage
its wall time, its own peak RSS and its cost per row. The last lines compare the largest size with the smallest:
the ratio of the whole run's peak RSS, and for each stage other than synthesis its time ratio over its rows ratio
(<= 1: the stage's time grows no faster than its rows), in wall time and in CPU time (user + system, of the process and
the workers it started: on a machine shared with other jobs, wall time follows their load, CPU time much less).

How the peak RSS of a stage is measured: in the child, before each stage the kernel's high-water mark of the
process's resident set (VmHWM) is reset (`echo 5 > /proc/self/clear_refs`), and read after the stage; the whole
run's peak is the largest of these and of the VmHWM before and between the stages (start, preflight). A thread also
samples the anonymous and file-backed parts of the resident set every 20 ms (memory-mapped files, such as `datasets`'
Arrow caches, count in RSS while they are mapped, though the kernel may drop their pages). Worker processes a stage
starts (`--workers 2`: the `processes` executor) are not in these figures; their own peak (the largest of them, from
`getrusage(RUSAGE_CHILDREN)`) is printed apart.

The synthesizer is an engine that answers at once (`InstantEngine`, registered in `hf_ipt.engines.ENGINES` as
"instant" in the child only): three question-answer pairs per prompt made of words of the prompt's text, so the
engine is not the bottleneck and every later stage gets realistic rows. The tokenizer is the tiny test model's
(`hf_ipt.testing.build_tiny_synthesizer`, built once per machine). The raw corpus is made of the bundled paragraphs
of Python's documentation (two per text, rotated so texts differ), chunked to 150 tokens like the quickstart, M = 3;
the general instructions (OpenOrca layout) hold about as many tokens as the templified texts, mixed 1:1.

Run:
    .venv/bin/python bench/bench_scale.py                                  # 8,000 and 128,000 raw rows
    .venv/bin/python bench/bench_scale.py --rows 2000 8000 32000 128000
    .venv/bin/python bench/bench_scale.py --rows 8000 1000000              # the million-row run (41 min here)
    .venv/bin/python bench/bench_scale.py --rows 8000 --workers 2          # templify and mix on 2 local workers
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
ROW_GROUP = 5000  # rows per Parquet row group of the inputs
STAGES = ("synthesize", "templify", "mix", "release")


# ---------------------------------------------------------------------------------------------------- the engine
def instant_engine_class():
    """An Engine answering every prompt at once with three pairs built from words of the prompt's last text."""
    from hf_ipt.engines import Completion, Engine

    class InstantEngine(Engine):
        name = "instant"

        def __init__(self, model, *, revision=None, tokenizer=None, max_model_len=4096, engine_kwargs=None):
            self.model = model

        def generate(self, requests, max_new_tokens):
            completions = []
            for request in requests:
                context = request.prompt.rsplit("<CON>", 1)[-1]
                words = [w.strip(".,:;()`'\"") for w in context.split()[:40]]
                words = [w for w in words if w.isalpha()] or ["text"]
                pairs = []
                for k in range(3):
                    a, b, c = (words[(k * 5 + j) % len(words)] for j in range(3))
                    pairs.append(f"<QUE> What does the text say about {a} and {b}? <ANS> {a} {b} {c}. </END>")
                completions.append(Completion("\n\n".join(pairs)))
            return completions

    return InstantEngine


# ---------------------------------------------------------------------------------------------------- the data
def make_inputs(folder: Path, rows: int) -> tuple[Path, Path]:
    """The raw corpus (`text`) and the general instructions (`id`, `system_prompt`, `question`, `response`) as
    Parquet files, written in pieces so that a million rows never sit in memory as Python strings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hf_ipt.testing import corpus_paragraphs

    paragraphs = corpus_paragraphs()
    count = len(paragraphs)
    # row groups of a fixed size, as a published corpus has them: reading one costs the same at every size
    corpus, general = folder / "corpus.parquet", folder / "general.parquet"
    piece = 50_000
    with pq.ParquetWriter(corpus, pa.schema({"text": pa.string()})) as writer:
        for start in range(0, rows, piece):
            texts = [
                paragraphs[i % count] + " " + paragraphs[(i * 7 + i // count + 1) % count]
                for i in range(start, min(rows, start + piece))
            ]
            writer.write_table(pa.table({"text": texts}), row_group_size=ROW_GROUP)
    # a general instruction is about as long as one paragraph; a templified text holds about three chunks and their
    # pairs: as many general rows as raw rows hold about the templified tokens (the 1:1 mix binds on one of them)
    schema = pa.schema(
        {"id": pa.string(), "system_prompt": pa.string(), "question": pa.string(), "response": pa.string()}
    )
    with pq.ParquetWriter(general, schema) as writer:
        for start in range(0, rows, piece):
            ids = range(start, min(rows, start + piece))
            writer.write_table(
                pa.table(
                    {
                        "id": [f"g{i}" for i in ids],
                        "system_prompt": ["You are a helpful assistant."] * len(ids),
                        "question": [f"Explain this ({i}): " + paragraphs[i % count].split(".")[0] + "?" for i in ids],
                        "response": [paragraphs[(i * 3 + 1) % count] for i in ids],
                    },
                    schema=schema,
                ),
                row_group_size=ROW_GROUP,
            )
    return corpus, general


def recipe_for(folder: Path, model: str, corpus: Path, general: Path, workers: int) -> Path:
    import yaml

    recipe = {
        "source": {"path": "parquet", "data_files": str(corpus), "text_column": "text", "license": "psf-2.0"},
        "chunk": {"enabled": True, "max_chunk_tokens": 150},
        "synth": {
            "model": model,
            "engine": "instant",
            "rounds": 3,
            "max_model_len": 512,
            "max_new_tokens": 64,
            "batch_size": 300,
        },
        "templify": {"seed": 0, "target_tokenizer": model},
        "mix": {"weights": {"augmented": 1, "general": 1}, "tokenizer": model, "tolerance": 0.05, "seed": 0},
        "mix_sources": {
            "general": {
                "path": "parquet",
                "data_files": str(general),
                "kind": "general_instructions",
                "license": "psf-2.0",
            }
        },
        "release": {"repo_id": "local/bench-scale", "version": "v0.1", "config_name": "m3", "plots": False},
        "release_to": "local",
        "run": {"output_dir": str(folder / "run"), "shard_size": 3000, "num_workers": workers},
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------------------- the child
def high_water_kb() -> int:
    """VmHWM of this process, in kB: its peak resident set since it started or since the last `reset_high_water`."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def reset_high_water() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def resident_kb() -> dict[str, int]:
    """This process's resident set now, in kB: anonymous memory (the heap, Arrow buffers) and file-backed pages
    (memory-mapped files: `datasets`' Arrow caches, libraries), from /proc/self/status."""
    found = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("RssAnon:", "RssFile:")):
                found[line.split(":")[0]] = int(line.split()[1])
    return found


class Sampler:
    """The largest anonymous and file-backed resident sets seen, sampled every 20 ms by a thread (a sample waits for
    the GIL, so a peak inside one long pure-Python step may be missed; VmHWM never misses it)."""

    def __init__(self) -> None:
        import threading

        self.peaks = {"RssAnon": 0, "RssFile": 0}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        while not self.stop.wait(0.02):
            self.sample()

    def sample(self) -> None:
        for key, value in resident_kb().items():
            self.peaks[key] = max(self.peaks[key], value)

    def reset(self) -> dict[str, int]:
        self.sample()
        peaks, self.peaks = self.peaks, {"RssAnon": 0, "RssFile": 0}
        return peaks


def child(recipe: str, result: str) -> None:
    """`hf-ipt run RECIPE -q` in this process, each stage timed and its own peak RSS measured."""
    import resource

    from hf_ipt.cli import main
    from hf_ipt.engines import ENGINES
    from hf_ipt.stages import base

    ENGINES["instant"] = instant_engine_class()
    measured: dict[str, dict] = {}
    run_stage = base.run_stage
    sampler = Sampler()
    before = {"peak_kb": 0}  # start, preflight and the time between stages

    def cpu_seconds() -> float:
        own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime

    def measured_stage(stage, run):
        before["peak_kb"] = max(before["peak_kb"], high_water_kb())
        sampler.reset()
        reset_high_water()
        started, cpu = time.perf_counter(), cpu_seconds()
        summary = run_stage(stage, run)
        measured[stage.name] = {
            "seconds": time.perf_counter() - started,
            "cpu_seconds": cpu_seconds() - cpu,
            "peak_kb": high_water_kb(),
            "rows": summary.rows,
            **{f"{key}_peak_kb": value for key, value in sampler.reset().items()},
        }
        reset_high_water()
        return summary

    base.run_stage = measured_stage
    started = time.perf_counter()
    code = main(["run", recipe, "-q"])
    wall = time.perf_counter() - started
    # the whole run's peak: VmHWM (and ru_maxrss, the same counter) is reset before each stage, so it is the largest
    # of the stages' peaks and of what came before and between them
    own = max([before["peak_kb"], high_water_kb(), *(stage["peak_kb"] for stage in measured.values())])
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    Path(result).write_text(
        json.dumps(
            {"code": code, "wall": wall, "stages": measured, "process_peak_kb": own, "workers_peak_kb": workers}
        )
    )


# ---------------------------------------------------------------------------------------------------- the parent
def run_size(rows: int, model: str, workers: int, work: Path) -> dict:
    folder = work / f"rows-{rows}"
    folder.mkdir(parents=True, exist_ok=True)
    corpus, general = make_inputs(folder, rows)
    recipe = recipe_for(folder, model, corpus, general, workers)
    result = folder / "result.json"
    env = {**os.environ, "HF_DATASETS_CACHE": str(folder / "hf-cache"), "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, __file__, "--child", str(recipe), str(result)], env=env, check=True, cwd=str(folder)
    )
    measured = json.loads(result.read_text())
    measured["outer_wall"] = time.perf_counter() - started
    if measured["code"] != 0:
        raise SystemExit(f"hf-ipt run failed at {rows} rows (exit code {measured['code']}); see the output above")
    marker = json.loads((folder / "run" / "synthesized" / ".hf_ipt" / "stage.json").read_text())
    measured["chunks"] = sum(marker["num_rows"].values())
    measured["rows"] = rows
    return measured


def mb(kb: int) -> str:
    return f"{kb / 1024:,.0f} MB"


def print_results(results: list[dict]) -> None:
    print()
    print("wall time (and CPU time, this process and its workers) of the run and of each stage")
    print("| raw rows (chunks) | wall | peak RSS | " + " | ".join(STAGES) + " |")
    print("|---|---|---|" + "---|" * len(STAGES))
    for r in results:
        stages = " | ".join(
            f"{r['stages'][s]['seconds']:.0f} s ({r['stages'][s]['cpu_seconds']:.0f} s CPU)" for s in STAGES
        )
        size = f"{r['rows']:,} ({r['chunks'] / 1000:.1f}k)"
        print(f"| {size} | {r['wall']:.0f} s | {mb(r['process_peak_kb'])} | {stages} |")
    print()
    print(
        "peak RSS of each stage (its own VmHWM; sampled peaks of its anonymous and file-backed parts) and time per "
        "row of its input"
    )
    print("| raw rows | " + " | ".join(STAGES) + " |")
    print("|---|" + "---|" * len(STAGES))
    for r in results:
        cells = []
        for name, stage in ((s, r["stages"][s]) for s in STAGES):
            rows = input_rows(r, name)
            cells.append(
                f"{mb(stage['peak_kb'])} (anon {mb(stage['RssAnon_peak_kb'])}, file {mb(stage['RssFile_peak_kb'])}), "
                f"{1e6 * stage['seconds'] / max(rows, 1):,.0f} us/row ({rows:,})"
            )
        print(f"| {r['rows']:,} | " + " | ".join(cells) + " |")
    if any(r["workers_peak_kb"] for r in results):
        print(
            "largest worker process: " + ", ".join(f"{r['rows']:,} rows {mb(r['workers_peak_kb'])}" for r in results)
        )
    if len(results) > 1:
        small, large = results[0], results[-1]
        print()
        print(
            f"whole run, peak RSS at {large['rows']:,} / at {small['rows']:,} raw rows: "
            f"{large['process_peak_kb'] / small['process_peak_kb']:.3f} (target <= 1.15)"
        )
        for name in STAGES[1:]:
            rows_ratio = input_rows(large, name) / max(input_rows(small, name), 1)
            ratios = {
                kind: large["stages"][name][kind] / max(small["stages"][name][kind], 1e-9)
                for kind in ("seconds", "cpu_seconds")
            }
            print(
                f"{name:<10} rows x{rows_ratio:.2f}: wall time x{ratios['seconds']:.2f} "
                f"({ratios['seconds'] / rows_ratio:.2f} per row), CPU time x{ratios['cpu_seconds']:.2f} "
                f"({ratios['cpu_seconds'] / rows_ratio:.2f} per row; <= 1: no faster than its rows)"
            )


def input_rows(result: dict, stage: str) -> int:
    """The rows a stage reads: raw rows (synthesize), synthesized chunks (templify), the templified texts (mix), the
    mixed rows (release)."""
    if stage == "synthesize":
        return result["rows"]
    if stage == "templify":
        return result["chunks"]
    previous = STAGES[STAGES.index(stage) - 1]
    return result["stages"][previous]["rows"] or 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[8000, 128000], help="raw rows of each size")
    parser.add_argument("--workers", type=int, default=1, help="run.num_workers (local executor)")
    parser.add_argument("--work", default=None, help="folder for the inputs and runs (default: a temporary one)")
    parser.add_argument("--child", nargs=2, metavar=("RECIPE", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    from hf_ipt.testing import build_tiny_synthesizer

    cache = Path(os.environ.get("HF_IPT_TEST_CACHE", Path.home() / ".cache" / "hf-ipt-tests"))
    model = build_tiny_synthesizer(cache / "tiny-synthesizer")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    print(f"work folder {work}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    results = []
    for rows in sorted(args.rows):
        results.append(run_size(rows, model, args.workers, work))
        print(f"{rows:,} rows done in {results[-1]['outer_wall']:.0f} s; load average {os.getloadavg()[0]:.2f}")
    print_results(results)


if __name__ == "__main__":
    main()
