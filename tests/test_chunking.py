"""Chunking long documents into pieces that fit the synthesizer's budget."""

import pytest
from datasets import Dataset

from hf_ipt import ChunkConfig, Chunker, Synthesizer
from hf_ipt.synthesis.prompts import zero_shot_segment
from hf_ipt.testing import corpus_paragraphs


@pytest.fixture(scope="module")
def long_document():
    return "\n\n".join(corpus_paragraphs(limit=30))


def tokens(tokenizer, text):
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def text_tokens_in_prompt(tokenizer, piece):
    """Tokens a piece costs inside its prompt (what max_chunk_tokens caps)."""
    return tokens(tokenizer, zero_shot_segment(piece)) - tokens(tokenizer, zero_shot_segment(""))


def test_pieces_fit_cover_the_text_and_end_at_paragraphs(tiny_model_path, tiny_tokenizer, long_document):
    chunker = Chunker(tokenizer=tiny_model_path, max_model_len=512, max_new_tokens=64)
    pieces = chunker.split(long_document)
    assert len(pieces) > 3
    for piece in pieces:
        assert tokens(tiny_tokenizer, zero_shot_segment(piece)) + 64 <= 512
    # nothing lost: the pieces are the document's own words, in order
    assert " ".join(pieces).split() == long_document.split()
    paragraphs = long_document.split("\n\n")
    ends_at_paragraph = sum(any(p.endswith(par) for par in paragraphs) for p in pieces[:-1])
    assert ends_at_paragraph >= len(pieces[:-1]) // 2  # paragraph boundaries preferred


def test_max_chunk_tokens_and_sentence_boundaries(tiny_model_path, tiny_tokenizer):
    text = " ".join(corpus_paragraphs(limit=10))  # no paragraph breaks: sentences are the next best cut
    chunker = Chunker(tokenizer=tiny_model_path, max_chunk_tokens=60)
    pieces = chunker.split(text)
    assert all(text_tokens_in_prompt(tiny_tokenizer, p) <= 60 for p in pieces)
    assert sum(p.rstrip().endswith((".", ":", ")", '"')) for p in pieces) >= len(pieces) // 2
    assert " ".join(pieces).split() == text.split()


def test_text_without_any_boundary_is_cut_between_tokens(tiny_model_path, tiny_tokenizer):
    text = "x" * 5000
    pieces = Chunker(tokenizer=tiny_model_path, max_chunk_tokens=50).split(text)
    assert "".join(pieces) == text
    assert all(text_tokens_in_prompt(tiny_tokenizer, p) <= 50 for p in pieces)


def test_map_expands_rows_and_points_to_the_source(tiny_model_path, long_document):
    ds = Dataset.from_dict({"text": ["Short text.", long_document, None, ""], "doc": ["a", "b", "c", "d"]})
    out = ds.map(Chunker(tokenizer=tiny_model_path, max_chunk_tokens=100), batched=True, with_indices=True)
    assert out["doc"][0] == "a" and out["num_chunks"][0] == 1 and out["text"][0] == "Short text."
    long_rows = [i for i, d in enumerate(out["doc"]) if d == "b"]
    assert len(long_rows) > 1
    assert [out["chunk_index"][i] for i in long_rows] == list(range(len(long_rows)))
    assert {out["source_row"][i] for i in long_rows} == {1}
    assert len({out["source_id"][i] for i in long_rows}) == 1
    # bad rows pass through as one piece each, for synthesis to give them a status
    assert out["doc"][-2:] == ["c", "d"] and out["text"][-2:] == [None, ""]
    synthesized = out.map(
        Synthesizer(
            model=tiny_model_path,
            engine=lambda p: ["<QUE> q <ANS> a </END>"] * len(p),
            max_model_len=512,
            max_new_tokens=64,
        ),
        batched=True,
    )
    assert not any(synthesized["truncated"])
    assert synthesized["synth_status"][-2:] == ["invalid_text", "empty_text"]


def test_missing_column_and_bad_config():
    with pytest.raises(KeyError, match="'body' not found"):
        Chunker(tokenizer="unused", text_column="body")({"text": ["a"]})
    with pytest.raises(ValueError, match="max_chunk_tokens"):
        ChunkConfig(max_chunk_tokens=0)


# --- bad rows and colliding columns (issue 12, items 5, 7 and 8) ---


def test_lone_surrogate_passes_through_as_one_piece_and_synthesis_names_it(tiny_model_path):
    chunker = Chunker(tokenizer=tiny_model_path, max_model_len=256, max_new_tokens=32)
    batch = {"text": ["lone \ud800 surrogate " * 40, "fine text", None], "id": [1, 2, 3]}
    out = chunker(batch)  # was: TypeError: TextEncodeInput must be Union[...]
    assert out["text"] == batch["text"] and out["id"] == [1, 2, 3] and out["num_chunks"] == [1, 1, 1]
    synth = Synthesizer(model=tiny_model_path, max_model_len=256, max_new_tokens=32, engine=lambda p: ["" for _ in p])
    status = synth({"text": out["text"]})
    assert status["synth_status"][0] == "invalid_text" and "surrogate" in status["synth_error"][0]


@pytest.mark.parametrize("column", ["source_id", "chunk_index", "num_chunks"])
def test_columns_chunking_writes_are_refused_in_its_input(tiny_model_path, column):
    chunker = Chunker(tokenizer=tiny_model_path, max_model_len=256, max_new_tokens=32)
    with pytest.raises(ValueError, match=rf"chunking would overwrite the input column\(s\) \['{column}'\].*rename"):
        chunker({"text": ["a text"], column: [7]})


def test_rechunking_chunked_rows_is_a_clear_error_not_an_arrow_crash(tiny_model_path):
    ds = Dataset.from_dict({"text": ["one text", "another"]})
    chunker = Chunker(tokenizer=tiny_model_path, max_model_len=256, max_new_tokens=32)
    chunked = ds.map(chunker, batched=True, with_indices=True)
    with pytest.raises(ValueError, match=r"\['source_id', 'chunk_index', 'num_chunks', 'source_row'\]"):
        chunked.map(chunker, batched=True, with_indices=True)
    # the documented fix works
    renamed = chunked.remove_columns(["source_id", "chunk_index", "num_chunks", "source_row"])
    assert renamed.map(chunker, batched=True).num_rows == 2


def test_special_strings_are_counted_as_the_text_synthesis_sends(tiny_model_path, tiny_tokenizer):
    from hf_ipt.synthesis.prompts import PromptFitter

    text = "Price: <s>$40</s> now. " * 60  # the strings cost several tokens each as text, one as control ids
    chunker = Chunker(tokenizer=tiny_model_path, max_model_len=256, max_new_tokens=32)
    fitter = PromptFitter(tiny_tokenizer, 256, 32)
    pieces = chunker.split(text)
    assert len(pieces) > 1
    for piece in pieces:
        assert len(fitter.encode_segments([zero_shot_segment(piece)])[0]) + 32 <= 256
