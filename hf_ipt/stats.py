"""The machinery every stage's statistics are counted with: one distribution type, one content fingerprint.

What is counted lives with each step (`hf_ipt.synthesis.report`, `hf_ipt.templify.report`, `hf_ipt.mixing.MixReport`,
`hf_ipt.quality`, and the released rows' figures in `hf_ipt.release.statistics`); each stage commits its report with
its output and the card only reads them. This module imports no other hf-ipt module.

Every histogram hf-ipt writes has one convention (`Distribution.histogram`): power-of-two bins with explicit edges
`[0, 1, 2, 4, 8, ...]`, bin i holding `edges[i] <= n < edges[i + 1]` (0 alone, 1, 2-3, 4-7, ...).

Example:
    >>> d = Distribution([0, 1, 3, 3, 9])
    >>> d.count, d.total, d.histogram()
    (5, 16, {'edges': [0, 1, 2, 4, 8, 16], 'counts': [1, 1, 2, 0, 1]})
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)


# ---------------------------------------------------------------------------------------------------- distribution
def log2_bucket(value: int) -> int:
    """Index of the histogram bin holding `value`: 0 for 0, else b such that 2**(b-1) <= value < 2**b.

    Example:
        >>> [log2_bucket(n) for n in (0, 1, 2, 3, 4, 7, 8)]
        [0, 1, 2, 2, 3, 3, 4]
    """
    return int(value).bit_length()


class Distribution:
    """Exact distribution of non-negative integers (text lengths, pairs per text), mergeable batch by batch.

    It keeps the count of each value, so totals, quantiles and the histogram are exact however it was fed.

    Example:
        >>> d = Distribution([2, 2, 5])
        >>> d.add([0]); d.mean, d.value_counts()
        (2.25, {'0': 1, '2': 2, '5': 1})
    """

    def __init__(self, values: Iterable[int] = ()):
        self.counts: Counter[int] = Counter()
        self.add(values)

    def add(self, values: Iterable[int]) -> None:
        """Count more values."""
        self.counts.update(int(v) for v in values)

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    @property
    def total(self) -> int:
        return sum(value * n for value, n in self.counts.items())

    @property
    def mean(self) -> float | None:
        count = self.count
        return self.total / count if count else None

    def quantile(self, q: float) -> float:
        """The q-quantile with linear interpolation between the two nearest values (numpy's default method)."""
        count = self.count
        if not count:
            raise ValueError("the quantile of an empty distribution is undefined")
        position = q * (count - 1)
        low_index = math.floor(position)
        low, high = self._value_at(low_index), self._value_at(min(low_index + 1, count - 1))
        weight = position - low_index
        # numpy's _lerp: from the nearer end, so q=1 gives the maximum exactly
        value = high - (high - low) * (1 - weight) if weight >= 0.5 else low + (high - low) * weight
        return float(low if low == high else value)

    def _value_at(self, index: int) -> int:
        seen = 0
        for value in sorted(self.counts):
            seen += self.counts[value]
            if index < seen:
                return value
        raise IndexError(index)

    def histogram(self) -> dict[str, list[int]]:
        """{"edges": [0, 1, 2, 4, ...], "counts": [...]}: power-of-two bins up to past the maximum."""
        if not self.counts:
            return {"edges": [], "counts": []}
        top = max(max(self.counts), 1)
        edges = [0] + [2**k for k in range(top.bit_length() + 1)]
        counts = [0] * (len(edges) - 1)
        for value, n in self.counts.items():
            counts[log2_bucket(value)] += n
        return {"edges": edges, "counts": counts}

    def value_counts(self) -> dict[str, int]:
        """{str(value): how many}, in value order."""
        return {str(value): n for value, n in sorted(self.counts.items())}

    def to_dict(self) -> dict[str, Any]:
        """count, total, mean, min, max, quantiles (p0 ... p100) and histogram, as JSON-ready data."""
        empty = not self.counts
        return {
            "count": self.count,
            "total": self.total,
            "mean": self.mean,
            "min": None if empty else min(self.counts),
            "max": None if empty else max(self.counts),
            "quantiles": {} if empty else {f"p{round(q * 100)}": self.quantile(q) for q in QUANTILES},
            "histogram": self.histogram(),
        }


def is_distribution(value: Any) -> bool:
    """Whether `value` is a `Distribution.to_dict()` (rather than a {value: count} table).

    Example:
        >>> is_distribution(Distribution([1, 2]).to_dict()), is_distribution({"1": 3})
        (True, False)
    """
    return isinstance(value, Mapping) and {"count", "total"} <= set(value)


FINGERPRINT_ROWS = 10_000  # rows per table a ContentDigest is fed: the tables' boundaries are part of the value


class ContentDigest:
    """16 hex digits of a sha256 over a dataset's features and rows, fed table by table (tables of
    `FINGERPRINT_ROWS` rows, the last one fewer): the same rows give the same value whatever the files' names,
    modification times or Arrow chunking (`Dataset._fingerprint` of data read from Parquet depends on the files'
    mtime, so stats.json would differ between two identical runs).

    Example:
        >>> import pyarrow as pa
        >>> one, two = ContentDigest({"n": "int64"}), ContentDigest({"n": "int64"})
        >>> _ = one.add(pa.table({"n": [1, 2]}))
        >>> _ = two.add(pa.concat_tables([pa.table({"n": [1]}), pa.table({"n": [2]})]))
        >>> one.hexdigest() == two.hexdigest()
        True
    """

    def __init__(self, features: Mapping[str, Any]) -> None:
        self.digest = hashlib.sha256(json.dumps(features, sort_keys=True).encode())

    def add(self, table: Any) -> Any:
        """Feed one table; returns it rebuilt in one chunk with every buffer from offset 0 (what was hashed: its
        `nbytes` depend on the rows alone)."""
        import pyarrow as pa

        # take() rebuilds every buffer from offset 0, so slices and chunk boundaries serialize alike
        table = table.replace_schema_metadata(None)
        table = table.take(pa.array(range(table.num_rows), pa.int64())).combine_chunks()
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        self.digest.update(sink.getvalue().to_pybytes())
        return table

    def hexdigest(self) -> str:
        return self.digest.hexdigest()[:16]


def content_fingerprint(rows: Any) -> str:
    """The `ContentDigest` of a `datasets.Dataset`, or of rows read batch by batch (`hf_ipt.store.ParquetRows`).

    Example:
        >>> from datasets import Dataset
        >>> a = Dataset.from_dict({"text": ["x", "y"]})
        >>> content_fingerprint(a) == content_fingerprint(Dataset.from_dict({"text": ["x", "y"]}))
        True
    """
    digest = ContentDigest(rows.features.to_dict())
    if hasattr(rows, "tables"):
        tables = rows.tables(FINGERPRINT_ROWS)
    else:
        tables = rows.with_format("arrow").iter(batch_size=FINGERPRINT_ROWS)
    for table in tables:
        digest.add(table)
    return digest.hexdigest()
