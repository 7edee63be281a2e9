"""Damage to finished outputs: a changed, truncated or deleted file is found by its checksum and exactly that piece is
done again (a shard, a stage, the release), or the run stops with the file's name and the command that fixes it.
Never a corrupted release with exit 0. Also: a local release never changes a version unless forced."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

import pytest
import yaml

from hf_ipt.cli import main
from hf_ipt.engines import ENGINES, CallableEngine
from hf_ipt.testing import tiny_recipe

ROWS, SHARD = 24, 8  # 3 synthesis shards
PROMPTS: list[str] = []  # every prompt the counting engine answered


def _answer(prompts: list[str]) -> list[str]:
    """A deterministic synthesizer: one pair per prompt, its words taken from the prompt's hash."""
    PROMPTS.extend(prompts)
    answers = []
    for prompt in prompts:
        word = hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:8]
        answers.append(f"<QUE> What does {word} stand for? <ANS> It stands for {word}. </END>")
    return answers


class CountingEngine(CallableEngine):
    """`_answer` as an engine registered by name (what `ENGINES` holds: Engine classes, which answer the preflight's
    questions about their settings)."""

    name = "counting"

    def __init__(self, model, **settings):
        super().__init__(_answer)


@pytest.fixture(scope="module", autouse=True)
def counting_engine():
    ENGINES["counting"] = CountingEngine
    yield
    del ENGINES["counting"]


def write_recipe(folder: Path, model: str) -> str:
    changes = {"synth.engine_kwargs": {}, "release.repo_id": "local/damage-test", "release.plots": False}
    recipe = tiny_recipe(
        model, folder / "out", rows=ROWS, batch_size=SHARD, engine="counting", release="damage-test", changes=changes
    )
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under a stage folder (commit markers and temporary files aside), by relative path."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".hf_ipt" not in p.parts
    }


def stamps(folder: Path) -> dict[str, int]:
    # the run's log files (`logs/`, one per command) are written by every command: they are no stage's output
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns
        for p in folder.rglob("*")
        if p.is_file() and p.relative_to(folder).parts[0] != "logs"
    }


def change_bytes(path: Path) -> None:
    """Change 3 bytes inside a file without changing its size (`the` -> `THE` where the text shows, else mid-file)."""
    data = bytearray(path.read_bytes())
    at = data.find(b"the", len(data) // 4)
    at = at if at > 0 else len(data) // 2
    data[at : at + 3] = bytes(b ^ 0x20 for b in data[at : at + 3])
    size = path.stat().st_size
    path.write_bytes(bytes(data))
    assert path.stat().st_size == size


def truncate(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_path):
    """A finished run (synthesis, templify, mix, local release) and a snapshot of every stage folder."""
    folder = tmp_path_factory.mktemp("damage")
    recipe = write_recipe(folder, tiny_model_path)
    assert main(["run", recipe, "-q"]) == 0
    out = folder / "out"
    return recipe, out, {stage: snapshot(out / stage) for stage in ("synthesized", "templified", "mixed", "release")}


def run_again(recipe: str, capsys, caplog, *args: str) -> tuple[int, str]:
    """`hf-ipt run` once more; returns the exit code and everything it said (stdout, stderr, warnings)."""
    PROMPTS.clear()
    capsys.readouterr()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_ipt"):
        code = main(["run", recipe, "-q", *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err + caplog.text


def assert_as_finished(out: Path, reference: dict[str, dict[str, bytes]]) -> None:
    for stage, files in reference.items():
        now = snapshot(out / stage)
        assert sorted(now) == sorted(files), stage
        differ = [name for name in files if now[name] != files[name]]
        assert not differ, f"{stage}: {differ} differ from the undamaged run"


def test_an_undamaged_rerun_reuses_everything(finished, capsys, caplog):
    recipe, out, reference = finished
    before = stamps(out)
    code, said = run_again(recipe, capsys, caplog)
    assert code == 0 and said.count("already done, reused") == 4 and not PROMPTS
    assert stamps(out) == before


def test_a_same_size_change_inside_a_shard_redoes_that_shard_only(finished, capsys, caplog):
    recipe, out, reference = finished
    shard = out / "synthesized" / "data" / "train-00001-of-00003.parquet"
    change_bytes(shard)
    before = stamps(out)
    code, said = run_again(recipe, capsys, caplog)
    assert code == 0
    assert "shard 1 of" in said and "is damaged" in said and "SHA-256 differs" in said
    assert "3 (1 computed now, 2 reused)" in said
    # one shard of one batch was synthesized again: its rows' prompts of both rounds, no other shard's
    assert 0 < len(PROMPTS) <= 2 * SHARD
    after = stamps(out)
    changed = {name for name in after if after[name] != before.get(name)}
    assert changed == {
        "synthesized/data/train-00001-of-00003.parquet",
        "synthesized/.hf_ipt/done/shard-00001.json",
    }, changed
    assert said.count("already done, reused") == 3  # templify, mix, release: made from the intact rows
    assert_as_finished(out, reference)


@pytest.mark.parametrize(
    "stage, damage",
    [("templified", change_bytes), ("templified", truncate), ("mixed", change_bytes), ("mixed", truncate)],
)
def test_a_damaged_stage_file_redoes_that_stage_only(finished, capsys, caplog, stage, damage):
    recipe, out, reference = finished
    target = sorted((out / stage / "data").glob("*.parquet"))[0]  # templify writes a file per synthesis shard
    damage(target)
    before = stamps(out)
    code, said = run_again(recipe, capsys, caplog)
    assert code == 0
    assert f"{out / stage}/data/{target.name} is damaged" in said
    assert not PROMPTS and said.count("already done, reused") == 3
    after = stamps(out)
    changed = {name.split("/")[0] for name in after if after[name] != before.get(name)}
    assert changed == {stage}, changed
    assert_as_finished(out, reference)


@pytest.mark.parametrize(
    "relative, damage",
    [
        ("data/train-00000-of-00001.parquet", change_bytes),
        ("data/train-00000-of-00001.parquet", truncate),
        ("release_info/m2/stats.json", truncate),
        # a card whose bytes changed is a hand edit: refused by name, not rewritten (test_operations holds it)
        ("README.md", os.remove),
    ],
)
def test_a_damaged_or_missing_release_file_rewrites_the_release(finished, capsys, caplog, relative, damage):
    recipe, out, reference = finished
    damage(out / "release" / relative)
    before = stamps(out)
    code, said = run_again(recipe, capsys, caplog)
    assert code == 0
    assert f"{out / 'release'}/{relative} is damaged" in said
    assert not PROMPTS and said.count("already done, reused") == 3
    after = stamps(out)
    changed = {name.split("/")[0] for name in after if after[name] != before.get(name)}
    assert changed == {"release"}, changed
    assert_as_finished(out, reference)


def test_a_single_stage_on_damaged_input_stops_with_the_file_and_the_fix(finished, capsys):
    recipe, out, reference = finished
    truncate(out / "synthesized" / "data" / "train-00002-of-00003.parquet")
    truncate(out / "templified" / "data" / "train-00000-of-00003.parquet")
    truncate(out / "mixed" / "data" / "train-00000-of-00001.parquet")
    release_before = snapshot(out / "release")

    capsys.readouterr()
    assert main(["status", recipe]) == 0
    shown = capsys.readouterr().out
    assert "2/3 shards finished" in shown and "damaged shards (redone by the next run): 2" in shown
    assert "mixed       damaged: data/train-00000-of-00001.parquet (redone by the next run)" in shown
    assert "release     finished" in shown
    assert main(["templify", recipe, "-q"]) == 2
    err = capsys.readouterr().err
    assert "shard 2 is damaged" in err and "train-00002-of-00003.parquet" in err and "hf-ipt synthesize" in err
    assert main(["push", recipe, "-q"]) == 2  # the release reads the damaged mix: refused, release untouched
    err = capsys.readouterr().err
    assert f"{out / 'mixed'}/data/train-00000-of-00001.parquet is damaged" in err and "`hf-ipt mix`" in err
    assert snapshot(out / "release") == release_before

    # --overwrite always works, whatever is truncated; the result is the undamaged run's
    PROMPTS.clear()
    assert main(["run", recipe, "-q", "--overwrite"]) == 0
    assert 0 < len(PROMPTS) <= 2 * SHARD
    assert_as_finished(out, reference)


def test_a_local_release_never_changes_a_version_unless_forced(finished, capsys, tmp_path):
    recipe, out, reference = finished
    capsys.readouterr()
    # other templates: other rows under the same version
    assert main(["run", recipe, "-q", "--templify.seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "already holds version v0.1" in err and "--overwrite" in err and "--release.version v0.2" in err
    assert "made with other data (the released stage's output" in err
    assert snapshot(out / "release") == reference["release"]
    assert main(["run", recipe, "-q", "--card.summary", "Another text."]) == 2  # a card setting: named by its key
    assert "made with other card.summary; a released version never changes" in capsys.readouterr().err
    assert snapshot(out / "release") == reference["release"]
    assert main(["run", recipe, "-q", "--templify.seed", "1"]) == 2  # the same refusal, every time

    moved = tmp_path / "kept"
    shutil.copytree(out, moved)
    moved_recipe = yaml.safe_load(Path(recipe).read_text())
    moved_recipe["run"]["output_dir"] = str(moved)
    (tmp_path / "moved.yaml").write_text(yaml.safe_dump(moved_recipe))
    assert main(["run", str(tmp_path / "moved.yaml"), "-q", "--templify.seed", "1", "--overwrite"]) == 0
    assert snapshot(moved / "release") != reference["release"]
    capsys.readouterr()

    # back to the settings of the release: the refused runs were refused before templify and mix rewrote anything
    # (issue 21), so every stage is reused as it was
    assert main(["run", recipe, "-q"]) == 0
    said = capsys.readouterr().out
    assert said.count("already done, reused") == 4 and "release     already done, reused" in said
    assert_as_finished(out, reference)
