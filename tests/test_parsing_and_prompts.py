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
