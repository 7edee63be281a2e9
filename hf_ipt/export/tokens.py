"""The released rows as batches of token ids: exactly `tokenizer(text, add_special_tokens=False)` of every row, in
release order, checked against the counts the mix recorded.

Rows are read batch by batch from the memory-mapped release data (never all at once) and tokenized with the target
tokenizer through `hf_ipt.tokenization.FastEncoder` (the Rust backend when it gives the tokenizer's own ids, else the
tokenizer's call), one batch ahead in a thread while the writers write the current one. A text's literal `<s>` or
`</s>` is tokenized as the tokenizer's call does: a control id, as in the mix's count. Where the rows carry the
mix's token counts, each row's ids must have that many tokens; a row that differs (another tokenizer, another
revision of it) stops the export with the row, both counts and the fix.

Columns read: `text_column`, and `count_column` / `source_column` when present.

Example:
    >>> batches = token_batches(release["train"], FastEncoder(tokenizer), batch_size=1000)  # doctest: +SKIP
    >>> next(batches).document(0)  # doctest: +SKIP
    array([   1,  523, ...])
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hf_ipt.columns import NUM_TOKENS, SOURCE, TEXT
from hf_ipt.export.base import TokenBatch
from hf_ipt.tokenization import FastEncoder


class TokenCountMismatch(ValueError):
    """A row's ids do not have the token count the mix recorded for it.

    Example:
        >>> raise TokenCountMismatch("row 3 ...")  # doctest: +SKIP
    """


def token_batches(
    dataset: Any,
    encoder: FastEncoder,
    *,
    batch_size: int,
    default_source: str,
    text_column: str = TEXT,
    count_column: str | None = NUM_TOKENS,
    source_column: str = SOURCE,
) -> Iterator[TokenBatch]:
    """The rows of `dataset` (a `datasets.Dataset`) as `TokenBatch`es of `batch_size` rows, in order. Rows without a
    `source_column` are of `default_source`. A null text is a ValueError naming the row; a count that differs from
    `count_column`'s is a `TokenCountMismatch`."""
    columns = set(dataset.column_names)
    if text_column not in columns:
        raise ValueError(
            f"the release data has no column {text_column!r} (columns: {sorted(columns)}); the export reads the text "
            "the mix or templify wrote"
        )
    counted = count_column if count_column in columns else None

    def batch_of(first: int, table: Any, texts: list[str], ids: list[list[int]]) -> TokenBatch:
        if source_column in columns:
            sources = table.column(source_column).to_pylist()
        else:
            sources = [default_source] * len(texts)
        batch = TokenBatch.of(texts, ids, sources, first)
        if counted is not None:
            check_counts(batch, table.column(counted).to_numpy(), counted)
        return batch

    # the next batch is tokenized (in Rust, without the GIL) while the writers write this one: one batch ahead
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-ipt-export-tokenize") as pool:
        ahead = None
        for first, table, texts in text_batches(dataset, text_column, batch_size):
            job = (first, table, texts, pool.submit(encoder.encode, texts))
            if ahead is not None:
                yield batch_of(*ahead[:3], ahead[3].result())
            ahead = job
        if ahead is not None:
            yield batch_of(*ahead[:3], ahead[3].result())


def text_batches(dataset: Any, text_column: str, batch_size: int) -> Iterator[tuple[int, Any, list[str]]]:
    """(index of the first row, the Arrow table, its texts) of every `batch_size` rows; a row without a text is a
    ValueError naming it."""
    first = 0
    for table in dataset.with_format("arrow").iter(batch_size=batch_size):
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
