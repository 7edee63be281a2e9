"""The synthesizer's prompt format, as strings and as token ids, and fitting prompts into the context window.

A prompt is a sequence of *segments*, each opening with the literal BOS `<s>`:

- zero-shot segment of a text:   `<s> <CON> {text} </CON>\\n\\n`
- demonstration segment:         `<s> <CON> {text} </CON>\\n\\n<QUE> {q} <ANS> {a} </END>\\n\\n…</END></s>`

The full prompt is the demonstrations (oldest first) followed by the current text's zero-shot segment. The literal
`<s>` is the tokenizer's BOS token, so tokenizing with `add_special_tokens=False` yields exactly one BOS per segment;
engines receive these token ids and must not add another BOS. The markers themselves are in `hf_ipt.markers`.
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
        # tokens of the zero-shot wrapper around an empty text: the minimum any prompt costs
        self.wrapper_tokens = len(self.encode([zero_shot_segment("")])[0])
        if self.wrapper_tokens + 1 > self.budget:
            raise ValueError(
                f"max_model_len - max_new_tokens = {self.budget} tokens cannot hold even the prompt wrapper "
                f"({self.wrapper_tokens} tokens) and one token of text; raise max_model_len or lower max_new_tokens"
            )

    def encode(self, segments: Sequence[str]) -> list[list[int]]:
        """Token ids of each segment (batched, no special tokens added)."""
        return self.encoder.encode(segments)

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
        if kept and not self._concatenation_is_exact(prompt, token_ids):
            token_ids = self.encode([prompt])[0]
            while len(token_ids) > self.budget and used:
                used = used[1:]
                prompt = "".join(seg for seg, _ in used) + zero_shot_segment(text)
                token_ids = self.encode([prompt])[0]
        return FittedPrompt(text, prompt, token_ids, len(used), truncated=False)

    def _concatenation_is_exact(self, prompt: str, token_ids: list[int]) -> bool:
        if self._segments_concatenate_exactly is None:
            self._segments_concatenate_exactly = self.encode([prompt])[0] == token_ids
        return self._segments_concatenate_exactly

    def _truncate(self, text: str) -> FittedPrompt:
        """Keep the beginning of `text` so that its zero-shot prompt fits the budget exactly or just under."""
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoding["offset_mapping"]
        keep = self.budget - self.wrapper_tokens
        # re-tokenizing a cut text can merge differently at the edges: shrink until the real count fits
        while keep > 0:
            cut = offsets[min(keep, len(offsets)) - 1][1]
            short = text[:cut].rstrip()
            ids = self.encode([zero_shot_segment(short)])[0]
            if len(ids) <= self.budget:
                return FittedPrompt(short, zero_shot_segment(short), ids, 0, truncated=True)
            keep -= max(1, len(ids) - self.budget)
        short = ""
        return FittedPrompt(short, zero_shot_segment(short), self.encode([zero_shot_segment(short)])[0], 0, True)
