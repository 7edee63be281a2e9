"""Templify's statistics (`templify_stats`) and the templify stage's report and summary figures.

Example:
    >>> from hf_ipt.templify import Templifier
    >>> pair = {"instruction": "What?", "response": "A cat."}
    >>> out = Templifier()({"text": ["A cat."], "pairs": [[pair]], "chain_id": ["x"], "chain_position": [0],
    ...                     "num_demonstrations": [0]})
    >>> templify_stats(out)["texts"]
    1
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from hf_ipt.columns import (
    CHAIN_ID,
    SOURCE_IDS,
    STATUS_OK,
    TEMPLIFY_COLUMNS,
)
from hf_ipt.stats import Distribution
from hf_ipt.templify.config import MODES, RAW
from hf_ipt.templify.templifier import FAMILIES
from hf_ipt.tokenization import load_tokenizer

#: the columns templify's statistics read: every column templify writes but those naming where a text came from
TEMPLIFY_REPORT_COLUMNS = [name for name in TEMPLIFY_COLUMNS if name not in (CHAIN_ID, SOURCE_IDS)]


def _templify_figures(dataset: Any, tokenizer: Any, batch_size: int) -> tuple[dict[str, Any], Distribution]:
    """One pass over templify's output: (templify_stats, the pairs-per-text distribution of ok texts)."""
    if tokenizer is not None and isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer)
    needed = TEMPLIFY_REPORT_COLUMNS
    if isinstance(dataset, Mapping):
        missing = [name for name in needed if name not in dataset]
        batches: Iterable[Any] = [dataset]
    elif not hasattr(dataset, "column_names"):  # batches of columns, in row order (a sharded output's files)
        missing, batches = [], _checked_batches(dataset, needed)
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
    pairs, entries, chars, tokens = Distribution(), Distribution(), Distribution(), Distribution()
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
            pairs.add((num_pairs,))
            entries.add((len(positions),))
            chars.add((len(text),))
            ok_texts.append(text)
        if tokenizer is not None and ok_texts:
            encoded = tokenizer(ok_texts, add_special_tokens=False)["input_ids"]
            tokens.add(len(ids) for ids in encoded)
    stats: dict[str, Any] = {
        "rows": sum(statuses.values()),
        "texts": statuses[STATUS_OK],
        "source_rows": source_rows,
        "statuses": dict(statuses),
        "modes": {mode: modes[mode] for mode in (*MODES, RAW) if modes[mode]},
        "inverted": inverted,
        "families": {family: families[family] for family in FAMILIES if families[family]},
        "dropped_pairs": dropped,
        "pairs_per_text": pairs.to_dict(),
        "entries_per_text": entries.to_dict(),
        "chars_per_text": chars.to_dict(),
    }
    if tokenizer is not None:
        stats["tokens_per_text"] = tokens.to_dict()
    return stats, pairs


def _checked_batches(batches: Iterable[Mapping[str, Any]], needed: list[str]) -> Iterable[Mapping[str, Any]]:
    for batch in batches:
        missing = [name for name in needed if name not in batch]
        if missing:
            raise ValueError(f"templify_stats needs templify's output columns; {missing} are missing")
        yield batch


def templify_stats(dataset: Any, *, tokenizer: Any = None, batch_size: int = 10_000) -> dict[str, Any]:
    """Statistics of a templified dataset (a `Dataset`, an `IterableDataset`, a dict of columns, or an iterable of
    such dicts in row order: the batches of a sharded output), as plain, JSON-serialisable data for the dataset card
    and plots.

    Columns read: templify's output (`text`, `chain_positions`, `mode`, `inverted`, `families`, `num_pairs`,
    `dropped_pairs`, `templify_status`). Returns: `rows`, `texts` (rows with status ok), `source_rows` (input rows
    accounted for), `statuses`, `modes`, `inverted`, `families` (texts using each family), `dropped_pairs`, and
    distributions (`Distribution.to_dict()`) of `pairs_per_text`, `entries_per_text`, `chars_per_text` and, when a
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
    return _templify_figures(dataset, tokenizer, batch_size)[0]


def templify_report(dataset: Any, *, batch_size: int = 10_000) -> dict[str, Any]:
    """The templify stage's report: `templify_stats`, with `pairs_per_text` as exact {n pairs: n texts} counts
    (what the card tabulates) and the distribution kept as `pairs_per_text_distribution`. One pass over the rows.

    Example:
        >>> report = templify_report(templified)  # doctest: +SKIP
        >>> report["pairs_per_text"]  # doctest: +SKIP
        {'0': 3, '1': 12, '2': 7}
    """
    stats, pairs = _templify_figures(dataset, None, batch_size)
    stats["pairs_per_text_distribution"] = stats["pairs_per_text"]
    stats["pairs_per_text"] = pairs.value_counts()
    return stats


def templify_summary(report: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The figures `hf-ipt templify` prints for one split, from a `templify_report`.

    Example:
        >>> report = {"texts": 2, "pairs_per_text": Distribution([1, 2]).to_dict(), "chars_per_text": {"total": 120},
        ...           "modes": {"classic": 2}}
        >>> templify_summary(report, prefix="train ")["train pairs in texts"]
        3
    """
    distribution = report.get("pairs_per_text_distribution") or report["pairs_per_text"]
    return {
        f"{prefix}texts": report["texts"],
        f"{prefix}pairs in texts": distribution["total"],
        f"{prefix}characters": report["chars_per_text"]["total"],
        f"{prefix}modes": ", ".join(f"{k} {v:,}" for k, v in report["modes"].items()),
    }
