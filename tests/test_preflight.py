"""Preflight: every input of a run is checked, and every problem reported, in seconds, before any model is built or
loaded (the model builder, the engine factory and model loading are made to fail if anything reaches them)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from datasets import Dataset

from hf_ipt import pipeline
from hf_ipt.cli import main
from hf_ipt.config import load_recipe
from hf_ipt.engines.vllm import vllm_arguments
from hf_ipt.pipeline import check
from hf_ipt.preflight import PreflightError
from hf_ipt.stages import SynthesizeStage
from hf_ipt.testing import tiny_recipe

# tests/hub_server.py: the local Hub double and its `local_hub` fixture
pytest_plugins = ["hub_server"]
READ_ONLY_TOKEN = "hf_localhubREADONLYtoken0123456789abcdef"
BUDGET_SECONDS = 30


class ModelTouched(AssertionError):
    """Raised when a test reaches the model: the preflight should have stopped the run before."""


@pytest.fixture(autouse=True)
def no_model(monkeypatch):
    """Building the tiny model, creating an engine or loading model weights fails the test."""

    def refuse(*args, **kwargs):
        raise ModelTouched("a model was built or loaded before the preflight stopped the run")

    import transformers

    import hf_ipt.engines
    import hf_ipt.engines.registry
    import hf_ipt.stages.synthesize
    import hf_ipt.synthesis.synthesizer
    import hf_ipt.tiny_model

    monkeypatch.setattr(hf_ipt.tiny_model, "build_tiny_synthesizer", refuse)
    monkeypatch.setattr(hf_ipt.stages.synthesize, "build_tiny_synthesizer", refuse)
    for module in (hf_ipt.engines, hf_ipt.engines.registry, hf_ipt.synthesis.synthesizer):
        monkeypatch.setattr(module, "make_engine", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


def write_recipe(tmp_path: Path, **changes) -> Path:
    """A quickstart-like recipe (tiny model built into tmp_path, bundled corpora, local release); `changes` are
    dotted keys set on top ({"synth.engine": "vllm"})."""
    model = str(tmp_path / "tiny-synthesizer")
    defaults = {"build_tiny_model": True, "mix.tolerance": 0.05, "release.config_name": "default"}
    defaults["release.repo_id"] = "local/preflight-test"
    recipe = tiny_recipe(
        model, tmp_path / "out", rows=16, batch_size=8, release="preflight-test", changes={**defaults, **changes}
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def run_fails(recipe: Path, capsys, *extra: str) -> str:
    """`hf-ipt run RECIPE` must stop in preflight, within the time budget, before any model: its error text."""
    started = time.perf_counter()
    assert main(["run", str(recipe), "-q", *extra]) == 2
    elapsed = time.perf_counter() - started
    assert elapsed < BUDGET_SECONDS, f"the preflight took {elapsed:.1f} s"
    err = capsys.readouterr().err
    assert "hf-ipt run: error: the recipe cannot run" in err and "before any model was loaded" in err
    return err


def problem_keys(recipe: Path, **kwargs) -> list[str]:
    started = time.perf_counter()
    with pytest.raises(PreflightError) as raised:
        pipeline.run(recipe, **kwargs)
    assert time.perf_counter() - started < BUDGET_SECONDS
    return [problem.key for problem in raised.value.problems]


def test_a_sound_recipe_passes_and_check_prints_every_check(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    assert check(load_recipe(recipe)) == []
    assert main(["check", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "ok       source bundled:quickstart" in out
    assert "ok       mix source 'general' (bundled:quickstart_general)" in out
    assert "skipped (built by build_tiny_model before synthesis)" in out
    assert "hf-ipt check: ready to run" in out
    assert not (tmp_path / "out").exists()  # the output probe leaves nothing behind


def test_bad_mix_source_path_fails_before_the_model(tmp_path, capsys):
    recipe = write_recipe(tmp_path, **{"mix_sources.general.path": str(tmp_path / "no-such-general.jsonl")})
    err = run_fails(recipe, capsys)
    assert f"mix_sources.general.path: no such file or folder '{tmp_path / 'no-such-general.jsonl'}'" in err
    assert problem_keys(recipe) == ["mix_sources.general.path"]


def test_missing_column_names_the_columns_there(tmp_path):
    recipe = write_recipe(tmp_path, **{"mix_sources.general.question_column": "questoin"})
    with pytest.raises(PreflightError) as raised:
        pipeline.run(recipe)
    (problem,) = raised.value.problems
    assert problem.key == "mix_sources.general.question_column"
    assert "has no column 'questoin'" in problem.found and "did you mean 'question'?" in problem.fix


def test_missing_tokenizer_fails_before_the_model(tmp_path, capsys):
    recipe = write_recipe(tmp_path, **{"templify.target_tokenizer": "/nonexistent/tok"})
    err = run_fails(recipe, capsys)
    assert "templify.target_tokenizer: no tokenizer folder '/nonexistent/tok'" in err
    # without build_tiny_model the synthesizer's own tokenizer is loaded too, and its absence reported
    recipe = write_recipe(tmp_path, build_tiny_model=False)
    assert problem_keys(recipe) == ["synth.model", "templify.target_tokenizer", "mix.tokenizer"]


def test_wrong_engine_kwargs_for_vllm_fail_before_the_model(tmp_path, capsys):
    recipe = write_recipe(tmp_path, **{"synth.engine": "vllm"})
    err = run_fails(recipe, capsys)
    if vllm_arguments() is None:
        assert "synth.engine: the vllm engine needs the `vllm` package" in err
        return
    assert "synth.engine_kwargs.batch_size: the vllm engine has no argument 'batch_size'" in err
    assert "'max_num_seqs'" in err  # the fix names vLLM's equivalent
    assert "synth.engine_kwargs.dtype" not in err  # vLLM takes dtype
    wrong = {"gpu_memory_utilisation": 0.5, "max_model_len": 9}
    recipe = write_recipe(tmp_path, **{"synth.engine": "vllm", "synth.engine_kwargs": wrong})
    assert problem_keys(recipe) == ["synth.engine_kwargs.max_model_len", "synth.engine_kwargs.gpu_memory_utilisation"]


def test_a_missing_ray_or_openai_is_found_before_the_model(tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("ray", "openai") else real_find_spec(name, *a)
    )
    changes = {"run.executor": "ray", "synth.engine": "server", "synth.engine_kwargs": {"endpoints": "http://x:1"}}
    problems = {p.key: p for p in check(load_recipe(write_recipe(tmp_path, **changes)), ["synthesize"])}
    assert "`ray` package, which is not installed" in problems["run.executor"].found
    assert problems["run.executor"].fix == "pip install 'hf-ipt[ray]'"
    assert problems["synth.engine"].fix == "pip install 'hf-ipt[server]'"


def test_wrong_engine_kwargs_for_transformers_and_server(tmp_path):
    recipe = write_recipe(tmp_path, **{"synth.engine_kwargs": {"batch_size": 0, "max_num_seqs": 8}})
    assert problem_keys(recipe) == ["synth.engine_kwargs.batch_size"]  # the model's config is not there to ask yet
    recipe = write_recipe(tmp_path, **{"synth.engine": "server", "synth.engine_kwargs": {"endpoint": "http://x:1"}})
    assert problem_keys(recipe) == ["synth.engine_kwargs.endpoint"]


def test_unwritable_output_folder_fails_before_the_model(tmp_path, capsys):
    # tests run as root, where a read-only folder is still writable: a folder under a regular file never is
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    recipe = write_recipe(tmp_path, **{"run.output_dir": str(blocker / "out")})
    err = run_fails(recipe, capsys)
    assert f"run.output_dir: cannot write to '{blocker / 'out'}'" in err


def test_worker_index_out_of_range_fails_before_the_model(tmp_path, capsys):
    err = run_fails(write_recipe(tmp_path), capsys, "--worker-index", "5", "--num-workers", "2")
    assert "--worker-index: worker_index (rank) must be an integer in [0, 1] for num_workers=2, got 5" in err


def test_resume_conflict_fails_before_the_model(tmp_path, capsys):
    first = load_recipe(write_recipe(tmp_path))
    rows = Dataset.from_dict({"text": [f"row {i}" for i in range(8)]})
    runner = SynthesizeStage.from_recipe(first).runner(first.run, lambda batch: batch)
    assert runner.run(rows).complete  # a finished synthesis of rounds 2
    recipe = write_recipe(tmp_path, **{"synth.rounds": 3})
    err = run_fails(recipe, capsys)
    assert "holds a run with another configuration" in err and "synth.synth.rounds: 2 -> 3" not in err
    assert "synth.rounds: 2 -> 3" in err
    assert problem_keys(recipe, stages=["synthesize"]) == ["run.output_dir"]
    assert check(load_recipe(recipe, {"run.overwrite": True}), ["synthesize"]) == []


def test_token_without_write_access_fails_before_the_model(tmp_path, capsys, local_hub):
    local_hub.read_only_tokens.add(READ_ONLY_TOKEN)
    try:
        hub_release = {"release_to": "hub", "release.repo_id": f"{local_hub.user}/preflight-release"}
        recipe = write_recipe(tmp_path, **hub_release, **{"release.token": READ_ONLY_TOKEN})
        err = run_fails(recipe, capsys)
        assert f"release.token: the token of '{local_hub.user}' has read access only and cannot create" in err
        # the token with write access passes; a namespace that is neither the user nor one of their orgs does not
        assert check(load_recipe(write_recipe(tmp_path, **hub_release))) == []
        recipe = write_recipe(tmp_path, release_to="hub", **{"release.repo_id": "someone-else/preflight-release"})
        assert problem_keys(recipe) == ["release.repo_id"]
        recipe = write_recipe(tmp_path, release_to="hub", **{"release.token": "hf_not_a_token"})
        assert problem_keys(recipe) == ["release.token"]
    finally:
        local_hub.read_only_tokens.discard(READ_ONLY_TOKEN)


def test_several_problems_are_all_listed_at_once(tmp_path, capsys, local_hub):
    local_hub.read_only_tokens.add(READ_ONLY_TOKEN)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    try:
        recipe = write_recipe(
            tmp_path,
            release_to="hub",
            **{
                "release.repo_id": f"{local_hub.user}/preflight-release",
                "release.token": READ_ONLY_TOKEN,
                "synth.engine": "vllm",
                "mix_sources.general.path": str(tmp_path / "missing.jsonl"),
                "templify.target_tokenizer": "/nonexistent/tok",
                "run.output_dir": str(blocker / "out"),
                "card.template": str(tmp_path / "missing-card.md"),
            },
        )
        err = run_fails(recipe, capsys)
        keys = [
            "run.output_dir",
            "synth.engine_kwargs.batch_size" if vllm_arguments() is not None else "synth.engine",
            "templify.target_tokenizer",
            "mix_sources.general.path",
            "card.template",
            "release.token",
        ]
        assert f"{len(keys)} problems found" in err
        for key in keys:
            assert f"  - {key}: " in err, key
        assert main(["check", str(recipe)]) == 2
        out = capsys.readouterr().out
        assert out.count("PROBLEM") == len(keys) and f"hf-ipt check: {len(keys)} problem(s) found" in out
    finally:
        local_hub.read_only_tokens.discard(READ_ONLY_TOKEN)


def test_hub_sources_are_looked_up_on_the_hub(tmp_path, local_hub):
    repo = f"{local_hub.user}/preflight-general"
    Dataset.from_dict({"question": ["q?"], "response": ["a."]}).push_to_hub(repo, token=local_hub.token)
    recipe = write_recipe(tmp_path, **{"mix_sources.general.path": repo})
    assert check(load_recipe(recipe)) == []
    recipe = write_recipe(tmp_path, **{"mix_sources.general.path": f"{local_hub.user}/no-such-dataset"})
    (problem,) = check(load_recipe(recipe))
    assert problem.key == "mix_sources.general.path"
    assert "neither a local path nor a dataset on the Hub" in problem.found
    recipe = write_recipe(tmp_path, **{"mix_sources.general.path": repo, "mix_sources.general.response_column": "r"})
    assert [p.key for p in check(load_recipe(recipe))] == ["mix_sources.general.response_column"]
