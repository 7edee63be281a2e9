"""Property tests of every public transform over hostile input (issue 12, "Done when", the hypothesis item).

Each transform gets arbitrary unicode (lone surrogates, control characters, the tokenizer's special-token strings and
the synthesizer's markers included), arbitrary value types, 0 rows and input columns named like hf-ipt's outputs.
The contract checked: either a documented, clear error (a collision names the column; a missing column is named; a
malformed value is named), or an output in which every input row is accounted for and Arrow can store what the step
wrote. Example counts are modest so that the file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import pyarrow as pa
import pytest
from datasets import Dataset, Features, Value
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hf_ipt import columns as C
from hf_ipt.mixing import (
    FormatMismatchError,
    InsufficientTokensError,
    MixConfig,
    RatioToleranceError,
    TokenCounter,
    format_general_instructions,
    mix,
)
from hf_ipt.synthesis import Chunker, Synthesizer
from hf_ipt.synthesis.prompts import zero_shot_segment
from hf_ipt.templify import Templifier, TemplifyConfig
from hf_ipt.tokenization import invalid_unicode_at

FUZZ = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

# pieces a hostile text is built from: any character, plus whole strings that mean something to a tokenizer or parser
HOSTILE_PIECES = ["\ud800", "\udfff", "\x00", "\x07", "\x1b", "\u200b", "\ufeff", "<s>", "</s>", "<unk>", "<pad>"]
HOSTILE_PIECES += ["<CON>", "</CON>", "<QUE>", "<ANS>", "</END>", "\n\n", " ", "\t", "東京", "naïve", "🙂"]
hostile_text = st.lists(st.one_of(st.characters(), st.sampled_from(HOSTILE_PIECES)), max_size=40).map("".join)
long_hostile_text = st.lists(st.one_of(st.characters(), st.sampled_from(HOSTILE_PIECES)), max_size=150).map("".join)
# text an Arrow table can hold (what arrives through Dataset.map): no lone surrogate
storable_text = hostile_text.filter(lambda t: invalid_unicode_at(t) is None)
any_value = st.one_of(
    hostile_text,
    st.none(),
    st.integers(),
    st.floats(allow_nan=True),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)
OUTPUT_NAMES = sorted(
    {*C.SYNTH_COLUMNS, *C.TEMPLIFY_COLUMNS, *C.MIX_COLUMNS, C.SOURCE_ID, C.CHUNK_INDEX, C.NUM_CHUNKS, C.SOURCE_ROW}
    | {C.FORMAT_STATUS, C.FORMAT_ERROR}
)
extra_columns = st.lists(st.sampled_from([*OUTPUT_NAMES, "id", "url", "meta"]), max_size=2, unique=True)


def _rows(draw: st.DrawFn, values: st.SearchStrategy, max_rows: int = 6) -> list:
    return draw(st.lists(values, max_size=max_rows))


def _is_good_text(text) -> bool:
    return isinstance(text, str) and bool(text.strip()) and invalid_unicode_at(text) is None


@pytest.fixture(scope="module")
def synthesizers(tiny_model_path):
    """One Synthesizer per number of rounds; its engine answers whatever the running example draws."""
    state = {"draw": None}

    def engine(prompts):
        draw = state["draw"]
        outputs = []
        for _ in prompts:
            pairs = draw(st.lists(st.tuples(hostile_text, hostile_text), max_size=2))
            tail = draw(st.one_of(st.just(""), hostile_text))
            outputs.append("".join(f"<QUE> {q} <ANS> {a} </END>\n\n" for q, a in pairs) + tail)
        return outputs

    made = {
        rounds: Synthesizer(model=tiny_model_path, rounds=rounds, max_model_len=160, max_new_tokens=16, engine=engine)
        for rounds in (1, 2, 3)
    }
    return made, state


@FUZZ
@given(data=st.data())
def test_synthesis_accounts_for_every_row(synthesizers, data):
    made, state = synthesizers
    state["draw"] = data.draw
    texts = data.draw(st.lists(any_value, max_size=7), label="texts")
    extras = data.draw(extra_columns, label="extra columns")
    batch = {"text": texts, **{name: list(range(len(texts))) for name in extras if name != "text"}}
    synth = made[data.draw(st.sampled_from([1, 2, 3]), label="rounds")]
    collisions = [name for name in batch if name in C.SYNTH_COLUMNS]
    event("collision" if collisions else "synthesized")
    if collisions:
        with pytest.raises(ValueError, match=f"synthesis would overwrite the input column.*{collisions[0]}"):
            synth(batch)
        return
    out = synth(batch)
    n = len(texts)
    assert all(len(values) == n for values in out.values())
    assert out["text"] == texts and all(out[name] == batch[name] for name in extras)
    for text, status, error in zip(texts, out[C.SYNTH_STATUS], out[C.SYNTH_ERROR], strict=True):
        assert status in C.SYNTH_STATUSES
        if not _is_good_text(text):
            assert status in (C.STATUS_INVALID_TEXT, C.STATUS_EMPTY_TEXT) and error
    # Arrow stores everything synthesis wrote (engine output with a lone surrogate became a row status)
    pa.table({name: out[name] for name in C.SYNTH_COLUMNS})
    assert all(tokens + 16 <= 160 for tokens in out[C.PROMPT_TOKENS])


@pytest.fixture(scope="module")
def chunker(tiny_model_path):
    return Chunker(tokenizer=tiny_model_path, max_model_len=64, max_new_tokens=8, max_chunk_tokens=8)


@FUZZ
@given(
    texts=st.lists(st.one_of(long_hostile_text, any_value), max_size=4), extras=extra_columns, indexed=st.booleans()
)
def test_chunking_accounts_for_every_row(chunker, texts, extras, indexed):
    batch = {"text": texts, **{name: list(range(len(texts))) for name in extras if name != "text"}}
    indices = list(range(100, 100 + len(texts))) if indexed else None
    written = {C.SOURCE_ID, C.CHUNK_INDEX, C.NUM_CHUNKS} | ({C.SOURCE_ROW} if indexed else set())
    collisions = [name for name in batch if name in written]
    event("collision" if collisions else "chunked")
    if collisions:
        with pytest.raises(ValueError, match=f"chunking would overwrite the input column.*{collisions[0]}"):
            chunker(batch, indices)
        return
    out = chunker(batch, indices)
    event("split a text" if len(out["text"]) > len(texts) else "no split")
    lengths = {name: len(values) for name, values in out.items()}
    assert len(set(lengths.values())) <= 1, lengths
    rows = [i for i, count in enumerate(out[C.NUM_CHUNKS]) if out[C.CHUNK_INDEX][i] == 0]
    assert len(rows) == len(texts)  # every input row starts exactly one run of pieces
    if indexed:
        assert sorted(set(out[C.SOURCE_ROW])) == indices and out[C.SOURCE_ROW] == sorted(out[C.SOURCE_ROW])
    fitter = chunker.fitter
    start = 0
    for text in texts:
        count = out[C.NUM_CHUNKS][start]
        pieces = out["text"][start : start + count]
        if _is_good_text(text):
            squeeze = lambda s: "".join(ch for ch in s if not ch.isspace())  # noqa: E731
            assert squeeze("".join(pieces)) == squeeze(text)  # nothing lost, nothing added, in order
            for piece in pieces:
                assert len(fitter.encode_segments([zero_shot_segment(piece)])[0]) <= fitter.budget
        else:
            assert pieces == [text]  # passed through whole; synthesis gives it its status
        start += count
    assert start == len(out["text"])


pair_value = st.one_of(
    st.fixed_dictionaries({C.INSTRUCTION: storable_text, C.RESPONSE: storable_text}),
    st.fixed_dictionaries({C.INSTRUCTION: any_value, C.RESPONSE: any_value}),
)


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_templify_accounts_for_every_row(data):
    n = data.draw(st.integers(0, 7), label="rows")
    chains = data.draw(st.lists(st.sampled_from(["a", "b", "c\ud800", "<s>"]), min_size=n, max_size=n))
    positions, seen = [], {}
    for chain in chains:
        positions.append(seen.get(chain, 0))
        seen[chain] = positions[-1] + 1
    batch = {
        "text": data.draw(st.lists(any_value, min_size=n, max_size=n), label="text"),
        C.PAIRS: data.draw(st.lists(st.one_of(st.lists(pair_value, max_size=3), st.none()), min_size=n, max_size=n)),
        C.CHAIN_ID: chains,
        C.CHAIN_POSITION: positions,
        C.NUM_DEMONSTRATIONS: data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)),
    }
    try:
        out = Templifier(TemplifyConfig(seed=data.draw(st.integers(0, 3))))(batch)
    except ValueError as error:  # documented: a malformed pair is named with its row and what it must be
        assert C.PAIRS in str(error) and "must be" in str(error)
        return
    lengths = {name: len(values) for name, values in out.items()}
    assert len(set(lengths.values())) <= 1, lengths
    rendered = sorted(
        (chain, pos) for chain, ps in zip(out[C.CHAIN_ID], out[C.CHAIN_POSITIONS], strict=True) for pos in ps
    )
    assert rendered == sorted(zip(chains, positions, strict=True))  # every input row in exactly one output row
    assert set(out[C.TEMPLIFY_STATUS]) <= set(C.TEMPLIFY_STATUSES)


@settings(FUZZ, max_examples=60)
@given(
    questions=st.lists(any_value, max_size=5),
    responses=st.data(),
    extras=st.lists(st.sampled_from([*OUTPUT_NAMES, "system_prompt", "id"]), max_size=2, unique=True),
)
def test_formatting_general_instructions_accounts_for_every_row(questions, responses, extras):
    answers = responses.draw(st.lists(any_value, min_size=len(questions), max_size=len(questions)))
    batch = {"question": questions, "response": answers, **{name: [0] * len(questions) for name in extras}}
    collisions = [name for name in extras if name in ("text", C.FORMAT_STATUS, C.FORMAT_ERROR)]
    if collisions:
        with pytest.raises(ValueError, match=f"would overwrite the input column.*{collisions[0]}"):
            format_general_instructions(batch)
        return
    out = format_general_instructions(batch)
    assert all(len(values) == len(questions) for values in out.values())
    for q, r, text, status in zip(questions, answers, out["text"], out[C.FORMAT_STATUS], strict=True):
        good = all(isinstance(v, str) and v.strip() for v in (q, r))
        assert (status == C.FORMAT_OK) == good and status in C.FORMAT_STATUSES
        assert text == (q + " " + r if good else "")


@pytest.fixture(scope="module")
def counter(tiny_model_path):
    return TokenCounter(tiny_model_path)


@settings(FUZZ, max_examples=40)
@given(texts=st.lists(st.one_of(hostile_text, st.none(), st.integers()), max_size=6))
def test_counting_tokens_accounts_for_every_row(counter, tiny_tokenizer, texts):
    try:
        counts = counter({"text": texts})["num_tokens"]
    except TypeError as error:  # documented: a non-string value names the column
        assert any(t is not None and not isinstance(t, str) for t in texts) and "'text'" in str(error)
        return
    except ValueError as error:  # documented: text that is not valid Unicode names the column and row
        assert any(isinstance(t, str) and invalid_unicode_at(t) is not None for t in texts)
        assert "not valid Unicode" in str(error)
        return
    expected = [len(tiny_tokenizer(t or "", add_special_tokens=False)["input_ids"]) for t in texts]
    assert counts == expected


@settings(FUZZ, max_examples=12)
@given(
    sources=st.lists(st.lists(st.one_of(storable_text, st.none()), max_size=8), min_size=2, max_size=3),
    seed=st.integers(0, 5),
)
def test_mixing_accounts_for_every_row(tiny_model_path, sources, seed):
    datasets = {
        f"s{i}": Dataset.from_dict({"text": rows}, features=Features({"text": Value("string")}))
        for i, rows in enumerate(sources)
    }
    config = MixConfig(weights=dict.fromkeys(datasets, 1), tokenizer=tiny_model_path, seed=seed, tolerance=0.5)
    try:
        mixed, report = mix(datasets, config)
    except (InsufficientTokensError, RatioToleranceError, FormatMismatchError) as error:  # documented: names sources
        assert "source" in str(error) or "tokens" in str(error)
        return
    for name, rows in zip(datasets, sources, strict=True):
        entry = report.sources[name]
        assert entry.rows_total == len(rows)
        assert entry.rows_eligible + sum(entry.rows_excluded.values()) == len(rows)
        assert entry.rows_selected + entry.rows_unused == entry.rows_eligible
    assert mixed.num_rows == sum(s.rows_selected for s in report.sources.values())
    assert set(mixed.column_names) >= set(C.MIX_COLUMNS)
