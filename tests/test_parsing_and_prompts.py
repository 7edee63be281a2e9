"""The prompt format, the chain layout and the parse rules, on crafted inputs."""

import doctest
import importlib
import math

import pytest

from hf_ipt.synthesis.chains import chain_layout, rounds_of
from hf_ipt.synthesis.parsing import parse_pairs
from hf_ipt.synthesis.prompts import demonstration_segment, render_pairs, zero_shot_segment


def pair(q, a):
    return {"instruction": q, "response": a}


def test_zero_shot_segment_is_exact():
    assert zero_shot_segment("Some text.") == "<s> <CON> Some text. </CON>\n\n"


def test_demonstration_chain_matches_the_method_example():
    # the example of the reference note for the third text of a chain
    prompt = (
        demonstration_segment("A", [pair("qa", "aa")])
        + demonstration_segment("B", [pair("qb", "ab")])
        + zero_shot_segment("C")
    )
    expected = (
        "<s> <CON> A </CON>\n\n<QUE> qa <ANS> aa </END></s>"
        "<s> <CON> B </CON>\n\n<QUE> qb <ANS> ab </END></s>"
        "<s> <CON> C </CON>\n\n"
    )
    assert prompt == expected


def test_several_pairs_are_joined_by_blank_lines():
    assert render_pairs([pair("q1", "a1"), pair("q2", "a2")]) == "<QUE> q1 <ANS> a1 </END>\n\n<QUE> q2 <ANS> a2 </END>"


def reference_blocks(n, m):
    """The reference's layout written the other way round: M consecutive blocks, row i of block r chained to row i
    of block r-1."""
    size = math.ceil(n / m) if n else 0
    blocks = [list(range(r * size, min((r + 1) * size, n))) for r in range(m)]
    chains = []
    for i in range(size):
        chains.append([block[i] for block in blocks if i < len(block)])
    return chains


@pytest.mark.parametrize("rounds", [1, 2, 3, 4])
@pytest.mark.parametrize("n", list(range(0, 12)))
def test_chain_layout_equals_reference_blocks(n, rounds):
    layout = chain_layout(n, rounds)
    assert layout == reference_blocks(n, rounds)
    assert sorted(row for chain in layout for row in chain) == list(range(n))  # every row exactly once
    assert all(len(chain) <= rounds for chain in layout)


@pytest.mark.parametrize("n,m", [(1, 2), (4, 3), (6, 4)])
def test_layouts_that_crash_the_reference_are_fine(n, m):
    layout = chain_layout(n, m)
    assert sum(len(c) for c in layout) == n
    assert [len(r) for r in rounds_of(layout)] and all(rounds_of(layout))  # no empty round


def test_rounds_must_be_positive():
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        chain_layout(3, 0)


# --- parse rules ---


def test_well_formed_output():
    out = parse_pairs("<QUE> What? <ANS> That. </END>\n\n<QUE> Why? <ANS> Because. </END>")
    assert out.pairs == [pair("What?", "That."), pair("Why?", "Because.")]
    assert sum(out.drops.values()) == 0


def test_unterminated_last_piece_is_dropped_and_counted():
    out = parse_pairs("<QUE> What? <ANS> That. </END>\n\n<QUE> Why? <ANS> Because")
    assert out.pairs == [pair("What?", "That.")]
    assert out.drops["unterminated"] == 1


def test_whitespace_tail_is_not_an_unterminated_pair():
    out = parse_pairs("<QUE> What? <ANS> That. </END>\n\n")
    assert out.pairs == [pair("What?", "That.")]
    assert out.drops["unterminated"] == 0


def test_two_answers_in_one_piece_is_malformed():
    out = parse_pairs("<QUE> What? <ANS> That. <ANS> Other. </END>")
    assert out.pairs == [] and out.drops["malformed"] == 1


def test_no_answer_marker_is_malformed():
    out = parse_pairs("<QUE> What? That. </END><QUE> Ok? <ANS> Yes. </END>")
    assert out.pairs == [pair("Ok?", "Yes.")] and out.drops["malformed"] == 1


def test_question_must_start_with_que():
    out = parse_pairs("Preamble <QUE> What? <ANS> That. </END>\n\n  <QUE> Fine? <ANS> Yes. </END>")
    assert out.pairs == [pair("Fine?", "Yes.")]
    assert out.drops["malformed"] == 1


def test_empty_answer_is_dropped():
    out = parse_pairs("<QUE> What? <ANS>   </END>")
    assert out.pairs == [] and out.drops["empty_answer"] == 1


def test_every_que_marker_is_removed_from_the_question():
    out = parse_pairs("<QUE> First <QUE> part? <ANS> Answer. </END>")
    assert out.pairs == [pair("First  part?", "Answer.")]


def test_duplicates_on_lower_cased_question_first_wins():
    out = parse_pairs("<QUE> What IS it? <ANS> One. </END><QUE> what is it? <ANS> Two. </END>")
    assert out.pairs == [pair("What IS it?", "One.")]
    assert out.drops["duplicate"] == 1


def test_multiple_choice_and_cot_items_keep_their_inner_newlines():
    q = "Which is right?\nOptions:\n- yes\n- no"
    a = "The text says so.\nTherefore, the answer is yes"
    out = parse_pairs(f"<QUE> {q} <ANS> {a} </END>")
    assert out.pairs == [pair(q, a)]


@pytest.mark.parametrize("output", ["", "   ", "no markers at all", "</END>", "<ANS></END>"])
def test_degenerate_outputs_give_no_pairs(output):
    assert parse_pairs(output).pairs == []


@pytest.mark.parametrize(
    "module",
    [
        "hf_ipt.markers",
        "hf_ipt.engines.base",
        "hf_ipt.engines.registry",
        "hf_ipt.engines.server",
        "hf_ipt.synthesis.chains",
        "hf_ipt.synthesis.job",
        "hf_ipt.synthesis.parsing",
        "hf_ipt.synthesis.prompts",
        "hf_ipt.synthesis.scheduling",
    ],
)
def test_docstring_examples_run(module):
    results = doctest.testmod(importlib.import_module(module))
    assert results.failed == 0 and results.attempted > 0


# --- content is text: literal special-token strings never become control ids (issue 12, item 5) ---

HTML_STRIKE = "Price: <s>$40</s> now."


def _fitter(tokenizer):
    from hf_ipt.synthesis.prompts import PromptFitter

    return PromptFitter(tokenizer, max_model_len=4096, max_new_tokens=400)


@pytest.fixture(scope="module")
def mistral_tokenizer(mistral_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(mistral_tokenizer_dir)


@pytest.mark.parametrize("which", ["tiny_tokenizer", "mistral_tokenizer"])
def test_special_strings_in_content_are_text_not_control_ids(request, which):
    tokenizer = request.getfixturevalue(which)
    fitter = _fitter(tokenizer)
    bos, eos, unk = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id
    # the bug: tokenizing the prompt string reads the content's <s>/</s> as BOS/EOS
    naive = tokenizer(zero_shot_segment(HTML_STRIKE), add_special_tokens=False)["input_ids"]
    assert naive.count(bos) == 2 and naive.count(eos) == 1
    ids = fitter.encode_segments([zero_shot_segment(HTML_STRIKE)])[0]
    assert ids.count(bos) == 1 and ids[0] == bos and eos not in ids
    content = tokenizer(f" <CON> {HTML_STRIKE} </CON>\n\n", add_special_tokens=False, split_special_tokens=True)
    assert ids == [bos] + content["input_ids"]
    assert tokenizer.decode(ids[1:]).strip().startswith("<CON> Price: <s>$40</s>")
    # <unk> in content is the characters, not the unknown id
    assert unk not in fitter.encode_segments([zero_shot_segment("a literal <unk> here")])[0]
    # an answer holding </s>: the demonstration has exactly one BOS and one EOS, its own, at its ends
    demo = demonstration_segment("A text.", [{"instruction": "What?", "response": "It ends</s> here <s>"}])
    demo_ids = fitter.encode_segments([demo])[0]
    assert demo_ids.count(bos) == 1 and demo_ids.count(eos) == 1 and demo_ids[0] == bos and demo_ids[-1] == eos
    assert fitter.escapes_exactly


@pytest.mark.parametrize("which", ["tiny_tokenizer", "mistral_tokenizer"])
def test_ordinary_segments_keep_the_tokenizers_own_ids(request, which):
    tokenizer = request.getfixturevalue(which)
    fitter = _fitter(tokenizer)
    segments = [
        zero_shot_segment("Cats sleep a lot."),
        zero_shot_segment("  spaced\ttext\nnaïve 東京 <CON>-like"),
        demonstration_segment("A.", [{"instruction": "q?", "response": "a."}]),
    ]
    expected = tokenizer(segments, add_special_tokens=False)["input_ids"]
    assert fitter.encode_segments(segments) == expected
    # mixed batches: the plain segment is untouched by its neighbour's special strings
    assert fitter.encode_segments([segments[0], zero_shot_segment(HTML_STRIKE)])[0] == expected[0]


def test_mistral_tokenizer_reproduces_the_reported_ids(mistral_tokenizer):
    # the figures with the real tokenizer: [1, ..., 1, 429, 28781, 28734, 2, ...] before the fix
    naive = mistral_tokenizer(zero_shot_segment(HTML_STRIKE), add_special_tokens=False)["input_ids"]
    assert naive[7:12] == [1, 429, 28781, 28734, 2]
    fixed = _fitter(mistral_tokenizer).encode_segments([zero_shot_segment(HTML_STRIKE)])[0]
    assert fixed.count(1) == 1 and 2 not in fixed
    assert mistral_tokenizer.convert_ids_to_tokens(fixed)[6:9] == ["▁<", "s", ">"]
