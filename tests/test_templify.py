"""Tests of templify: content kept, rows accounted for, chains whole, determinism, rates, options labels, stats."""

from __future__ import annotations

import doctest
import json
import pickle
import random
import string
from collections import Counter

import datasets
import pytest
from datasets import Dataset
from datasets.fingerprint import Hasher
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hf_ipt.templify as templify_module
from hf_ipt import columns as C
from hf_ipt.formatting import TargetFormat
from hf_ipt.synthesis.chains import chain_layout
from hf_ipt.templify import (
    CLASSIC,
    COT_CUE,
    COT_FINAL,
    DIALOG,
    FEW_SHOT,
    MODES,
    NEXT_TURN,
    NUMBERED,
    OPTIONS_MARKER,
    Templifier,
    TemplifyConfig,
    classify_pair,
    plan_chain_batches,
    templify,
    templify_batch,
    templify_stats,
)
from hf_ipt.templify.templates import TEMPLATES, TemplateError, _strings, normalize_answer
from hf_ipt.testing import corpus_paragraphs

datasets.disable_progress_bars()

# ------------------------------------------------------------------------------------------------------------------
# Building synthesized rows the way synthesis lays them out
# ------------------------------------------------------------------------------------------------------------------


def synthesized(entries: list[tuple[object, list[dict]]], rounds: int, batch_size: int) -> dict[str, list]:
    """Rows in synthesis order: per batch of `batch_size`, chains strided (row i, i+B, …); `num_demonstrations`
    counts the linked previous entries, as synthesis does (reset by an entry without pairs or with a bad text)."""
    rows: dict[str, list] = {name: [] for name in ("text", C.PAIRS, C.CHAIN_ID, C.CHAIN_POSITION)}
    rows[C.NUM_DEMONSTRATIONS] = []
    for start in range(0, len(entries), batch_size):
        batch = entries[start : start + batch_size]
        chain_of, position, demos = [None] * len(batch), [0] * len(batch), [0] * len(batch)
        for chain, members in enumerate(chain_layout(len(batch), rounds)):
            linked = 0
            for k, row in enumerate(members):
                text, pairs = batch[row]
                chain_of[row], position[row] = f"b{start}-c{chain}", k
                valid = isinstance(text, str) and text.strip()
                demos[row] = linked if valid else 0
                linked = demos[row] + 1 if valid and pairs else 0
        for row, (text, pairs) in enumerate(batch):
            rows["text"].append(text)
            rows[C.PAIRS].append(pairs)
            rows[C.CHAIN_ID].append(chain_of[row])
            rows[C.CHAIN_POSITION].append(position[row])
            rows[C.NUM_DEMONSTRATIONS].append(demos[row])
    return rows


def pair(question: str, answer: str) -> dict[str, str]:
    return {C.INSTRUCTION: question, C.RESPONSE: answer}


def options_question(stem: str, options: list[str]) -> str:
    return stem + OPTIONS_MARKER + "\n- ".join(options)


def cot_pair(stem: str, rationale: str, final: str, options: list[str] | None = None) -> dict[str, str]:
    question = options_question(stem, options) if options else stem
    return pair(question + "\n" + COT_CUE, rationale + "\n" + COT_FINAL + " " + final)


def rows_of(out: dict[str, list]) -> list[dict]:
    return [dict(zip(out, values, strict=True)) for values in zip(*out.values(), strict=True)]


def one_row_per_chain(texts_and_pairs: list[tuple[str, list[dict]]]) -> dict[str, list]:
    return synthesized(texts_and_pairs, rounds=1, batch_size=max(1, len(texts_and_pairs)))


# ------------------------------------------------------------------------------------------------------------------
# Hypothesis strategies: arbitrary synthesized rows
# ------------------------------------------------------------------------------------------------------------------

WORD = st.text(alphabet=string.ascii_letters + string.digits + "éßΩ中 ", min_size=1, max_size=12).map(str.strip)
WORD = WORD.filter(bool)
FREE = st.text(min_size=1, max_size=40).filter(lambda s: not s.isspace())


@st.composite
def pair_strategy(draw) -> tuple[dict, list[str]]:
    """A pair and the strings of it that must appear in the output ([] when it must be dropped)."""
    kind = draw(st.sampled_from(["plain", "plain", "duplicate", "blank", "options", "cot", "options_cot"]))
    if kind == "plain":
        question, answer = draw(FREE), draw(FREE)
        return pair(question, answer), [question, answer]
    if kind == "duplicate":
        question = draw(st.sampled_from(["Why?", "What is it?"]))
        return pair(question, "Same question again."), [question, "Same question again."]
    if kind == "blank":
        return pair(draw(st.sampled_from(["", "  "])), draw(FREE)), []
    stem = draw(WORD)
    options = draw(st.lists(WORD, min_size=2, max_size=6, unique_by=normalize_answer))
    answer_kind = draw(st.sampled_from(["option", "option", "unanswerable", "other"]))
    if answer_kind == "option":
        answer = draw(st.sampled_from(options))
    elif answer_kind == "unanswerable":
        answer = draw(st.sampled_from(["unanswerable", "Not enough information.", "it is impossible to say"]))
    else:
        answer = "zz-not-an-option-zz"
    expected = [] if answer_kind == "other" else [stem, *options]
    if kind == "options":
        return pair(options_question(stem, options), answer), expected
    rationale = draw(WORD)
    if kind == "cot":
        final = draw(WORD)
        return cot_pair(stem, rationale, final), [stem, rationale, final]
    return cot_pair(stem, rationale, answer, options), expected and [*expected, rationale]


TEXTS = st.one_of(
    FREE,
    FREE,
    FREE.map(lambda s: s * 2000),  # very long
    st.sampled_from(["", "   ", None, 17]),  # empty, blank, invalid
)


@st.composite
def corpus_strategy(draw) -> tuple[list[tuple], list[list[list[str]]]]:
    n = draw(st.integers(min_value=1, max_value=14))
    entries, expected = [], []
    for _ in range(n):
        text = draw(TEXTS)
        drawn = draw(st.lists(pair_strategy(), max_size=4))
        entries.append((text, [p for p, _ in drawn]))
        expected.append([strings for _, strings in drawn])
    return entries, expected


def check_accounting_and_content(rows: dict, out: dict, expected: list[list[list[str]]]) -> None:
    """Every input row in exactly one output row; its raw text and kept pair strings inside that row's text."""
    where: dict[tuple[str, int], int] = {}
    for index, (chain_id, positions) in enumerate(zip(out[C.CHAIN_ID], out["chain_positions"], strict=True)):
        for position in positions:
            assert (chain_id, position) not in where, "an input row landed in two output rows"
            where[(chain_id, position)] = index
    keys = list(zip(rows[C.CHAIN_ID], rows[C.CHAIN_POSITION], strict=True))
    assert sorted(where) == sorted(keys), "an input row was lost"
    for row, key in enumerate(keys):
        text, out_index = rows["text"][row], where[key]
        out_text, status = out["text"][out_index], out["templify_status"][out_index]
        if not isinstance(text, str):
            assert (status, out_text) == ("invalid_text", "")
            continue
        if not text.strip():
            assert (status, out_text) == ("empty_text", "")
            continue
        assert status == "ok"
        assert text in out_text
        for strings in expected[row]:
            for piece in strings:
                assert piece in out_text, f"{piece!r} missing from the text of its row"
    valid = [isinstance(t, str) and bool(t.strip()) for t in rows["text"]]
    kept = sum(1 for row, pairs in enumerate(expected) for strings in pairs if strings and valid[row])
    assert sum(out["num_pairs"]) == kept
    assert sum(out["dropped_pairs"]) == sum(len(p) for p in rows[C.PAIRS] if p) - kept


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpus=corpus_strategy(), rounds=st.integers(1, 3), seed=st.integers(0, 2**40))
def test_every_row_and_string_is_kept(corpus, rounds, seed):
    entries, expected = corpus
    rows = synthesized(entries, rounds=rounds, batch_size=len(entries))
    out = Templifier(TemplifyConfig(seed=seed))(rows)
    check_accounting_and_content(rows, out, expected)
    assert set(out["templify_status"]) <= {"ok", "empty_text", "invalid_text"}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpus=corpus_strategy(), rounds=st.integers(1, 3), synthesis_batch=st.integers(1, 6))
def test_dataset_output_identical_across_batch_sizes_processes_runs_and_row_order(corpus, rounds, synthesis_batch):
    entries, expected = corpus
    rows = synthesized(entries, rounds=rounds, batch_size=synthesis_batch)
    rows["text"] = [t if isinstance(t, str) or t is None else str(t) for t in rows["text"]]  # one Arrow type
    dataset = Dataset.from_dict(rows)
    outputs = [templify(dataset, TemplifyConfig(seed=5, batch_size=size)).to_dict() for size in (1, 7, 1000)]
    outputs.append(templify(dataset, TemplifyConfig(seed=5, batch_size=7)).to_dict())  # a second run
    outputs.append(templify(dataset, TemplifyConfig(seed=5, batch_size=2, num_proc=2)).to_dict())
    assert all(out == outputs[0] for out in outputs[1:])
    check_accounting_and_content(rows, outputs[0], expected)
    shuffled = templify(dataset.shuffle(seed=1), TemplifyConfig(seed=5, batch_size=3)).to_dict()
    assert sorted(rows_as_tuples(shuffled)) == sorted(rows_as_tuples(outputs[0]))
    other_seed = templify(dataset, TemplifyConfig(seed=6, batch_size=7)).to_dict()
    templated = [i for i, mode in enumerate(outputs[0]["mode"]) if mode in MODES]
    if len(templated) >= 4:
        changed = sum(outputs[0]["text"][i] != other_seed["text"][i] for i in templated)
        assert changed > len(templated) / 2


def rows_as_tuples(out: dict) -> list[tuple]:
    return [tuple(json.dumps(v) for v in row.values()) for row in rows_of(out)]


def test_num_proc_two_gives_the_same_dataset():
    texts = corpus_paragraphs(limit=30)
    entries = [
        (t, [pair(f"What is said in {i}?", t[:40]), pair("Why?", "Because.")] if i % 4 else [])
        for i, t in enumerate(texts)
    ]
    dataset = Dataset.from_dict(synthesized(entries, rounds=3, batch_size=10))
    one = templify(dataset, TemplifyConfig(seed=2, batch_size=4)).to_dict()
    two = templify(dataset, TemplifyConfig(seed=2, batch_size=4, num_proc=2)).to_dict()
    assert one == two
    assert len(one["text"]) < len(texts)  # linked chains became single texts


def test_a_different_seed_changes_most_texts():
    texts = corpus_paragraphs(limit=200)
    rows = one_row_per_chain([(t, [pair(f"Question {i}?", f"Answer {i}.")]) for i, t in enumerate(texts)])
    first = Templifier(TemplifyConfig(seed=1))(rows)["text"]
    again = Templifier(TemplifyConfig(seed=1))(rows)["text"]
    second = Templifier(TemplifyConfig(seed=2))(rows)["text"]
    assert first == again
    assert sum(a != b for a, b in zip(first, second, strict=True)) > 0.95 * len(texts)


# ------------------------------------------------------------------------------------------------------------------
# Chains
# ------------------------------------------------------------------------------------------------------------------


def test_linked_runs_raw_entries_and_skipped_rows():
    p = [pair("Q1?", "A1."), pair("Q2?", "A2.")]
    rows = {
        "text": ["t0", "t1", "t2", "t3", "t4", "", None],
        C.PAIRS: [p, p, [], p, p, [], None],
        C.CHAIN_ID: ["c"] * 5 + ["d", "e"],
        C.CHAIN_POSITION: [0, 1, 2, 3, 4, 0, 0],
        # t3 ran zero-shot after a pairless entry; t4 was conditioned on t3
        C.NUM_DEMONSTRATIONS: [0, 1, 0, 0, 1, 0, 0],
    }
    out = templify_batch(rows, TemplifyConfig(seed=0))
    assert out["chain_positions"] == [[0, 1], [2], [3, 4], [0], [0]]
    assert out["mode"][1] == "raw" and out["text"][1] == "t2"
    assert out["templify_status"] == ["ok", "ok", "ok", "empty_text", "invalid_text"]
    assert out["num_pairs"] == [4, 0, 4, 0, 0]
    assert (
        "t0" in out["text"][0] and "t1" in out["text"][0] and out["text"][0].index("t0") < out["text"][0].index("t1")
    )


def test_entry_not_conditioned_on_its_predecessor_starts_a_new_text():
    p = [pair("Q?", "A.")]
    rows = {
        "text": ["a", "b"],
        C.PAIRS: [p, p],
        C.CHAIN_ID: ["c", "c"],
        C.CHAIN_POSITION: [0, 1],
        C.NUM_DEMONSTRATIONS: [0, 0],
    }
    assert templify_batch(rows)["chain_positions"] == [[0], [1]]


def test_a_batch_that_cuts_a_chain_is_refused_and_templify_groups_it():
    texts = corpus_paragraphs(limit=20)
    entries = [(t, [pair(f"What about {i}?", f"Item {i}."), pair("Why?", "Reasons.")]) for i, t in enumerate(texts)]
    dataset = Dataset.from_dict(synthesized(entries, rounds=3, batch_size=10))
    function = Templifier(TemplifyConfig(seed=4))
    whole = dataset.map(function, batched=True, batch_size=10, remove_columns=dataset.column_names)
    assert all(len(p) == len(set(p)) for p in whole["chain_positions"])
    assert sorted(len(p) for p in whole["chain_positions"]) == [2] * 4 + [3] * 4  # strided chains of 10 rows
    with pytest.raises(ValueError, match="incomplete in this batch"):
        dataset.map(function, batched=True, batch_size=7, remove_columns=dataset.column_names)
    for size in (1, 7, 13):
        grouped = templify(dataset, TemplifyConfig(seed=4, batch_size=size))
        assert grouped.to_dict() == whole.to_dict()


def test_iterable_dataset_with_synthesis_batch_size():
    texts = corpus_paragraphs(limit=12)
    entries = [(t, [pair(f"Q{i}?", "A."), pair("Q?", "B.")]) for i, t in enumerate(texts)]
    dataset = Dataset.from_dict(synthesized(entries, rounds=2, batch_size=6))
    expected = templify(dataset, TemplifyConfig(seed=1)).to_dict()
    streamed = templify(dataset.to_iterable_dataset(), TemplifyConfig(seed=1, batch_size=6))
    assert Dataset.from_list(list(streamed), features=streamed.features).to_dict() == expected
    with pytest.raises(ValueError, match="incomplete"):
        list(templify(dataset.to_iterable_dataset(), TemplifyConfig(seed=1, batch_size=5)))


def test_plan_keeps_chains_whole_and_pads_for_processes():
    chain_ids = ["a", "b", "a", "c", "b", "a", "d"]
    positions = [0, 0, 1, 0, 1, 2, 0]
    plan = plan_chain_batches(chain_ids, positions, batch_size=4, num_shards=3)
    assert plan.batch_size == 4 and len(plan.indices) % (4 * 3) == 0
    batches = [plan.indices[i : i + 4].tolist() for i in range(0, len(plan.indices), 4)]
    for batch in batches:
        members = [chain_ids[r] for r in batch if r != plan.padding_row]
        for chain in set(members):
            assert members.count(chain) == chain_ids.count(chain)
    assert sorted(r for r in plan.indices.tolist() if r != plan.padding_row) == list(range(7))
    with pytest.raises(ValueError, match="two rows at chain_position 0"):
        plan_chain_batches(["a", "a"], [0, 0], batch_size=4)
    with pytest.raises(ValueError, match="null at row 1"):
        plan_chain_batches(["a", None], [0, 0], batch_size=4)


def test_one_process_plan_ends_at_the_last_row_so_the_progress_bar_counts_rows():
    # 321 rows in chains of 3 (the last of 1 ... 3 rows), batches of 1000: one short batch, no padding slots
    chain_ids = [f"c{i // 3}" for i in range(321)]
    positions = [i % 3 for i in range(321)]
    plan = plan_chain_batches(chain_ids, positions, batch_size=1000)
    assert len(plan.indices) == 321 and plan.padding_row not in plan.indices.tolist()
    # padding stays between batches, where a chain would not fit, and before the shards of a multi-process map
    plan = plan_chain_batches(["a", "a", "b", "b"], [0, 1, 0, 1], batch_size=3)
    assert plan.indices.tolist() == [0, 1, 4, 2, 3]
    assert len(plan_chain_batches(chain_ids, positions, batch_size=1000, num_shards=2).indices) == 2000


def test_id_column_keys_the_random_choices():
    rows = one_row_per_chain([("First version.", [pair("Q?", "A.")]), ("Other.", [pair("Q?", "A.")])])
    rows["doc_id"] = ["doc-1", "doc-2"]
    config = TemplifyConfig(seed=0, id_column="doc_id")
    out = templify_batch(rows, config)
    assert out["source_ids"] == [["doc-1"], ["doc-2"]]
    edited = dict(rows, text=["Second version, edited.", "Other."])
    again = templify_batch(edited, config)
    assert again["text"][0] == out["text"][0].replace("First version.", "Second version, edited.")
    assert templify_batch(dict(rows, doc_id=["doc-3", "doc-2"]), config)["text"][0] != out["text"][0]


# ------------------------------------------------------------------------------------------------------------------
# Rates over 10,000 chains
# ------------------------------------------------------------------------------------------------------------------

KIND_SHARES = {"qa": 0.4, "options": 0.2, "cot": 0.2, "options_cot": 0.2}


def _pairs_of_kind(kind: str, count: int, i: int) -> list[dict]:
    if kind == "qa":
        return [pair(f"Question {i}.{k}?", f"Answer {k}.") for k in range(count)]
    if kind == "options":
        return [pair(options_question(f"Pick {i}.{k}", ["red", "green", "blue"]), "green") for k in range(count)]
    if kind == "cot":
        return [cot_pair(f"Compute {i}.{k}", "One step, then another.", str(k)) for k in range(count)]
    return [cot_pair(f"Choose {i}.{k}", "Thinking it over.", "blue", ["red", "green", "blue"]) for k in range(count)]


def _rates(out: dict) -> dict[str, float]:
    n = len(out["text"])
    counts = Counter(out["mode"])
    counts.update(f for fams in out["families"] for f in fams)
    counts["inverted"] = sum(out["inverted"])
    return {key: value / n for key, value in counts.items()}


def _assert_within(rates: dict[str, float], expected: dict[str, float]) -> None:
    for key, share in expected.items():
        got = rates.get(key, 0.0)
        if share == 0:
            assert got == 0, f"{key}: expected none, got {got:.4f}"
        else:
            assert abs(got - share) <= 0.3 * share, f"{key}: expected {share:.3f} ± 30 %, got {got:.4f}"


@pytest.mark.parametrize(
    "config",
    [
        TemplifyConfig(seed=11),
        TemplifyConfig(
            seed=12,
            mode_weights={CLASSIC: 0.4, DIALOG: 0.15, NUMBERED: 0.15, FEW_SHOT: 0.15, NEXT_TURN: 0.15},
            inversion_rate=0.2,
            opening_rate=0.3,
            lead_in_rate=0.7,
        ),
    ],
    ids=["defaults", "custom"],
)
def test_modes_and_families_follow_their_rates_over_10000_chains(config):
    rng = random.Random(0)
    kinds = rng.choices(list(KIND_SHARES), weights=list(KIND_SHARES.values()), k=10_000)
    multi = one_row_per_chain([(f"Text {i}.", _pairs_of_kind(k, 2 + i % 2, i)) for i, k in enumerate(kinds)])
    single = one_row_per_chain([(f"Text {i}.", _pairs_of_kind(k, 1, i)) for i, k in enumerate(kinds)])
    function = Templifier(config)
    weights = config.mode_weights
    total = sum(weights.values())
    base = {
        "inverted": config.inversion_rate,
        "opening": config.opening_rate,
        "lead_in": config.lead_in_rate,
        **KIND_SHARES,
    }
    _assert_within(_rates(function(multi)), {**base, **{m: w / total for m, w in weights.items()}})
    single_modes = {m: 0.0 for m in (NUMBERED, FEW_SHOT, NEXT_TURN)}
    single_modes[DIALOG] = weights[DIALOG] / total
    single_modes[CLASSIC] = 1 - single_modes[DIALOG]
    _assert_within(_rates(function(single)), {**base, **single_modes})


def test_chain_of_entries_each_with_two_pairs_can_use_multi_pair_modes_but_not_with_one():
    entries = [("A.", _pairs_of_kind("qa", 2, 0)), ("B.", _pairs_of_kind("qa", 1, 1))] * 300
    rows = synthesized(entries, rounds=2, batch_size=2)
    out = Templifier(TemplifyConfig(seed=3, mode_weights={NUMBERED: 1.0}))(rows)
    assert set(out["mode"]) == {CLASSIC}  # every text holds an entry with a single pair
    assert all(len(p) == 2 for p in out["chain_positions"])


# ------------------------------------------------------------------------------------------------------------------
# Options and chain-of-thought
# ------------------------------------------------------------------------------------------------------------------


def test_classify_pair():
    plain = classify_pair("What is it?", "A cat.")
    assert (plain.family, plain.question, plain.answer) == ("qa", "What is it?", "A cat.")
    opts = classify_pair(options_question("Pick one", ["a", "b", "c"]), "b")
    assert (opts.family, opts.question, opts.options, opts.answer_index) == ("options", "Pick one", ("a", "b", "c"), 1)
    assert classify_pair(options_question("Pick", ["a", "b"]), "Not enough information.").answer_index == -1
    assert classify_pair(options_question("Pick", ["yes", "None of the above"]), "unanswerable").answer_index == 1
    assert classify_pair(options_question("Pick", ["a", "b"]), "c") is None
    cot = classify_pair(
        **dict(zip(("question", "answer"), cot_pair("Add 2 and 3.", "2+3 is 5.", "5").values(), strict=True))
    )
    assert (cot.family, cot.question, cot.rationale, cot.answer) == ("cot", "Add 2 and 3.", "2+3 is 5.", "5")
    both = cot_pair("Which is red?", "Apples are red.", "apple", ["apple", "sky"])
    both = classify_pair(both[C.INSTRUCTION], both[C.RESPONSE])
    assert (both.family, both.options, both.answer_index) == ("options_cot", ("apple", "sky"), 0)
    # half a chain-of-thought (no final phrase) stays plain, with the question exactly as written
    half = classify_pair("Why? " + COT_CUE, "Because.")
    assert (half.family, half.question) == ("qa", "Why? " + COT_CUE)


def answer_renderings(case: dict, j: int, with_cot: bool, rationale: str) -> set[str]:
    """Every way the answer can be written when it is option j (from the template pools)."""
    label, labelled, item = case["labels"][j], case["labelled"][j], case["items"][j]
    if not with_cot:
        return {fmt.format(label=label, labelled=labelled, option=item) for fmt in TEMPLATES.option_answers}
    short = {fmt.format(label=label, labelled=labelled, option=item) for fmt in TEMPLATES.option_answers_in_sentence}
    return {final.format(rationale=rationale, answer=a) for final in TEMPLATES.cot_finals for a in short}


def test_every_rendered_answer_label_points_at_the_answer_option():
    rng = random.Random(7)
    words = ["red", "green", "blue", "cyan", "amber", "olive", "ivory", "coral", "teal", "plum"]
    rationale = "Considering each option in turn."
    batch_entries, cases_in = [], []
    for i in range(600):
        options = rng.sample(words, rng.randint(2, 8)) if i % 50 else [f"opt{k}" for k in range(30)]
        unanswerable = rng.random() < 0.2
        answer = rng.choice(["unanswerable", "Cannot be determined."]) if unanswerable else rng.choice(options)
        with_cot = rng.random() < 0.5
        if with_cot:
            p = cot_pair(f"Which one, number {i}?", rationale, answer, options)
        else:
            p = pair(options_question(f"Which one, number {i}?", options), answer)
        batch_entries.append((f"Text number {i}.", [p]))
        cases_in.append((None if unanswerable else answer, with_cot))
    rows = one_row_per_chain(batch_entries)
    checked = 0
    for seed in (0, 1, 2):
        for row, (expected, with_cot) in zip(
            Templifier(TemplifyConfig(seed=seed)).explain(rows), cases_in, strict=True
        ):
            (case,) = row["options"]
            items, labelled, k = case["items"], case["labelled"], case["answer_index"]
            if expected is None:
                assert items[k] in TEMPLATES.none_of_the_above and k == len(items) - 1
            else:
                assert items[k] == expected
            for label, item in zip(labelled, items, strict=True):
                assert f"{label} {item}" in case["question"]

            assert case["answer"] in answer_renderings(case, k, with_cot, rationale)
            others = [j for j in range(len(items)) if j != k]
            assert not any(case["answer"] in answer_renderings(case, j, with_cot, rationale) for j in others)
            assert case["question"] in row["text"] and case["answer"] in row["text"]
            checked += 1
    assert checked == 1800


def test_option_styles_vary():
    rows = one_row_per_chain(
        [(f"T{i}.", [pair(options_question(f"Pick {i}", ["a1", "b2", "c3"]), "b2")]) for i in range(400)]
    )
    cases = [row["options"][0] for row in Templifier(TemplifyConfig(seed=0)).explain(rows)]
    assert len({tuple(c["labelled"]) for c in cases}) > 40
    assert len({tuple(c["items"]) for c in cases}) == 6  # every order of three options
    assert len({c["answer_index"] for c in cases}) == 3


# ------------------------------------------------------------------------------------------------------------------
# Target formatting, config, pickling, stats, templates
# ------------------------------------------------------------------------------------------------------------------


def test_target_format_from_the_tokenizer(tiny_model_path, tiny_tokenizer):
    rows = one_row_per_chain([("A text.", [pair("Q?", "A.")]), ("Raw text.", []), ("", [])])
    out = templify_batch(rows, TemplifyConfig(target_tokenizer=tiny_model_path))
    assert out["text"][1] == "<s>Raw text.</s>" and out["text"][2] == ""
    assert out["text"][0].startswith("<s>") and out["text"][0].endswith("</s>")
    ids = tiny_tokenizer(out["text"][0], add_special_tokens=False)["input_ids"]
    assert ids.count(tiny_tokenizer.bos_token_id) == 1 and ids[0] == tiny_tokenizer.bos_token_id
    assert ids.count(tiny_tokenizer.eos_token_id) == 1 and ids[-1] == tiny_tokenizer.eos_token_id
    llama = TemplifyConfig(target_format={"bos": "<|begin_of_text|>", "eos": "<|end_of_text|>"})
    assert templify_batch(rows, llama)["text"][1] == "<|begin_of_text|>Raw text.<|end_of_text|>"
    assert templify_batch(rows)["text"][1] == "Raw text."  # off by default


def test_with_the_real_synthesis_step(tiny_model_path):
    from hf_ipt.synthesis import Synthesizer

    def engine(prompts: list[str]) -> list[str]:
        return [
            "<QUE> What is this about? <ANS> A topic. </END>\n\n<QUE> Is it long? <ANS> No. </END>"
            if i % 3
            else "nothing parseable"
            for i, _ in enumerate(prompts)
        ]

    raw = Dataset.from_dict({"text": corpus_paragraphs(limit=9) + ["", "   "], "id": list(range(11))})
    synth = Synthesizer(model=tiny_model_path, engine=engine, rounds=2, max_model_len=2048, max_new_tokens=32)
    synthesized_ds = raw.map(synth, batched=True, batch_size=6)
    out = templify(synthesized_ds, TemplifyConfig(seed=0, id_column="id", batch_size=2))
    positions = Counter((c, p) for c, ps in zip(out["chain_id"], out["chain_positions"], strict=True) for p in ps)
    assert sorted(positions) == sorted(zip(synthesized_ds["chain_id"], synthesized_ds["chain_position"], strict=True))
    assert set(positions.values()) == {1}
    assert sorted(i for ids in out["source_ids"] for i in ids) == list(range(11))
    assert Counter(out["templify_status"])["empty_text"] == 2
    assert max(len(p) for p in out["chain_positions"]) == 2  # some chains linked into one text
    stats = templify_stats(out)
    assert stats["source_rows"] == 11 and stats["rows"] == out.num_rows


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": "1"}, "seed must be an integer"),
        ({"text_column": ""}, "text_column"),
        ({"id_column": "pairs"}, "id_column"),
        ({"mode_weights": {"classic": 1, "chat": 1}}, "unknown modes"),
        ({"mode_weights": {"classic": -1}}, "finite number >= 0"),
        ({"mode_weights": {"classic": 0}}, "all 0"),
        ({"inversion_rate": 1.5}, "between 0 and 1"),
        ({"lead_in_rate": True}, "between 0 and 1"),
        ({"target_tokenizer": "x", "target_format": TargetFormat("<s>", "</s>")}, "use one"),
        ({"target_format": {"bos": "<s>", "end": "</s>"}}, "accepts the keys"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_proc": 0}, "num_proc"),
    ],
)
def test_config_errors_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TemplifyConfig(**kwargs)


def test_bad_batches_get_clear_errors():
    good = one_row_per_chain([("Text.", [pair("Q?", "A.")])])
    with pytest.raises(ValueError, match=r"needs the columns \['pairs'\]"):
        templify_batch({k: v for k, v in good.items() if k != C.PAIRS})
    with pytest.raises(ValueError, match="must be a dict with string 'instruction'"):
        templify_batch(dict(good, pairs=[[{"instruction": "Q?"}]]))
    with pytest.raises(ValueError, match="must hold a list"):
        templify_batch(dict(good, pairs=["Q? A."]))
    with pytest.raises(ValueError, match="'chain_id' must be a string"):
        templify_batch(dict(good, chain_id=[None]))
    with pytest.raises(ValueError, match="'chain_position' must be an integer"):
        templify_batch(dict(good, chain_position=[-1]))
    with pytest.raises(ValueError, match="'num_demonstrations' must be an integer"):
        templify_batch(dict(good, num_demonstrations=[None]))
    twice = {k: v * 2 for k, v in good.items()}
    with pytest.raises(ValueError, match="two rows at chain_position 0"):
        templify_batch(twice)
    with pytest.raises(ValueError, match="two rows at chain_position 0"):
        templify(Dataset.from_dict(twice))
    with pytest.raises(TypeError, match="expects a datasets.Dataset"):
        templify(good)


def test_pickles_and_hashes_stably(tmp_path):
    rows = one_row_per_chain([(t, [pair("Q?", "A.")]) for t in ("One.", "Two.")])
    function = Templifier(TemplifyConfig(seed=9, mode_weights={"dialog": 1, "classic": 1}))
    same = Templifier(TemplifyConfig(seed=9, mode_weights={"classic": 1.0, "dialog": 1.0}))
    assert Hasher.hash(function) == Hasher.hash(same)
    assert Hasher.hash(function) != Hasher.hash(Templifier(TemplifyConfig(seed=10)))
    assert pickle.loads(pickle.dumps(function))(rows) == function(rows)
    Dataset.from_dict(rows).save_to_disk(tmp_path / "synthesized")
    on_disk = datasets.load_from_disk(tmp_path / "synthesized")
    first, second = (templify(on_disk, TemplifyConfig(seed=9)) for _ in range(2))
    assert first._fingerprint == second._fingerprint and first.cache_files == second.cache_files  # cache reused
    assert templify(on_disk, TemplifyConfig(seed=10))._fingerprint != first._fingerprint


def test_stats_are_plain_data_that_add_up():
    texts = corpus_paragraphs(limit=40)
    entries = [
        (t, _pairs_of_kind(list(KIND_SHARES)[i % 4], 1 + i % 3, i) if i % 5 else []) for i, t in enumerate(texts)
    ] + [("", []), (None, [])]
    out = templify(Dataset.from_dict(synthesized(entries, rounds=2, batch_size=14)), TemplifyConfig(seed=0))
    stats = templify_stats(out)
    assert json.loads(json.dumps(stats)) == stats
    assert stats["source_rows"] == len(entries) and stats["rows"] == out.num_rows
    assert stats["statuses"] == {"ok": out.num_rows - 2, "empty_text": 1, "invalid_text": 1}
    assert sum(stats["modes"].values()) == stats["texts"]
    assert stats["chars_per_text"]["total"] == sum(len(t) for t in out["text"])
    assert sum(stats["chars_per_text"]["histogram"]["counts"]) == stats["texts"]
    assert stats["pairs_per_text"]["total"] == sum(out["num_pairs"])
    assert stats["entries_per_text"]["quantiles"]["p100"] == 2
    assert stats == templify_stats(out.to_iterable_dataset()) == templify_stats(out.to_dict())
    dropped = templify(
        Dataset.from_dict(synthesized(entries, rounds=2, batch_size=14)), TemplifyConfig(seed=0, drop_skipped=True)
    )
    assert templify_stats(dropped)["statuses"] == {"ok": out.num_rows - 2}


def test_template_inventory_meets_the_method():
    inventory = TEMPLATES.inventory()
    assert inventory["qa_formats"] >= 60
    assert inventory["openings"] >= 90 and inventory["lead_ins"] >= 60
    assert inventory["option_starts"] >= 16 and inventory["option_label_sets"] >= 80
    assert inventory["option_layouts"] == 3
    assert inventory["numbered_formats"] >= 11 and inventory["next_turn_prompts"] >= 15
    assert inventory["cot_styles"] >= 210
    assert len(set(TEMPLATES.qa_formats)) == len(TEMPLATES.qa_formats)
    assert len(set(TEMPLATES.openings)) == len(TEMPLATES.openings)
    with pytest.raises(TemplateError, match="uses fields"):
        _strings({"qa_formats": ["Q: {question} A: {answr}"]}, "qa.yaml", "qa_formats", {"question", "answer"})


def test_braces_and_format_fields_in_the_corpus_are_safe():
    rows = one_row_per_chain([("Use {text} and {0} here.", [pair("What is {question}?", "It is {answer}.")])])
    text = templify_batch(rows)["text"][0]
    assert "Use {text} and {0} here." in text and "What is {question}?" in text and "It is {answer}." in text


def test_empty_dataset():
    empty = Dataset.from_dict(
        {"text": [], C.PAIRS: [], C.CHAIN_ID: [], C.CHAIN_POSITION: [], C.NUM_DEMONSTRATIONS: []}
    )
    out = templify(empty)
    assert out.num_rows == 0 and "templify_status" in out.column_names


def test_docstring_examples():
    import hf_ipt.templify.templates as templates_module
    from hf_ipt import stats
    from hf_ipt.templify import batching, config, dataset, report, templifier

    modules = (templify_module, config, templifier, batching, dataset, report, stats)
    results = [doctest.testmod(module) for module in modules]
    assert sum(r.failed for r in results) == 0 and sum(r.attempted for r in results) > 10
    results = doctest.testmod(templates_module)
    assert results.failed == 0 and results.attempted >= 3


def test_arrow_numpy_and_pandas_batches_give_the_same_rows():
    import numpy as np
    import pyarrow as pa

    texts = corpus_paragraphs(limit=9)
    rows = synthesized([(t, _pairs_of_kind(list(KIND_SHARES)[i % 4], 2, i)) for i, t in enumerate(texts)], 3, 9)
    rows["doc"] = list(range(100, 109))
    function = Templifier(TemplifyConfig(seed=8, id_column="doc"))
    expected = function(rows)
    assert function(pa.table(rows)).to_pydict() == expected  # Ray batch_format="pyarrow"
    as_numpy = {k: np.array(v, dtype=object) if k == C.PAIRS else np.array(v) for k, v in rows.items()}
    assert function(as_numpy) == expected  # Ray's default numpy batches (numpy ints as ids and positions)
    pandas = pytest.importorskip("pandas")
    assert function(pandas.DataFrame(rows)) == expected


def test_iterable_dataset_of_unknown_columns():
    p = [pair("Q?", "R.")]
    rows = {
        "text": ["A.", "B.", "C."],
        C.PAIRS: [p, p, []],
        C.CHAIN_ID: ["a", "a", "c"],
        C.CHAIN_POSITION: [0, 1, 0],
        C.NUM_DEMONSTRATIONS: [0, 1, 0],
        "extra": [1, 2, 3],
    }

    def generate():
        for i in range(3):
            yield {k: v[i] for k, v in rows.items()}

    streamed = datasets.IterableDataset.from_generator(generate)
    assert streamed.column_names is None
    out = list(templify(streamed, TemplifyConfig(seed=0, batch_size=3)))
    assert [o["chain_positions"] for o in out] == [[0, 1], [0]] and "extra" not in out[0]
    assert out == rows_of(templify(Dataset.from_dict(rows), TemplifyConfig(seed=0)).to_dict())


def test_templify_finds_the_text_column_synthesis_read():
    """A corpus whose texts are in `content`: synthesis reads it, and templify finds it without being told again."""
    pair = {"instruction": "What sleeps?", "response": "Cats."}
    rows = {
        "content": ["Cats sleep a lot.", "Dogs bark."],
        "url": [1, 2],  # not text: never mistaken for it
        C.PAIRS: [[pair], []],
        C.CHAIN_ID: ["a", "b"],
        C.CHAIN_POSITION: [0, 0],
        C.NUM_DEMONSTRATIONS: [0, 0],
        C.SYNTH_OUTPUT: ["<QUE> What sleeps? <ANS> Cats. </END>", ""],
    }
    out = templify(Dataset.from_dict(rows), TemplifyConfig(seed=0))
    assert out[1]["text"] == "Dogs bark." and "Cats sleep a lot." in out[0]["text"]
    # two text columns besides synthesis': it cannot tell which one synthesis read, and says how to choose
    with pytest.raises(ValueError, match="set TemplifyConfig.text_column to the column synthesis read"):
        templify(Dataset.from_dict({**rows, "title": ["a", "b"]}), TemplifyConfig(seed=0))
