"""One process per device with `datasets` (rank pinning), and Ray Data / Ray workers on a local Ray instance."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from datasets import Dataset

from hf_ipt import Synthesizer
from hf_ipt.engines import VLLMEngine
from hf_ipt.execution import LocalExecutor, RayExecutor, make_executor, map_on_ranks, ray_map_parquet
from hf_ipt.placement import Placement, plan_placement, rank_from_args
from hf_ipt.testing import corpus_paragraphs

devices_per_rank = VLLMEngine.devices  # the devices one engine occupies: vLLM's own answer

MAX_NEW = 24


def test_gpu_placement_gives_each_rank_its_devices():
    gpus = ["0", "1", "2", "3", "4", "5", "6", "7"]
    assert [plan_placement(r, num_ranks=8, visible_gpus=gpus).gpus for r in (0, 7)] == [("0",), ("7",)]
    assert plan_placement(2, num_ranks=4, devices_per_rank=2, visible_gpus=gpus).gpus == ("4", "5")
    assert plan_placement(1, devices_per_rank=4, visible_gpus=gpus).gpus == ("4", "5", "6", "7")  # no num_ranks
    with pytest.raises(ValueError, match=r"rank 2 needs GPUs 4\.\.5 .* only 4 are visible .* num_proc <= 2"):
        plan_placement(2, devices_per_rank=2, visible_gpus=gpus[:4])
    with pytest.raises(ValueError, match="use num_proc <= 4"):
        plan_placement(0, num_ranks=5, devices_per_rank=2, visible_gpus=gpus)


def test_cpu_placement_splits_the_cores():
    cores = range(8)
    assert [plan_placement(r, num_ranks=3, cpus=cores).cpus for r in range(3)] == [(0, 1, 2), (3, 4, 5), (6, 7)]
    assert plan_placement(1, num_ranks=2, devices_per_rank=2, cpus=cores).omp_threads_bind == "4,5|6,7"
    assert plan_placement(3, num_ranks=4, cpus=[0, 1]).cpus == (1,)  # more ranks than cores: one core each
    assert plan_placement(1, cpus=cores) == Placement(1, None)  # unknown number of ranks: left unbound
    with pytest.raises(ValueError, match="rank 1 has 1 core"):
        plan_placement(1, num_ranks=8, devices_per_rank=2, cpus=cores)
    with pytest.raises(ValueError, match="rank 2 is out of range for 2 ranks"):
        plan_placement(2, num_ranks=2, cpus=cores)
    with pytest.raises(ValueError, match="rank must be an integer >= 0"):
        plan_placement(-1, cpus=cores)


def test_rank_arguments_and_parallel_settings():
    assert rank_from_args(([4, 5], 1)) == 1 and rank_from_args((0,)) == 0
    assert rank_from_args(([4, 5],)) is None and rank_from_args(()) is None and rank_from_args((True,)) is None
    assert devices_per_rank({}) == 1
    assert devices_per_rank({"tensor_parallel_size": 2, "pipeline_parallel_size": 2, "dtype": "bfloat16"}) == 4
    with pytest.raises(ValueError, match="hf-ipt runs data parallelism itself"):
        devices_per_rank({"data_parallel_size": 2})
    with pytest.raises(ValueError, match="tensor_parallel_size must be an integer >= 1"):
        devices_per_rank({"tensor_parallel_size": 0})


PIN_SCRIPT = """
import json, os, sys
from hf_ipt.placement import pin_rank
placement = pin_rank(int(sys.argv[1]), devices_per_rank=int(sys.argv[2]))
print(json.dumps({"gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "cores": sorted(os.sched_getaffinity(0)),
                  "bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND"), "again": pin_rank(5) == placement}))
"""


def run_pin(rank, devices, **env):
    command = [sys.executable, "-c", PIN_SCRIPT, str(rank), str(devices)]
    environment = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "HF_IPT_NUM_RANKS")}
    done = subprocess.run(command, env={**environment, **env}, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_pin_rank_sets_devices_and_cores_in_a_fresh_process():
    gpu = run_pin(1, 2, CUDA_VISIBLE_DEVICES="3,5,7,9")
    assert gpu["gpus"] == "7,9" and gpu["again"] is True  # a second call keeps the first placement
    cores = sorted(os.sched_getaffinity(0))
    cpu = run_pin(1, 1, HF_IPT_NUM_RANKS="2")
    expected = plan_placement(1, num_ranks=2, cpus=cores)
    assert cpu["gpus"] is None and cpu["cores"] == list(expected.cpus) and cpu["bind"] == expected.omp_threads_bind
    assert run_pin(0, 1)["cores"] == cores  # number of ranks unknown: not bound


def reporting_engine(prompts):
    """A scripted synthesizer that answers with where it runs: the cores it is bound to and the GPUs it sees."""
    where = f"cores {sorted(os.sched_getaffinity(0))} gpus {os.environ.get('CUDA_VISIBLE_DEVICES')}"
    return [f"<QUE> Where does {p.rsplit('<CON> ', 1)[1][:20]} run? <ANS> {where} </END>" for p in prompts]


def test_dataset_map_with_ranks_pins_each_worker(tiny_model_path, monkeypatch):
    texts = [f"text number {i}" for i in range(8)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")  # GPUs as listed; nothing initializes CUDA here
    synth = Synthesizer(
        model=tiny_model_path, engine=reporting_engine, engine_kwargs={"tensor_parallel_size": 2}, max_model_len=512
    )
    out = map_on_ranks(Dataset.from_dict({"text": texts}), synth, num_proc=2, start_method="fork", batch_size=2)
    answers = [pairs[0]["response"] for pairs in out["pairs"]]
    assert all(a.endswith("gpus 4,5") for a in answers[:4]) and all(a.endswith("gpus 6,7") for a in answers[4:])

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("HF_IPT_NUM_RANKS", "2")  # what map_on_ranks sets; here with a plain Dataset.map
    synth = Synthesizer(model=tiny_model_path, engine=reporting_engine, max_model_len=512)
    out = Dataset.from_dict({"text": texts}).map(synth, batched=True, batch_size=2, with_rank=True, num_proc=2)
    cores = sorted(os.sched_getaffinity(0))
    for rank, rows in ((0, range(4)), (1, range(4, 8))):
        expected = list(plan_placement(rank, num_ranks=2, cpus=cores).cpus)[:1]  # forked after torch: one core
        assert all(out["pairs"][r][0]["response"].startswith(f"cores {expected} ") for r in rows)


def test_map_on_ranks_refuses_shards_that_would_move_chains(tiny_model_path):
    synth = Synthesizer(model=tiny_model_path, engine=reporting_engine, rounds=2)
    with pytest.raises(ValueError, match=r"shards starting at rows \[5\], not all multiples of batch_size=4"):
        map_on_ranks(Dataset.from_dict({"text": ["x"] * 10}), synth, num_proc=2, batch_size=4)
    with pytest.raises(TypeError, match="map_on_ranks sets \\['with_rank'\\] itself"):
        map_on_ranks(Dataset.from_dict({"text": ["x"] * 8}), synth, num_proc=2, batch_size=4, with_rank=True)


@pytest.fixture(scope="module")
def texts():
    return corpus_paragraphs(limit=24)


def fp32_vllm_synthesizer(tiny_model_path):
    return Synthesizer(
        model=tiny_model_path,
        engine="vllm",
        rounds=3,
        max_model_len=1024,
        max_new_tokens=MAX_NEW,
        engine_kwargs={"dtype": "float32"},
    )


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_num_proc_2_with_ranks_equals_num_proc_1(tiny_model_path, texts):
    pytest.importorskip("vllm")
    synth = fp32_vllm_synthesizer(tiny_model_path)
    dataset = Dataset.from_dict({"text": texts, "doc": list(range(len(texts)))})
    # each worker builds its own engine after pinning; the test process holds none, and with one core per rank
    # forking is safe (auto); the single rank is forked too here, to save the spawn's imports (it runs on one core)
    two = map_on_ranks(dataset, synth, num_proc=2, batch_size=6, load_from_cache_file=False)
    one = map_on_ranks(dataset, synth, num_proc=1, start_method="fork", batch_size=6, load_from_cache_file=False)
    assert two.to_list() == one.to_list()
    assert max(two["num_demonstrations"]) == 2 and "ok" in two["synth_status"]


def test_arrow_batch_mapper_keeps_input_types_and_checks_row_counts(tiny_model_path):
    import pyarrow as pa

    from hf_ipt.execution import ArrowBatchMapper

    table = pa.table({"text": ["one text.", "two texts."], "id": pa.array([7, 9], type=pa.int8())})
    synth = Synthesizer(model=tiny_model_path, engine=reporting_engine, max_model_len=512)
    out = ArrowBatchMapper(synth)(table)
    assert out.schema.field("id").type == pa.int8()  # untouched input column: its Arrow type as it was
    assert out.column("pairs").type == pa.list_(pa.struct([("instruction", pa.string()), ("response", pa.string())]))
    assert out.column("chain_position").to_pylist() == [0, 0]
    with pytest.raises(ValueError, match="returned columns of \\[1\\] rows for a batch of 2"):
        ArrowBatchMapper(lambda batch: {"x": [1]})(table)
    with pytest.raises(TypeError, match="must return a dict of columns"):
        ArrowBatchMapper(lambda batch: [1, 2])(table)


# --- Ray -----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'hf-ipt[ray]'")
    from ray import cloudpickle

    # this module's functions travel by value: Ray workers cannot import the tests folder
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # logical CPUs: 2 actors + the read and write tasks beside them on this 2-core machine
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_data_with_two_actors_equals_a_plain_map(local_ray, tmp_path, tiny_model_path, texts):
    # the real tiny model on the transformers engine (the lighter import in each actor); batches decide the rows
    synth = Synthesizer(
        model=tiny_model_path, engine="transformers", rounds=3, max_model_len=1024, max_new_tokens=MAX_NEW
    )
    dataset = Dataset.from_dict({"text": texts, "doc": list(range(len(texts)))})
    # two input files whose sizes are not multiples of the batch size: Ray must re-cut them into whole batches
    dataset.select(range(10)).to_parquet(tmp_path / "in" / "part-0.parquet")
    dataset.select(range(10, len(texts))).to_parquet(tmp_path / "in" / "part-1.parquet")
    ray_map_parquet(
        str(tmp_path / "in"), str(tmp_path / "out"), synth, batch_size=6, num_actors=2, num_cpus_per_actor=1
    )
    result = Dataset.from_parquet(sorted(str(p) for p in (tmp_path / "out").glob("*.parquet")))
    expected = Dataset.from_dict({"text": texts, "doc": list(range(len(texts)))}).map(
        synth, batched=True, batch_size=6, load_from_cache_file=False
    )
    assert result.to_list() == expected.to_list()
    assert max(result["num_demonstrations"]) == 2


def test_sharded_runner_on_ray_workers(local_ray, tmp_path, tiny_model_path):
    from hf_ipt.execution.runner import ShardedRunner, assemble_shards

    texts = [f"text number {i} about {w}" for i, w in enumerate(["cats", "dogs", "owls"] * 6)]
    dataset = Dataset.from_dict({"text": texts})
    synth = Synthesizer(model=tiny_model_path, engine=reporting_engine, rounds=2, max_model_len=512)
    runner = ShardedRunner(
        synth,
        str(tmp_path / "run"),
        shard_size=4,
        batch_size=2,
        config={"test": 1},
        num_workers=2,
        executor=RayExecutor(num_cpus_per_worker=1),
    )
    report = runner.run(dataset)
    reports = report.workers
    assert sorted(i for r in reports for i in r.processed) == list(range(5))
    assert report.processed == list(range(5)) and report.complete and report.rows_processed == len(texts)
    assert [r.processed for r in reports] == [[0, 2, 4], [1, 3]]  # worker i took shards i, i+2, ...
    expected = dataset.map(synth, batched=True, batch_size=2, load_from_cache_file=False)
    drop = ["synth_output", "pairs"]  # the answers name the worker's cores
    assert (
        assemble_shards(str(tmp_path / "run"))["train"].remove_columns(drop).to_list()
        == expected.remove_columns(drop).to_list()
    )
    # run again on Ray: resumed, nothing left to do
    again = (
        ShardedRunner(
            synth, str(tmp_path / "run"), shard_size=4, batch_size=2, config={"test": 1}, num_workers=2, executor="ray"
        )
        .run(dataset)
        .workers
    )
    assert [r.processed for r in again] == [[], []] and sorted(i for r in again for i in r.skipped) == list(range(5))


def test_executors_are_chosen_by_name_or_object(tmp_path):
    from hf_ipt.execution.runner import ShardedRunner

    assert (
        make_executor("local") == LocalExecutor() and make_executor("ray", num_gpus_per_worker=1).num_gpus_per_worker
    )
    assert make_executor(RayExecutor()) == RayExecutor()
    with pytest.raises(ValueError, match=r"unknown executor 'slurm'; choose one of \['local', 'processes', 'ray'\]"):
        make_executor("slurm")
    with pytest.raises(TypeError, match="only go with an executor name"):
        make_executor(LocalExecutor(), num_cpus_per_worker=2)
    with pytest.raises(ValueError, match="num_gpus_per_worker must be a number >= 0, got -1"):
        RayExecutor(num_gpus_per_worker=-1)
    with pytest.raises(ValueError, match="worker_index=1 with the ray executor, which starts all 2 workers itself"):
        ShardedRunner(len, str(tmp_path), shard_size=4, batch_size=2, worker_index=1, num_workers=2, executor="ray")
    # the local executor: this process is one worker; a zero-argument loader is called to get the input
    runner = ShardedRunner(
        lambda batch: {"n": [len(t) for t in batch["text"]]},
        str(tmp_path / "local"),
        shard_size=2,
        batch_size=2,
        worker_index=1,
        num_workers=2,
    )
    report = runner.run(lambda: Dataset.from_dict({"text": ["a", "bb", "ccc", "dddd", "e"]}))
    assert report.processed == [1] and report.missing == [0, 2] and [w.processed for w in report.workers] == [[1]]
