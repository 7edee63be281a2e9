"""Chunking: split documents too long for the synthesizer's context into pieces that fit, so nothing is truncated.

Example:
    >>> from hf_ipt import Chunker
    >>> chunker = Chunker(tokenizer="instruction-pretrain/instruction-synthesizer")  # doctest: +SKIP
    >>> ds = ds.map(chunker, batched=True, with_indices=True)  # doctest: +SKIP

Columns read: the text column. Columns written: every input column, repeated for each piece of a row, with the text
column holding the piece; `source_id` (a hash of the whole source text, shared by its pieces), `chunk_index`,
`num_chunks`, and `source_row` (the source row's index) when mapped with `with_indices=True`.

Pieces end at paragraph breaks where possible, else at sentence ends, else at whitespace, else between tokens. A piece
fits when its zero-shot prompt plus `max_new_tokens` fits `max_model_len` (or when it holds at most
`max_chunk_tokens` text tokens as counted inside that prompt, if set — leave room for demonstrations in multi-round
synthesis that way).
Rows whose text is not a non-empty, valid Unicode string (None, a number, "", a lone surrogate) pass through as one
piece; synthesis gives them their status. Input columns named like the columns chunking writes (re-chunking chunked
rows) are refused with a ValueError naming them: rename or remove them first.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from hf_ipt import columns as C
from hf_ipt.columns import check_input_columns
from hf_ipt.markers import DEFAULT_MODEL
from hf_ipt.synthesis.prompts import PromptFitter, zero_shot_segment
from hf_ipt.tokenization import invalid_unicode_at, load_fast_tokenizer
from hf_ipt.validation import check_fields, check_token_budget

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"[.!?…。][\"')\]]*\s")
_WHITESPACE = re.compile(r"\s")


@dataclass
class ChunkSettings:
    """Whether and how long source texts are split before synthesis: the recipe's `chunk` section.

    Lengths are counted with the synthesizer's tokenizer and budget (synth.max_model_len, synth.max_new_tokens), so
    nothing has to be truncated; `ChunkConfig` adds those for a `Chunker`.

    Example:
        >>> ChunkSettings(max_chunk_tokens=1024).enabled
        True
    """

    enabled: bool = field(
        default=True,
        metadata={
            "help": "Split texts whose zero-shot prompt would not fit the synthesizer's context into pieces that do "
            "(at paragraph, then sentence, then word boundaries). Off: over-long texts are truncated."
        },
    )
    max_chunk_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Cap on text tokens per piece; leaves room for demonstrations in multi-round synthesis (e.g. "
            "max_model_len // (2 * rounds)). null: as long as a zero-shot prompt can hold.",
            "min": 1,
        },
    )
    num_proc: int | None = field(
        default=None, metadata={"help": "Processes for chunking (Dataset.map num_proc).", "min": 1}
    )

    def __post_init__(self) -> None:
        check_fields(self, "chunk")


@dataclass
class ChunkConfig(ChunkSettings):
    """Settings of a `Chunker`: the recipe's chunk settings plus the synthesizer's tokenizer and token budget.

    `enabled` and `num_proc` are read by whoever maps the chunker (the pipeline); a `Chunker` always splits.

    Example:
        >>> ChunkConfig(tokenizer="my/synthesizer", max_model_len=2048, max_chunk_tokens=512).max_new_tokens
        400
    """

    tokenizer: str = field(
        default=DEFAULT_MODEL,
        metadata={"help": "Tokenizer of the synthesizer (id or path); lengths are counted with it.", "nonempty": True},
    )
    revision: str | None = field(default=None, metadata={"help": "Tokenizer revision."})
    text_column: str = field(default="text", metadata={"help": "Column holding the raw text.", "nonempty": True})
    max_model_len: int = field(default=4096, metadata={"help": "The synthesizer's context window.", "min": 2})
    max_new_tokens: int = field(default=400, metadata={"help": "Room kept for the synthesizer's answer.", "min": 1})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_token_budget(self.max_model_len, self.max_new_tokens, "chunk.")


def _last_boundary(text: str, start: int, stop: int) -> int | None:
    """The best cut position in text[start:stop]: after the last paragraph break, else sentence end, else space."""
    window = text[start:stop]
    for pattern in (_PARAGRAPH_BREAK, _SENTENCE_END, _WHITESPACE):
        last = None
        for match in pattern.finditer(window):
            last = match
        if last is not None and last.end() > 0:
            return start + last.end()
    return None


class Chunker:
    """The chunking map function (batched; one row in, one or more rows out).

    Reads the text column; writes every input column (repeated per piece, the text column holding the piece) plus
    `source_id`, `chunk_index`, `num_chunks`, and `source_row` when mapped with `with_indices=True`.

    Example:
        >>> chunker = Chunker(tokenizer="my/synthesizer", max_chunk_tokens=512)  # doctest: +SKIP
        >>> chunked = ds.map(chunker, batched=True, with_indices=True)  # doctest: +SKIP
        >>> chunked.column_names  # doctest: +SKIP
        ['text', 'source_id', 'chunk_index', 'num_chunks', 'source_row']
    """

    def __init__(self, config: ChunkConfig | None = None, **overrides: Any) -> None:
        self.config = config if config is not None else ChunkConfig(**overrides)

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @property
    def fitter(self) -> PromptFitter:
        if "_fitter" not in self.__dict__:
            cfg = self.config
            self.__dict__["_fitter"] = PromptFitter(
                load_fast_tokenizer(cfg.tokenizer, cfg.revision), cfg.max_model_len, cfg.max_new_tokens
            )
        return self.__dict__["_fitter"]

    def split(self, text: str) -> list[str]:
        """The pieces of one text, in order; a text that already fits comes back whole."""
        fitter = self.fitter
        limit = fitter.budget - fitter.wrapper_tokens
        if self.config.max_chunk_tokens is not None:
            limit = min(limit, self.config.max_chunk_tokens)
        # content is text: a literal `<s>` counts as the tokens synthesis will send for it (`encode_segments`)
        encoding = fitter.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=True
        )
        offsets = encoding["offset_mapping"]
        if len(offsets) <= limit and self._fits(text, limit):
            return [text]
        pieces: list[str] = []
        token = 0
        start = 0
        while token < len(offsets):
            take = limit
            while True:
                last = min(token + take, len(offsets)) - 1
                stop = offsets[last][1] if last + 1 < len(offsets) else len(text)
                cut = stop if last + 1 >= len(offsets) else (_last_boundary(text, start, stop) or stop)
                piece = text[start:cut].strip()
                if not piece or self._fits(piece, limit) or take == 1:
                    break
                take = max(1, take - max(1, take // 16))  # boundary merges made it too long: shrink a little
            if piece:
                pieces.append(piece)
            start = cut
            while token < len(offsets) and offsets[token][1] <= cut:
                token += 1
        return pieces or [text]

    def _fits(self, piece: str, limit: int) -> bool:
        fitter = self.fitter
        ids = fitter.encode_segments([zero_shot_segment(piece)])[0]
        return len(ids) <= fitter.budget and len(ids) - fitter.wrapper_tokens <= limit

    def __call__(self, batch: dict[str, list], indices: list[int] | None = None, *args: Any) -> dict[str, list]:
        column = self.config.text_column
        if column not in batch:
            raise KeyError(
                f"text column {column!r} not found; the columns are {list(batch)}. Pass text_column=<name>."
            )
        if indices is not None and not isinstance(indices, list):
            indices = None  # with_rank alone passes the rank here
        written = [C.SOURCE_ID, C.CHUNK_INDEX, C.NUM_CHUNKS] + ([C.SOURCE_ROW] if indices is not None else [])
        check_input_columns(batch, written, step="chunking", reads=[column])
        out: dict[str, list] = {key: [] for key in batch}
        out.update({C.SOURCE_ID: [], C.CHUNK_INDEX: [], C.NUM_CHUNKS: []})
        if indices is not None:
            out[C.SOURCE_ROW] = []
        for row, text in enumerate(batch[column]):
            valid = isinstance(text, str) and text.strip() and invalid_unicode_at(text) is None
            pieces = self.split(text) if valid else [text]
            source_id = hashlib.blake2b(
                (text if isinstance(text, str) else repr(text)).encode("utf-8", "surrogatepass"), digest_size=8
            ).hexdigest()
            for index, piece in enumerate(pieces):
                for key, values in batch.items():
                    out[key].append(piece if key == column else values[row])
                out[C.SOURCE_ID].append(source_id)
                out[C.CHUNK_INDEX].append(index)
                out[C.NUM_CHUNKS].append(len(pieces))
                if indices is not None:
                    out[C.SOURCE_ROW].append(indices[row])
        return out
