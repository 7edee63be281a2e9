"""Token-ratio mixing: general-instruction formatting, token counting, whole-example selection, reports."""

from __future__ import annotations

import doctest
import json
import pickle

import numpy as np
import pytest
from datasets import Dataset, DatasetDict, load_from_disk
from datasets.fingerprint import Hasher
from hypothesis import given, settings
from hypothesis import strategies as st

import hf_ipt.mixing as mixing_module
from hf_ipt.columns import FORMAT_ERROR, FORMAT_STATUS, FORMAT_STATUSES
from hf_ipt.formatting import TargetFormat
from hf_ipt.mixing import (
    FormatMismatchError,
    GeneralInstructionFormatter,
    InsufficientTokensError,
    MixConfig,
    MixWarning,
    RatioToleranceError,
    TextWrapper,
    TokenCounter,
    count_tokens,
    format_general_instructions,
    mix,
    prepare_source,
    select_for_target,
)
from hf_ipt.testing import corpus_paragraphs

PARAGRAPHS = corpus_paragraphs()


# The two ways of the paper, spelled out with the public pieces (prepare the other source, then mix by weights)


def mix_by_token_weights(sources, *, tokenizer, seed=0, **options):
    """{name: (dataset, weight)} mixed by token weights."""
    weights = {name: weight for name, (_, weight) in sources.items()}
    config = MixConfig(weights=weights, tokenizer=tokenizer, seed=seed, **options)
    return mix({name: dataset for name, (dataset, _) in sources.items()}, config)


def mix_by_token_ratio(primary, secondary, ratio=1.0, *, tokenizer, seed=0, primary_name="augmented",
                       secondary_name="secondary", **options):  # fmt: skip
    """Two sources at `ratio` (a number: primary tokens per secondary token, or a pair)."""
    weights = (float(ratio), 1.0) if isinstance(ratio, int | float) else tuple(ratio)
    sources = {primary_name: (primary, weights[0]), secondary_name: (secondary, weights[1])}
    return mix_by_token_weights(sources, tokenizer=tokenizer, seed=seed, **options)


def mix_with_general_instructions(augmented, general, *, tokenizer, ratio=1.0, seed=0, target_format=None,
                                  **options):  # fmt: skip
    """Continual pre-training: OpenOrca-style rows formatted as "{question} {response}", then mixed."""
    prepared = prepare_source(
        general, kind="general_instructions", text_column="text", target_format=target_format or TargetFormat(),
        name="general",
    )  # fmt: skip
    return mix_by_token_ratio(
        augmented, prepared, ratio, tokenizer=tokenizer, seed=seed, secondary_name="general", **options
    )


def mix_with_raw_corpus(augmented, raw, *, ratio, tokenizer, seed=0, raw_text_column="text", target_format=None,
                        **options):  # fmt: skip
    """Pre-training from scratch: a raw corpus, unchanged (but for the target BOS/EOS), mixed at `ratio`."""
    target = target_format or TargetFormat()
    prepared = prepare_source(raw, kind="raw", text_column=raw_text_column, target_format=target, name="raw")
    text_columns = {**options.pop("text_columns", {}), "raw": raw_text_column}
    return mix_by_token_ratio(
        augmented, prepared, ratio, tokenizer=tokenizer, seed=seed, secondary_name="raw", text_columns=text_columns,
        **options,
    )  # fmt: skip


def openorca_rows(paragraphs: list[str], prefix: str = "orca") -> dict[str, list]:
    """OpenOrca's schema: each paragraph cut into a question and a response, with a system prompt to discard."""
    questions, responses = [], []
    for text in paragraphs:
        words = text.split()
        cut = max(1, len(words) // 3)
        questions.append(" ".join(words[:cut]) + "?")
        responses.append(" ".join(words[cut:]))
    return {
        "id": [f"{prefix}.{i}" for i in range(len(paragraphs))],
        "system_prompt": [f"You are assistant number {i}. Think step by step." for i in range(len(paragraphs))],
        "question": questions,
        "response": responses,
    }


@pytest.fixture(scope="module")
def augmented() -> Dataset:
    return Dataset.from_dict({"text": PARAGRAPHS[:60]})


@pytest.fixture(scope="module")
def openorca() -> Dataset:
    return Dataset.from_dict(openorca_rows(PARAGRAPHS[100:500]))


@pytest.fixture(scope="module")
def raw_corpus() -> Dataset:
    texts = PARAGRAPHS[500:760]
    return Dataset.from_dict({"content": texts, "url": [f"https://example.org/{i}" for i in range(len(texts))]})


def recount(tokenizer, texts: list[str]) -> int:
    """Tokens counted independently of the mixing code, through the tokenizer's public call."""
    return sum(len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"])


def tokens_by_source(mixed: Dataset, tokenizer) -> dict[str, int]:
    totals: dict[str, int] = {}
    for source in sorted(set(mixed["source"])):
        totals[source] = recount(tokenizer, mixed.filter(lambda row, s=source: row["source"] == s)["text"])
    return totals


# ---------------------------------------------------------------------------------------------------------------
# Formatting general instructions
# ---------------------------------------------------------------------------------------------------------------


def test_format_joins_question_and_response_with_one_space_and_drops_the_system_prompt():
    batch = {
        "id": ["a", "b"],
        "system_prompt": ["You are a helpful assistant.", ""],
        "question": ["What is 2+2?", "Translate 'chat'.\n"],
        "response": ["4", " Cat."],
    }
    out = GeneralInstructionFormatter()(batch)
    assert out["text"] == ["What is 2+2? 4", "Translate 'chat'.\n  Cat."]  # used as they are, one space between
    assert all("assistant" not in text for text in out["text"])
    assert out[FORMAT_STATUS] == ["ok", "ok"] and out[FORMAT_ERROR] == ["", ""]
    assert out["id"] == ["a", "b"] and out["system_prompt"] == batch["system_prompt"]  # input columns kept


def test_format_wraps_with_the_target_bos_eos_and_custom_columns():
    formatter = GeneralInstructionFormatter(
        question_column="instruction", response_column="output", target_format=TargetFormat("<s>", "</s>")
    )
    out = formatter({"instruction": ["Name a colour."], "output": ["Blue."]})
    assert out["text"] == ["<s>Name a colour. Blue.</s>"]
    assert format_general_instructions(
        {"q": ["Why?"], "r": ["Because."]},
        question_column="q",
        response_column="r",
        target_format=TargetFormat(eos="|"),
    )["text"] == ["Why? Because.|"]


def test_format_gives_a_status_to_every_bad_row_and_keeps_them():
    batch = {
        "question": ["ok?", None, "", "   \n", 7, "fine?", "fine?", "fine?"],
        "response": ["yes", "r", "r", "r", "r", None, "\t", ["x"]],
    }
    out = GeneralInstructionFormatter()(batch)
    assert out[FORMAT_STATUS] == [
        "ok",
        "missing_question",
        "empty_question",
        "empty_question",
        "invalid_question",
        "missing_response",
        "empty_response",
        "invalid_response",
    ]
    assert out["text"] == ["ok? yes"] + [""] * 7
    assert "'question'" in out[FORMAT_ERROR][1] and "int" in out[FORMAT_ERROR][4]
    assert len(out["question"]) == 8  # one row out per row in


def test_format_names_a_missing_column_and_how_to_fix_it():
    with pytest.raises(ValueError, match=r"'question'.*columns \['inputs', 'response'\].*question_column="):
        GeneralInstructionFormatter()({"inputs": ["x"], "response": ["y"]})
    with pytest.raises(ValueError, match="different columns"):
        GeneralInstructionFormatter(question_column="x", response_column="x")
    with pytest.raises(ValueError, match="TargetFormat"):
        GeneralInstructionFormatter(target_format="<s>")


def test_format_works_as_a_cached_dataset_map(openorca):
    formatter = GeneralInstructionFormatter(target_format=TargetFormat("<s>", "</s>"))
    mapped = openorca.map(formatter, batched=True, batch_size=64)
    assert mapped["text"][3] == "<s>" + openorca["question"][3] + " " + openorca["response"][3] + "</s>"
    assert set(mapped[FORMAT_STATUS]) == {"ok"}
    assert Hasher.hash(formatter) == Hasher.hash(
        GeneralInstructionFormatter(target_format=TargetFormat("<s>", "</s>"))
    )
    assert pickle.loads(pickle.dumps(formatter)) == formatter


# ---------------------------------------------------------------------------------------------------------------
# Token counting
# ---------------------------------------------------------------------------------------------------------------


def test_statuses_written_are_the_contract_values():
    batch = {"question": ["ok?", None, " ", 3, "q", "q", "q"], "response": ["yes", "r", "r", "r", None, "", 4]}
    assert set(GeneralInstructionFormatter()(batch)[FORMAT_STATUS]) == set(FORMAT_STATUSES)


def test_text_wrapper_wraps_non_blank_texts_only():
    wrapper = TextWrapper("body", TargetFormat("<s>", "</s>"))
    # the whole-batch form (the CLI's) and the input_columns form (the recipes') agree, other columns untouched
    assert wrapper({"body": ["a", " ", "", None], "id": [1, 2, 3, 4]}) == {"body": ["<s>a</s>", " ", "", None]}
    assert wrapper.wrap_texts(["a", " ", "", None]) == {"body": ["<s>a</s>", " ", "", None]}
    with pytest.raises(ValueError, match="TargetFormat"):
        TextWrapper("body", "<s>")


def test_prepare_source_formats_each_kind_like_the_recipes(openorca, raw_corpus):
    target = TargetFormat("<s>", "</s>")
    general = prepare_source(
        openorca, kind="general_instructions", text_column="body", target_format=target, name="general"
    )
    assert general["body"][3] == "<s>" + openorca["question"][3] + " " + openorca["response"][3] + "</s>"
    assert set(general[FORMAT_STATUS]) == {"ok"} and general.column_names[: len(openorca.column_names)] == (
        openorca.column_names
    )
    renamed = openorca.rename_columns({"question": "inputs", "response": "outputs"})
    custom = prepare_source(
        renamed,
        kind="general_instructions",
        text_column="text",
        target_format=target,
        question_column="inputs",
        response_column="outputs",
    )
    assert (
        custom["text"]
        == prepare_source(openorca, kind="general_instructions", text_column="text", target_format=target)["text"]
    )
    blanks = Dataset.from_dict({"content": ["page", " ", ""], "n": [1, 2, 3]})
    wrapped = prepare_source(blanks, kind="raw", text_column="content", target_format=target, name="web")
    assert wrapped.to_dict() == {"content": ["<s>page</s>", " ", ""], "n": [1, 2, 3]}
    assert prepare_source(raw_corpus, kind="raw", text_column="content", target_format=TargetFormat()) is raw_corpus
    stream = prepare_source(blanks.to_iterable_dataset(), kind="raw", text_column="content", target_format=target)
    assert [row["content"] for row in stream] == ["<s>page</s>", " ", ""]
    with pytest.raises(ValueError, match="kind must be one of"):
        prepare_source(blanks, kind="web", text_column="content", target_format=target)
    with pytest.raises(ValueError, match="source 'web' has no text column 'text'"):
        prepare_source(blanks, kind="raw", text_column="text", target_format=target, name="web")
    with pytest.raises(TypeError, match="pick a split"):
        prepare_source(DatasetDict({"train": blanks}), kind="raw", text_column="content", target_format=target)


def test_docstring_examples():
    results = doctest.testmod(mixing_module)
    assert results.failed == 0 and results.attempted >= 5


def test_counts_equal_the_tokenizer_without_special_tokens(tiny_tokenizer):
    texts = PARAGRAPHS[:50] + ["<s>wrapped text</s>", "", "x"]
    counts = TokenCounter(tiny_tokenizer).count(texts)
    expected = [len(tiny_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert counts == expected
    assert counts[-3] == len(tiny_tokenizer("wrapped text", add_special_tokens=False)["input_ids"]) + 2
    assert counts[-2] == 0


def test_counter_falls_back_to_the_tokenizer_call_when_the_backend_disagrees(tiny_model_path, tiny_tokenizer):
    from transformers import AutoTokenizer

    class LowercasingTokenizer(type(tiny_tokenizer)):
        """A wrapper that pre-processes texts before its backend sees them, as some tokenizers do."""

        def __call__(self, text, **kwargs):
            lowered = [t.lower() for t in text] if isinstance(text, list) else text.lower()
            return super().__call__(lowered, **kwargs)

    assert TokenCounter(tiny_tokenizer).use_backend
    lowering = LowercasingTokenizer.from_pretrained(tiny_model_path)
    counter = TokenCounter(lowering)
    assert not counter.use_backend
    texts = ["THE QUICK BROWN FOX", PARAGRAPHS[3].upper()]
    assert counter.count(texts) == [len(ids) for ids in lowering(texts, add_special_tokens=False)["input_ids"]]
    assert counter.count(texts) != TokenCounter(AutoTokenizer.from_pretrained(tiny_model_path)).count(texts)


def test_counter_ignores_truncation_left_on_the_tokenizer_and_handles_nulls(tiny_model_path, tiny_tokenizer):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    tokenizer(PARAGRAPHS[0], truncation=True, max_length=4)  # leaves the Rust backend truncating at 4
    assert tokenizer.backend_tokenizer.truncation is not None
    counter = TokenCounter(tokenizer)
    assert counter.count([PARAGRAPHS[0], None]) == [recount(tiny_tokenizer, [PARAGRAPHS[0]]), 0]
    tokenizer.backend_tokenizer.enable_padding(length=512)
    assert counter.count(["a b"]) == [recount(tiny_tokenizer, ["a b"])]
    with pytest.raises(TypeError, match=r"column 'text' must hold strings to count tokens, found a int"):
        counter.count(["a", 3])
    with pytest.raises(ValueError, match="no column 'text'.*text_column="):
        counter({"body": ["a"]})
    out = counter({"text": ["a b"], "other": [1]})
    assert out["other"] == [1] and out["num_tokens"] == [recount(tiny_tokenizer, ["a b"])]


def test_counter_hash_is_stable_across_loads_and_calls(tiny_model_path):
    from transformers import AutoTokenizer

    first = TokenCounter(AutoTokenizer.from_pretrained(tiny_model_path))
    fingerprint = Hasher.hash(first)
    first.count(PARAGRAPHS[:20])
    second = TokenCounter(tiny_model_path)  # a path is loaded with AutoTokenizer
    assert Hasher.hash(first) == fingerprint == Hasher.hash(second)
    assert Hasher.hash(TokenCounter(tiny_model_path, count_column="n")) != fingerprint
    assert pickle.loads(pickle.dumps(first)).count(["hello world"]) == first.count(["hello world"])


def test_count_tokens_parallel_and_cached(tiny_tokenizer, tmp_path, monkeypatch):
    Dataset.from_dict({"body": PARAGRAPHS[:200], "n": list(range(200))}).save_to_disk(tmp_path / "ds")
    dataset = load_from_disk(str(tmp_path / "ds"))
    serial = count_tokens(dataset, tiny_tokenizer, text_column="body")
    assert serial["num_tokens"] == [recount(tiny_tokenizer, [t]) for t in PARAGRAPHS[:200]]
    assert serial["n"] == list(range(200)) and serial.features["num_tokens"].dtype == "int64"
    parallel = count_tokens(dataset, tiny_tokenizer, text_column="body", num_proc=2, batch_size=50)
    assert parallel["num_tokens"] == serial["num_tokens"]

    # a second count of the same data with the same tokenizer reads the cache instead of tokenizing
    def must_not_run(self, texts):
        raise AssertionError("tokens were counted again instead of read from the cache")

    monkeypatch.setattr(TokenCounter, "count", must_not_run)
    again = count_tokens(dataset, tiny_tokenizer, text_column="body")
    assert again["num_tokens"] == serial["num_tokens"] and again.cache_files == serial.cache_files


def test_count_tokens_on_a_stream_and_clear_errors(tiny_tokenizer):
    stream = Dataset.from_dict({"text": PARAGRAPHS[:30]}).to_iterable_dataset()
    counted = list(count_tokens(stream, tiny_tokenizer, batch_size=7))
    assert [row["num_tokens"] for row in counted] == [recount(tiny_tokenizer, [t]) for t in PARAGRAPHS[:30]]
    with pytest.raises(ValueError, match="no text column 'text'.*columns: \\['body'\\]"):
        count_tokens(Dataset.from_dict({"body": ["a"]}), tiny_tokenizer)
    with pytest.raises(ValueError, match="must hold strings.*int64"):
        count_tokens(Dataset.from_dict({"text": [1, 2]}), tiny_tokenizer)
    with pytest.raises(TypeError, match="pick a split"):
        count_tokens(DatasetDict({"train": Dataset.from_dict({"text": ["a"]})}), tiny_tokenizer)


# ---------------------------------------------------------------------------------------------------------------
# Mixing
# ---------------------------------------------------------------------------------------------------------------


def assert_report_matches(mixed: Dataset, report, tokenizer, weights: dict[str, float], tolerance: float = 0.01):
    """Achieved shares recomputed from the output texts, independently of the report, within tolerance."""
    measured = tokens_by_source(mixed, tokenizer)
    total = sum(measured.values())
    requested = {name: weight / sum(weights.values()) for name, weight in weights.items()}
    for name in weights:
        share = measured[name] / total
        assert abs(share - requested[name]) <= tolerance * requested[name], (name, share, requested[name])
        assert report.sources[name].tokens_selected == measured[name]
        assert report.sources[name].rows_selected == sum(1 for s in mixed["source"] if s == name)
        assert report.sources[name].achieved_share == pytest.approx(share)
    assert report.total_tokens == total == sum(mixed["num_tokens"]) and report.total_rows == len(mixed)
    assert report.within_tolerance and report.max_share_error <= tolerance
    first = next(iter(weights))
    assert report.requested_ratio == pytest.approx({n: w / weights[first] for n, w in weights.items()})
    assert report.achieved_ratio == pytest.approx({n: measured[n] / measured[first] for n in weights})


@pytest.mark.parametrize("ratio", [(1, 1), (1, 3), (3, 1)])
def test_two_way_ratio_within_one_percent(augmented, openorca, tiny_tokenizer, ratio):
    mixed, report = mix_with_general_instructions(augmented, openorca, tokenizer=tiny_tokenizer, ratio=ratio, seed=5)
    assert_report_matches(mixed, report, tiny_tokenizer, {"augmented": ratio[0], "general": ratio[1]})
    assert mixed.column_names == ["text", "num_tokens", "source", "source_index"]
    # augmented holds far fewer tokens than general at all three ratios: it is the binding source, used whole
    assert report.sources["augmented"].used_whole and report.sources["augmented"].rows_unused == 0
    assert not report.sources["general"].used_whole and report.sources["general"].rows_unused > 0
    # every mixed row is its source row, formatted exactly
    for row in mixed.select(range(0, len(mixed), 7)):
        if row["source"] == "general":
            source = openorca[row["source_index"]]
            assert row["text"] == source["question"] + " " + source["response"]
        else:
            assert row["text"] == augmented[row["source_index"]]["text"]
    assert report.sources["general"].dropped_columns[:2] == ["id", "system_prompt"]


def test_three_way_mix_within_one_percent(augmented, openorca, raw_corpus, tiny_tokenizer):
    general = openorca.map(GeneralInstructionFormatter(), batched=True)
    raw = raw_corpus.shuffle(seed=3)  # a source with an indices mapping: source_index points into it as passed
    weights = {"augmented": 2, "general": 1, "raw": 3}
    mixed, report = mix_by_token_weights(
        {"augmented": (augmented, 2), "general": (general, 1), "raw": (raw, 3)},
        tokenizer=tiny_tokenizer,
        seed=11,
        text_columns={"raw": "content"},
    )
    assert_report_matches(mixed, report, tiny_tokenizer, weights)
    assert set(mixed["source"]) == {"augmented", "general", "raw"}
    for row in mixed.filter(lambda r: r["source"] == "raw").select(range(10)):
        assert row["text"] == raw[row["source_index"]]["content"]


def test_total_tokens_target_and_the_exact_report(augmented, openorca, tiny_tokenizer):
    mixed, report = mix_with_general_instructions(
        augmented, openorca, tokenizer=tiny_tokenizer, ratio=(1, 3), seed=2, total_tokens=8000
    )
    assert_report_matches(mixed, report, tiny_tokenizer, {"augmented": 1, "general": 3})
    assert abs(report.total_tokens - 8000) <= 80 and report.requested_total_tokens == 8000
    assert report.sources["augmented"].target_tokens == pytest.approx(2000)
    data = report.to_dict()
    assert json.loads(json.dumps(data)) == data  # plain data, for the dataset card
    assert data["sources"]["general"]["rows_total"] == len(openorca)


def test_a_mix_of_disk_backed_sources_reads_the_token_counts_from_the_cache(tmp_path, tiny_tokenizer, monkeypatch):
    for name, texts in (("a", PARAGRAPHS[:100]), ("b", PARAGRAPHS[100:400])):
        Dataset.from_dict({"text": texts}).save_to_disk(tmp_path / name)
    sources = {name: load_from_disk(str(tmp_path / name)) for name in ("a", "b")}
    config = MixConfig(weights={"a": 1, "b": 1}, tokenizer=tiny_tokenizer, seed=0)
    first, first_report = mix(sources, config)

    def must_not_run(self, texts):
        raise AssertionError("tokens were counted again instead of read from the cache")

    monkeypatch.setattr(TokenCounter, "count", must_not_run)
    again, again_report = mix({name: load_from_disk(str(tmp_path / name)) for name in ("a", "b")}, config)
    assert again_report == first_report and list(again["text"]) == list(first["text"])


def test_a_total_smaller_than_any_example_is_an_error(augmented, openorca, tiny_tokenizer):
    with pytest.raises(RatioToleranceError, match="smaller than any whole example"):
        mix_with_general_instructions(augmented, openorca, tokenizer=tiny_tokenizer, total_tokens=2)


def test_same_seed_same_mix_other_seed_other_mix(augmented, openorca, tiny_tokenizer):
    def run(seed):
        mixed, _ = mix_with_general_instructions(augmented, openorca, tokenizer=tiny_tokenizer, seed=seed)
        return list(zip(mixed["source"], mixed["source_index"], mixed["text"], strict=True))

    first = run(7)
    assert run(7) == first
    other = run(8)
    assert other != first
    assert sorted(i for s, i, _ in other if s == "general") != sorted(i for s, i, _ in first if s == "general")
    sources = [s for s, _, _ in first]
    assert sources != sorted(sources)  # shuffled, not one source after the other


def test_insufficient_tokens_names_the_source_and_the_shortfall(augmented, openorca, tiny_tokenizer):
    available = recount(tiny_tokenizer, augmented["text"])
    with pytest.raises(InsufficientTokensError) as caught:
        mix_with_general_instructions(augmented, openorca, tokenizer=tiny_tokenizer, total_tokens=4 * available)
    shortfall = 2 * available - available
    assert caught.value.shortfalls == {"augmented": shortfall}
    message = str(caught.value)
    assert "'augmented'" in message and f"short by {shortfall:,}" in message and "'general'" not in message
    assert f"holds {available:,} usable" in message and "allow_partial=True" in message
    assert caught.value.achievable_total_tokens == 2 * available


def test_allow_partial_returns_the_largest_mix_with_a_warning(augmented, openorca, tiny_tokenizer):
    available = recount(tiny_tokenizer, augmented["text"])
    with pytest.warns(MixWarning, match=f"largest mix.*{2 * available:,} tokens"):
        mixed, report = mix_with_general_instructions(
            augmented, openorca, tokenizer=tiny_tokenizer, total_tokens=4 * available, allow_partial=True
        )
    assert report.partial and report.warnings and report.sources["augmented"].used_whole
    assert_report_matches(mixed, report, tiny_tokenizer, {"augmented": 1, "general": 1})


def test_bad_rows_are_excluded_counted_and_never_lost(augmented, tiny_tokenizer):
    rows = openorca_rows(PARAGRAPHS[100:400])
    rows["question"][0] = None
    rows["question"][1] = "   "
    rows["response"][2] = ""
    rows["response"][3] = None
    orca = Dataset.from_dict(rows)
    aug_texts = list(augmented["text"]) + [None, "", " \n\t"]
    mixed, report = mix_with_general_instructions(
        Dataset.from_dict({"text": aug_texts}), orca, tokenizer=tiny_tokenizer, ratio=(1, 2), seed=1
    )
    general = report.sources["general"]
    assert general.rows_excluded == {
        "format_status=empty_question": 1,
        "format_status=empty_response": 1,
        "format_status=missing_question": 1,
        "format_status=missing_response": 1,
    }
    assert report.sources["augmented"].rows_excluded == {"empty_text": 2, "null_text": 1}
    for source in report.sources.values():
        assert source.rows_total == source.rows_selected + source.rows_unused + sum(source.rows_excluded.values())
    assert not {0, 1, 2, 3} & {
        i for s, i in zip(mixed["source"], mixed["source_index"], strict=True) if s == "general"
    }
    assert all(text.strip() for text in mixed["text"])
    assert_report_matches(mixed, report, tiny_tokenizer, {"augmented": 1, "general": 2})


def test_a_source_with_no_usable_tokens_is_an_error(augmented, tiny_tokenizer):
    orca = Dataset.from_dict({"id": ["a"], "system_prompt": [""], "question": [""], "response": ["x"]})
    with pytest.raises(
        InsufficientTokensError, match=r"no usable tokens in source\(s\) \['general'\].*empty_question"
    ):
        mix_with_general_instructions(augmented, orca, tokenizer=tiny_tokenizer)


@pytest.mark.parametrize("seed", range(8))
def test_a_source_of_long_examples_is_filled_past_the_first_one_that_overshoots(tiny_tokenizer, seed):
    # The capped source holds a few long texts and many short ones: whatever the shuffle, the running total meets a
    # long text that overshoots while far from the target; the examples after it must still be used to close the gap
    # (a prefix plus one extra example stopped 10 % short on a Python whose pydoc corpus differed by a few paragraphs).
    binding = Dataset.from_dict({"text": [" ".join(PARAGRAPHS[:10])]})
    long_texts = [" ".join(PARAGRAPHS[i : i + 6]) for i in range(20, 38, 6)]  # each over half the target
    short_texts = [PARAGRAPHS[i] for i in range(100, 140)]
    capped = Dataset.from_dict({"text": long_texts + short_texts})
    mixed, report = mix_by_token_ratio(
        binding, capped, 1, tokenizer=tiny_tokenizer, primary_name="binding", secondary_name="capped", seed=seed
    )
    assert report.within_tolerance and not report.partial
    assert_report_matches(mixed, report, tiny_tokenizer, {"binding": 1, "capped": 1})


def test_whole_examples_that_cannot_meet_the_tolerance(tiny_tokenizer):
    short = Dataset.from_dict({"text": ["one two three"]})
    long = Dataset.from_dict({"text": [PARAGRAPHS[0] * 3, PARAGRAPHS[1] * 3]})
    with pytest.raises(RatioToleranceError, match=r"source '(short|long)' got .* instead of 50\.0000%"):
        mix_by_token_ratio(short, long, 1, tokenizer=tiny_tokenizer, primary_name="short", secondary_name="long")
    with pytest.warns(MixWarning, match="returning it anyway"):
        mixed, report = mix_by_token_ratio(
            short, long, 1, tokenizer=tiny_tokenizer, primary_name="short", secondary_name="long", allow_partial=True
        )
    assert not report.within_tolerance and report.partial and len(mixed) >= 1


def test_keep_columns_and_the_from_scratch_recipe(tiny_tokenizer, raw_corpus):
    # the augmented texts carry the target BOS/EOS templify wrote (the mix refuses sources formatted differently)
    augmented = Dataset.from_dict(
        {"text": [f"<s>{p}</s>" for p in PARAGRAPHS[:80]], "url": [f"aug:{i}" for i in range(80)]}
    )
    mixed, report = mix_with_raw_corpus(
        augmented,
        raw_corpus,
        ratio=(1, 2),
        tokenizer=tiny_tokenizer,
        raw_text_column="content",
        target_format=TargetFormat("<s>", "</s>"),
        keep_columns=["url"],
        seed=4,
    )
    assert mixed.column_names == ["text", "num_tokens", "source", "source_index", "url"]
    raw_rows = mixed.filter(lambda r: r["source"] == "raw")
    row = raw_rows[0]
    assert row["text"] == "<s>" + raw_corpus[row["source_index"]]["content"] + "</s>"
    assert row["url"] == raw_corpus[row["source_index"]]["url"]
    assert_report_matches(mixed, report, tiny_tokenizer, {"augmented": 1, "raw": 2})
    with pytest.raises(ValueError, match="keep_columns asks for 'url', which source 'augmented' does not have"):
        mix_with_raw_corpus(
            augmented.remove_columns("url"), raw_corpus, ratio=1, tokenizer=tiny_tokenizer,
            raw_text_column="content", keep_columns=["url"],
        )  # fmt: skip


def test_unsupported_inputs_get_clear_errors(augmented, tiny_tokenizer):
    stream = augmented.to_iterable_dataset()
    with pytest.raises(TypeError, match="source 'secondary' is an IterableDataset.*map-style"):
        mix_by_token_ratio(augmented, stream, tokenizer=tiny_tokenizer)
    with pytest.raises(TypeError, match="pick a split"):
        mix_by_token_ratio(augmented, DatasetDict({"train": augmented}), tokenizer=tiny_tokenizer)
    with pytest.raises(ValueError, match="same names"):
        mix({"augmented": augmented}, MixConfig(weights={"augmented": 1, "general": 1}, tokenizer=tiny_tokenizer))
    with pytest.raises(ValueError, match="source 'secondary' has no text column 'text'"):
        mix_by_token_ratio(augmented, augmented.rename_column("text", "body"), tokenizer=tiny_tokenizer)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"weights": {"a": 1}}, "at least two source names"),
        ({"weights": {"a": 1, "b": 0}}, r"weights\['b'\] must be a positive"),
        ({"weights": {"a": 1, "b": float("nan")}}, "positive finite"),
        ({"tolerance": 0}, "tolerance must be a number in"),
        ({"total_tokens": 0}, "total_tokens must be an integer >= 1"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"text_columns": {"c": "x"}}, r"names sources \['c'\] that are not in mix.weights"),
        ({"keep_columns": ["source"]}, "written by the mix itself"),
        ({"token_count_column": "text"}, "clashes with an output column"),
        ({"tokenizer": ""}, "mix.tokenizer must name"),
        ({"num_proc": 0}, "num_proc must be an integer >= 1"),
    ],
)
def test_config_validation(changes, message):
    arguments = {"weights": {"a": 1, "b": 1}, "tokenizer": "some/tokenizer", **changes}
    with pytest.raises(ValueError, match=message):
        MixConfig(**arguments)


def test_config_loads_from_a_recipe_section():
    from hf_ipt.config import config_from_dict

    config = config_from_dict(
        MixConfig, {"weights": {"augmented": 1, "general": 1}, "tokenizer": "org/model", "total_tokens": 1000}
    )
    assert config.shares() == {"augmented": 0.5, "general": 0.5} and config.total_tokens == 1000


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=60),
    fraction=st.floats(min_value=0.0, max_value=1.0),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_selection_is_whole_examples_and_never_worse_than_the_plain_prefix(counts, fraction, seed):
    counts = np.array(counts, dtype=np.int64)
    target = fraction * counts.sum()
    chosen = select_for_target(counts, target, np.random.default_rng(seed))
    assert len(set(chosen.tolist())) == len(chosen) and np.all(chosen < len(counts))
    error = abs(counts[chosen].sum() - target)
    # the prefix of the same shuffle that stops at or below the target, and the one after it
    order = np.random.default_rng(seed).permutation(len(counts))
    running = np.concatenate([[0], np.cumsum(counts[order])])
    below = running[running <= target].max()
    assert error <= target - below + 1e-9
    assert error <= counts.max() / 2 + 1e-9 or counts[chosen].sum() == running[-1]


# ---------------------------------------------------------------------------------------------------------------
# 0 rows and colliding columns (issue 12, item 8)
# ---------------------------------------------------------------------------------------------------------------


def _empty(columns):
    from datasets import Features, Value

    return Dataset.from_dict({c: [] for c in columns}, features=Features({c: Value("string") for c in columns}))


def test_count_tokens_over_zero_rows_still_writes_the_count_column(tiny_model_path):
    assert count_tokens(_empty(["text"]), tiny_model_path).column_names == ["text", "num_tokens"]
    untyped = Dataset.from_dict({"text": []})  # a null-typed column: no text to count, not a type error
    assert count_tokens(untyped, tiny_model_path).column_names == ["text", "num_tokens"]


@pytest.mark.parametrize("empty_source", [["text"], None])
def test_mixing_with_an_empty_source_is_the_shortfall_error(augmented, tiny_model_path, empty_source):
    empty = _empty(empty_source) if empty_source else Dataset.from_dict({"text": []})
    with pytest.raises(InsufficientTokensError, match=r"no usable tokens in source\(s\) \['empty'\]"):
        mix({"aug": augmented, "empty": empty}, MixConfig(weights={"aug": 1, "empty": 1}, tokenizer=tiny_model_path))


def test_an_empty_openorca_source_is_formatted_and_reported_as_short(augmented, tiny_model_path):
    orca = _empty(["id", "system_prompt", "question", "response"])
    prepared = prepare_source(orca, kind="general_instructions", text_column="text", target_format=TargetFormat())
    assert prepared.column_names[-3:] == ["text", FORMAT_STATUS, FORMAT_ERROR]
    with pytest.raises(InsufficientTokensError, match="no usable tokens"):  # not "no text column"
        mix({"aug": augmented, "g": prepared}, MixConfig(weights={"aug": 1, "g": 1}, tokenizer=tiny_model_path))


@pytest.mark.parametrize("column", ["text", FORMAT_STATUS, FORMAT_ERROR])
def test_format_refuses_input_columns_it_would_overwrite(column):
    batch = {"question": ["q?"], "response": ["a"], column: ["mine"]}
    with pytest.raises(ValueError, match=rf"would overwrite the input column\(s\) \['{column}'\].*rename_column"):
        format_general_instructions(batch)
    ds = Dataset.from_dict(batch)
    with pytest.raises(ValueError, match=rf"\['{column}'\]"):
        prepare_source(ds, kind="general_instructions", text_column="text", target_format=TargetFormat())


def test_counting_a_lone_surrogate_names_the_column_and_row(tiny_model_path):
    with pytest.raises(ValueError, match=r"column 'text' holds text that is not valid Unicode at row 1"):
        TokenCounter(tiny_model_path)({"text": ["fine", "bad \ud800"]})


def test_a_mix_of_sources_formatted_differently_is_refused_with_the_fix(augmented, openorca, tiny_tokenizer):
    """Templify wrapped the augmented texts in the target BOS/EOS; general instructions left bare would make one
    corpus of two text formats, its ratio counted on unequal wrappings: refused, naming both and the fix."""
    target = TargetFormat(tiny_tokenizer.bos_token, tiny_tokenizer.eos_token)
    wrapped = augmented.map(lambda row: {"text": target.wrap(row["text"])})
    bare = prepare_source(openorca, kind="general_instructions", text_column="text", target_format=TargetFormat())
    config = MixConfig(weights={"augmented": 1, "general": 1}, tokenizer=tiny_tokenizer)
    with pytest.raises(FormatMismatchError) as refused:
        mix({"augmented": wrapped, "general": bare}, config)
    message = str(refused.value)
    assert "most texts of 'augmented' (60 of 60) carry the BOS/EOS of mix.tokenizer ('<s>' ... '</s>')" in message
    assert "those of 'general' (0 of 400) do not" in message and "target_format=TargetFormat('<s>', '</s>')" in message
    # formatted alike (as hf-ipt run formats them), the same sources mix
    general = prepare_source(openorca, kind="general_instructions", text_column="text", target_format=target)
    mixed, report = mix({"augmented": wrapped, "general": general}, config)
    assert report.within_tolerance and all(text.startswith("<s>") and text.endswith("</s>") for text in mixed["text"])
    # both bare is one format too
    assert mix({"augmented": augmented, "general": bare}, config).report.within_tolerance
