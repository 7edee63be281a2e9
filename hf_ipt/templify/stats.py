"""`templify_stats`: the figures of a templified dataset for the dataset card and plots."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from hf_ipt.columns import (
    CHAIN_POSITIONS,
    DROPPED_PAIRS,
    FAMILIES_COLUMN,
    INVERTED,
    MODE,
    NUM_PAIRS,
    STATUS_OK,
    TEMPLIFY_STATUS,
    TEXT,
)
from hf_ipt.templify.config import MODES, RAW
from hf_ipt.templify.templifier import FAMILIES

_QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)


def _distribution(values: Any) -> dict[str, Any]:
    import numpy as np

    values = np.asarray(values, dtype=np.int64)
    if not len(values):
        return {"count": 0, "total": 0, "mean": 0.0, "quantiles": {}, "histogram": {"edges": [], "counts": []}}
    top = max(int(values.max()), 1)
    edges = [0] + [2**k for k in range(int(math.log2(top)) + 2)]  # 0, 1, 2, 4, … past the maximum
    counts, _ = np.histogram(values, bins=edges)
    return {
        "count": int(len(values)),
        "total": int(values.sum()),
        "mean": float(values.mean()),
        "quantiles": {f"p{round(q * 100)}": float(np.quantile(values, q)) for q in _QUANTILES},
        "histogram": {"edges": edges, "counts": counts.tolist()},
    }


def templify_stats(dataset: Any, *, tokenizer: Any = None, batch_size: int = 10_000) -> dict[str, Any]:
    """Statistics of a templified dataset (a `Dataset`, an `IterableDataset`, or a dict of columns), as plain,
    JSON-serialisable data for the dataset card and plots.

    Returns: `rows`, `texts` (rows with status ok), `source_rows` (input rows accounted for), `statuses`, `modes`,
    `inverted`, `families` (texts using each family), `dropped_pairs`, and distributions (`count`, `total`, `mean`,
    `quantiles`, power-of-two `histogram`) of `pairs_per_text`, `entries_per_text`, `chars_per_text` and, when a
    tokenizer is given, `tokens_per_text` (counted with add_special_tokens=False). Distributions cover texts with
    status ok only.

    Example:
        >>> from hf_ipt.templify import Templifier
        >>> pair = {"instruction": "What?", "response": "A cat."}
        >>> out = Templifier()({"text": ["A cat.", ""], "pairs": [[pair], []], "chain_id": ["x", "y"],
        ...                     "chain_position": [0, 0], "num_demonstrations": [0, 0]})
        >>> stats = templify_stats(out)
        >>> stats["statuses"], stats["texts"], stats["pairs_per_text"]["total"]
        ({'ok': 1, 'empty_text': 1}, 1, 1)
    """
    from collections import Counter

    if tokenizer is not None and isinstance(tokenizer, str):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    needed = [TEXT, CHAIN_POSITIONS, MODE, INVERTED, FAMILIES_COLUMN, NUM_PAIRS, DROPPED_PAIRS, TEMPLIFY_STATUS]
    if isinstance(dataset, Mapping):
        missing = [name for name in needed if name not in dataset]
        batches = [dataset]
    else:
        names = dataset.column_names or []
        missing = [name for name in needed if name not in names]
        if not missing:
            dataset = dataset.select_columns(needed)
        batches = dataset.iter(batch_size=batch_size)
    if missing:
        raise ValueError(f"templify_stats needs templify's output columns; {missing} are missing")

    statuses: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    families: Counter[str] = Counter()
    inverted = source_rows = dropped = 0
    pairs, entries, chars, tokens = [], [], [], []
    for batch in batches:
        ok_texts = []
        for text, positions, mode, inv, fams, num_pairs, num_dropped, status in zip(
            *(batch[name] for name in needed), strict=True
        ):
            statuses[status] += 1
            source_rows += len(positions)
            dropped += num_dropped
            if status != STATUS_OK:
                continue
            modes[mode] += 1
            inverted += bool(inv)
            families.update(fams)
            pairs.append(num_pairs)
            entries.append(len(positions))
            chars.append(len(text))
            ok_texts.append(text)
        if tokenizer is not None and ok_texts:
            encoded = tokenizer(ok_texts, add_special_tokens=False)["input_ids"]
            tokens.extend(len(ids) for ids in encoded)
    stats: dict[str, Any] = {
        "rows": sum(statuses.values()),
        "texts": statuses[STATUS_OK],
        "source_rows": source_rows,
        "statuses": dict(statuses),
        "modes": {mode: modes[mode] for mode in (*MODES, RAW) if modes[mode]},
        "inverted": inverted,
        "families": {family: families[family] for family in FAMILIES if families[family]},
        "dropped_pairs": dropped,
        "pairs_per_text": _distribution(pairs),
        "entries_per_text": _distribution(entries),
        "chars_per_text": _distribution(chars),
    }
    if tokenizer is not None:
        stats["tokens_per_text"] = _distribution(tokens)
    return stats
