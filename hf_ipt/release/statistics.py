"""Figures of the released rows themselves (every split), joined with the stage reports a `ReleaseInfo` carries:
what stats.json's `statistics` holds and the card and plots read.

Example:
    >>> from datasets import Dataset
    >>> from hf_ipt.release.card import ReleaseInfo
    >>> compute_statistics({"train": Dataset.from_dict({"text": ["a b", "c"]})}, ReleaseInfo())["rows"]
    2
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from typing import Any

from hf_ipt import columns as C
from hf_ipt.stats import FINGERPRINT_ROWS, ContentDigest, Distribution, is_distribution
from hf_ipt.store import as_rows
from hf_ipt.tokenization import load_tokenizer, tokenizer_name


def compute_statistics(splits: Mapping[str, Any], info: Any, batch_size: int = 1000) -> dict[str, Any]:
    """Figures of one release config, computed from its rows (every split) plus the stage reports in `info`.

    `info` is a `hf_ipt.release.card.ReleaseInfo` (its column names, tokenizer and reports are read). Columns read,
    each when present: `info.text_column`, `info.token_count_column`, `info.source_column`, `info.template_column`,
    `info.pairs_count_column`, and the synthesis columns `pairs`, `parse_drops`, `synth_status`. Raises a ValueError
    naming the column when `info.text_column` is set but a split lacks it. Null values (e.g. the mode of a
    general-instruction row in a mix) are left out of the figure they belong to.

    Example:
        >>> from datasets import Dataset
        >>> from hf_ipt.release.card import ReleaseInfo
        >>> stats = compute_statistics({"train": Dataset.from_dict({"text": ["a b", "c"]})}, ReleaseInfo())
        >>> stats["rows"], stats["text"]["characters"]["total"]
        (2, 4)
    """
    tokenizer = None  # loaded on first use: the mix's token counts make it unnecessary
    chars, tokens = Distribution(), Distribution()
    null_texts = 0
    per_source: dict[str, dict[str, int]] = {}
    pairs_per_text = Distribution()
    statuses: Counter[str] = Counter()
    drops: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    seen = {"pairs": False, "drops": False, "status": False, "template": False, "source": False, "tokens": False}
    token_origin: str | None = None  # the tokenizer's name
    counted_by: str | None = None  # where the counts come from when they were not counted here
    split_stats: dict[str, Any] = {}

    for split_name, data in splits.items():
        rows = as_rows(data)
        names = rows.column_names
        if info.text_column is not None and info.text_column not in names:
            raise ValueError(
                f"split {split_name!r} has no text column {info.text_column!r} (columns: {names}); set "
                "ReleaseInfo(text_column=...) to the column holding the text, or None if there is none"
            )
        pairs_column = next((c for c in (info.pairs_count_column, C.PAIRS) if c is not None and c in names), None)
        count_column = info.token_count_column if info.token_count_column in names else None
        wanted = [
            c
            for c in (
                info.text_column,
                count_column,
                info.source_column,
                info.template_column,
                pairs_column,
                C.PARSE_DROPS,
                C.SYNTH_STATUS,
            )
            if c is not None and c in names
        ]
        wanted = list(dict.fromkeys(wanted))
        # one pass over the rows, table by table: the content's digest and size, and the figures of the wanted columns
        digest, arrow_bytes = ContentDigest(rows.features.to_dict()), 0
        for table in rows.tables(FINGERPRINT_ROWS):
            table = digest.add(table)
            arrow_bytes += table.nbytes
            for start in range(0, table.num_rows, batch_size) if wanted else ():
                batch = table.slice(start, batch_size).select(wanted).to_pydict()
                texts = batch.get(info.text_column) if info.text_column else None
                char_lengths = [len(t) if isinstance(t, str) else 0 for t in texts] if texts is not None else None
                if texts is not None:
                    null_texts += sum(not isinstance(t, str) for t in texts)
                    chars.add(char_lengths)
                # the mix's own counts are the figures the mix was built on; a tokenizer counts when they are absent
                token_lengths = None
                if count_column is not None:
                    token_lengths = [int(n) if n is not None else 0 for n in batch[count_column]]
                    counted_by = f"column {count_column!r}"
                elif info.tokenizer is not None and texts is not None:
                    if tokenizer is None:
                        tokenizer = load_tokenizer(info.tokenizer, key="ReleaseInfo.tokenizer")
                    encoded = tokenizer([t if isinstance(t, str) else "" for t in texts], add_special_tokens=False)
                    token_lengths = [len(ids) for ids in encoded["input_ids"]]
                    token_origin = tokenizer_name(tokenizer)
                if token_lengths is not None:
                    seen["tokens"] = True
                    tokens.add(token_lengths)
                if info.source_column and info.source_column in batch:
                    seen["source"] = True
                    for i, source in enumerate(batch[info.source_column]):
                        entry = per_source.setdefault(str(source), {"rows": 0, "characters": 0, "tokens": 0})
                        entry["rows"] += 1
                        if char_lengths is not None:
                            entry["characters"] += char_lengths[i]
                        if token_lengths is not None:
                            entry["tokens"] += token_lengths[i]
                if pairs_column is not None:
                    seen["pairs"] = True
                    pairs_per_text.add(
                        len(v) if isinstance(v, list) else v for v in batch[pairs_column] if isinstance(v, (list, int))
                    )
                if C.PARSE_DROPS in batch:
                    seen["drops"] = True
                    for row_drops in batch[C.PARSE_DROPS]:
                        for reason, count in (row_drops or {}).items():
                            drops[reason] += int(count or 0)
                if C.SYNTH_STATUS in batch:
                    seen["status"] = True
                    statuses.update(str(s) for s in batch[C.SYNTH_STATUS] if s is not None)
                if info.template_column and info.template_column in batch:
                    seen["template"] = True
                    modes.update(str(m) for m in batch[info.template_column] if m is not None)
        split_stats[split_name] = {"rows": rows.num_rows, "fingerprint": digest.hexdigest(), "bytes": arrow_bytes}

    stats: dict[str, Any] = {"rows": sum(s["rows"] for s in split_stats.values()), "splits": split_stats}
    if info.text_column is not None:
        stats["text"] = {
            "column": info.text_column,
            "null_texts": null_texts,
            "characters": chars.to_dict(),
            "tokens": {
                **tokens.to_dict(),
                "tokenizer": token_origin or _tokenizer_label(info.tokenizer),
                "counted_by": counted_by,
            }
            if seen["tokens"]
            else None,
        }
    stats["sources"] = _source_stats(per_source if seen["source"] else None, info, seen["tokens"])
    stats["pairs"] = _pair_stats(pairs_per_text if seen["pairs"] else None, info)
    stats["synthesis"] = _synthesis_figures(
        statuses if seen["status"] else None,
        drops if seen["drops"] else None,
        pairs_per_text.total if seen["pairs"] else None,
        info,
    )
    stats["template_modes"] = _template_stats(modes if seen["template"] else None, info)
    stats["columns"] = _columns(splits)
    stats["example"] = example_row(splits, info)
    return stats


EXAMPLE_CHARS = 600  # an example row's longer strings are cut (with "…") so the card stays readable


def _columns(splits: Mapping[str, Any]) -> list[dict[str, str]]:
    """Each column of the released rows with its type, in order (the first split's; every split has them)."""
    first = next(iter(splits.values()), None)
    if first is None:
        return []
    return [{"name": name, "dtype": _dtype(feature)} for name, feature in as_rows(first).features.items()]


def _dtype(feature: Any) -> str:
    dtype = getattr(feature, "dtype", None)
    if isinstance(dtype, str) and dtype != "list":
        return dtype
    inner = getattr(feature, "feature", None)
    if inner is not None:
        return f"list[{_dtype(inner)}]"
    if isinstance(feature, Mapping):
        return "struct{" + ", ".join(f"{k}: {_dtype(v)}" for k, v in feature.items()) + "}"
    if isinstance(feature, list) and feature:
        return f"list[{_dtype(feature[0])}]"
    return type(feature).__name__


def example_row(splits: Mapping[str, Any], info: Any, batch_size: int = 1000) -> dict[str, Any] | None:
    """One released row for the card's "Dataset structure": the first row of the first split that comes from the
    first described source (the augmented corpus, in a mix) when the rows name their source, else the first row,
    and among those the first whose text has a paragraph break (a text with its pairs rather than a chunk that got
    none); strings longer than `EXAMPLE_CHARS` are cut. None when there are no rows.

    Example:
        >>> from datasets import Dataset
        >>> from hf_ipt.release.card import ReleaseInfo
        >>> example_row({"train": Dataset.from_dict({"text": ["a"], "source": ["x"]})}, ReleaseInfo())
        {'split': 'train', 'index': 0, 'row': {'text': 'a', 'source': 'x'}}
    """
    for split, data in splits.items():
        rows = as_rows(data)
        if not rows.num_rows:
            continue
        wanted = next((n for s in info.sources for n in (s.mix_names or [])[:1]), None)
        by_source = wanted is not None and info.source_column in rows.column_names
        text_column = info.text_column if info.text_column in rows.column_names else None
        columns = [c for c in (info.source_column if by_source else None, text_column) if c]
        index, fallback, start = None, 0 if not by_source else None, 0
        for table in rows.tables(batch_size, columns) if columns else ():
            batch, size = table.to_pydict(), table.num_rows
            for i in range(size):
                if by_source and batch[info.source_column][i] != wanted:
                    continue
                fallback = start + i if fallback is None else fallback
                text = batch[text_column][i] if text_column else None
                if isinstance(text, str) and "\n\n" in text.strip():
                    index = start + i
                    break
            start += size
            if index is not None or start >= 10 * batch_size:  # the first rows are enough to choose from
                break
        index = index if index is not None else (fallback or 0)
        row = rows.row(index)
        return {"split": split, "index": index, "row": {k: _cut_value(v) for k, v in row.items()}}
    return None


def _cut_value(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= EXAMPLE_CHARS else value[: EXAMPLE_CHARS - 1] + "…"
    if isinstance(value, list):
        return [_cut_value(v) for v in value[:5]] + (["…"] if len(value) > 5 else [])
    if isinstance(value, Mapping):
        return {k: _cut_value(v) for k, v in value.items()}
    return value


def _tokenizer_label(tokenizer: Any) -> str | None:
    """The name a report gives the tokenizer of `ReleaseInfo.tokenizer` (a name, a path or an object), unloaded."""
    if tokenizer is None:
        return None
    return str(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer_name(tokenizer)


def _shares(weights: Mapping[str, Any] | None) -> dict[str, float] | None:
    """Weights normalised to shares summing to 1; None when absent or not all non-negative numbers."""
    if not weights or any(not isinstance(v, (int, float)) or isinstance(v, bool) for v in weights.values()):
        return None
    values = {str(k): float(v) for k, v in weights.items()}
    total = sum(values.values())
    if total <= 0 or any(v < 0 for v in values.values()):
        return None
    return {k: v / total for k, v in values.items()}


def _reported_sources(report: Mapping[str, Any]) -> dict[str, dict[str, Any]] | None:
    """{source: {"rows", "tokens"}} of a mixing report: MixReport's rows_selected/tokens_selected, or rows/tokens."""
    sources = report.get("sources")
    if not isinstance(sources, Mapping):
        return None
    found = {}
    for name, entry in sources.items():
        if isinstance(entry, Mapping):
            found[str(name)] = {
                "rows": entry.get("rows", entry.get("rows_selected")),
                "tokens": entry.get("tokens", entry.get("tokens_selected")),
            }
    return found or None


def _source_stats(per_source: dict[str, dict[str, int]] | None, info: Any, has_tokens: bool):
    report = info.mixing_report or {}
    reported = _reported_sources(report)
    if per_source is None and not reported and not report.get("requested_ratio"):
        return None
    unit = None
    achieved = None
    origin = "data"
    if per_source is not None:
        unit = "tokens" if has_tokens else "characters"
        for entry in per_source.values():
            if not has_tokens:
                entry.pop("tokens")
        achieved = _shares({name: entry[unit] for name, entry in per_source.items()})
    elif _shares(report.get("achieved_ratio")) is not None:
        achieved = _shares(report.get("achieved_ratio"))
        unit = "tokens"
        origin = "mixing report"
    return {
        "column": info.source_column if per_source is not None else None,
        "per_source": per_source,
        "reported": reported,
        "ratio_unit": unit,
        "requested_ratio": _shares(report.get("requested_ratio")),
        "achieved_ratio": achieved,
        "achieved_origin": origin if achieved is not None else None,
    }


def _pair_stats(pairs_per_text: Distribution | None, info: Any):
    if pairs_per_text is not None:
        return _pairs_from_counts(pairs_per_text, "data")
    for origin, report in (("templify report", info.templify_stats), ("synthesis report", info.synthesis_stats)):
        value = (report or {}).get("pairs_per_text")
        if is_distribution(value):
            # a Distribution.to_dict(): exact count/total/mean and the power-of-two histogram
            return {
                "origin": origin,
                "texts": int(value["count"]),
                "total": int(value["total"]),
                "mean": value.get("mean"),
                "texts_without_pairs": None,
                "per_text": None,
                "histogram": value.get("histogram"),
            }
        if isinstance(value, Mapping) and value:
            counts = Distribution()
            counts.counts.update({int(k): int(v) for k, v in value.items()})
            return _pairs_from_counts(counts, origin)
    return None


def _pairs_from_counts(pairs_per_text: Distribution, origin: str) -> dict[str, Any]:
    return {
        "origin": origin,
        "texts": pairs_per_text.count,
        "total": pairs_per_text.total,
        "mean": pairs_per_text.mean,
        "texts_without_pairs": pairs_per_text.counts.get(0, 0),
        "per_text": pairs_per_text.value_counts(),
    }


def _synthesis_figures(statuses, drops, kept_pairs, info: Any):
    report = info.synthesis_stats or {}
    origin = "data"
    if statuses is None and drops is None:
        if not report:
            return None
        origin = "synthesis report"
        statuses = Counter(report.get("status_counts") or {})
        drops = Counter(report.get("parse_drops") or {}) if report.get("parse_drops") is not None else None
        kept_pairs = report.get("pairs")
    result: dict[str, Any] = {"origin": origin, "status_counts": dict(sorted((statuses or {}).items()))}
    if "special_strings" in report:  # rows whose content held a literal `<s>`/`</s>`, tokenized as text
        result["special_strings"] = report["special_strings"]
    if drops is not None:
        total_drops = sum(drops.values())
        # every piece of an output is either kept as a pair or dropped for one reason
        pieces = (kept_pairs or 0) + total_drops if kept_pairs is not None else None
        result["parse_drops"] = {
            reason: int(drops.get(reason, 0)) for reason in sorted(set(C.PARSE_DROP_REASONS) | set(drops))
        }
        result["pieces"] = pieces
        result["drop_rates"] = (
            {reason: (count / pieces if pieces else 0.0) for reason, count in result["parse_drops"].items()}
            if pieces is not None
            else None
        )
        result["total_drop_rate"] = (total_drops / pieces if pieces else 0.0) if pieces is not None else None
    if report.get("speculative"):
        result["speculative"] = dict(report["speculative"])
    return result


def _template_stats(modes: Counter[str] | None, info: Any):
    report = info.templify_stats or {}
    families = report.get("families") if isinstance(report.get("families"), Mapping) else None
    families = {str(k): int(v) for k, v in sorted(families.items())} if families else None
    if modes is not None:
        return {"origin": "data", "counts": dict(sorted(modes.items())), "families": families}
    if isinstance(report.get("modes"), Mapping):
        return {
            "origin": "templify report",
            "counts": {str(k): int(v) for k, v in sorted(report["modes"].items())},
            "families": families,
        }
    return None
