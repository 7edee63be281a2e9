"""The sharded, resumable runner: same rows as one `Dataset.map`, crash safety, resumption, workers, config guard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from datasets import Dataset, IterableDataset, concatenate_datasets

from hf_ipt.execution.runner import (
    MANIFEST_PATH,
    IncompleteRunError,
    ResumeConflictError,
    ShardedRunner,
    assemble_shards,
    input_sha256,
    iter_shard_tables,
    plan_shards,
    run_status,
    shards_of_worker,
)


class BatchRecorder:
    """A batched map function whose output depends on the whole batch (like M-shot chains do), so a runner that fed
    it other batch boundaries than `Dataset.map` would give different rows. Logs each call's first text to a file."""

    def __init__(self, log_path: str | None = None, fail_after_calls: int | None = None):
        self.log_path = log_path
        self.fail_after_calls = fail_after_calls
        self.calls = 0

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        self.calls += 1
        if self.fail_after_calls is not None and self.calls > self.fail_after_calls:
            raise RuntimeError("simulated crash")
        if self.log_path:
            with open(self.log_path, "a") as log:
                log.write(batch["text"][0] + "\n")
        texts = batch["text"]
        head = texts[0]
        return {
            "batch_head": [head] * len(texts),
            "pairs": [[{"instruction": t, "response": head}] if i % 3 else [] for i, t in enumerate(texts)],
            "length": [len(t) for t in texts],
        }


def make_dataset(num_rows: int) -> Dataset:
    return Dataset.from_dict({"text": [f"text number {i}" for i in range(num_rows)], "id": list(range(num_rows))})


def table_of(dataset: Dataset):
    return dataset.with_format("arrow")[:].replace_schema_metadata(None)


def test_plan_shards_and_worker_assignment_cover_every_row_once():
    shards = plan_shards(103, 10)
    assert [s.num_rows for s in shards] == [10] * 10 + [3]
    assert shards[-1].data_path == "data/train-00010-of-00011.parquet"
    assert [(s.start, s.stop) for s in plan_shards(0, 10)] == [(0, 0)]
    for num_workers in (1, 2, 3, 11, 12):
        taken = [i for w in range(num_workers) for i in shards_of_worker(len(shards), w, num_workers)]
        assert sorted(taken) == list(range(len(shards)))
    with pytest.raises(ValueError, match=r"worker_index \(rank\) must be an integer in \[0, 2\]"):
        shards_of_worker(5, 3, 3)


def test_sharded_run_equals_one_unsharded_map(tmp_path):
    dataset = make_dataset(45)
    expected = dataset.map(BatchRecorder(), batched=True, batch_size=5)
    report = ShardedRunner(BatchRecorder(), str(tmp_path / "out"), shard_size=10, batch_size=5).run(dataset)
    assert report.processed == [0, 1, 2, 3, 4] and report.complete and report.rows_processed == 45
    assembled = assemble_shards(str(tmp_path / "out"))
    assert list(assembled) == ["train"]
    assert table_of(assembled["train"]).equals(table_of(expected))
    tables = list(iter_shard_tables(str(tmp_path / "out"), columns=["length", "no_such_column"]))
    assert len(tables) == 5 and [t.column_names for t in tables] == [["length"]] * 5
    assert sum((t["length"].to_pylist() for t in tables), []) == expected["length"]
    # the folder is a plain Hub-layout dataset: load_dataset reads it and ignores the bookkeeping
    from datasets import load_dataset

    assert table_of(load_dataset(str(tmp_path / "out"), split="train")).equals(table_of(expected))


def test_shard_size_must_be_a_multiple_of_the_batch_size(tmp_path):
    with pytest.raises(ValueError, match=r"shard_size \(10\) must be a multiple of the batch size \(4\).*8 or 12"):
        ShardedRunner(BatchRecorder(), str(tmp_path), shard_size=10, batch_size=4)


def test_resume_after_a_crash_skips_committed_shards_and_gives_identical_rows(tmp_path):
    dataset = make_dataset(40)
    reference = ShardedRunner(BatchRecorder(), str(tmp_path / "ref"), shard_size=8, batch_size=4).run(dataset)
    assert reference.complete

    out = str(tmp_path / "out")
    crashing = BatchRecorder(fail_after_calls=5)  # dies in the middle of shard 2 (two batches per shard)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ShardedRunner(crashing, out, shard_size=8, batch_size=4).run(dataset)
    assert run_status(out)["done"] == [0, 1]

    log = tmp_path / "calls.log"
    report = ShardedRunner(BatchRecorder(str(log)), out, shard_size=8, batch_size=4).run(dataset)
    assert report.skipped == [0, 1] and report.processed == [2, 3, 4]
    assert log.read_text().split("\n")[0] == "text number 16"  # nothing before shard 2 was recomputed
    assert table_of(assemble_shards(out)["train"]).equals(table_of(assemble_shards(str(tmp_path / "ref"))["train"]))
    for shard in plan_shards(40, 8):
        assert (tmp_path / "out" / shard.data_path).read_bytes() == (tmp_path / "ref" / shard.data_path).read_bytes()


def test_a_crash_before_the_marker_never_leaves_a_shard_that_looks_finished(tmp_path, monkeypatch):
    from hf_ipt.execution.runner import MARKER_DIR
    from hf_ipt.store import Store

    dataset = make_dataset(16)
    out = tmp_path / "out"
    original = Store.write_atomic

    def die_on_marker(self, relative, data, **kwargs):
        if relative.startswith(MARKER_DIR) and relative.endswith("00001.json"):
            raise KeyboardInterrupt("killed between the data file and its marker")
        return original(self, relative, data, **kwargs)

    monkeypatch.setattr(Store, "write_atomic", die_on_marker)
    with pytest.raises(KeyboardInterrupt):
        ShardedRunner(BatchRecorder(), str(out), shard_size=8, batch_size=4).run(dataset)
    monkeypatch.undo()
    assert (out / "data/train-00001-of-00002.parquet").exists()  # the data file is there ...
    assert run_status(str(out))["missing"] == [1]  # ... but without its marker it does not count
    with pytest.raises(IncompleteRunError, match=r"1 of 2 shards .* are not finished \(shards 1\)"):
        assemble_shards(str(out))
    with pytest.raises(IncompleteRunError, match="shard 1 of .* is not finished"):
        list(iter_shard_tables(str(out)))
    report = ShardedRunner(BatchRecorder(), str(out), shard_size=8, batch_size=4).run(dataset)
    assert report.processed == [1] and report.complete


def test_a_committed_shard_whose_file_is_damaged_is_redone(tmp_path):
    dataset = make_dataset(16)
    out = tmp_path / "out"
    ShardedRunner(BatchRecorder(), str(out), shard_size=8, batch_size=4).run(dataset)
    (out / "data/train-00000-of-00002.parquet").write_bytes(b"truncated")
    report = ShardedRunner(BatchRecorder(), str(out), shard_size=8, batch_size=4).run(dataset)
    assert report.processed == [0] and report.skipped == [1]
    assert assemble_shards(str(out))["train"].num_rows == 16


def test_a_same_size_change_in_a_committed_shard_is_found_by_its_checksum_and_redone(tmp_path, caplog):
    dataset = make_dataset(16)
    out = tmp_path / "out"
    ShardedRunner(BatchRecorder(), str(out), shard_size=8, batch_size=4).run(dataset)
    shard = out / "data/train-00001-of-00002.parquet"
    original = shard.read_bytes()
    at = original.index(b"text number 1")
    shard.write_bytes(original[:at] + b"TEXT" + original[at + 4 :])  # same size, other text
    status = run_status(str(out))
    assert status["missing"] == [1] and "SHA-256 differs, same size" in status["damaged"][1]
    with pytest.raises(IncompleteRunError, match=r"damaged since their commit: data/train-00001-of-00002.parquet"):
        assemble_shards(str(out))
    recorder = BatchRecorder()
    with caplog.at_level("WARNING", logger="hf_ipt"):
        report = ShardedRunner(recorder, str(out), shard_size=8, batch_size=4).run(dataset)
    assert "shard 1 of" in caplog.text and "is damaged" in caplog.text
    assert report.processed == [1] and report.skipped == [0] and recorder.calls == 2
    assert shard.read_bytes() == original


KILLED_WRITER = """
import os, signal, sys
from hf_ipt.store import Store

def killed(source, target):  # the process dies between writing the temporary file and renaming it into place
    os.kill(os.getpid(), signal.SIGKILL)

os.replace = killed
Store(sys.argv[1]).write_atomic(sys.argv[2], b"half a write")
"""


def test_temporary_files_of_killed_writes_are_removed_at_the_next_start_but_not_a_live_writers(tmp_path):
    from hf_ipt.store import TMP_DIR, StageFolder, Store, tmp_owner

    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    for relative in ("data/train-00000-of-00002.parquet", ".hf_ipt/done/shard-00000.json"):
        killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(out), relative], env=env)
        assert killed.returncode == -signal.SIGKILL
    tmp = out / TMP_DIR
    leftovers = sorted(p.name for p in tmp.iterdir())
    assert len(leftovers) == 2 and all(".tmp" in name for name in leftovers)
    # a live writer's file (this process), another host's fresh file and an old one of an unknown writer
    live = tmp / f"data__x.parquet.{tmp_owner()}.{'a' * 32}.tmp"
    other_host = tmp / f"data__y.parquet.otherhost-1.{'b' * 32}.tmp"
    old_unknown = tmp / "data__z.parquet.0123.tmp"
    for path in (live, other_host, old_unknown):
        path.write_bytes(b"partial")
    hours_ago = time.time() - 2 * 3600
    os.utime(old_unknown, (hours_ago, hours_ago))

    report = ShardedRunner(BatchRecorder(), str(out), shard_size=8, batch_size=4).run(make_dataset(16))
    assert report.complete
    assert sorted(p.name for p in tmp.iterdir()) == sorted([live.name, other_host.name])
    os.utime(other_host, (hours_ago, hours_ago))  # an hour without its rename: that writer is gone
    assert Store(str(out)).remove_stale_tmp() == [str(other_host)]
    assert live.exists()

    # a whole-stage output cleans its folder the same way when it is written again
    stage = tmp_path / "stage"
    subprocess.run([sys.executable, "-c", KILLED_WRITER, str(stage), "data/train-00000-of-00001.parquet"], env=env)
    assert len(list((stage / TMP_DIR).iterdir())) == 1
    StageFolder(str(stage)).save(make_dataset(4), config={"step": 1})
    assert not list((stage / TMP_DIR).iterdir())


def test_a_changed_config_refuses_to_resume_unless_told_to_start_over(tmp_path):
    dataset = make_dataset(16)
    out = str(tmp_path / "out")
    config = {"synth": {"model": "a", "rounds": 3, "engine_kwargs": {"gpu_memory_utilization": 0.9}}}
    ShardedRunner(BatchRecorder(), out, shard_size=8, batch_size=4, config=config).run(dataset)

    changed = {"synth": {"model": "a", "rounds": 2, "engine_kwargs": {"gpu_memory_utilization": 0.8}}}
    with pytest.raises(ResumeConflictError) as info:
        ShardedRunner(BatchRecorder(), out, shard_size=8, batch_size=4, config=changed).run(dataset)
    message = str(info.value)
    assert "synth.rounds: 3 -> 2" in message and "gpu_memory_utilization: 0.9 -> 0.8" in message
    assert "--run.overwrite" in message
    with pytest.raises(ResumeConflictError, match="shard_size: 8 -> 4"):
        ShardedRunner(BatchRecorder(), out, shard_size=4, batch_size=4, config=config).run(dataset)
    with pytest.raises(ResumeConflictError, match="num_input_rows: 16 -> 12"):
        ShardedRunner(BatchRecorder(), out, shard_size=8, batch_size=4, config=config).run(make_dataset(12))

    # a setting that does not change the output can be declared harmless
    only_memory = {"synth": {"model": "a", "rounds": 3, "engine_kwargs": {"gpu_memory_utilization": 0.8}}}
    report = ShardedRunner(
        BatchRecorder(),
        out,
        shard_size=8,
        batch_size=4,
        config=only_memory,
        resume_ignore=["synth.engine_kwargs.gpu_memory_utilization"],
    ).run(dataset)
    assert report.skipped == [0, 1]

    report = ShardedRunner(BatchRecorder(), out, shard_size=8, batch_size=4, config=changed, overwrite=True).run(
        dataset
    )
    assert report.processed == [0, 1] and report.skipped == []
    # overwrite with the configuration now in force resumes: every worker of a job may pass it safely
    report = ShardedRunner(BatchRecorder(), out, shard_size=8, batch_size=4, config=changed, overwrite=True).run(
        dataset
    )
    assert report.skipped == [0, 1]


def test_changed_input_rows_are_detected_on_resume(tmp_path):
    out = str(tmp_path / "out")
    ShardedRunner(BatchRecorder(), out, shard_size=8, batch_size=4).run(make_dataset(16))
    edited = make_dataset(16).map(lambda row: {"text": row["text"] + "!"})
    with pytest.raises(ResumeConflictError, match=r"input rows 0..7 of finished shard 0 differ"):
        ShardedRunner(BatchRecorder(), out, shard_size=8, batch_size=4).run(edited)


def test_input_hash_ignores_how_the_arrow_data_is_chunked():
    whole = make_dataset(30)
    pieces = concatenate_datasets([make_dataset(30).select(range(0, 7)), make_dataset(30).select(range(7, 30))])
    assert whole.data.table.num_columns == pieces.data.table.num_columns
    assert input_sha256(whole.select(range(5, 20))) == input_sha256(pieces.select(range(5, 20)))
    assert input_sha256(whole.select(range(5, 20))) != input_sha256(whole.select(range(6, 21)))


def test_a_folder_with_foreign_data_files_is_not_written_into(tmp_path):
    (tmp_path / "data").mkdir()
    make_dataset(3).to_parquet(str(tmp_path / "data/train-00000-of-00001.parquet"))
    with pytest.raises(ResumeConflictError, match="no hf-ipt manifest"):
        ShardedRunner(BatchRecorder(), str(tmp_path), shard_size=4, batch_size=4).run(make_dataset(8))


def test_shards_with_differently_inferred_types_assemble(tmp_path):
    # every row of shard 0 has an empty `pairs` list, so Arrow infers list<null> there and list<struct> elsewhere
    def fn(batch):
        return {"pairs": [[] if i < 4 else [{"instruction": "q", "response": "a"}] for i in batch["id"]]}

    ShardedRunner(fn, str(tmp_path), shard_size=4, batch_size=4).run(make_dataset(12))
    dataset = assemble_shards(str(tmp_path))["train"]
    assert dataset["pairs"][0] == [] and dataset["pairs"][5] == [{"instruction": "q", "response": "a"}]


def test_empty_input_and_wrong_inputs(tmp_path):
    report = ShardedRunner(BatchRecorder(), str(tmp_path / "empty"), shard_size=4, batch_size=4).run(make_dataset(0))
    assert report.complete and assemble_shards(str(tmp_path / "empty"))["train"].num_rows == 0

    streaming = IterableDataset.from_generator(lambda: iter([{"text": "a"}]))
    with pytest.raises(TypeError, match="needs a map-style datasets.Dataset .* without streaming=True"):
        ShardedRunner(BatchRecorder(), str(tmp_path / "s"), shard_size=4, batch_size=4).run(streaming)

    def drops_rows(batch):
        return {"text": batch["text"][:1], "id": batch["id"][:1]}

    with pytest.raises(RuntimeError, match="returned 2 rows for the 8 input rows of shard 0"):
        ShardedRunner(drops_rows, str(tmp_path / "d"), shard_size=8, batch_size=4).run(make_dataset(8))
    with pytest.raises(IncompleteRunError, match="holds no sharded run"):
        assemble_shards(str(tmp_path / "nothing"))


def test_any_fsspec_url_works_as_output(tmp_path):
    dataset = make_dataset(20)
    out = "memory://hf-ipt-tests/run"
    ShardedRunner(BatchRecorder(), out, shard_size=8, batch_size=4, worker_index=1, num_workers=2).run(dataset)
    assert run_status(out)["missing"] == [0, 2]
    report = ShardedRunner(BatchRecorder(), out, shard_size=8, batch_size=4, worker_index=0, num_workers=2).run(
        dataset
    )
    assert report.complete
    expected = dataset.map(BatchRecorder(), batched=True, batch_size=4)
    assert table_of(assemble_shards(out)["train"]).equals(table_of(expected))


WORKER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests_dir!r})
    from test_runner import BatchRecorder, make_dataset
    from hf_ipt.execution.runner import ShardedRunner

    class Slow(BatchRecorder):
        def __call__(self, batch):
            time.sleep(float(sys.argv[4]))
            return super().__call__(batch)

    out, worker, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    runner = ShardedRunner(Slow(sys.argv[5]), out, shard_size=8, batch_size=4, config={{"model": "m"}},
                           worker_index=worker, num_workers=workers)
    report = runner.run(make_dataset(96))
    print("processed", report.processed)
    """
)


def _worker(tmp_path: Path, out: Path, worker: int, workers: int, delay: float, log: Path) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    if not script.exists():
        script.write_text(WORKER_SCRIPT.format(tests_dir=str(Path(__file__).parent)))
    env = {**os.environ, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    return subprocess.Popen(
        [sys.executable, str(script), str(out), str(worker), str(workers), str(delay), str(log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _shards_in_log(log: Path) -> set[int]:
    """Shards whose batches a run computed, from the first text of each batch it logged (8 rows per shard)."""
    return {int(line.rsplit(" ", 1)[1]) // 8 for line in log.read_text().splitlines()} if log.exists() else set()


def test_sigkill_mid_run_then_resume_recomputes_at_most_the_shard_in_flight(tmp_path):
    out = tmp_path / "out"
    process = _worker(tmp_path, out, 0, 1, 0.05, tmp_path / "killed.log")
    markers = out / ".hf_ipt" / "done"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(markers.glob("*.json"))) < 3 and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = {p.name: p.read_text() for p in markers.glob("*.json")}
    done_before = {int(name[len("shard-") : -len(".json")]) for name in before}
    assert 3 <= len(done_before) < 12, "the run must be killed part-way"
    assert len(_shards_in_log(tmp_path / "killed.log") - done_before) <= 1  # only one shard was in flight

    resumed = _worker(tmp_path, out, 0, 1, 0.0, tmp_path / "resumed.log")
    _, stderr = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, stderr
    assert _shards_in_log(tmp_path / "resumed.log") == set(range(12)) - done_before
    for name, content in before.items():  # committed shards were not touched again
        assert (markers / name).read_text() == content

    reference = ShardedRunner(
        BatchRecorder(), str(tmp_path / "ref"), shard_size=8, batch_size=4, config={"model": "m"}
    ).run(make_dataset(96))
    assert reference.complete
    assembled = assemble_shards(str(out))["train"]
    assert table_of(assembled).equals(table_of(assemble_shards(str(tmp_path / "ref"))["train"]))
    assert assembled["id"] == list(range(96))  # no row lost, none duplicated, input order
    for shard in plan_shards(96, 8):
        assert (out / shard.data_path).read_bytes() == (tmp_path / "ref" / shard.data_path).read_bytes()


def test_two_concurrent_workers_fill_one_output_like_a_single_worker(tmp_path):
    out = tmp_path / "out"
    workers = [_worker(tmp_path, out, w, 2, 0.01, tmp_path / f"worker{w}.log") for w in range(2)]
    for process in workers:
        _, stderr = process.communicate(timeout=90)
        assert process.returncode == 0, stderr
    processed = [
        json.loads((out / ".hf_ipt/done" / f"shard-{i:05d}.json").read_text())["worker"]["index"] for i in range(12)
    ]
    assert processed == [i % 2 for i in range(12)]  # each shard written by its own worker only
    assert _shards_in_log(tmp_path / "worker0.log") == set(range(0, 12, 2))
    assert _shards_in_log(tmp_path / "worker1.log") == set(range(1, 12, 2))
    assert json.loads((out / MANIFEST_PATH).read_text())["num_shards"] == 12

    single = ShardedRunner(
        BatchRecorder(), str(tmp_path / "single"), shard_size=8, batch_size=4, config={"model": "m"}
    ).run(make_dataset(96))
    assert single.complete
    assert table_of(assemble_shards(str(out))["train"]).equals(
        table_of(assemble_shards(str(tmp_path / "single"))["train"])
    )


# --- the store under the runner: whole-stage outputs, atomic writes ----------------------------------------------


@pytest.mark.parametrize("where", ["local", "memory"])
def test_a_stage_output_is_saved_committed_loaded_and_cleared(tmp_path, where):
    from datasets import DatasetDict

    from hf_ipt.store import STAGE_MARKER_PATH, StageFolder, fingerprint

    out = StageFolder(str(tmp_path / "stage") if where == "local" else "memory://hf-ipt-tests/stage")
    assert out.fingerprint() is None
    with pytest.raises(IncompleteRunError, match=f"no finished stage output .*{STAGE_MARKER_PATH}"):
        out.load()
    data = DatasetDict({"train": make_dataset(25), "test": make_dataset(0)})
    marker = out.save(data, config={"step": {"seed": 1}}, rows_per_file=10, extra={"report": {"rows": 25}})
    assert marker["files"]["train"] == [f"data/train-0000{i}-of-00003.parquet" for i in range(3)]
    assert marker["num_rows"] == {"train": 25, "test": 0} and marker["extra"] == {"report": {"rows": 25}}
    assert out.fingerprint() == fingerprint({"step": {"seed": 1}}) == out.marker()["fingerprint"]
    loaded = out.load()
    assert table_of(loaded["train"]).equals(table_of(data["train"])) and loaded["test"].num_rows == 0
    out.write_atomic("notes/readme.txt", b"kept")
    out.clear()
    assert out.fingerprint() is None and out.marker() is None
    with pytest.raises(IncompleteRunError):
        out.load()
    assert out.fs.glob(out.path("data/*.parquet")) == [] and out.exists("notes/readme.txt")


def test_exclusive_atomic_writes_never_replace_a_file(tmp_path):
    from hf_ipt.store import TMP_DIR, Store

    for url in (str(tmp_path / "store"), "memory://hf-ipt-tests/exclusive"):
        store = Store(url)
        assert store.write_atomic("a/b.json", b'{"first": 1}', exclusive=True)
        assert not store.write_atomic("a/b.json", b'{"second": 2}', exclusive=True)
        assert store.read_json("a/b.json") == {"first": 1} and store.size("a/b.json") == len(b'{"first": 1}')
        assert store.write_atomic("a/b.json", b'{"third": 3}') and store.read_json("a/b.json") == {"third": 3}
        assert store.fs.glob(store.path(f"{TMP_DIR}/*")) == []  # no temporary file left behind
        assert store.read_json("a/none.json") is None and store.size("a/none.json") is None


def test_the_store_imports_no_other_hf_ipt_module():
    import ast

    import hf_ipt.store

    tree = ast.parse(Path(hf_ipt.store.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not [name for name in imported if name.split(".")[0] == "hf_ipt"]


def test_a_stage_file_without_a_recorded_checksum_cannot_be_vouched_for(tmp_path):
    import json as json_module

    from hf_ipt.store import STAGE_MARKER_PATH, StageFolder

    out = StageFolder(str(tmp_path / "stage"))
    out.save(make_dataset(8), config={"step": 1})
    assert out.damage() == {}
    marker_path = tmp_path / "stage" / STAGE_MARKER_PATH
    marker = json_module.loads(marker_path.read_text())
    del marker["checksums"]  # a hand-made marker: its files are listed, their bytes are not
    marker_path.write_text(json_module.dumps(marker))
    assert out.damage() == {"data/train-00000-of-00001.parquet": "committed without a checksum"}
