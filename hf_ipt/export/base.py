"""What every export format shares: the tokenizer's facts, a batch of token ids, and the writer that cuts its files
into parts at document boundaries.

A writer receives the released rows batch by batch (`TokenBatch`: the texts and their ids, documents back to back),
never the whole corpus; it writes its files through `Store.writing` (a temporary file moved into place when it is
complete), so a killed export leaves nothing that looks written, and records each file's checksum for the stage's
commit marker. A part is closed after the document that brings it to `tokens_per_file` tokens: a document is never
split across files.

Example:
    >>> facts = TokenizerFacts("tok", vocab_size=32000, bos_token="<s>", bos_token_id=1, eos_token="</s>",
    ...                        eos_token_id=2, pad_token_id=2, add_bos_token=True)
    >>> smallest_uint(facts.vocab_size)
    'uint16'
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from hf_ipt.store import Store

logger = logging.getLogger("hf_ipt.export")

UINT_TYPES = ("uint8", "uint16", "uint32", "uint64")


def smallest_uint(vocab_size: int) -> str:
    """The smallest unsigned dtype that holds every id of a vocabulary of `vocab_size` (ids 0 .. vocab_size - 1):
    OLMo-core's own rule when a dataset config leaves `dtype` unset (`NumpyDatasetConfig.get_dtype`).

    Example:
        >>> smallest_uint(256), smallest_uint(257), smallest_uint(128256)
        ('uint8', 'uint16', 'uint32')
    """
    for name in UINT_TYPES:
        if vocab_size - 1 <= np.iinfo(name).max:
            return name
    raise ValueError(f"a vocabulary of {vocab_size} ids does not fit in uint64")


@dataclass(frozen=True)
class TokenizerFacts:
    """What the export records of the target tokenizer: its name, vocabulary size (`len(tokenizer)`, added tokens
    included), special tokens and ids, and `add_bos_token` (what LLaMA-Factory's pre-training preprocessing reads).

    Example:
        >>> TokenizerFacts.from_tokenizer(tokenizer, "output/tiny-synthesizer").eos_token  # doctest: +SKIP
        '</s>'
    """

    name: str
    vocab_size: int
    bos_token: str | None
    bos_token_id: int | None
    eos_token: str | None
    eos_token_id: int | None
    pad_token_id: int | None
    add_bos_token: bool

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, name: str) -> TokenizerFacts:
        """The facts of a loaded (transformers) tokenizer; `pad_token_id` falls back to the EOS id, as trainers do
        for a tokenizer without a pad token."""
        eos_id = getattr(tokenizer, "eos_token_id", None)
        pad_id = getattr(tokenizer, "pad_token_id", None)
        return cls(
            name=name,
            vocab_size=len(tokenizer),
            bos_token=getattr(tokenizer, "bos_token", None),
            bos_token_id=getattr(tokenizer, "bos_token_id", None),
            eos_token=getattr(tokenizer, "eos_token", None),
            eos_token_id=eos_id,
            pad_token_id=pad_id if pad_id is not None else eos_id,
            add_bos_token=bool(getattr(tokenizer, "add_bos_token", False)),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TokenBatch:
    """Released rows with their token ids: `ids` holds every id of the batch, documents back to back in release
    order; document i is `ids[offsets[i]:offsets[i + 1]]`. `first_row` is the index of the batch's first row in its
    split (for messages naming a row). `texts` and `sources` are empty in the batches a writer gets when no format
    of the export writes texts (`FormatWriter.reads_texts`).

    Example:
        >>> batch = TokenBatch.of(["a b", "c"], [[5, 6], [7]], ["augmented", "general"])
        >>> batch.document(1).tolist(), batch.slice(1, 2).texts
        ([7], ['c'])
    """

    texts: list[str]
    ids: np.ndarray
    offsets: np.ndarray
    sources: list[str]
    first_row: int = 0

    @classmethod
    def of(cls, texts: list[str], ids: list[list[int]], sources: list[str], first_row: int = 0) -> TokenBatch:
        """A batch from per-document id lists (what a tokenizer returns)."""
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(offsets[-1]))
        return cls(texts, flat, offsets, sources, first_row)

    def __len__(self) -> int:
        return len(self.offsets) - 1  # the texts are left out when no format writes them

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per document."""
        return np.diff(self.offsets)

    def document(self, index: int) -> np.ndarray:
        return self.ids[self.offsets[index] : self.offsets[index + 1]]

    def slice(self, start: int, stop: int) -> TokenBatch:
        """Documents `start` to `stop` (exclusive) of the batch, as a batch."""
        offsets = self.offsets[start : stop + 1]
        return TokenBatch(
            self.texts[start:stop],
            self.ids[offsets[0] : offsets[-1]],
            offsets - offsets[0],
            self.sources[start:stop],
            self.first_row + start,
        )


@dataclass(frozen=True)
class ExportSettings:
    """What a writer needs besides its folder: the tokenizer's facts, the most tokens a file holds before the next
    part starts, and the dataset's name (LLaMA-Factory's dataset_info.json key).

    Example:
        >>> ExportSettings(facts, tokens_per_file=10**9, dataset_name="hf_ipt").dataset_name  # doctest: +SKIP
        'hf_ipt'
    """

    facts: TokenizerFacts
    tokens_per_file: int
    dataset_name: str


class FormatWriter(ABC):
    """The files of one export format under `output/<name>/`, written part by part as batches arrive.

    Subclasses declare `name`, `packages` (optional modules it imports, each with what needs it) and implement
    `open_part`, `write` (a batch that fits the open part), `close_part`, `entry` (its report entry) and `lines`
    (what a user pastes into the trainer's configuration). Used as a context manager: an error inside the block
    discards the part being written (its temporary files), so nothing half-written is ever placed.

    Example:
        >>> with OlmoCoreWriter(folder, settings) as writer:  # doctest: +SKIP
        ...     writer.add("train", batch)
        ...     entry = writer.close()
    """

    name: ClassVar[str]
    packages: ClassVar[tuple[tuple[str, str], ...]] = ()
    reads_texts: ClassVar[bool] = False  # its files hold the released texts: the batches it gets carry them

    def __init__(self, output: Store, settings: ExportSettings) -> None:
        self.output = output
        self.settings = settings
        self.checksums: dict[str, dict[str, Any]] = {}  # relative path -> checksum, of every file placed
        self.parts: dict[str, list[str]] = {}  # split -> the part names written, in order
        self.split: str | None = None
        self.part_tokens = 0
        self.part: contextlib.ExitStack | None = None

    # --- what a format implements ---------------------------------------------------------------------------------

    @abstractmethod
    def open_part(self, split: str, index: int, stack: contextlib.ExitStack) -> str:
        """Start part `index` of `split` (its files entered on `stack`, see `place`); returns the part's name."""

    @abstractmethod
    def write(self, batch: TokenBatch) -> None:
        """Append a batch of documents to the open part."""

    def close_part(self) -> None:  # noqa: B027 - most formats have nothing to finish: their files just close
        """Finish the open part's files before they are moved into place (flush, write an index)."""

    @abstractmethod
    def entry(self) -> dict[str, Any]:
        """This format's entry in the export report (files relative to the export folder, dtype, ...)."""

    @staticmethod
    @abstractmethod
    def lines(entry: dict[str, Any], tokenizer: dict[str, Any], root: str) -> str:
        """What a user pastes to train on the files of `entry` lying under `root` (the export folder's location)."""

    # --- the machinery ----------------------------------------------------------------------------------------------

    def place(self, relative: str, stack: contextlib.ExitStack) -> str:
        """A local path to write `relative` to; it is moved into place (and checksummed) when the part closes.
        Handles opened on it are registered on `stack` after this call, so they are closed first."""
        return stack.enter_context(self.placed(relative)).path

    @contextlib.contextmanager
    def placed(self, relative: str):
        with self.output.writing(relative) as pending:
            yield pending
        self.checksums[relative] = pending.checksum

    def add(self, split: str, batch: TokenBatch) -> None:
        """Append `batch` (rows of `split`, in release order), starting a new part after the document that reaches
        `tokens_per_file`."""
        if split != self.split:
            self.finish_part()
            self.split = split
            self.parts.setdefault(split, [])
        start, limit = 0, self.settings.tokens_per_file
        while start < len(batch):
            if self.part is None:
                self.part = contextlib.ExitStack()
                self.parts[split].append(self.open_part(split, len(self.parts[split]), self.part))
                self.part_tokens = 0
            taken = np.cumsum(batch.lengths[start:])
            # the documents up to the one that brings the part to the limit (at least one)
            count = min(int(np.searchsorted(taken, limit - self.part_tokens, side="left")) + 1, len(taken))
            self.write(batch.slice(start, start + count))
            self.part_tokens += int(taken[count - 1])
            start += count
            if self.part_tokens >= limit:
                self.finish_part()

    def finish_part(self) -> None:
        """Close the open part and move its files into place."""
        if self.part is not None:
            part, self.part = self.part, None
            with part:
                self.close_part()

    def close(self) -> dict[str, Any]:
        """Finish the last part; returns the format's report entry."""
        self.finish_part()
        return self.entry()

    def __enter__(self) -> FormatWriter:
        return self

    def __exit__(self, kind, error, trace) -> None:
        if self.part is not None:  # an error: the open part's temporary files are deleted, nothing is placed
            part, self.part = self.part, None
            part.__exit__(kind, error, trace)
