"""Quality figures of synthesized pairs: each rule on crafted rows, batch/num_proc independence, filters, the card's
Quality section recomputed from the data, and `hf-ipt report A --against B` on two small runs."""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from pathlib import Path

import pytest
import yaml
from datasets import Dataset

from hf_ipt.cli import main
from hf_ipt.config import ConfigError, load_recipe
from hf_ipt.quality import (
    QUALITY_COLUMNS,
    QualityConfig,
    QualityFigures,
    add_quality_columns,
    apply_filters,
    card_view,
    compare,
    format_comparison,
    quality_report,
    question_hash,
    report_and_filter,
)

# tests/hub_server.py: the local Hub double and its `local_hub` fixture, registered as tests/test_hub.py does
pytest_plugins = ["hub_server"]
NO_DROPS = {"unterminated": 0, "malformed": 0, "empty_answer": 0, "duplicate": 0}


def pair(question: str, answer: str) -> dict[str, str]:
    return {"instruction": question, "response": answer}


TEXT0 = "Paris is the capital of France. The Louvre, a museum, is in Paris."
# one pair per rule; comments give the expected (task type, grounding)
ROWS = {
    "text": [TEXT0, "Cats purr when they are happy, and sometimes when they are hurt.", "", None, "Some text.", "x"],
    "pairs": [
        [
            pair("What is the capital of France?", "Paris"),  # short_extractive, exact
            # multiple_choice, normalized
            pair("Which museum is in Paris?\nOptions:\n- The Louvre\n- The Prado", "the louvre, a MUSEUM"),
            # chain_of_thought with a yes/no final answer: not applicable
            pair("Is Paris in France?\nLet's think step by step.", "Capital.\nTherefore, the answer is yes."),
            # free_form, overlap 7/8 ("with" is not in the text)
            pair("Describe the city in one sentence.", "The capital of France is Paris, with the museum"),
            pair("What do they serve?", "croissants and coffee"),  # short_extractive, ungrounded (0.0)
        ],
        [
            pair("what is the Capital of France", "No."),  # yes_no, not applicable; repeats row 0's first question
            pair("When do cats purr?\nLet's think step by step.", "Cats purr.\nTherefore, the answer is when happy."),
        ],
        [],
        [],
        [],
        None,
    ],
    "synth_status": ["ok", "ok", "empty_text", "invalid_text", "no_pairs", "no_pairs"],
    "synth_output": ["", "", "", "", "<QUE> a <ANS> b <ANS> c </END><QUE> d", ""],
    "parse_drops": [
        NO_DROPS,
        NO_DROPS,
        NO_DROPS,
        NO_DROPS,
        {"unterminated": 1, "malformed": 1, "empty_answer": 0, "duplicate": 0},
        NO_DROPS,
    ],
}


def test_each_pair_gets_its_task_type_grounding_lengths_and_hash():
    out = QualityFigures()(ROWS)
    assert out["task_types"][:2] == [
        ["short_extractive", "multiple_choice", "chain_of_thought", "free_form", "short_extractive"],
        ["yes_no", "chain_of_thought"],
    ]
    assert out["grounding"][:2] == [
        ["exact", "normalized", "not_applicable", "overlap", "ungrounded"],
        ["not_applicable", "overlap"],
    ]
    assert out["answer_overlap"][0] == [1.0, 1.0, None, 7 / 8, 0.0]
    assert out["answer_overlap"][1] == [None, 1.0]  # "when happy": both words in the text, not contiguous
    assert out["question_tokens"][0] == [6, 12, 9, 6, 4] and out["answer_tokens"][0] == [1, 4, 6, 9, 3]
    first = question_hash("WHAT is the capital of France")
    assert out["question_hashes"][1][0] == out["question_hashes"][0][0] == first
    assert len(set(out["question_hashes"][0])) == 5
    assert out["quality_num_pairs"] == [5, 2, 0, 0, 0, 0]
    assert out["no_pairs_cause"] == ["", "", "empty_text", "invalid_text", "unterminated", "empty_output"]
    # input columns kept, one row out per row in
    assert set(ROWS) | set(QUALITY_COLUMNS) == set(out) and all(len(v) == 6 for v in out.values())


def test_threshold_and_rule_edges():
    figures = QualityFigures(overlap_threshold=0.9)(
        {"text": [TEXT0], "pairs": [[pair("Describe the city in one sentence.", ROWS["pairs"][0][3]["response"])]]}
    )
    assert figures["grounding"] == [["ungrounded"]]  # 7/8 < 0.9
    edge = QualityFigures()(
        {
            "text": ["No one knows. Yes it is."],
            "pairs": [
                [
                    pair("Who knows?", "No one knows"),  # "No" followed by a word: not yes/no
                    pair("One option?\nOptions:\n- only one", "only one"),  # one option line: not multiple choice
                    pair("q", ""),  # empty answer: ungrounded
                    pair(5, None),  # not strings: counted as ""
                ]
            ],
        }
    )
    assert edge["task_types"] == [["short_extractive", "short_extractive", "short_extractive", "short_extractive"]]
    assert edge["grounding"] == [["exact", "ungrounded", "ungrounded", "ungrounded"]]
    with pytest.raises(ValueError, match="'pairs'"):
        QualityFigures()({"text": ["a"]})
    with pytest.raises(ValueError, match="text_column"):
        QualityFigures(text_column="content")({"text": ["a"], "pairs": [[]]})


def test_report_figures_are_exact():
    report = quality_report(Dataset.from_dict(ROWS), examples=2)
    assert (report["rows"], report["pairs"], report["texts_with_pairs"]) == (6, 7, 2)
    assert report["task_types"] == {
        "chain_of_thought": 2,
        "multiple_choice": 1,
        "yes_no": 1,
        "short_extractive": 2,
        "free_form": 1,
    }
    grounding = report["grounding"]
    assert grounding["counts"] == {"exact": 1, "normalized": 1, "overlap": 2, "ungrounded": 1, "not_applicable": 2}
    assert (grounding["grounded"], grounding["applicable"], grounding["rate"]) == (4, 5, 0.8)
    assert grounding["by_task_type"]["short_extractive"] == {"grounded": 1, "applicable": 2}
    assert report["duplicates"] == {
        "pairs": 7,
        "distinct_questions": 6,
        "repeated_questions": 1,
        "pairs_with_repeated_question": 2,
        "extra_copies": 1,
        "rate": 1 / 7,
    }
    assert report["no_pairs"] == {
        "rows": 4,
        "rate": 4 / 6,
        "by_cause": {"empty_output": 1, "empty_text": 1, "invalid_text": 1, "unterminated": 1},
    }
    assert report["pairs_per_text"]["value_counts"] == {"0": 4, "2": 1, "5": 1}
    assert report["question_tokens"]["total"] == 6 + 12 + 9 + 6 + 4 + 6 + 9
    assert report["answer_tokens"]["max"] == 9
    examples = report["examples"]
    assert [(e["row"], e["pair"], e["overlap"]) for e in examples["ungrounded"]] == [(0, 4, 0.0)]
    assert examples["repeated_questions"] == [
        {"question": "What is the capital of France?", "occurrences": 2, "first_row": 0, "first_pair": 0}
    ]
    assert [(e["row"], e["pair"]) for e in examples["longest_answers"]] == [(0, 3), (1, 1)]
    assert [(e["row"], e["pair"]) for e in examples["shortest_answers"]] == [(0, 0), (0, 4)]  # yes/no left out
    assert [(e["row"], e["cause"]) for e in examples["no_pairs"]] == [(2, "empty_text"), (3, "invalid_text")]
    assert report["filters"] is None


def _spread_rows(n: int = 23) -> Dataset:
    """Rows whose questions repeat across rows far apart (so across batches and num_proc workers)."""
    texts, pairs = [], []
    for i in range(n):
        texts.append(f"Row {i} says that topic {i % 5} matters and answer {i % 3} holds.")
        pairs.append(
            [pair(f"What about topic {i % 5}?", f"topic {i % 5} matters"), pair(f"Question {i}?", f"answer {i % 3}")]
            + ([pair(f"what about TOPIC {i % 5}", "unrelated words here")] if i % 4 == 0 else [])
        )
    return Dataset.from_dict({"text": texts, "pairs": pairs})


def test_duplicates_are_counted_over_the_whole_corpus_for_any_batch_size_and_num_proc():
    rows = _spread_rows()
    reports = [
        quality_report(rows, batch_size=1000),
        quality_report(rows, batch_size=1),
        quality_report(rows, batch_size=4, num_proc=2),
        quality_report(add_quality_columns(rows, batch_size=3, num_proc=2), batch_size=7),
    ]
    assert all(r == reports[0] for r in reports[1:])
    # 23 rows x 2 pairs + 6 rows (0, 4, ..., 20) with a third pair repeating their "topic" question
    assert reports[0]["duplicates"] == {
        "pairs": 52,
        "distinct_questions": 5 + 23,
        "repeated_questions": 5,
        "pairs_with_repeated_question": 23 + 6,
        "extra_copies": 52 - 28,
        "rate": 24 / 52,
    }
    assert reports[0]["grounding"]["counts"]["ungrounded"] == 6


def test_filters_drop_and_count_ungrounded_repeated_and_sparse_rows_whatever_the_batching():
    rows = _spread_rows()
    config = QualityConfig(drop_ungrounded=True, drop_duplicate_questions=True, min_pairs_per_text=2)
    kept, report = report_and_filter(rows, config)
    assert report["filters"] == {
        "drop_ungrounded": True,
        "drop_duplicate_questions": True,
        "min_pairs_per_text": 2,
        "pairs_dropped_ungrounded": 6,
        "pairs_dropped_duplicate": 23 - 5,  # the "topic" question kept only in rows 0-4
        "rows_dropped_min_pairs": 23 - 5,  # every later row is left with its own question only
        "pairs_dropped_with_rows": 23 - 5,
        "rows_kept": 5,
        "pairs_kept": 10,
    }
    assert kept["text"] == rows["text"][:5]
    assert [[p["instruction"] for p in ps] for ps in kept["pairs"]] == [
        [f"What about topic {i}?", f"Question {i}?"] for i in range(5)
    ]
    # the same with another batching of the figures
    again, counts = apply_filters(rows, config, add_quality_columns(rows, batch_size=2, num_proc=2))
    assert counts == report["filters"] and again["pairs"] == kept["pairs"]
    # only duplicates: the first occurrence stays, in row order
    kept, report = report_and_filter(rows, QualityConfig(drop_duplicate_questions=True))
    assert report["filters"]["pairs_dropped_duplicate"] == 24 and len(kept) == 23
    assert sum(len(p) for p in kept["pairs"]) == 28
    # rows without pairs (last ones included) fall below one pair per text
    config = QualityConfig(drop_ungrounded=True, min_pairs_per_text=1)
    kept, report = report_and_filter(Dataset.from_dict(ROWS), config)
    assert (report["filters"]["rows_dropped_min_pairs"], report["filters"]["pairs_dropped_ungrounded"]) == (4, 1)
    assert kept["synth_status"] == ["ok", "ok"] and [len(p) for p in kept["pairs"]] == [4, 2]
    # no filter: same rows, report without filter counts
    same, report = report_and_filter(rows, QualityConfig())
    assert same is rows and report["filters"] is None


def test_lengths_in_tokens_of_a_tokenizer(tiny_tokenizer):
    rows = Dataset.from_dict({"text": [TEXT0], "pairs": [ROWS["pairs"][0]]})
    report = quality_report(rows, tokenizer=tiny_tokenizer)
    expected = [len(tiny_tokenizer(p["instruction"], add_special_tokens=False)["input_ids"]) for p in ROWS["pairs"][0]]
    assert report["question_tokens"]["total"] == sum(expected)
    assert report["length_unit"].startswith("tokens of")


def test_quality_keys_are_validated_and_listed():
    with pytest.raises(ConfigError, match="quality.overlap_threshold"):
        load_recipe(None, ["--source.path", "x", "--run.output_dir", "o", "--quality.overlap_threshold", "1.5"])
    with pytest.raises(ConfigError, match="quality.min_pairs_per_text"):
        load_recipe(None, ["--source.path", "x", "--run.output_dir", "o", "--quality.min_pairs_per_text", "-1"])
    with pytest.raises(ConfigError, match="drop_ungrounded"):
        load_recipe(None, ["--source.path", "x", "--run.output_dir", "o", "--quality.drop_ungroundd"])
    recipe = load_recipe(None, ["--source.path", "x", "--run.output_dir", "o", "--quality.drop_ungrounded"])
    assert recipe.quality.drop_ungrounded and recipe.quality.filters_enabled
    assert not QualityConfig().filters_enabled


def test_compare_gives_a_verdict_per_figure():
    better = quality_report(Dataset.from_dict(ROWS))
    worse_rows = dict(ROWS, pairs=[ROWS["pairs"][0][4:], *ROWS["pairs"][1:]])  # only the ungrounded pair in row 0
    worse = quality_report(Dataset.from_dict(worse_rows))
    changes = {c.key: c for c in compare(better, worse)}
    assert changes["grounding.rate"].verdict == "better" and changes["grounding.rate"].change() == "+30.00 pts"
    assert changes["pairs"].verdict == "better" and changes["pairs"].change() == "+4"
    assert changes["rows"].verdict == "unchanged"
    assert changes["question_tokens.mean"].verdict == "changed (neither better nor worse)"
    # the count of ungrounded pairs was a second figure with a second verdict ("unchanged" next to the rate's
    # "better"): it is the rate's complement, shown with the rate alone now (one verdict per figure)
    assert "grounding.ungrounded" not in changes
    assert compare(worse, better)[1].verdict == "worse"
    text = format_comparison(list(changes.values()), "A", "B")
    header, _, *rows = text.splitlines()
    assert header.split()[:3] == ["figure", "A", "B"]  # the order of `hf-ipt report A --against B`
    grounded = next(row for row in rows if row.startswith("Grounded answers"))
    assert re.search(r"80\.00%\s+50\.00%\s+\+30\.00 pts\s+better$", grounded), grounded
    assert "Verdicts:" not in text and " in A vs " not in text  # no prose repeating the table


def test_a_count_and_its_share_get_one_and_the_same_verdict():
    # 12 chunks, 7 without pairs, against 6 chunks, 4 without pairs: more chunks without pairs (a count that grew)
    # but a smaller share of them: one verdict, the share's, for the one figure
    few = quality_report(Dataset.from_dict(ROWS))
    doubled = {key: values + values for key, values in ROWS.items()}
    doubled["pairs"] = doubled["pairs"][:6] + [ROWS["pairs"][0]] * 3 + doubled["pairs"][9:]
    many = quality_report(Dataset.from_dict(doubled))
    changes = {c.key: c for c in compare(many, few)}
    assert "no_pairs.rate" not in changes  # folded into the count, shown with its share
    no_pairs = changes["no_pairs.rows"]
    assert no_pairs.value > no_pairs.baseline and no_pairs.share < no_pairs.baseline_share
    assert no_pairs.verdict == "better"
    assert no_pairs.shown("value").endswith("%)") and "pts)" in no_pairs.change()
    for change in changes.values():
        if change.share is not None and change.key.startswith("no_pairs."):
            assert change.verdict in ("better", "unchanged", "changed (same share)"), change


def test_card_view_lists_every_figure_and_the_filters():
    view = card_view(quality_report(Dataset.from_dict(ROWS)))
    rows = dict(view["rows"])
    assert rows["Pairs"] == "7" and rows["Grounded answers (share of checkable pairs)"] == "80.00%"
    # the quality report counts chunks (the rows synthesis read), the word the whole card uses for them; a count
    # of a part is shown with its share
    assert rows["Chunks without pairs: `unterminated`"] == "1 (16.67%)"
    assert "No quality filter" in view["filters"]


# ---------------------------------------------------------------------------------------------------- small runs
NUM_ROWS, SHARD = 16, 8


def run_recipe(tmp_path: Path, model: str, name: str, rounds: int) -> Path:
    """A quickstart-like run (synthesis, templify, 1:1 mix with general instructions, local release), small."""
    output = tmp_path / name
    recipe = {
        "build_tiny_model": True,
        "source": {"path": "bundled:quickstart", "max_rows": NUM_ROWS, "license": "psf-2.0"},
        "synth": {
            "model": model,
            "engine": "transformers",
            "rounds": rounds,
            "max_model_len": 512,
            "max_new_tokens": 32,
            "batch_size": SHARD,
            "engine_kwargs": {"batch_size": SHARD, "dtype": "float32"},
        },
        "templify": {"seed": 0, "target_tokenizer": model},
        "mix": {"weights": {"augmented": 1, "general": 1}, "tokenizer": model, "tolerance": 0.2, "seed": 0},
        "mix_sources": {"general": {"path": "bundled:quickstart_general", "kind": "general_instructions"}},
        "release": {"repo_id": "local/q", "version": "v0.1", "config_name": f"m{rounds}"},
        "release_to": "local",
        "run": {"output_dir": str(output), "shard_size": SHARD},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "-q"]) == 0
    return output


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_path):
    tmp_path = tmp_path_factory.mktemp("quality-runs")
    return {rounds: run_recipe(tmp_path, tiny_model_path, f"m{rounds}", rounds) for rounds in (1, 2)}


def _independent_figures(rows) -> dict[str, str]:
    """The card's figures recomputed from the synthesized rows with this test's own reading of the rules."""

    def norm(s: str) -> str:
        return " ".join(re.sub(r"[\W_]+", " ", s.lower()).split())

    def yes_no(a: str) -> bool:
        return re.match(r"(?i)(yes|no)([,.;:!]|$)", a) is not None

    pairs = [(text or "", p["instruction"], p["response"].strip()) for text, ps in rows for p in ps or []]
    kinds, verdicts = Counter(), Counter()
    for text, q, a in pairs:
        last = q.rstrip().split("\n")[-1].strip().lower().rstrip(".").rstrip()
        if "therefore, the answer is" in a.lower() or last == "let's think step by step":
            kind = "chain_of_thought"
            k = a.lower().rfind("therefore, the answer is")
            a = a[k + len("therefore, the answer is") :].strip() if k >= 0 else a
            a = a[:-1].rstrip() if a.endswith(".") else a
        elif re.search(r"(?im)^\s*options:\s*\n(\s*- .*\n?){2,}", q):
            kind = "multiple_choice"
        elif yes_no(a):
            kind = "yes_no"
        elif len(a.split()) <= 5:
            kind = "short_extractive"
        else:
            kind = "free_form"
        kinds[kind] += 1
        if not a:
            verdicts["ungrounded"] += 1
        elif yes_no(a):
            verdicts["not_applicable"] += 1
        elif a in text or (norm(a) and f" {norm(a)} " in f" {norm(text)} "):
            verdicts["grounded"] += 1
        else:
            words = set(norm(a).split())
            share = len(words & set(norm(text).split())) / len(words) if words else 0
            verdicts["grounded" if share >= 0.8 else "ungrounded"] += 1
    total = len(pairs)
    questions = Counter(norm(q) for _, q, _ in pairs)
    answers = [len(a.split()) for _, _, a in pairs]
    lengths = [len(q.split()) for _, q, _ in pairs]
    checkable = verdicts["grounded"] + verdicts["ungrounded"]
    repeated = sum(n for n in questions.values() if n > 1)
    without = sum(not ps for _, ps in rows)
    # the rows synthesis read are chunks (the card's word for them); a count of a part comes with its share
    out = {
        "Chunks (rows synthesized)": f"{len(rows):,}",
        "Pairs": f"{total:,}",
        "Pairs per chunk, mean": f"{total / len(rows):,.2f}",
        "Question length, mean (whitespace-separated words)": f"{statistics.mean(lengths):,.2f}",
        "Question length, median (whitespace-separated words)": f"{statistics.median(lengths):,.2f}",
        "Answer length, mean (whitespace-separated words)": f"{statistics.mean(answers):,.2f}",
        "Grounded answers (share of checkable pairs)": f"{100 * verdicts['grounded'] / checkable:.2f}%",
        "Repeated questions (extra copies, share of pairs)": f"{100 * (total - len(questions)) / total:.2f}%",
        "Pairs whose question occurs more than once": f"{repeated:,} ({100 * repeated / total:.2f}%)",
        "Chunks without pairs": f"{without:,} ({100 * without / len(rows):.2f}%)",
    }
    for kind, count in kinds.items():
        out[f"Task type `{kind}` (share of pairs)"] = f"{100 * count / total:.2f}%"
    return out


def test_release_card_has_a_quality_section_matching_the_data(runs):
    from hf_ipt.execution.runner import assemble_shards

    output = runs[2]
    release = output / "release"
    card = (release / "README.md").read_text()
    assert "### Quality" in card and "No quality filter was applied" in card
    table = dict(re.findall(r"^\| (.+?) \| (.+?) \|$", card.split("### Quality")[1].split("###")[0], re.M))
    synthesized = assemble_shards(str(output / "synthesized"))["train"]
    expected = _independent_figures(list(zip(synthesized["text"], synthesized["pairs"], strict=True)))
    assert int(expected["Pairs"]) > 0
    for label, value in expected.items():
        assert table[label] == value, label
    stats = json.loads((release / "release_info" / "m2" / "stats.json").read_text())
    assert stats["quality"]["pairs"] == int(expected["Pairs"])
    plots = stats["files"]["quality_plots"]
    assert plots and all((release / path).read_bytes().startswith(b"\x89PNG") for path in plots.values())
    assert all(f"]({path})" in card for path in plots.values())


def test_report_against_another_run_prints_both_columns_and_the_changes(runs, capsys, tmp_path):
    one, two = runs[1] / "release", runs[2] / "release"
    assert main(["report", str(two), "--against", str(one), "--output", str(tmp_path / "q")]) == 0
    out = capsys.readouterr().out
    mine, theirs = json.loads((tmp_path / "q" / "quality.json").read_text()), None
    theirs = json.loads((one / "release_info" / "m1" / "stats.json").read_text())["quality"]
    header = next(line for line in out.splitlines() if line.startswith("figure"))
    assert str(one) in header and str(two) in header and "change" in header and "verdict" in header
    pairs_line = next(line for line in out.splitlines() if line.startswith("Pairs  ") or line.startswith("Pairs "))
    assert f"{theirs['pairs']:,}" in pairs_line and f"{mine['pairs']:,}" in pairs_line
    assert f"{mine['pairs'] - theirs['pairs']:+,}" in pairs_line
    # one table row per figure, each with one verdict, and no prose repeating the table
    lines = out.splitlines()
    start = lines.index(header)
    assert len([line for line in lines[start + 2 :] if line.strip() and " against " not in line]) == len(
        compare(mine, theirs)
    )
    assert header.index(str(two)) < header.index(str(one))  # `report TWO --against ONE`: TWO's column first
    # the run's output folder holds the same report as its release
    assert main(["report", str(runs[2])]) == 0
    assert f"Pairs  {mine['pairs']:,}".replace("  ", " ") in " ".join(capsys.readouterr().out.split())
    # a folder that is none of these: one clear line, exit 2
    assert main(["report", str(tmp_path / "q")]) == 2
    assert "hf-ipt report: error:" in capsys.readouterr().err


def test_report_checks_the_recorded_checksums_and_names_a_damaged_file(runs, capsys, tmp_path):
    import shutil

    release = tmp_path / "release"
    shutil.copytree(runs[2] / "release", release)
    assert main(["report", str(release)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("checked: the ") and "match the SHA-256 recorded" in out
    # a truncated data file: the report refuses to vouch for the release, naming the file and how to fix it
    data = next((release / "data").glob("*.parquet"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    assert main(["report", str(release)]) == 2
    err = capsys.readouterr().err
    assert f"{data.relative_to(release)} is damaged" in err and "cannot be vouched for" in err and "hf-ipt push" in err
    assert main(["report", str(runs[1] / "release"), "--against", str(release)]) == 2
    assert "is damaged" in capsys.readouterr().err
    # a copy without the record of its checksums is read, and said to be unchecked
    shutil.rmtree(release)
    shutil.copytree(runs[2] / "release", release, ignore=shutil.ignore_patterns(".hf_ipt"))
    assert main(["report", str(release)]) == 0
    assert "not checked: " in capsys.readouterr().out
    # a malformed stats.json is named
    stats = release / "release_info" / "m2" / "stats.json"
    stats.write_text("{not json")
    assert main(["report", str(release)]) == 2
    assert f"{stats} is not valid JSON" in capsys.readouterr().err


def test_filters_in_the_recipe_reach_templify_and_the_card(runs, tiny_model_path):
    from hf_ipt.pipeline import run
    from hf_ipt.store import StageFolder

    recipe = str(runs[2].parent / "m2.yaml")
    # filtered rows are other data: a new version (a released version never changes)
    overrides = {"quality.drop_duplicate_questions": True, "quality.min_pairs_per_text": 1, "release.version": "v0.2"}
    summaries = run(recipe, ("templify", "mix", "release"), overrides=overrides)
    assert not summaries[0].reused and "quality filters" in summaries[0].figures
    stats = json.loads((runs[2] / "release" / "release_info" / "m2" / "stats.json").read_text())
    filters = stats["quality"]["filters"]
    assert filters["rows_dropped_min_pairs"] >= stats["quality"]["no_pairs"]["rows"]
    assert filters["rows_kept"] + filters["rows_dropped_min_pairs"] == stats["quality"]["rows"]
    assert filters["pairs_dropped_duplicate"] == stats["quality"]["duplicates"]["extra_copies"]
    card = (runs[2] / "release" / "README.md").read_text()
    assert "Filters applied (`quality.*`): drop repeated questions, at least 1 pairs per chunk" in card
    assert f"| Filter: chunks dropped (too few pairs) | {filters['rows_dropped_min_pairs']:,} |" in card
    templified = StageFolder(str(runs[2] / "templified")).marker()
    assert templified["extra"]["quality"]["reports"]["train"]["filters"] == filters


def test_report_of_a_hub_release_at_a_revision(local_hub, capsys):
    """Released rows that still carry `pairs` get their report in stats.json; `hf-ipt report owner/name@rev` reads
    it back from the (local test) Hub."""
    import uuid

    from hf_ipt.release.hub import push_release
    from hf_ipt.reports import load_report

    repo = f"hf-ipt-tester/quality-{uuid.uuid4().hex[:8]}"
    rows = Dataset.from_dict(ROWS)
    fast = {"retry_base_delay": 0.01, "retry_max_delay": 0.05}
    push_release(rows, repo, version="v1", config_name="c", **fast)
    push_release(rows.select(range(1)), repo, version="v2", config_name="c", **fast)
    assert load_report(f"{repo}@v1") == json.loads(json.dumps(quality_report(rows)))
    assert load_report(f"{repo}@v2")["pairs"] == 5
    assert main(["report", f"{repo}@v1", "--against", f"{repo}@v2"]) == 0
    out = capsys.readouterr().out
    # the table alone (no prose repeating it): v1's column first, as the command names them
    assert re.search(r"^Pairs\s+7\s+5\s+\+2\s+better$", out, re.M), out
    assert f"not checked: {repo}@v1 is read from the Hub, where hf-ipt records no checksums" in out
    card = local_hub.read_file(repo, "README.md", "v1").decode()
    assert "### Quality" in card and "| Grounded answers (share of checkable pairs) | 80.00% |" in card
    assert main(["report", f"{repo}@v9"]) == 2 and "hf-ipt report: error:" in capsys.readouterr().err
