"""Every stage scales (issue 24): templify, mix and the export's tokenization run in shards on the run's executor
and give the same bytes whatever the executor and the worker count; their shards are committed one by one, so an
interrupted stage resumes and a damaged file is made again; the mix's streaming selection is the whole-array
selection it replaced.

The executor test synthesizes 24 bundled paragraphs once with the tiny model (3 shards), then runs `hf-ipt templify`,
`hf-ipt mix` (mix shards of 9 rows: several count, route and gather shards) and `hf-ipt export` (a tokenization
shard per mix file) on one local worker, on two local worker processes and on two Ray workers (a local Ray instance
of 2 CPUs).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_ipt.cli import main
from hf_ipt.config import RunConfig
from hf_ipt.engines import ENGINES, CallableEngine
from hf_ipt.execution.phases import PHASES_DIR, WORK_DIR, ShardResult, parquet_bytes
from hf_ipt.mixing import DiskArrays, select_for_target
from hf_ipt.stages.base import NO_OPTIONS, InPlace, Stage, StageOutput, stage_data_files
from hf_ipt.stages.templify import TemplifyShards, TemplifyStage
from hf_ipt.store import STAGE_MARKER_PATH, read_batches
from hf_ipt.testing import tiny_recipe

NUM_ROWS, SHARD, BATCH, MIX_SHARD = 24, 8, 4, 9
FORMATS = ["olmo_core", "megatron", "llamafactory"]


# --- the selection ---------------------------------------------------------------------------------------------


def whole_array_selection(counts, target, rng):
    """The selection as hf-ipt made it before it streamed (f23fdd6's `_select_for_target` and `_close_the_gap`, with
    the whole shuffled order, the leftovers and the chosen examples as Python lists): the reference."""
    order = rng.permutation(len(counts))
    running = np.cumsum(counts[order])
    taken = int(np.searchsorted(running, target, side="right"))
    chosen = list(order[:taken])
    deficit = target - (float(running[taken - 1]) if taken else 0.0)
    smallest = float(counts.min()) if len(counts) else 0.0
    skipped = []
    for cursor in range(taken, len(order)):
        if deficit < smallest:
            skipped.extend(order[cursor:].tolist())
            break
        position = int(order[cursor])
        if counts[position] <= deficit:
            chosen.append(position)
            deficit -= float(counts[position])
        else:
            skipped.append(position)
    if deficit > 0 and skipped:
        rest = counts[skipped].astype(np.float64)
        by_count = np.argsort(rest, kind="stable")
        ranked = rest[by_count]

        def nearest(wanted):
            right = np.clip(np.searchsorted(ranked, wanted), 0, len(ranked) - 1)
            left = np.clip(right - 1, 0, len(ranked) - 1)
            pick = np.where(np.abs(ranked[left] - wanted) <= np.abs(ranked[right] - wanted), left, right)
            return pick, np.abs(ranked[pick] - wanted)

        best_error, best = deficit, list(chosen)
        add_pick, add_error = nearest(np.asarray([deficit]))
        if add_error[0] < best_error:
            best_error, best = float(add_error[0]), [*chosen, skipped[int(by_count[add_pick[0]])]]
        if chosen:
            swap_pick, swap_error = nearest(deficit + counts[chosen].astype(np.float64))
            i = int(np.argmin(swap_error))
            if swap_error[i] < best_error:
                best = [p for k, p in enumerate(chosen) if k != i] + [skipped[int(by_count[swap_pick[i]])]]
        chosen = best
    return np.sort(np.asarray(chosen, dtype=np.int64))


@settings(max_examples=400, deadline=None)
@given(
    counts=st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=40)
    | st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=40),
    fraction=st.floats(min_value=0.0, max_value=1.0),
    whole=st.booleans(),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    block=st.integers(min_value=1, max_value=9),
)
def test_the_streaming_selection_chooses_what_the_whole_array_pass_chose(counts, fraction, whole, seed, block):
    # few distinct counts (1..4) make ties everywhere: which of equal leftovers is added or swapped must not change
    counts = np.array(counts, dtype=np.int64)
    target = fraction * counts.sum()
    target = float(int(target)) if whole else target
    expected = whole_array_selection(counts, target, np.random.default_rng(seed))
    streamed = select_for_target(counts, target, np.random.default_rng(seed), block=block)
    assert streamed.tolist() == expected.tolist()


def test_the_selection_works_on_memory_mapped_arrays(tmp_path):
    counts = np.random.default_rng(3).integers(1, 50, size=5000).astype(np.int64)
    on_disk = DiskArrays(tmp_path)(len(counts), np.int64)
    on_disk[:] = counts
    streamed = select_for_target(on_disk, 31_000.5, np.random.default_rng(9), allocate=DiskArrays(tmp_path), block=64)
    assert isinstance(streamed, np.memmap) and len(list(tmp_path.glob("*.npy"))) > 2
    assert streamed.tolist() == whole_array_selection(counts, 31_000.5, np.random.default_rng(9)).tolist()


# --- templify and mix on every executor ------------------------------------------------------------------------


def answer(prompts: list[str]) -> list[str]:
    """A synthesizer that answers at once: two pairs per prompt, their words taken from the prompt's hash."""
    answers = []
    for prompt in prompts:
        word = hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:6]
        answers.append(
            f"<QUE> What does {word} mean? <ANS> It means {word}. </END>\n\n<QUE> And {word[:3]}? <ANS> No. </END>"
        )
    return answers


class InstantEngine(CallableEngine):
    name = "instant-scale"

    def __init__(self, model, **settings):
        super().__init__(answer)


def recipe_file(folder: Path, model: str) -> Path:
    """24 paragraphs, 3 synthesis shards (an engine that answers at once), templify, a 1:1 mix with the bundled
    general instructions in shards of 9 rows, an export in every format, a local release."""
    folder.mkdir(parents=True, exist_ok=True)
    recipe = tiny_recipe(
        model, folder / "run", rows=NUM_ROWS, batch_size=BATCH, shard_size=SHARD, engine=InstantEngine.name,
        release="scale", changes={"synth.engine_kwargs": {}, "mix.shard_rows": MIX_SHARD, "export.formats": FORMATS},
    )  # fmt: skip
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module", autouse=True)
def instant_engine():
    ENGINES[InstantEngine.name] = InstantEngine  # the recipes name it
    yield
    del ENGINES[InstantEngine.name]


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory, tiny_model_path) -> Path:
    """A finished synthesis (the input of every run below)."""
    folder = tmp_path_factory.mktemp("synthesized")
    assert main(["synthesize", str(recipe_file(folder, tiny_model_path)), "-q"]) == 0
    return folder / "run" / "synthesized"


def templify_and_mix(synthesized: Path, folder: Path, model: str, *options: str) -> Path:
    """`hf-ipt templify`, `hf-ipt mix` then `hf-ipt export` in a run folder holding a copy of the synthesis; the run
    folder."""
    recipe = recipe_file(folder, model)
    shutil.copytree(synthesized, folder / "run" / "synthesized")
    for stage in ("templify", "mix", "export"):
        assert main([stage, str(recipe), "-q", *options]) == 0
    return folder / "run"


def outputs(run: Path) -> dict[str, str]:
    """SHA-256 of every data file of templified/ and mixed/, of every file of export/, and each stage's committed
    report."""
    found = {}
    for stage in ("templified", "mixed"):
        for path in sorted((run / stage / "data").glob("*.parquet")):
            found[f"{stage}/data/{path.name}"] = hashlib.sha256(path.read_bytes()).hexdigest()
        found[f"{stage} report"] = json.dumps(json.loads((run / stage / STAGE_MARKER_PATH).read_text())["extra"])
    for path in sorted((run / "export").rglob("*")):
        if path.is_file() and ".hf_ipt" not in path.parts:
            found[str(path.relative_to(run))] = hashlib.sha256(path.read_bytes()).hexdigest()
    found["export report"] = json.dumps(json.loads((run / "export" / STAGE_MARKER_PATH).read_text())["extra"])
    return found


@pytest.fixture(scope="module")
def one_worker(synthesized, tmp_path_factory, tiny_model_path) -> dict[str, str]:
    run = templify_and_mix(synthesized, tmp_path_factory.mktemp("one"), tiny_model_path)
    assert not (run / "mixed" / WORK_DIR).exists()  # the scratch of the phases goes once the output is committed
    return outputs(run)


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'hf-ipt[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_two_local_workers_give_the_bytes_of_one(synthesized, one_worker, tmp_path, tiny_model_path):
    run = templify_and_mix(synthesized, tmp_path, tiny_model_path, "--run.num_workers", "2")
    assert outputs(run) == one_worker
    assert len([name for name in one_worker if name.startswith("mixed/data/")]) > 1  # several gather shards
    workers = {
        json.loads(marker.read_text())["worker"]["index"]
        for marker in (run / "templified" / PHASES_DIR / "templify").glob("*.json")
    }
    assert workers == {0, 1}


@pytest.mark.slow
def test_two_ray_workers_give_the_bytes_of_one(local_ray, synthesized, one_worker, tmp_path, tiny_model_path):
    options = ("--run.executor", "ray", "--run.num_workers", "2")
    run = templify_and_mix(synthesized, tmp_path, tiny_model_path, *options)
    assert outputs(run) == one_worker
    marker = json.loads(next((run / "mixed" / PHASES_DIR / "gather").glob("*.json")).read_text())
    assert marker["worker"]["of"] == 2


# --- resume and damage -----------------------------------------------------------------------------------------


def test_an_interrupted_templify_resumes_from_its_committed_shards(
    synthesized, one_worker, tmp_path, tiny_model_path, monkeypatch, capsys
):
    recipe = recipe_file(tmp_path, tiny_model_path)
    shutil.copytree(synthesized, tmp_path / "run" / "synthesized")
    templify = TemplifyShards.__call__
    computed = []

    def crash_on_the_second_shard(self, index, store):
        if index == 1 and not computed.count(1):
            computed.append(index)
            raise RuntimeError("killed")
        computed.append(index)
        return templify(self, index, store)

    monkeypatch.setattr(TemplifyShards, "__call__", crash_on_the_second_shard)
    # the CLI turns an error nobody foresaw into one line and exit status 2 (the traceback goes to the log file)
    assert main(["templify", str(recipe), "-q"]) == 2
    assert "RuntimeError: killed" in capsys.readouterr().err
    markers = tmp_path / "run" / "templified" / PHASES_DIR / "templify"
    assert [p.name for p in sorted(markers.glob("*.json"))] == ["shard-00000.json"]
    first = (markers / "shard-00000.json").read_text()
    assert main(["templify", str(recipe), "-q"]) == 0
    assert computed == [0, 1, 1, 2]  # shard 0 was kept, not made again
    assert (markers / "shard-00000.json").read_text() == first
    assert main(["mix", str(recipe), "-q"]) == 0
    assert main(["export", str(recipe), "-q"]) == 0
    assert outputs(tmp_path / "run") == one_worker


def test_a_damaged_mix_file_is_made_again_and_the_others_kept(synthesized, one_worker, tmp_path, tiny_model_path):
    run = templify_and_mix(synthesized, tmp_path, tiny_model_path)
    data = sorted((run / "mixed" / "data").glob("*.parquet"))
    markers = sorted((run / "mixed" / PHASES_DIR / "gather").glob("*.json"))
    kept = {marker.name: marker.stat().st_mtime_ns for marker in markers[1:]}
    damaged = bytearray(data[0].read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    data[0].write_bytes(bytes(damaged))
    assert main(["mix", str(recipe_file(tmp_path, tiny_model_path)), "-q"]) == 0
    assert outputs(run) == one_worker
    assert {marker.name: marker.stat().st_mtime_ns for marker in markers[1:]} == kept


# --- another stage on the same machinery ----------------------------------------------------------------------


class CountWords:
    """Shard i of `ShardedWordCount`: the words of every text of templified file i."""

    def __init__(self, upstream, files):
        self.upstream, self.files = upstream, files

    def __call__(self, index, store):
        split, relative = self.files[index]
        words = [
            len(text.split())
            for batch in read_batches(self.upstream, relative, columns=["text"], batch_size=5)
            for text in batch.column("text").to_pylist()
        ]
        target = f"data/{split}-{index:05d}-of-{len(self.files):05d}.parquet"
        return ShardResult({target: parquet_bytes(pa.table({"words": words}))}, len(words), {"words": sum(words)})


class ShardedWordCount(Stage):
    """README's example stage (the words of every templified text), in shards: a stage adopts the executors, the
    commits and the resume of the phases with `context.run_shards` and `InPlace.of_shards`."""

    name = "count"
    description = "count the words of every templified text, one shard per templified file"
    folder = "counted"
    reads = TemplifyStage

    @classmethod
    def from_recipe(cls, recipe, options=NO_OPTIONS):
        return cls()

    def identity(self):
        return {"unit": "whitespace-separated words"}

    def compute(self, context):
        files = stage_data_files(context.upstream)
        markers = context.run_shards("count", CountWords(context.upstream, files), len(files))
        words = sum(marker["figures"]["words"] for marker in markers)
        return StageOutput(report={"figures": {"words": words}}, in_place=InPlace.of_shards(markers))


def test_a_new_stage_runs_in_shards_on_any_worker_count(synthesized, tmp_path, tiny_model_path):
    run = templify_and_mix(synthesized, tmp_path / "one", tiny_model_path)
    shutil.copytree(run, tmp_path / "two")
    one = ShardedWordCount().run(RunConfig(output_dir=str(run)))
    two = ShardedWordCount().run(RunConfig(output_dir=str(tmp_path / "two"), num_workers=2))
    texts = sum(json.loads((run / "templified" / STAGE_MARKER_PATH).read_text())["num_rows"].values())
    assert one.figures["words"] == two.figures["words"] > 0 and one.rows == two.rows == texts
    files = sorted(p.name for p in (run / "counted" / "data").glob("*.parquet"))
    assert len(files) == NUM_ROWS // SHARD
    for name in files:
        assert (run / "counted/data" / name).read_bytes() == (tmp_path / "two/counted/data" / name).read_bytes()
    assert ShardedWordCount().run(RunConfig(output_dir=str(run))).reused


def test_a_local_release_reads_its_rows_batch_by_batch_and_writes_the_bytes_of_the_rows(
    synthesized, tmp_path, tiny_model_path, monkeypatch
):
    """The release never maps the corpus it releases (mapped pages stay resident: the peak of a large run was the
    release's): it reads the mix's files batch by batch and writes row groups of `ROW_GROUP_ROWS` rows. The bytes
    are those of the same rows saved from a `datasets.Dataset`, across the boundaries of the mix's files and of the
    release's own files."""
    import datasets

    import hf_ipt.store as store_module
    from hf_ipt.store import StageFolder

    run = templify_and_mix(synthesized, tmp_path / "a", tiny_model_path)
    monkeypatch.setattr(store_module, "ROW_GROUP_ROWS", 5)

    def mapped(self):
        raise AssertionError(f"{self.url} was memory-mapped whole")

    monkeypatch.setattr(StageFolder, "load", mapped)
    assert main(["push", str(tmp_path / "a" / "recipe.yaml"), "-q"]) == 0
    mixed_files = sorted(str(path) for path in (run / "mixed" / "data").glob("*.parquet"))
    assert len(mixed_files) > 1
    mixed = datasets.load_dataset("parquet", data_files=mixed_files, split="train")
    released = sorted((run / "release" / "data").glob("*.parquet"))
    assert [pq.ParquetFile(path).num_row_groups for path in released] == [-(-mixed.num_rows // 5)]
    assert datasets.load_dataset(str(run / "release"), split="train").to_list() == mixed.to_list()
    from_dataset = StageFolder(str(tmp_path / "from-dataset"))
    from_dataset.save(mixed, config={})
    assert (tmp_path / "from-dataset" / "data" / released[0].name).read_bytes() == released[0].read_bytes()
    # files of 7 rows: row groups cut at each file's end, then 5 by 5 again, from the mix's files or from a Dataset
    cut = {}
    for name, rows in (("parquet", StageFolder(str(run / "mixed")).rows()), ("dataset", {"train": mixed})):
        folder = StageFolder(str(tmp_path / name))
        files = folder.save(rows, config={}, rows_per_file=7)["files"]["train"]
        cut[name] = [(tmp_path / name / relative).read_bytes() for relative in files]
    assert cut["parquet"] == cut["dataset"] and len(cut["parquet"]) == -(-mixed.num_rows // 7)


@pytest.mark.parametrize("recorded", [5, 7])
def test_files_holding_other_rows_than_their_commit_are_never_saved_as_they_are(recorded):
    """Rows read batch by batch are counted against what the commit recorded: files holding fewer or more rows
    (changed since) stop the save with the files named, before anything is committed; none is lost or made up."""
    import datasets

    from hf_ipt.store import IncompleteRunError, ParquetRows, StageFolder

    source = StageFolder("memory://test-scale/miscounted")
    source.save(datasets.Dataset.from_dict({"n": list(range(6))}), config={})
    rows = ParquetRows(source, source.committed_marker()["files"]["train"], recorded)
    target = StageFolder(f"memory://test-scale/miscounted-copy-{recorded}")
    how = "fewer" if recorded > 6 else "more"
    with pytest.raises(IncompleteRunError, match=f"hold {how} rows than the {recorded} their commit marker recorded"):
        target.save({"train": rows}, config={}, rows_per_file=2)
    assert target.marker() is None
