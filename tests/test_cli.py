"""The `hf-ipt` command: help, config, and resumable / multi-worker synthesis with the real (tiny) model."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from hf_ipt.cli import main
from hf_ipt.config import RecipeConfig, dotted_keys
from hf_ipt.engines import Engine
from hf_ipt.execution.runner import assemble_shards, plan_shards
from hf_ipt.quiet import LIBRARY_ENVIRONMENT
from hf_ipt.testing import tiny_recipe

# tests/hub_server.py: the local Hub double and its `local_hub` fixture, registered as tests/test_hub.py does
pytest_plugins = ["hub_server"]
RECIPES = Path(__file__).parent.parent / "recipes"
NUM_ROWS, SHARD = 40, 8


def small_recipe(tmp_path: Path, model: str, output: Path) -> Path:
    """A synthesis on 40 bundled paragraphs with the tiny model: 5 shards of one batch each."""
    recipe = tiny_recipe(model, output, rows=NUM_ROWS, batch_size=SHARD, changes={"build_tiny_model": True})
    path = tmp_path / f"{output.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "hf_ipt.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def table_of(output: Path):
    return assemble_shards(str(output / "synthesized"))["train"].with_format("arrow")[:].replace_schema_metadata(None)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_path):
    """An uninterrupted single-worker synthesis, run in this process."""
    tmp_path = tmp_path_factory.mktemp("reference")
    output = tmp_path / "ref"
    assert main(["synthesize", str(small_recipe(tmp_path, tiny_model_path, output)), "-q"]) == 0
    return output


def test_help_lists_every_command_and_every_recipe_key(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    top = capsys.readouterr().out
    for command in ("run", "synthesize", "templify", "mix", "push", "status", "config"):
        assert command in top
    with pytest.raises(SystemExit):
        main(["synthesize", "--help"])
    text = capsys.readouterr().out
    for option in ("--worker-index", "--rank", "--num-workers", "--world-size", "--overwrite", "--verbose"):
        assert option in text
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    for key in dotted_keys(RecipeConfig):
        assert f"--{key} " in text, key
    assert "Input rows per synthesis shard" in text  # the help text of run.shard_size


@pytest.mark.parametrize(
    ("command", "sections"),
    [
        ("synthesize", {"source", "chunk", "synth", "run", "build_tiny_model"}),
        ("templify", {"templify", "quality", "run"}),
        ("mix", {"mix", "mix_sources", "templify", "run"}),
        ("export", {"export", "mix", "templify", "run"}),
        ("push", {"release", "release_to", "card", "quality", "export", "run"}),  # export.in_release
    ],
)
def test_each_command_help_lists_only_the_recipe_sections_it_reads(capsys, command, sections):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    for key in dotted_keys(RecipeConfig):
        listed = f"--{key} " in text
        assert listed == (key.split(".")[0] in sections), (command, key)
    assert "collections.abc" not in text and "typing." not in text and "NoneType" not in text


def test_config_keys_lists_every_key_once_with_readable_types(capsys):
    assert main(["config", "--keys"]) == 0
    text = capsys.readouterr().out
    listed = [line.split()[0] for line in text.splitlines() if line.startswith("  --")]
    keys = dotted_keys(RecipeConfig)
    assert sorted(key for key in listed if "NAME" not in key) == sorted(f"--{key}" for key in keys)
    assert len(listed) == len(set(listed))
    assert "collections.abc" not in text and "typing." not in text
    assert "--card.tags  (list[str], default " in text
    assert "--source.max_rows  (int | null, default null)" in text
    assert "--release.repo_id  (str, required)" in text


def test_errors_name_the_recipe_keys_and_a_missing_recipe_says_how_to_give_one(capsys):
    required = ["--source.path", "bundled:quickstart", "--run.output_dir", "out"]
    assert main(["config", *required, "--synth.rounds", "0"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"synth\.rounds (\(in command-line overrides\) )?must be an integer >= 1, got 0", err)
    assert "synthesis." not in err
    assert main(["config", *required, "--release.repo_id", "nonamespace", "--release.version", "v1"]) == 2
    err = capsys.readouterr().err
    assert "release.repo_id must be 'namespace/name'" in err and "ReleaseConfig" not in err
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert "hf-ipt run: error: no recipe given: pass RECIPE.yaml" in err and "recipes/README.md" in err
    assert "--source.path DATASET --run.output_dir DIR" in err
    assert main(["run", "--source.path", "bundled:quickstart"]) == 2
    assert "set the required section run on the command line: --run.output_dir DIR" in capsys.readouterr().err


def test_config_prints_the_resolved_recipe_and_errors_name_the_key(capsys, tmp_path):
    recipe = RECIPES / "continual_pretraining.yaml"
    assert main(["config", str(recipe), "--synth.rounds", "2", "--run.shard_size=2000"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["synth"]["rounds"] == 2 and resolved["run"]["shard_size"] == 2000
    assert resolved["synth"]["max_new_tokens"] == 400  # from the file
    assert main(["config", str(recipe), "--synth.round", "2"]) == 2
    assert "unknown key 'synth.round' (command-line override); did you mean 'synth.rounds'?" in capsys.readouterr().err
    assert main(["config", str(recipe), "--run.shard_size", "1500"]) == 2
    assert "must be a multiple of synth.batch_size (1000)" in capsys.readouterr().err
    assert main(["config", str(recipe), str(recipe)]) == 2
    assert "expected at most one recipe file" in capsys.readouterr().err


def test_sigkill_during_synthesize_then_resume(tmp_path, tiny_model_path, reference, capsys):
    output = tmp_path / "killed"
    recipe = str(small_recipe(tmp_path, tiny_model_path, output))
    process = cli("synthesize", recipe)
    markers = output / "synthesized" / ".hf_ipt" / "done"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(markers.glob("*.json"))) < 2 and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {p.name: p.read_text() for p in markers.glob("*.json")}
    total = len(plan_shards(NUM_ROWS, SHARD))
    assert 2 <= len(finished) < total, f"the run must be killed part-way ({len(finished)} of {total} shards done)"

    # the same command again (in this process, which saves a second interpreter start-up)
    assert main(["synthesize", recipe]) == 0
    assert f"{total} ({total - len(finished)} computed now, {len(finished)} reused)" in capsys.readouterr().out
    for name, content in finished.items():  # finished shards were not recomputed: same marker, same attempt id
        assert (markers / name).read_text() == content
    # byte-identical to the uninterrupted run: every shard file, and the assembled rows in the same order
    for shard in plan_shards(NUM_ROWS, SHARD):
        ours = (output / "synthesized" / shard.data_path).read_bytes()
        assert ours == (reference / "synthesized" / shard.data_path).read_bytes(), shard.index
    assembled = table_of(output)
    assert assembled.equals(table_of(reference))
    assert assembled.num_rows == NUM_ROWS and assembled["id"].to_pylist() == table_of(reference)["id"].to_pylist()
    assert len(set(assembled["id"].to_pylist())) == NUM_ROWS  # no row lost or duplicated


def test_two_workers_on_disjoint_shards_equal_one_worker(tmp_path, tiny_model_path, reference):
    output = tmp_path / "workers"
    recipe = str(small_recipe(tmp_path, tiny_model_path, output))
    # worker 1 in its own process, worker 0 in this one, at the same time
    other = cli("synthesize", recipe, "--rank", "1", "--world-size", "2")
    codes = [main(["synthesize", recipe, "-q", "--worker-index", "0", "--num-workers", "2"])]
    _, stderr = other.communicate(timeout=180)
    codes.append(other.returncode)
    assert set(codes) <= {0, 3}, stderr  # 3: this worker is done but the other one was not yet
    assert 0 in codes or codes == [3, 3]
    done = output / "synthesized" / ".hf_ipt" / "done"
    writers = [json.loads((done / f"shard-{i:05d}.json").read_text())["worker"] for i in range(5)]
    assert [w["index"] for w in writers] == [i % 2 for i in range(5)] and {w["of"] for w in writers} == {2}
    assert table_of(output).equals(table_of(reference))


def later_stages(tiny_model_path: str) -> list[str]:
    """Overrides that add templify, a 1:1 mix with the bundled OpenOrca-format stand-in, and a release."""
    return [
        "--templify.target_tokenizer", tiny_model_path,
        "--mix.weights", "{augmented: 1, general: 1}",
        "--mix.tokenizer", tiny_model_path,
        "--mix.tolerance", "0.1",
        "--mix_sources.general.path", "bundled:quickstart_general",
        "--mix_sources.general.kind", "general_instructions",
        "--release.repo_id", "local/hf-ipt-test",
        "--release.version", "v0.1",
        "--release.config_name", "continual-m2",
    ]  # fmt: skip


def test_run_continues_the_pipeline_to_a_local_release_and_reuses_finished_stages(tiny_model_path, reference, capsys):
    recipe = str(reference.parent / "ref.yaml")  # the reference synthesis is already there: `run` reuses it
    stages = [*later_stages(tiny_model_path), "--release_to", "local"]
    assert main(["run", recipe, "-q", *stages]) == 0
    out = capsys.readouterr().out
    assert f"{NUM_ROWS // SHARD} (0 computed now, {NUM_ROWS // SHARD} reused)" in out
    assert "load it with datasets.load_dataset" in out and "achieved ratio" in out

    from datasets import load_dataset

    release = reference / "release"
    released = load_dataset(str(release), split="train")
    mixed = load_dataset(str(reference / "mixed"), split="train")
    assert released.num_rows == mixed.num_rows > 0 and set(released["source"]) == {"augmented", "general"}
    card = (release / "README.md").read_text()
    assert "config_name: continual-m2" in card and "`v0.1`" in card and "hf-ipt run" in card
    plots = list((release / "release_info" / "continual-m2" / "plots").glob("*.png"))
    assert plots and all(p.read_bytes().startswith(b"\x89PNG") for p in plots)
    stats = json.loads((release / "release_info" / "continual-m2" / "stats.json").read_text())
    assert stats["statistics"]["rows"] == released.num_rows

    # everything is finished: a second run reuses every stage and changes nothing
    before = (release / "README.md").stat().st_mtime_ns
    assert main(["run", recipe, "-q", *stages]) == 0
    assert capsys.readouterr().out.count("already done, reused") == 4
    assert (release / "README.md").stat().st_mtime_ns == before
    assert main(["status", recipe, *stages]) == 0
    status = capsys.readouterr().out
    assert f"{NUM_ROWS // SHARD}/{NUM_ROWS // SHARD} shards finished" in status and "release     finished" in status


def test_push_to_the_hub_releases_and_tags_the_version(local_hub, tiny_model_path, reference, capsys):
    from datasets import load_dataset

    from hf_ipt.release.hub import list_versions, load_release

    repo = f"hf-ipt-tester/cli-{uuid.uuid4().hex[:8]}"
    recipe = str(reference.parent / "ref.yaml")
    stages = [*later_stages(tiny_model_path), "--release.repo_id", repo, "--release.retry_base_delay", "0.01"]
    assert main(["run", recipe, "-q", *stages]) == 0
    assert f"/datasets/{repo}/tree/v0.1" in capsys.readouterr().out
    assert list(list_versions(repo)) == ["v0.1"]
    released = load_release(repo, "v0.1", "continual-m2", split="train")
    assert released["text"] == load_dataset(str(reference / "mixed"), split="train")["text"]
    recipe_text = local_hub.read_file(repo, "release_info/continual-m2/recipe.yaml", "v0.1").decode()
    assert "mix_sources" in recipe_text and local_hub.token not in recipe_text
    assert not (reference / "release" / "README.md").exists()  # no left-over of an earlier local release

    commits = len(local_hub.calls("commit", status=200))
    assert main(["push", recipe, "-q", *stages]) == 0  # already released: nothing is pushed again
    assert "already done, reused" in capsys.readouterr().out
    assert len(local_hub.calls("commit", status=200)) == commits


def test_a_new_local_release_is_never_read_from_the_cache_of_an_earlier_one(tmp_path):
    """`load_dataset(folder)` caches a folder whose card declares `configs` by the folder's name and the card's
    metadata, not by its files: two releases into folders named alike must differ in that metadata."""
    from datasets import Dataset, load_dataset

    from hf_ipt.release.bundle import dataset_info
    from hf_ipt.release.card import render_card

    cache = tmp_path / "cache"
    loaded = []
    for run, texts in enumerate((["one", "two", "three"], ["one", "two", "three", "four"])):
        folder = tmp_path / f"run{run}" / "release"
        data = {"train": Dataset.from_dict({"text": texts})}
        card = render_card(
            {"m2": None},
            repo_id="local/x",
            version="v0.1",
            hub_configs=[{"config_name": "m2", "data_files": [{"split": "train", "path": "data/train-*"}]}],
            dataset_info=dataset_info(data, "m2"),
        )
        (folder / "data").mkdir(parents=True)
        (folder / "README.md").write_text(str(card))
        data["train"].to_parquet(folder / "data" / "train-00000-of-00001.parquet")
        loaded.append(load_dataset(str(folder), split="train", cache_dir=str(cache))["text"])
    assert loaded == [["one", "two", "three"], ["one", "two", "three", "four"]]
    assert "dataset_info:" in str(card) and "num_examples: 4" in str(card)


def test_pipeline_run_from_python_commits_each_stage_report(reference, tiny_model_path):
    """`hf_ipt.pipeline.run` is the library call behind the command; each stage commits its report with its marker."""
    from hf_ipt.pipeline import run
    from hf_ipt.store import StageFolder

    recipe = str(reference.parent / "ref.yaml")
    summaries = run(recipe, ("synthesize", "templify"), overrides={"templify.target_tokenizer": tiny_model_path})
    assert [s.stage for s in summaries] == ["synthesize", "templify"] and all(s.complete for s in summaries)
    assert summaries[0].reused and summaries[0].rows == NUM_ROWS
    synthesis = StageFolder(str(reference / "synthesized")).marker()["extra"]
    assert synthesis["rows"] == NUM_ROWS and synthesis["pairs"] == summaries[0].figures["pairs"]
    templified = StageFolder(str(reference / "templified")).marker()["extra"]["statistics"]["train"]
    assert templified["texts"] == summaries[1].figures["texts"]
    assert sum(templified["pairs_per_text"].values()) == templified["texts"]
    with pytest.raises(ValueError, match="unknown stage"):
        run(recipe, ("train",))


class _RefusingEngine(Engine):
    """An engine whose constructor refuses an argument, as vLLM's EngineArgs does (registered engines are Engine
    classes: they answer the preflight's questions about their settings; this one accepts any names)."""

    name = "refusing"

    def __init__(self, model, **settings):
        raise TypeError("EngineArgs.__init__() got an unexpected keyword argument 'batch_size'")

    def generate(self, requests, max_new_tokens):
        raise AssertionError("never started")


def test_engine_start_up_and_unreadable_inputs_are_one_line_errors(tmp_path, tiny_model_path, reference, capsys,
                                                                   monkeypatch):  # fmt: skip
    from hf_ipt.engines import ENGINES

    monkeypatch.setitem(ENGINES, "refusing", _RefusingEngine)
    recipe = str(small_recipe(tmp_path, tiny_model_path, tmp_path / "refused"))
    assert main(["synthesize", recipe, "-q", "--synth.engine", "refusing"]) == 2
    err = capsys.readouterr().err
    assert "hf-ipt synthesize: error: the refusing engine does not accept synth.engine_kwargs.batch_size" in err
    assert "remove it" in err and "Traceback" not in err
    assert main(["synthesize", recipe, "-q", "--synth.engine", "refusing", "--verbose"]) == 2
    assert "Traceback" in capsys.readouterr().err  # --verbose shows where it came from

    # a tokenizer that cannot be loaded (transformers raises an OSError): the key at fault, no traceback
    copy = tmp_path / "copy"
    shutil.copytree(reference, copy)
    recipe = str(small_recipe(tmp_path, tiny_model_path, copy))
    assert main(["templify", recipe, "-q", "--templify.target_tokenizer", "/nonexistent/tok"]) == 2
    err = capsys.readouterr().err
    # the preflight finds it before the stage starts; the stage itself names the key too (below)
    assert "hf-ipt templify: error:" in err and "templify.target_tokenizer" in err and "/nonexistent/tok" in err
    assert "Traceback" not in err
    from hf_ipt.templify import TemplifyConfig

    with pytest.raises(ValueError, match=r"templify.target_tokenizer '/nonexistent/tok' could not be loaded"):
        TemplifyConfig(target_tokenizer="/nonexistent/tok").resolve_target_format()


def test_an_os_error_from_loading_inputs_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    import hf_ipt.cli

    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/data/corpus")

    monkeypatch.setattr(hf_ipt.cli, "run", unreadable)
    required = ["--source.path", "bundled:quickstart", "--run.output_dir", str(tmp_path / "out")]
    assert main(["synthesize", "-q", *required]) == 2
    err = capsys.readouterr().err
    assert "hf-ipt synthesize: error: PermissionError: [Errno 13] Permission denied: '/data/corpus'" in err


THIRD_PARTY_INFO = re.compile(r"^(?!creating the)\S*.*\bINFO\b", re.MULTILINE)


@pytest.mark.vllm
@pytest.mark.slow
def test_a_vllm_run_prints_no_third_party_info_unless_verbose(tmp_path, tiny_model_path, monkeypatch):
    pytest.importorskip("vllm")
    recipe = small_recipe(tmp_path, tiny_model_path, tmp_path / "quiet")
    data = yaml.safe_load(recipe.read_text())
    data["source"]["max_rows"] = SHARD
    data["synth"].update(engine="vllm", rounds=1, engine_kwargs={})
    recipe.write_text(yaml.safe_dump(data))
    # the engine in its own process, as a user's run has it (its logs must be quiet too); none of the settings an
    # earlier in-process main() left in this process's environment
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    for name in [*LIBRARY_ENVIRONMENT, "VLLM_LOGGING_CONFIG_PATH"]:
        monkeypatch.delenv(name, raising=False)
    quiet = cli("synthesize", str(recipe), env=env)
    out, err = quiet.communicate(timeout=600)
    assert quiet.returncode == 0, err
    printed = out + err  # vLLM logs to stdout by default
    assert not THIRD_PARTY_INFO.search(printed), printed
    for chatter in ("Triton", "libtcmalloc", "Passing raw prompts", "Attempted to load weight", "FutureWarning"):
        assert chatter not in printed, printed
    verbose = cli("synthesize", str(recipe), "--run.output_dir", str(tmp_path / "verbose"), "--verbose", env=env)
    out, err = verbose.communicate(timeout=600)
    assert verbose.returncode == 0, err
    assert THIRD_PARTY_INFO.search(out + err), out + err
