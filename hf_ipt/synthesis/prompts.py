"""The synthesizer's prompt format, as strings and as token ids, and fitting prompts into the context window.

A prompt is a sequence of *segments*, each opening with the literal BOS `<s>`:

- zero-shot segment of a text:   `<s> <CON> {text} </CON>\\n\\n`
- demonstration segment:         `<s> <CON> {text} </CON>\\n\\n<QUE> {q} <ANS> {a} </END>\\n\\n…</END></s>`

The full prompt is the demonstrations (oldest first) followed by the current text's zero-shot segment. The literal
`<s>` is the tokenizer's BOS token, so tokenizing with `add_special_tokens=False` yields exactly one BOS per segment;
engines receive these token ids and must not add another BOS. The markers themselves are in `hf_ipt.markers`.

Only the skeleton's `<s>`/`</s>` are control tokens: content (texts, questions, answers) is tokenized as text, so a
web page's `<s>$40</s>` (HTML strikethrough) or a literal `<unk>` never becomes a BOS, EOS or unknown id
(`PromptFitter.encode_segments`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hf_ipt.columns import INSTRUCTION, RESPONSE
from hf_ipt.markers import ANS, BOS, CON_CLOSE, CON_OPEN, END, EOS, QUE
from hf_ipt.tokenization import FastEncoder
from hf_ipt.validation import check_token_budget


def zero_shot_segment(text: str) -> str:
    """The prompt for one text with no demonstrations.

    Example:
        >>> zero_shot_segment("Cats sleep a lot.")
        '<s> <CON> Cats sleep a lot. </CON>\\n\\n'
    """
    return f"{BOS} {CON_OPEN} {text} {CON_CLOSE}\n\n"


def render_pairs(pairs: Sequence[dict[str, str]]) -> str:
    """Pairs in the synthesizer's output format, joined by blank lines (no trailing separator).

    Example:
        >>> render_pairs([{"instruction": "Why?", "response": "Because."}])
        '<QUE> Why? <ANS> Because. </END>'
    """
    return "\n\n".join(f"{QUE} {p[INSTRUCTION]} {ANS} {p[RESPONSE]} {END}" for p in pairs)


def demonstration_segment(text: str, pairs: Sequence[dict[str, str]]) -> str:
    """A previous chain entry shown to the synthesizer: its prompt, its parsed pairs, then the literal EOS.

    Example:
        >>> demonstration_segment("A", [{"instruction": "qa", "response": "aa"}])
        '<s> <CON> A </CON>\\n\\n<QUE> qa <ANS> aa </END></s>'
    """
    return zero_shot_segment(text) + render_pairs(pairs) + EOS


@dataclass
class FittedPrompt:
    """What is sent for one row: the prompt string, its token ids, and what fitting had to do.

    Example:
        >>> fitted = PromptFitter(tokenizer, max_model_len=4096, max_new_tokens=400).fit(text, ids)  # doctest: +SKIP
        >>> fitted.num_demonstrations, fitted.truncated, len(fitted.token_ids) + 400 <= 4096  # doctest: +SKIP
        (0, False, True)
    """

    text: str  # the row's text as sent (shortened when truncated)
    prompt: str
    token_ids: list[int]
    num_demonstrations: int
    truncated: bool
    # the content (text or a kept demonstration) held a special-token string, tokenized as text (`encode_segments`)
    escaped: bool = False


class PromptFitter:
    """Builds token-accurate prompts that leave room for the answer: len(prompt ids) + max_new_tokens <= max_model_len.

    Segments are tokenized on their own and concatenated; because every segment starts with the special token `<s>`,
    this equals tokenizing the whole prompt string at once (checked against the tokenizer at first use, with a
    fallback to whole-prompt tokenization for a tokenizer where it does not hold).

    Example:
        >>> fitter = PromptFitter(tokenizer, max_model_len=4096, max_new_tokens=400)  # doctest: +SKIP
        >>> fitter.fit("current text", zero_shot_ids, demonstrations=[(seg_str, seg_ids), ...])  # doctest: +SKIP
    """

    def __init__(self, tokenizer: Any, max_model_len: int, max_new_tokens: int) -> None:
        check_token_budget(max_model_len, max_new_tokens)
        self.tokenizer = tokenizer
        self.encoder = FastEncoder(tokenizer)
        self.budget = max_model_len - max_new_tokens
        self._segments_concatenate_exactly: bool | None = None
        bos_id = tokenizer.convert_tokens_to_ids(BOS)
        if bos_id is None or bos_id == getattr(tokenizer, "unk_token_id", None):
            raise ValueError(f"the synthesizer's tokenizer has no {BOS!r} token; is this the right tokenizer?")
        self.bos_id = bos_id
        self.eos_id = tokenizer.convert_tokens_to_ids(EOS)
        self.special_strings = special_token_strings(tokenizer)
        # content holding a special-token string is encoded as BOS + the rest split as text (+ EOS); that equals the
        # tokenizer's own ids on ordinary segments for every tokenizer checked so far, and is verified here
        probes = [zero_shot_segment("Cats sleep a lot."), zero_shot_segment("  two  spaces,\ttab\nnaïve 東京 ")]
        probes.append(demonstration_segment("A text.", [{INSTRUCTION: "Why?", RESPONSE: "Because."}]))
        self.escapes_exactly = self.encode(probes) == self._encode_as_text(probes)
        # tokens of the zero-shot wrapper around an empty text: the minimum any prompt costs
        self.wrapper_tokens = len(self.encode([zero_shot_segment("")])[0])
        if self.wrapper_tokens + 1 > self.budget:
            raise ValueError(
                f"max_model_len - max_new_tokens = {self.budget} tokens cannot hold even the prompt wrapper "
                f"({self.wrapper_tokens} tokens) and one token of text; raise max_model_len or lower max_new_tokens"
            )

    def encode(self, segments: Sequence[str]) -> list[list[int]]:
        """Token ids of each segment (batched, no special tokens added), special-token strings anywhere special."""
        return self.encoder.encode(segments)

    def has_special_strings(self, content: str) -> bool:
        """Whether `content` (a text, question or answer, or a segment's content) holds a special-token string.

        Example:
            >>> fitter.has_special_strings("Price: <s>$40</s> now.")  # doctest: +SKIP
            True
        """
        return any(token in content for token in self.special_strings)

    def segment_has_special_strings(self, segment: str) -> bool:
        """Whether the content of a segment (everything but its own leading `<s>` and trailing `</s>`) holds a
        special-token string."""
        return self.has_special_strings(_segment_content(segment))

    def encode_segments(self, segments: Sequence[str]) -> list[list[int]]:
        """Token ids of each segment with its content tokenized as text: the leading `<s>` (and a demonstration's
        trailing `</s>`) are the BOS/EOS ids, a `<s>` inside the content is the characters `<`, `s`, `>`.

        Equals `encode` (the tokenizer's own ids) for every segment whose content holds no special-token string.

        Example:
            >>> ids = fitter.encode_segments([zero_shot_segment("Price: <s>$40</s> now.")])[0]  # doctest: +SKIP
            >>> ids.count(fitter.bos_id), ids.count(fitter.eos_id)  # doctest: +SKIP
            (1, 0)
        """
        segments = list(segments)
        special = [i for i, segment in enumerate(segments) if self.segment_has_special_strings(segment)]
        if not special:
            return self.encode(segments)
        special_set = set(special)
        plain = [i for i in range(len(segments)) if i not in special_set]
        result: list[list[int]] = [[] for _ in segments]
        for i, ids in zip(plain, self.encode([segments[i] for i in plain]), strict=True):
            result[i] = ids
        for i, ids in zip(special, self._encode_as_text([segments[i] for i in special]), strict=True):
            result[i] = ids
        return result

    def _encode_as_text(self, segments: list[str]) -> list[list[int]]:
        contents = [_segment_content(segment) for segment in segments]
        encoded = self.encoder.encode(contents, split_special_tokens=True)
        return [
            ([self.bos_id] if segment.startswith(BOS) else [])
            + list(ids)
            + ([self.eos_id] if segment.endswith(EOS) and segment.startswith(BOS) else [])
            for segment, ids in zip(segments, encoded, strict=True)
        ]

    def fit(
        self,
        text: str,
        zero_shot_ids: list[int],
        demonstrations: Sequence[tuple[str, list[int]]] = (),
    ) -> FittedPrompt:
        """Fit one row: keep as many of the newest demonstrations as fit, or truncate the text if it alone is too long.

        `demonstrations` are (segment string, segment ids) pairs, oldest first.
        """
        if len(zero_shot_ids) > self.budget:
            return self._truncate(text)
        room = self.budget - len(zero_shot_ids)
        kept = 0
        for _, ids in reversed(demonstrations):
            if len(ids) > room:
                break
            room -= len(ids)
            kept += 1
        used = demonstrations[len(demonstrations) - kept :]
        prompt = "".join(seg for seg, _ in used) + zero_shot_segment(text)
        token_ids = [tok for _, ids in used for tok in ids] + list(zero_shot_ids)
        escaped = self.has_special_strings(text) or any(self.segment_has_special_strings(seg) for seg, _ in used)
        # the whole-prompt fallback would read content special strings as control ids: keep the segments' ids then
        if kept and not escaped and not self._concatenation_is_exact(prompt, token_ids):
            token_ids = self.encode([prompt])[0]
            while len(token_ids) > self.budget and used:
                used = used[1:]
                prompt = "".join(seg for seg, _ in used) + zero_shot_segment(text)
                token_ids = self.encode([prompt])[0]
        return FittedPrompt(text, prompt, token_ids, len(used), truncated=False, escaped=escaped)

    def _concatenation_is_exact(self, prompt: str, token_ids: list[int]) -> bool:
        if self._segments_concatenate_exactly is None:
            self._segments_concatenate_exactly = self.encode([prompt])[0] == token_ids
        return self._segments_concatenate_exactly

    def _truncate(self, text: str) -> FittedPrompt:
        """Keep the beginning of `text` so that its zero-shot prompt fits the budget exactly or just under."""
        encoding = self.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=True
        )
        offsets = encoding["offset_mapping"]
        keep = self.budget - self.wrapper_tokens
        # re-tokenizing a cut text can merge differently at the edges: shrink until the real count fits
        while keep > 0:
            cut = offsets[min(keep, len(offsets)) - 1][1]
            short = text[:cut].rstrip()
            ids = self.encode_segments([zero_shot_segment(short)])[0]
            if len(ids) <= self.budget:
                return FittedPrompt(short, zero_shot_segment(short), ids, 0, True, self.has_special_strings(short))
            keep -= max(1, len(ids) - self.budget)
        short = ""
        return FittedPrompt(short, zero_shot_segment(short), self.encode([zero_shot_segment(short)])[0], 0, True)


def special_token_strings(tokenizer: Any) -> tuple[str, ...]:
    """The strings a tokenizer turns into special (control) ids wherever they appear in its input: `<s>`, `</s>`,
    `<unk>`, `<pad>`, ... (its special tokens and added tokens marked special).

    Example:
        >>> sorted(special_token_strings(tokenizer))  # doctest: +SKIP
        ['</s>', '<pad>', '<s>', '<unk>']
    """
    strings = {str(token) for token in getattr(tokenizer, "all_special_tokens", ()) or ()}
    for added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(added, "special", False):
            strings.add(str(getattr(added, "content", added)))
    return tuple(sorted(s for s in strings if s))


def _segment_content(segment: str) -> str:
    """A segment without its own leading BOS and, for a demonstration, its trailing EOS."""
    if not segment.startswith(BOS):
        return segment
    end = len(segment) - len(EOS) if segment.endswith(EOS) and len(segment) >= len(BOS) + len(EOS) else len(segment)
    return segment[len(BOS) : end]
