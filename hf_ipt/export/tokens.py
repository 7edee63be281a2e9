"""The released rows as batches of token ids: exactly `tokenizer(text, add_special_tokens=False)` of every row, in
release order, checked against the counts the mix recorded; and one shard's ids kept on disk as a piece the export's
files are assembled from.

Rows are read batch by batch (Arrow batches of one released data file, never all at once) and tokenized with the
target tokenizer through `hf_ipt.tokenization.FastEncoder` (the Rust backend when it gives the tokenizer's own ids,
else the tokenizer's call), one batch ahead in a thread while the current one is checked. A text's literal `<s>` or
`</s>` is tokenized as the tokenizer's call does: a control id, as in the mix's count. Where the rows carry the
mix's token counts, each row's ids must have that many tokens; a row that differs (another tokenizer, another
revision of it) stops the export with the row, both counts and the fix.

A shard's batches become a piece (`PieceBuilder`): its ids back to back, raw, in the smallest little-endian unsigned
type that holds them, and each row's token count (.npy). `split_batches` reads a split's pieces back in order as
`TokenBatch`es of exactly `batch_size` rows across pieces, streaming the ids (never a whole piece of them in memory),
with the texts of the released rows when a format writes them: the batches the single-process export gave.

Columns read: `text_column`, and `count_column` / `source_column` when present.

Example:
    >>> batches = token_batches(parquet.iter_batches(batch_size=1000), FastEncoder(tokenizer),
    ...                         default_source="augmented")  # doctest: +SKIP
    >>> next(batches).document(0)  # doctest: +SKIP
    array([   1,  523, ...])
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from hf_ipt.columns import NUM_TOKENS, SOURCE, TEXT
from hf_ipt.export.base import UINT_TYPES, TokenBatch
from hf_ipt.store import Store
from hf_ipt.tokenization import FastEncoder


class TokenCountMismatch(ValueError):
    """A row's ids do not have the token count the mix recorded for it.

    Example:
        >>> raise TokenCountMismatch("row 3 ...")  # doctest: +SKIP
    """


def token_batches(
    tables: Iterable[Any],
    encoder: FastEncoder,
    *,
    default_source: str,
    first_row: int = 0,
    text_column: str = TEXT,
    count_column: str | None = NUM_TOKENS,
    source_column: str = SOURCE,
) -> Iterator[TokenBatch]:
    """The rows of `tables` (pyarrow Tables or RecordBatches: the released rows in order, the first being row
    `first_row` of its split) as one `TokenBatch` each. Rows without a `source_column` are of `default_source`. A
    missing text column or a null text is a ValueError naming it; a count that differs from `count_column`'s is a
    `TokenCountMismatch` naming the row."""

    def batch_of(first: int, table: Any, texts: list[str], ids: list[list[int]]) -> TokenBatch:
        names = table.schema.names
        if source_column in names:
            sources = table.column(source_column).to_pylist()
        else:
            sources = [default_source] * len(texts)
        batch = TokenBatch.of(texts, ids, sources, first)
        if count_column is not None and count_column in names:
            check_counts(batch, table.column(count_column).to_numpy(), count_column)
        return batch

    # the next batch is tokenized (in Rust, without the GIL) while this one is checked and kept: one batch ahead
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-ipt-export-tokenize") as pool:
        ahead = None
        for first, table, texts in text_batches(tables, text_column, first_row):
            job = (first, table, texts, pool.submit(encoder.encode, texts))
            if ahead is not None:
                yield batch_of(*ahead[:3], ahead[3].result())
            ahead = job
        if ahead is not None:
            yield batch_of(*ahead[:3], ahead[3].result())


def text_batches(tables: Iterable[Any], text_column: str, first_row: int = 0) -> Iterator[tuple[int, Any, list[str]]]:
    """(index of the first row, the Arrow table, its texts) of every table; a missing text column, or a row without
    a text, is a ValueError naming it."""
    first = first_row
    for table in tables:
        if text_column not in table.schema.names:
            raise ValueError(
                f"the release data has no column {text_column!r} (columns: {sorted(table.schema.names)}); the export "
                "reads the text the mix or templify wrote"
            )
        texts = table.column(text_column).to_pylist()
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(
                    f"row {first + index} of the release has no text in column {text_column!r} (got {text!r}); "
                    "every released row must hold a text to be tokenized"
                )
        yield first, table, texts
        first += len(texts)


def check_counts(batch: TokenBatch, expected: Any, column: str) -> None:
    """Each document of `batch` has the number of tokens `expected` holds (the mix's `column`)."""
    lengths = batch.lengths
    differ = (lengths != expected).nonzero()[0]
    if len(differ):
        at = int(differ[0])
        raise TokenCountMismatch(
            f"row {batch.first_row + at} of the release has {int(lengths[at])} tokens under the export's tokenizer, "
            f"but the mix counted {int(expected[at])} ({column}); {len(differ)} row(s) of this batch differ. The mix "
            "counted with another tokenizer (or another revision of it): export with the tokenizer mix.tokenizer "
            "names, or run the mix again with this one"
        )


# --------------------------------------------------------------------------------------------------------------------
# A shard's tokens on disk, and a split's pieces read back as the batches of the single-process export
# --------------------------------------------------------------------------------------------------------------------


class PieceBuilder:
    """One shard's tokens as a piece, built batch by batch: its ids back to back (raw, little-endian, in the
    smallest unsigned type that holds the largest: no id is ever cut) and each row's token count (.npy). Only the
    ids and counts are kept, in 4 bytes an id while they fit: a shard's memory, never its texts.

    Example:
        >>> piece = PieceBuilder()
        >>> piece.add(TokenBatch.of(["a", "b c"], [[5], [300, 7]], ["x", "x"]))
        >>> ids, lengths, dtype = piece.finish()
        >>> dtype, np.frombuffer(ids, dtype).tolist(), np.load(io.BytesIO(lengths)).tolist()
        ('<u2', [5, 300, 7], [1, 2])
    """

    def __init__(self) -> None:
        self.ids: list[np.ndarray] = []
        self.lengths: list[np.ndarray] = []
        self.largest = 0

    def add(self, batch: TokenBatch) -> None:
        largest = int(batch.ids.max()) if len(batch.ids) else 0
        self.largest = max(self.largest, largest)
        self.ids.append(batch.ids.astype(np.uint32) if largest <= np.iinfo(np.uint32).max else batch.ids)
        self.lengths.append(batch.lengths)

    def finish(self) -> tuple[bytes, bytes, str]:
        """(the ids' bytes, the counts' .npy bytes, the ids' dtype, e.g. '<u2')."""
        name = next(name for name in UINT_TYPES if self.largest <= np.iinfo(name).max)
        dtype = np.dtype(name).newbyteorder("<").str
        ids = b"".join(part.astype(dtype).tobytes() for part in self.ids)
        buffer = io.BytesIO()
        np.save(buffer, np.concatenate(self.lengths) if self.lengths else np.zeros(0, dtype=np.int64))
        return ids, buffer.getvalue(), dtype


@dataclass(frozen=True)
class TokenPiece:
    """Where one shard's piece lies: its `ids` and `lengths` files in `store` (see `PieceBuilder`), the ids' `dtype`.

    Example:
        >>> TokenPiece(Store("out/export"), ".hf_ipt/work/tokens/ids-00000.bin",
        ...            ".hf_ipt/work/tokens/lengths-00000.npy", "<u2").dtype
        '<u2'
    """

    store: Store
    ids: str
    lengths: str
    dtype: str


def split_batches(
    pieces: Iterable[TokenPiece], *, batch_size: int, texts: Iterable[Iterator[Any]] | None = None
) -> Iterator[TokenBatch]:
    """The rows of a split's `pieces`, in order, as `TokenBatch`es of `batch_size` rows (the last one shorter),
    batches crossing from one piece to the next, `first_row` counted over the split: the batches the export gave
    when it tokenized the split in one process. `texts`: one iterator of Arrow text columns per piece (the released
    texts, for a format that writes them), None to leave `TokenBatch.texts` empty. Ids are read as the batches need
    them: at most one batch of them and one piece's row counts are in memory.

    Example:
        >>> [len(batch) for batch in split_batches(pieces, batch_size=7)]  # doctest: +SKIP
        [7, 7, 7, 4]
    """
    pending: list[TokenBatch] = []
    held, first = 0, 0
    columns = iter(texts) if texts is not None else None
    for piece in pieces:
        column = PieceTexts(next(columns)) if columns is not None else None
        store = piece.store
        lengths = np.load(io.BytesIO(store.fs.cat_file(store.path(piece.lengths))))
        itemsize = np.dtype(piece.dtype).itemsize
        with store.fs.open(store.path(piece.ids), "rb") as handle:
            start = 0
            while start < len(lengths):
                count = min(batch_size - held, len(lengths) - start)
                sizes = lengths[start : start + count]
                offsets = np.zeros(count + 1, dtype=np.int64)
                np.cumsum(sizes, out=offsets[1:])
                ids = np.frombuffer(handle.read(int(offsets[-1]) * itemsize), dtype=piece.dtype)
                chunk = column.take(count) if column is not None else []
                pending.append(TokenBatch(chunk, ids, offsets, [], first + held))
                held, start = held + count, start + count
                if held == batch_size:
                    yield joined(pending)
                    pending, held, first = [], 0, first + batch_size
    if pending:
        yield joined(pending)


class PieceTexts:
    """The texts of one released data file, taken `count` at a time from its Arrow batches (`take`)."""

    def __init__(self, columns: Iterator[Any]) -> None:
        self.columns, self.buffer = columns, []

    def take(self, count: int) -> list[str]:
        while len(self.buffer) < count:
            self.buffer.extend(next(self.columns).to_pylist())
        taken, self.buffer = self.buffer[:count], self.buffer[count:]
        return taken


def joined(batches: list[TokenBatch]) -> TokenBatch:
    """One batch of consecutive `batches` (the pieces of one batch that crossed from a shard to the next)."""
    if len(batches) == 1:
        return batches[0]
    lengths = np.concatenate([batch.lengths for batch in batches])
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    texts = [text for batch in batches for text in batch.texts]
    return TokenBatch(texts, np.concatenate([batch.ids for batch in batches]), offsets, [], batches[0].first_row)
