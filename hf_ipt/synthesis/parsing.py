"""Parsing the synthesizer's output into instruction-response pairs, with a count of what was dropped and why.

Rules (those of the method's reference code):
1. split the output on `</END>`; when the output does not end with `</END>`, the last piece is unterminated and
   dropped;
2. a piece is kept only if it holds exactly one `<ANS>`, the part before it (stripped) starts with `<QUE>`, and the
   part after it (stripped) is non-empty;
3. question = the part before `<ANS>` with every `<QUE>` removed, stripped; answer = the part after, stripped;
4. pairs are deduplicated on the lower-cased question, the first occurrence winning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_ipt.columns import (
    DROP_DUPLICATE,
    DROP_EMPTY_ANSWER,
    DROP_MALFORMED,
    DROP_UNTERMINATED,
    INSTRUCTION,
    PARSE_DROP_REASONS,
    RESPONSE,
)
from hf_ipt.markers import ANS, END, QUE


@dataclass
class ParsedOutput:
    """The pairs parsed from one synthesizer output, and how many candidate pairs were dropped, by reason.

    Example:
        >>> parsed = parse_pairs("<QUE> Why? <ANS> Because. </END>\\n\\n<QUE> Cut")
        >>> parsed.pairs, parsed.drops["unterminated"]
        ([{'instruction': 'Why?', 'response': 'Because.'}], 1)
    """

    pairs: list[dict[str, str]]
    drops: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PARSE_DROP_REASONS, 0))


def parse_pairs(output: str) -> ParsedOutput:
    """Parse one synthesizer output.

    Example:
        >>> parsed = parse_pairs("<QUE> Why? <ANS> Because. </END>\\n\\n<QUE> why? <ANS> Dup. </END>\\n\\n<QUE> Cut")
        >>> parsed.pairs
        [{'instruction': 'Why?', 'response': 'Because.'}]
        >>> parsed.drops
        {'unterminated': 1, 'malformed': 0, 'empty_answer': 0, 'duplicate': 1}
    """
    result = ParsedOutput(pairs=[])
    drops = result.drops
    pieces = output.split(END)
    if not output.endswith(END):
        last = pieces.pop()
        # a trailing tail of pure whitespace is not an unterminated pair, just the end of the text
        if last.strip():
            drops[DROP_UNTERMINATED] += 1
    elif pieces and not pieces[-1]:
        pieces.pop()  # the empty string after the final </END>
    seen: set[str] = set()
    for piece in pieces:
        if not piece.strip():
            continue
        if piece.count(ANS) != 1:
            drops[DROP_MALFORMED] += 1
            continue
        before, after = piece.split(ANS)
        if not before.strip().startswith(QUE):
            drops[DROP_MALFORMED] += 1
            continue
        answer = after.strip()
        if not answer:
            drops[DROP_EMPTY_ANSWER] += 1
            continue
        question = before.replace(QUE, "").strip()
        key = question.lower()
        if key in seen:
            drops[DROP_DUPLICATE] += 1
            continue
        seen.add(key)
        result.pairs.append({INSTRUCTION: question, RESPONSE: answer})
    return result
