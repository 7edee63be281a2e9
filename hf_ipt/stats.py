"""Statistics of every stage, counted once, with one distribution type.

Each stage computes its report here once and commits it with its output (`hf_ipt.pipeline`): synthesis
(`synthesis_report`, over the shards), templify (`templify_report`), mixing (`hf_ipt.mixing.MixReport`). A release
reads those reports and adds the figures of the released rows themselves (`compute_statistics`); the card and the
plots only read the result.

Every histogram hf-ipt writes has one convention (`Distribution.histogram`): power-of-two bins with explicit edges
`[0, 1, 2, 4, 8, ...]`, bin i holding `edges[i] <= n < edges[i + 1]` (0 alone, 1, 2-3, 4-7, ...).

Example:
    >>> d = Distribution([0, 1, 3, 3, 9])
    >>> d.count, d.total, d.histogram()
    (5, 16, {'edges': [0, 1, 2, 4, 8, 16], 'counts': [1, 1, 2, 0, 1]})
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from hf_ipt import columns as C
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
from hf_ipt.templify import FAMILIES, MODES, RAW
from hf_ipt.tokenization import load_tokenizer, tokenizer_name

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


# ---------------------------------------------------------------------------------------------------- synthesis
SYNTHESIS_COLUMNS = (C.PAIRS, C.PROMPT_TOKENS, C.TRUNCATED, C.SYNTH_STATUS, C.PARSE_DROPS, C.SPECIAL_STRINGS)


def synthesis_report(tables: Iterable[Any]) -> dict[str, Any]:
    """The synthesis stage's report over its rows given as pyarrow Tables (e.g. `runner.iter_shard_tables`),
    computed column-wise shard by shard so a large run is never loaded whole.

    Columns read, each when present: `pairs`, `prompt_tokens`, `truncated`, `synth_status`, `parse_drops`,
    `special_strings`. Returns rows, pairs (kept), prompt_tokens, truncated, status_counts, parse_drops ({reason:
    count}), pairs_per_text ({n pairs: n texts}) and special_strings (rows whose prompt content held a literal `<s>`,
    `</s>`, ... sent as text).

    Example:
        >>> import pyarrow as pa
        >>> synthesis_report([pa.table({"pairs": [[{"instruction": "q", "response": "a"}], []]})])["pairs_per_text"]
        {'0': 1, '1': 1}
    """
    import pyarrow.compute as pc

    rows = prompt_tokens = truncated = special_strings = 0
    statuses: Counter[str] = Counter()
    drops: Counter[str] = Counter()
    pairs = Distribution()
    for table in tables:
        rows += table.num_rows
        if not table.num_rows:
            continue
        names = table.column_names
        if C.PAIRS in names:
            pairs.add(pc.fill_null(pc.list_value_length(table[C.PAIRS]), 0).to_pylist())
        if C.PROMPT_TOKENS in names:
            prompt_tokens += int(pc.sum(table[C.PROMPT_TOKENS]).as_py() or 0)
        if C.TRUNCATED in names:
            truncated += int(pc.sum(pc.cast(table[C.TRUNCATED], "int64")).as_py() or 0)
        if C.SPECIAL_STRINGS in names:
            special_strings += int(pc.sum(pc.cast(table[C.SPECIAL_STRINGS], "int64")).as_py() or 0)
        if C.SYNTH_STATUS in names:
            for entry in pc.value_counts(table[C.SYNTH_STATUS]).to_pylist():
                statuses[entry["values"]] += entry["counts"]
        if C.PARSE_DROPS in names:
            column = table[C.PARSE_DROPS].combine_chunks()
            for index, reason in enumerate(field.name for field in column.type):
                drops[reason] += int(pc.sum(pc.struct_field(column, [index])).as_py() or 0)
    return {
        "rows": rows,
        "pairs": pairs.total,
        "prompt_tokens": prompt_tokens,
        "truncated": truncated,
        "status_counts": dict(sorted(statuses.items())),
        "parse_drops": dict(drops),
        "pairs_per_text": pairs.value_counts(),
        "special_strings": special_strings,
    }


def synthesis_summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """The figures `hf-ipt synthesize` prints, from a `synthesis_report` (statuses in their pipeline order).

    Example:
        >>> summary = synthesis_summary({"pairs": 5, "prompt_tokens": 22, "status_counts": {"ok": 2}})
        >>> summary["rows by status"], summary["truncated texts"], summary["texts with <s>/</s> sent as text"]
        ('ok 2', 0, 0)
    """
    statuses = report.get("status_counts") or {}
    ordered = [k for k in C.SYNTH_STATUSES if k in statuses] + sorted(set(statuses) - set(C.SYNTH_STATUSES))
    return {
        "pairs": report.get("pairs", 0),
        "prompt tokens": report.get("prompt_tokens", 0),
        "rows by status": ", ".join(f"{k} {statuses[k]:,}" for k in ordered),
        "truncated texts": report.get("truncated", 0),
        "texts with <s>/</s> sent as text": report.get("special_strings", 0),
    }


# ---------------------------------------------------------------------------------------------------- speculative
def speculative_stats(counters: Mapping[str, int] | None, settings: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Speculative decoding's figures from the engine's counters (`VLLMEngine.speculative_counters`)
    and the `synth.speculative` settings; None when speculative decoding was off.

    `acceptance_rate`: accepted draft tokens / draft tokens proposed. `mean_accepted_length`: tokens the model emits
    per verification step, 1 + accepted draft tokens per draft (vLLM's convention, the bonus token counted), so
    1.0 means no draft was ever accepted. Counters None (the engines ran in other processes, or kept no statistics)
    gives the settings with `measured: False`.

    Example:
        >>> speculative_stats({"drafts": 10, "draft_tokens": 40, "accepted_tokens": 15}, {"method": "ngram"})
        {'method': 'ngram', 'measured': True, 'drafts': 10, 'draft_tokens': 40, 'accepted_tokens': 15, \
'acceptance_rate': 0.375, 'mean_accepted_length': 2.5}
    """
    if not settings:
        return None
    result: dict[str, Any] = {**settings, "measured": counters is not None}
    if counters is not None:
        drafts, proposed, accepted = (int(counters.get(k, 0)) for k in ("drafts", "draft_tokens", "accepted_tokens"))
        result.update(
            drafts=drafts,
            draft_tokens=proposed,
            accepted_tokens=accepted,
            acceptance_rate=accepted / proposed if proposed else None,
            mean_accepted_length=1 + accepted / drafts if drafts else None,
        )
    return result


def speculative_summary(stats: Mapping[str, Any] | None) -> str | None:
    """The one line the run summary and the card show for speculative decoding; None when it was off.

    Example:
        >>> speculative_summary({"method": "ngram", "num_speculative_tokens": 4, "measured": True, "drafts": 10,
        ...                      "draft_tokens": 40, "accepted_tokens": 15, "acceptance_rate": 0.375,
        ...                      "mean_accepted_length": 2.5})
        'ngram, 4 draft tokens: 37.5 % of 40 draft tokens accepted, 2.50 tokens per verification step'
    """
    if not stats:
        return None
    head = f"{stats.get('method', '?')}, {stats.get('num_speculative_tokens', '?')} draft tokens"
    if not stats.get("measured"):
        return f"{head} (acceptance not measured: the engines ran in other processes)"
    rate, length = stats.get("acceptance_rate"), stats.get("mean_accepted_length")
    if rate is None or length is None:
        return f"{head}: no draft proposed"
    return (
        f"{head}: {100 * rate:.1f} % of {stats['draft_tokens']:,} draft tokens accepted, "
        f"{length:.2f} tokens per verification step"
    )


# ---------------------------------------------------------------------------------------------------- templify
_TEMPLIFY_COLUMNS = [TEXT, CHAIN_POSITIONS, MODE, INVERTED, FAMILIES_COLUMN, NUM_PAIRS, DROPPED_PAIRS, TEMPLIFY_STATUS]


def _templify_figures(dataset: Any, tokenizer: Any, batch_size: int) -> tuple[dict[str, Any], Distribution]:
    """One pass over templify's output: (templify_stats, the pairs-per-text distribution of ok texts)."""
    if tokenizer is not None and isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer)
    needed = _TEMPLIFY_COLUMNS
    if isinstance(dataset, Mapping):
        missing = [name for name in needed if name not in dataset]
        batches: Iterable[Any] = [dataset]
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


def templify_stats(dataset: Any, *, tokenizer: Any = None, batch_size: int = 10_000) -> dict[str, Any]:
    """Statistics of a templified dataset (a `Dataset`, an `IterableDataset`, or a dict of columns), as plain,
    JSON-serialisable data for the dataset card and plots.

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


# ---------------------------------------------------------------------------------------------------- release data
def content_fingerprint(dataset: Any, batch_size: int = 10_000) -> str:
    """16 hex digits of a sha256 over a dataset's features and rows: the same rows give the same value whatever the
    files' names, modification times or Arrow chunking (`Dataset._fingerprint` of data read from Parquet depends
    on the files' mtime, so stats.json would differ between two identical runs).

    Example:
        >>> from datasets import Dataset
        >>> a = Dataset.from_dict({"text": ["x", "y"]})
        >>> content_fingerprint(a) == content_fingerprint(Dataset.from_dict({"text": ["x", "y"]}))
        True
    """
    import hashlib
    import json

    import pyarrow as pa

    digest = hashlib.sha256(json.dumps(dataset.features.to_dict(), sort_keys=True).encode())
    for table in dataset.with_format("arrow").iter(batch_size=batch_size):
        # take() rebuilds every buffer from offset 0, so slices and chunk boundaries serialize alike
        table = table.replace_schema_metadata(None)
        table = table.take(pa.array(range(table.num_rows), pa.int64())).combine_chunks()
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        digest.update(sink.getvalue().to_pybytes())
    return digest.hexdigest()[:16]


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

    for split_name, dataset in splits.items():
        names = dataset.column_names
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
        split_stats[split_name] = {"rows": dataset.num_rows, "fingerprint": content_fingerprint(dataset)}
        if not wanted:
            continue
        for batch in dataset.select_columns(list(dict.fromkeys(wanted))).iter(batch_size=batch_size):
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
    return stats


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
