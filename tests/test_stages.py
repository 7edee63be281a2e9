"""The stage contract: a new stage is one class (here, in 20 lines) plus one entry in `hf_ipt.stages.STAGES`, and it
gets what every stage gets from the one driver: reuse of an intact output, redoing a damaged one, a refusal when the
output it reads is missing, its command, its status line and its summary."""

from __future__ import annotations

from pathlib import Path

import pytest
from datasets import Dataset

import hf_ipt.stages
from hf_ipt import RunConfig, TemplifyStage
from hf_ipt.cli import main
from hf_ipt.stages.base import NO_OPTIONS, Stage, StageOutput
from hf_ipt.store import IncompleteRunError, RunFolder


class WordCountStage(Stage):
    """An example stage: the number of words of every templified text, and their total."""

    name = "count"
    description = "count the words of every templified text"
    folder = "counted"
    reads = TemplifyStage

    @classmethod
    def from_recipe(cls, recipe, options=NO_OPTIONS):
        return cls()

    def identity(self):
        return {"unit": "whitespace-separated words"}

    def compute(self, context):
        rows = context.upstream.load().map(lambda row: {"words": len(row["text"].split())})
        total = sum(sum(split["words"]) for split in rows.values())
        return StageOutput(report={"figures": {"words": total}}, data=rows)


@pytest.fixture
def run(tmp_path) -> RunConfig:
    """A run folder whose templify stage committed three texts (committed the way the stage itself commits)."""
    texts = Dataset.from_dict({"text": ["one two", "three four five", "six"]})
    RunFolder(str(tmp_path / "run")).stage(TemplifyStage.folder).save(texts, config={"upstream": None})
    return RunConfig(output_dir=str(tmp_path / "run"))


def test_an_example_stage_gets_reuse_damage_checks_and_refusals_from_the_driver(run):
    first = WordCountStage().run(run)
    assert (first.rows, first.figures, first.reused) == (3, {"words": 6}, False)
    again = WordCountStage().run(run)
    assert again.reused and again.figures == {"words": 6}
    counted = Path(run.output_dir) / "counted" / "data" / "train-00000-of-00001.parquet"
    counted.write_bytes(counted.read_bytes()[:-40])  # damaged after its commit: done again, not reused
    redone = WordCountStage().run(run)
    assert not redone.reused and redone.figures == {"words": 6}
    RunFolder(run.output_dir).stage(TemplifyStage.folder).clear()  # what it reads is gone: refused, with the command
    with pytest.raises(IncompleteRunError, match="holds no finished output; run `hf-ipt templify` first"):
        WordCountStage().run(run)


def test_one_line_in_the_stage_list_makes_it_a_command_with_a_status(run, monkeypatch, capsys):
    monkeypatch.setattr(hf_ipt.stages, "STAGES", (*hf_ipt.stages.STAGES, WordCountStage))  # the one line
    args = ["--source.path", "bundled:quickstart", "--run.output_dir", run.output_dir]
    assert main(["count", *args]) == 0
    out = capsys.readouterr().out
    assert "count       " in out and "words                  6" in out
    assert main(["status", *args]) == 0
    assert "counted     finished" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["count", "--help"])
    assert "count the words of every templified text" in capsys.readouterr().out
