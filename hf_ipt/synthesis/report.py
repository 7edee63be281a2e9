"""The synthesis stage's report: counted over its rows shard by shard, and the figures its summary prints.

Example:
    >>> import pyarrow as pa
    >>> synthesis_report([pa.table({"pairs": [[{"instruction": "q", "response": "a"}], []]})])["pairs"]
    1
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from hf_ipt import columns as C
from hf_ipt.stats import Distribution

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
    """Speculative decoding's figures from the engine's counters (`VLLMEngine.counters`)
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
