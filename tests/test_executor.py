"""Executors of the synthesis stage (`run.executor`, `run.num_workers`) and streaming reads of finished runs.

The Ray tests start one small local Ray instance (2 logical CPUs) for the module and run `hf-ipt synthesize` through
the CLI entry point on the tiny model: 24 rows, 3 shards of 2 batches each.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import fsspec
import pytest
import yaml
from datasets import Dataset
from fsspec.implementations.local import LocalFileOpener, LocalFileSystem

from hf_ipt.cli import main
from hf_ipt.config import ConfigError, load_recipe
from hf_ipt.execution import LocalExecutor, ProcessExecutor, RayExecutor, make_executor
from hf_ipt.execution.runner import MARKER_DIR, ShardedRunner, assemble_shards, plan_shards, run_status
from hf_ipt.stages import SynthesizeStage
from hf_ipt.store import TMP_DIR, StageFolder, Store
from hf_ipt.testing import tiny_recipe

NUM_ROWS, SHARD, BATCH = 24, 8, 4


def synthesis_backend(recipe):
    """The executor the synthesize stage of `recipe` runs its workers on."""
    return SynthesizeStage.from_recipe(recipe).executor(recipe.run)


def recipe_file(tmp_path: Path, model: str, output: Path) -> Path:
    """A synthesis of 24 bundled paragraphs with the tiny model: 3 shards of two 4-row batches (M = 2 chains)."""
    recipe = tiny_recipe(model, output, rows=NUM_ROWS, batch_size=BATCH, shard_size=SHARD, max_new_tokens=16)
    path = tmp_path / f"{output.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def rows_of(output: Path):
    return assemble_shards(str(output / "synthesized"))["train"].to_list()


# --- settings ------------------------------------------------------------------------------------------------------


def test_executor_keys_are_validated_with_the_recipe_key_names(tmp_path):
    base = ["--source.path", "bundled:quickstart", "--run.output_dir", str(tmp_path)]
    ray_args = ["--run.executor", "ray", "--run.num_workers", "2", "--run.gpus_per_worker", "1"]
    recipe = load_recipe(None, base + ray_args)
    assert (recipe.run.executor, recipe.run.num_workers, recipe.run.gpus_per_worker) == ("ray", 2, 1)
    backend = synthesis_backend(recipe)
    assert isinstance(backend, RayExecutor) and backend.num_gpus_per_worker == 1 and backend.max_retries == 3
    assert isinstance(synthesis_backend(load_recipe(None, base)), LocalExecutor)
    two_local = synthesis_backend(load_recipe(None, base + ["--run.num_workers", "2"]))
    assert isinstance(two_local, ProcessExecutor) and two_local.devices_per_worker == 1
    parallel = ["--run.num_workers", "2", "--synth.engine_kwargs", "{tensor_parallel_size: 2}"]
    tensor_parallel = load_recipe(None, base + parallel)
    assert synthesis_backend(tensor_parallel).devices_per_worker == 2
    bad = {
        ("--run.executor", "spark"): r"run.executor must be one of \['local', 'ray'\], got 'spark'",
        ("--run.num_workers", "0"): r"run.num_workers .*must be an integer >= 1, got 0",
        ("--run.gpus_per_worker", "1"): r"run.gpus_per_worker=1.0 is only read with run.executor: ray",
        ("--run.ray_address", "auto"): r"run.ray_address='auto' is only read with run.executor: ray",
        ("--run.executor", "ray", "--run.max_retries", "-1"): r"run.max_retries .*must be an integer >= 0",
    }
    for args, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            load_recipe(None, base + list(args))
    # a cluster without GPUs could never schedule a worker that asks for one: said at once, not a silent hang
    with pytest.raises(ValueError, match=r"run.gpus_per_worker=1 but the Ray cluster has 0 GPU\(s\)"):
        RayExecutor(num_gpus_per_worker=1).gpus_per_worker(0)
    assert RayExecutor(num_gpus_per_worker=None, devices_per_worker=2).gpus_per_worker(8) == 2
    assert make_executor("processes", devices_per_worker=2) == ProcessExecutor(devices_per_worker=2)


def test_workers_started_by_hand_and_by_the_executor_do_not_mix(tmp_path, capsys):
    recipe = recipe_file(tmp_path, "unused-model", tmp_path / "out")
    code = main(["synthesize", str(recipe), "--run.executor", "ray", "--worker-index", "1", "--num-workers", "2"])
    assert code == 2
    assert "--worker-index 1 / --num-workers 2 start one worker of several by hand" in capsys.readouterr().err


# --- one process per GPU / core share on this machine -------------------------------------------------------------


def where_it_ran(batch):
    """A cheap map function that also says which process ran it and on which cores."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return {
        "length": [len(t) for t in batch["text"]],
        "pid": [os.getpid()] * len(batch["text"]),
        "cores": [",".join(map(str, cores))] * len(batch["text"]),
    }


def test_local_executor_with_two_workers_runs_two_pinned_processes(tmp_path):
    texts = [f"text {i} " * (i % 5 + 1) for i in range(20)]
    dataset = Dataset.from_dict({"text": texts})
    runner = ShardedRunner(
        where_it_ran, str(tmp_path / "run"), shard_size=4, batch_size=2, num_workers=2, executor=ProcessExecutor()
    )
    report = runner.run(dataset)
    assert report.complete and [w.processed for w in report.workers] == [[0, 2, 4], [1, 3]]
    rows = assemble_shards(str(tmp_path / "run"))["train"]
    assert rows["text"] == texts and rows["length"] == [len(t) for t in texts]
    by_shard = {s.index: set(rows["pid"][s.start : s.stop]) for s in plan_shards(len(texts), 4)}
    pids = {i: next(iter(p)) for i, p in by_shard.items()}
    assert all(len(p) == 1 for p in by_shard.values()) and os.getpid() not in pids.values()
    assert pids[0] == pids[2] == pids[4] != pids[1] == pids[3]  # worker i took shards i, i+2, ... in its own process
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= 2:  # each process was bound to its own share of the cores
        shares = {rows["cores"][0], rows["cores"][4]}
        assert len(shares) == 2 and all(share for share in shares)


def test_a_worker_process_that_dies_fails_the_run_and_a_rerun_finishes_it(tmp_path):
    crashed = tmp_path / "crashed"

    def dies_once_on_shard_1(batch):
        if "row 5" in batch["text"] and not crashed.exists():
            crashed.write_text("x")
            os._exit(1)
        return {"n": [len(t) for t in batch["text"]]}

    dataset = Dataset.from_dict({"text": [f"row {i}" for i in range(12)]})
    make = lambda: ShardedRunner(  # noqa: E731
        dies_once_on_shard_1, str(tmp_path / "run"), shard_size=4, batch_size=2, num_workers=2,
        executor=ProcessExecutor(start_method="fork"),
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="worker process 1 of 2 died .* run the same command again"):
        make().run(dataset)
    assert run_status(str(tmp_path / "run"))["missing"] == [1]
    again = make().run(dataset)
    assert again.complete and again.processed == [1]
    assert assemble_shards(str(tmp_path / "run"))["train"]["text"] == dataset["text"]


# --- Ray ------------------------------------------------------------------------------------------------------------


def install_crash_plan(plan: Path, commits: Path) -> None:
    """Runs at the start of every Ray worker process: a worker dies (`os._exit`) the first time a batch holds the
    text written in `plan`; the first time a batch holds the text written in `hold-on.txt` beside it, the worker
    writes its pid to `hold-on.txt.pid` and waits to be killed from outside; every commit marker written is logged to
    `commits` (one line per write)."""
    from hf_ipt.store import Store as WorkerStore
    from hf_ipt.synthesis.synthesizer import Synthesizer

    synthesize = Synthesizer.__call__
    hold = plan.with_name("hold-on.txt")

    def maybe_die(self, batch, *args):
        if hold.exists() and hold.read_text() in batch.get("text", []):
            try:
                held = os.open(f"{hold}.pid", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass  # the retried worker: goes on
            else:
                os.write(held, str(os.getpid()).encode())
                os.close(held)
                time.sleep(300)  # killed from outside long before
        if plan.exists() and plan.read_text() in batch.get("text", []):
            try:
                fired = os.open(f"{plan}.fired", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fired, str(os.getpid()).encode())
                os.close(fired)
                os._exit(1)
        return synthesize(self, batch, *args)

    write_atomic = WorkerStore.write_atomic

    def logged(self, relative, data, **kwargs):
        written = write_atomic(self, relative, data, **kwargs)
        if relative.startswith(MARKER_DIR):
            with open(commits, "a") as log:
                log.write(f"{relative} {os.getpid()}\n")
        return written

    Synthesizer.__call__ = maybe_die
    WorkerStore.write_atomic = logged


@pytest.fixture(scope="module")
def ray_instance(tmp_path_factory):
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'hf-ipt[ray]'")
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import the tests folder
    folder = tmp_path_factory.mktemp("ray-plan")
    plan, commits = folder / "crash-on.txt", folder / "commits.log"

    def setup() -> None:
        install_crash_plan(plan, commits)

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"worker_process_setup_hook": setup},
    )
    yield plan, commits
    ray.shutdown()


@pytest.fixture(scope="module")
def local_rows(tmp_path_factory, tiny_model_path):
    """The reference: the same synthesis with executor local (one process)."""
    tmp_path = tmp_path_factory.mktemp("local")
    assert main(["synthesize", str(recipe_file(tmp_path, tiny_model_path, tmp_path / "local")), "-q"]) == 0
    return rows_of(tmp_path / "local")


@pytest.mark.slow
def test_ray_executor_with_two_workers_gives_the_local_rows(ray_instance, local_rows, tiny_model_path, tmp_path):
    recipe = recipe_file(tmp_path, tiny_model_path, tmp_path / "ray")
    assert main(["synthesize", str(recipe), "-q", "--run.executor", "ray", "--run.num_workers", "2"]) == 0
    assert rows_of(tmp_path / "ray") == local_rows and len(local_rows) == NUM_ROWS
    markers = [json.loads(p.read_text()) for p in sorted((tmp_path / "ray/synthesized" / MARKER_DIR).glob("*.json"))]
    placed = [(m["shard"], m["worker"]["index"], m["worker"]["of"]) for m in markers]
    assert placed == [(0, 0, 2), (1, 1, 2), (2, 0, 2)]
    assert os.getpid() not in {m["worker"]["pid"] for m in markers}  # the shards ran in Ray's processes


@pytest.mark.slow
def test_a_killed_ray_worker_is_retried_and_no_row_is_lost_or_doubled(
    ray_instance, local_rows, tiny_model_path, tmp_path
):
    plan, commits = ray_instance
    commits.unlink(missing_ok=True)
    # the worker dies in the second batch of shard 1: mid-shard, after the shard's first batch was synthesized
    victim = local_rows[SHARD + BATCH]["text"]
    plan.write_text(victim)
    try:
        recipe = recipe_file(tmp_path, tiny_model_path, tmp_path / "killed")
        assert main(["synthesize", str(recipe), "-q", "--run.executor", "ray", "--run.num_workers", "2"]) == 0
    finally:
        plan.unlink()
    died = int(Path(f"{plan}.fired").read_text())
    output = tmp_path / "killed/synthesized"
    assert rows_of(tmp_path / "killed") == local_rows  # every row once, in order, as the local run wrote it
    # every shard committed exactly once; shard 1 by the retried worker, not by the process that died
    logged = [line.split() for line in commits.read_text().splitlines()]
    assert sorted(path for path, _ in logged) == [s.marker_path for s in plan_shards(NUM_ROWS, SHARD)]
    marker = json.loads((output / plan_shards(NUM_ROWS, SHARD)[1].marker_path).read_text())
    assert marker["worker"]["pid"] != died and dict(logged)[marker_path(1)] == str(marker["worker"]["pid"])
    assert sorted(p.name for p in (output / "data").iterdir()) == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    assert not list((output / TMP_DIR).iterdir())  # the dead attempt's partial files were cleaned up


@pytest.mark.slow
def test_a_ray_worker_killed_from_outside_is_retried(ray_instance, local_rows, tiny_model_path, tmp_path):
    plan, commits = ray_instance
    hold = plan.with_name("hold-on.txt")
    hold.write_text(local_rows[SHARD]["text"])  # the first batch of shard 1
    killed = []

    def kill_the_holder() -> None:
        pid_file = Path(f"{hold}.pid")
        deadline = time.monotonic() + 300
        while not pid_file.exists() or not pid_file.read_text():
            if time.monotonic() > deadline:
                return
            time.sleep(0.1)
        killed.append(int(pid_file.read_text()))
        os.kill(killed[0], signal.SIGKILL)  # the task's own process, not the raylet

    killer = threading.Thread(target=kill_the_holder, daemon=True)
    killer.start()
    try:
        recipe = recipe_file(tmp_path, tiny_model_path, tmp_path / "sigkill")
        assert main(["synthesize", str(recipe), "-q", "--run.executor", "ray", "--run.num_workers", "2"]) == 0
    finally:
        hold.unlink()
        killer.join(10)
    assert killed, "no worker reached the batch"
    assert rows_of(tmp_path / "sigkill") == local_rows
    marker = json.loads((tmp_path / "sigkill/synthesized" / marker_path(1)).read_text())
    assert marker["worker"]["pid"] != killed[0]  # committed by the retried worker


def marker_path(index: int) -> str:
    return plan_shards(NUM_ROWS, SHARD)[index].marker_path


# --- streaming reads ------------------------------------------------------------------------------------------------


class WholeReadError(AssertionError):
    pass


class NoWholeReadsFile(LocalFileOpener):
    """A local Parquet file that refuses to be read whole: `read()` without a size, or one read as large as the file,
    fails (what `cat_file` and a naive `read_table(BytesIO(...))` do). Small JSON markers may be read whole; the test's
    Parquet files are larger than the 64 KiB that pyarrow reads at the end of a file to find its footer."""

    def read(self, size=-1):
        total = os.path.getsize(self.path)
        if not self.path.endswith(".parquet"):
            return super().read(size)
        if size is None or size < 0 or size >= total:
            raise WholeReadError(f"whole-file read of {self.path} ({total} bytes)")
        return super().read(size)


class StreamingOnlyFileSystem(LocalFileSystem):
    """The local disk seen as a remote fsspec filesystem (`streamtest://`), whose files cannot be read whole."""

    protocol = ("streamtest",)
    root_marker = "/"

    @classmethod
    def _strip_protocol(cls, path):
        path = path[len("streamtest://") :] if str(path).startswith("streamtest://") else path
        return LocalFileSystem._strip_protocol(path)

    def unstrip_protocol(self, name):
        return f"streamtest://{self._strip_protocol(name)}"

    def _open(self, path, mode="rb", block_size=None, **kwargs):
        if "r" in mode:
            return NoWholeReadsFile(self._strip_protocol(path), mode, fs=self, **kwargs)
        return super()._open(path, mode, block_size=block_size, **kwargs)


@pytest.fixture
def streaming_only_url(tmp_path, monkeypatch):
    fsspec.register_implementation("streamtest", StreamingOnlyFileSystem, clobber=True)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    return f"streamtest://{tmp_path}/run"


def test_a_finished_run_is_read_back_without_reading_any_file_whole(streaming_only_url, tmp_path):
    def pairs_after_shard_0(batch):
        # shard 0 has only empty lists (Arrow: list<null>), the others structs: the explicit features align them
        return {
            "pairs": [[] if i < 4 else [{"instruction": f"q{i}", "response": "a" * i}] for i in batch["id"]],
            "blob": [os.urandom(64 * 1024).hex() for _ in batch["id"]],  # 128 KiB that do not compress
        }

    dataset = Dataset.from_dict({"id": list(range(16)), "text": [f"t{i}" for i in range(16)]})
    ShardedRunner(pairs_after_shard_0, streaming_only_url, shard_size=4, batch_size=4).run(dataset)
    store = Store(streaming_only_url)
    assert not store.is_local
    assert all(store.size(s.data_path) > 256 * 1024 for s in plan_shards(16, 4))
    with pytest.raises(WholeReadError):  # the guard works: a whole-file read of a shard fails
        store.fs.cat_file(store.path("data/train-00000-of-00004.parquet"))

    assembled = assemble_shards(streaming_only_url)["train"]
    assert assembled["id"] == list(range(16)) and assembled["pairs"][0] == [] and assembled["pairs"][5][0]["response"]
    assert assembled.cache_files  # memory-mapped from Arrow cache files, not a table held in memory
    assert assembled.features["pairs"].feature["instruction"].dtype == "string"

    # a stage output reads back the same way
    StageFolder(f"{streaming_only_url}-stage").save(assembled, config={"step": 1}, rows_per_file=5)
    loaded = StageFolder(f"{streaming_only_url}-stage").load()["train"]
    assert loaded.cache_files and loaded.to_list() == assembled.to_list()

    # a redone shard with new content is read anew, never served from the cache of the old one
    ShardedRunner(
        lambda b: {key: ["new" + x for x in v] if key == "blob" else v for key, v in pairs_after_shard_0(b).items()},
        streaming_only_url,
        shard_size=4,
        batch_size=4,
        config={"v": 2},
        overwrite=True,
    ).run(dataset)
    assert all(blob.startswith("new") for blob in assemble_shards(streaming_only_url)["train"]["blob"])
