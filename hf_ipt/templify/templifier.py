"""`Templifier`, the batched map function of templify: synthesized rows in, one row per pre-training text out.

Rendering one text: a mode (`mode_weights`; numbered, few_shot and next_turn only when every entry has >= 2 pairs)
and inversion (`inversion_rate`) are drawn per text, a separator between entries per text. Each entry is its raw
text, bare or behind an opening (`opening_rate`), a gap, a lead-in line or none (`lead_in_rate`), then its pairs laid
out by the mode (inverted: the pairs first, the text last). Pairs are recognised from what the synthesizer writes
(`classify_pair`):
- multiple choice (`{q}\\nOptions:\\n- {a}\\n- {b}`): the options are shuffled and labelled with one label set
  (A., (b), 3), ii: …) and layout; the answer becomes its option's label. An "unanswerable" answer becomes a
  none-of-the-above option (last) and its label; any other answer that is not an option drops the pair (counted);
- chain of thought (`… Let's think step by step.` / `{rationale}\\nTherefore, the answer is {final}`): the cue and
  the final phrase are rewritten from varied templates; both may combine with options;
- anything else is a plain pair, written exactly as it is.

Determinism: every random choice of a text comes from `random.Random` seeded with a BLAKE2b hash of the seed and of
its entries' texts (or `id_column` values), never from a row's position in the dataset.

Columns read: `TemplifyConfig.text_column`, `pairs`, `chain_id`, `chain_position`, `num_demonstrations` and the
`id_column` when set. Columns written: `hf_ipt.columns.TEMPLIFY_COLUMNS` (`source_ids` only with an `id_column`).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from hf_ipt import columns as C
from hf_ipt.columns import (
    CHAIN_POSITIONS,
    DROPPED_PAIRS,
    FAMILIES_COLUMN,
    INVERTED,
    MODE,
    NUM_PAIRS,
    SOURCE_IDS,
    STATUS_EMPTY_TEXT,
    STATUS_INVALID_TEXT,
    STATUS_OK,
    TEMPLIFY_COLUMNS,
    TEMPLIFY_STATUS,
    TEXT,
)
from hf_ipt.formatting import NO_FORMAT
from hf_ipt.templify.config import (
    CLASSIC,
    DIALOG,
    FEW_SHOT,
    INPUT_COLUMNS,
    MODES,
    MULTI_PAIR_MODES,
    NUMBERED,
    RAW,
    SKIPPED,
    TemplifyConfig,
)
from hf_ipt.templify.templates import TEMPLATES, normalize_answer

# --- families: which template pools a text drew from ---
FAMILY_QA = "qa"  # a plain pair
FAMILY_OPTIONS = "options"  # a multiple-choice pair
FAMILY_COT = "cot"  # a chain-of-thought pair
FAMILY_OPTIONS_COT = "options_cot"  # a multiple-choice chain-of-thought pair
FAMILY_OPENING = "opening"  # a text introduced by an opening ("Article: …") rather than bare
FAMILY_LEAD_IN = "lead_in"  # a lead-in line between text and pairs
FAMILIES = (FAMILY_QA, FAMILY_OPTIONS, FAMILY_COT, FAMILY_OPTIONS_COT, FAMILY_OPENING, FAMILY_LEAD_IN)

# --- what the synthesizer writes inside its pairs (facts: reference-method.md) ---
OPTIONS_MARKER = "\nOptions:\n- "
OPTION_SEPARATOR = "\n- "
COT_CUE = "Let's think step by step."
COT_FINAL = "Therefore, the answer is"

# number of options (incl. an added none-of-the-above) -> the symbol lists long enough to label them
_SYMBOL_SETS_FOR = {
    size: tuple(s for s in TEMPLATES.option_label_symbols if len(s) >= size)
    for size in range(1, max(map(len, TEMPLATES.option_label_symbols)) + 1)
}


def _pick(rand: Callable[[], float], pool: Sequence[Any]) -> Any:
    # one C call per draw; random.choice's Python-level rejection sampling costs ~5x more on this hot path
    return pool[int(rand() * len(pool))]


def _shuffle(rand: Callable[[], float], items: list[Any]) -> None:
    for i in range(len(items) - 1, 0, -1):  # Fisher-Yates
        j = int(rand() * (i + 1))
        items[i], items[j] = items[j], items[i]


def _is_int(value: Any) -> bool:
    if type(value) is int:
        return True
    # numpy integers (Ray batches) have __index__; bools are ints but never a position
    return not isinstance(value, (bool, str, bytes)) and hasattr(value, "__index__")


# ---------------------------------------------------------------------------------------------------------------
# Pairs: what the synthesizer wrote, recognised before any random choice
# ---------------------------------------------------------------------------------------------------------------


class _Pair:
    """One pair, classified. For options pairs `answer_index` is the answer's option (-1: an added none-of-the-above
    option); for chain-of-thought pairs `answer` is the final answer and `rationale` the reasoning before it."""

    __slots__ = ("family", "question", "answer", "options", "answer_index", "rationale", "raw")

    def __init__(self, family, question, answer, options=(), answer_index=0, rationale="", raw=None):
        self.family = family
        self.question = question
        self.answer = answer
        self.options = options
        self.answer_index = answer_index
        self.rationale = rationale
        self.raw = raw  # (question, answer) as written, for the plain fallback


def _match_option(answer: str, options: Sequence[str]) -> int | None:
    """Index of the option the answer names (exact, then normalized); -1 for a none-of-the-above answer."""
    for index, option in enumerate(options):
        if option == answer:
            return index
    wanted = normalize_answer(answer)
    normalized = [normalize_answer(option) for option in options]
    if wanted in normalized:
        return normalized.index(wanted)
    if wanted in TEMPLATES.unanswerable_answers:
        # an option that already says "none of the above" is the answer's option
        for index, option in enumerate(normalized):
            if option in TEMPLATES.unanswerable_answers:
                return index
        return -1
    return None


def classify_pair(question: str, answer: str) -> _Pair | None:
    """Recognise options and chain-of-thought in a pair; None when it must be dropped (an options answer that is
    neither an option nor an "unanswerable" phrase). A pair that only looks half like either is kept as plain QA.

    Example:
        >>> pair = classify_pair("Is it red?\\nOptions:\\n- yes\\n- no", "no")
        >>> pair.family, pair.options, pair.answer_index
        ('options', ('yes', 'no'), 1)
        >>> classify_pair("Is it red?\\nOptions:\\n- yes\\n- no", "maybe") is None
        True
    """
    if OPTIONS_MARKER not in question and not question.endswith(COT_CUE):
        return _Pair(FAMILY_QA, question, answer)  # most pairs: nothing to recognise
    raw = (question, answer)
    family_cot = False
    rationale = ""
    if question.endswith(COT_CUE):
        head = question[: -len(COT_CUE)]
        cut = answer.rfind(COT_FINAL)
        if head[-1:].isspace() and head.strip() and cut > 0:
            reasoning, final = answer[:cut].rstrip(), answer[cut + len(COT_FINAL) :].strip()
            if reasoning and final:
                family_cot, rationale, question, answer = True, reasoning, head.rstrip(), final
    start = question.find(OPTIONS_MARKER)
    if start > 0:
        stem = question[:start].rstrip()
        options: list[str] = []
        for option in question[start + len(OPTIONS_MARKER) :].split(OPTION_SEPARATOR):
            option = option.strip()
            if option not in options:
                options.append(option)
        if stem and all(options) and len(options) >= 2:
            index = _match_option(answer, options)
            if index is None:
                return None
            family = FAMILY_OPTIONS_COT if family_cot else FAMILY_OPTIONS
            return _Pair(family, stem, answer, tuple(options), index, rationale, raw)
    if family_cot:
        return _Pair(FAMILY_COT, question, answer, (), 0, rationale, raw)
    return _Pair(FAMILY_QA, question, answer, raw=raw)


def _is_arrow(batch: Any) -> bool:
    return hasattr(batch, "schema") and hasattr(batch, "column") and not isinstance(batch, Mapping)


def output_features(id_feature: Any = None) -> Any:
    """The `datasets.Features` of templify's output (`hf_ipt.columns.TEMPLIFY_COLUMNS`, in that order); `id_feature`
    is the feature of the id column, if one is used (then `source_ids` is written).

    Example:
        >>> list(output_features())[:3]
        ['text', 'chain_id', 'chain_positions']
    """
    from datasets import Features, List, Value

    features = {
        TEXT: Value("string"),
        C.CHAIN_ID: Value("string"),
        CHAIN_POSITIONS: List(Value("int64")),
        SOURCE_IDS: List(id_feature) if id_feature is not None else None,
        MODE: Value("string"),
        INVERTED: Value("bool"),
        FAMILIES_COLUMN: List(Value("string")),
        NUM_PAIRS: Value("int64"),
        DROPPED_PAIRS: Value("int64"),
        TEMPLIFY_STATUS: Value("string"),
    }
    return Features({name: features[name] for name in TEMPLIFY_COLUMNS if features[name] is not None})


@functools.lru_cache(maxsize=16)
def _arrow_schema(id_type: Any) -> Any:
    """The Arrow schema of `output_features`, for an id column of Arrow type `id_type` (None: no id column)."""
    from datasets.features.features import generate_from_arrow_type

    return output_features(None if id_type is None else generate_from_arrow_type(id_type)).arrow_schema


def _to_arrow(out: dict[str, list[Any]], id_type: Any) -> Any:
    import pyarrow as pa

    schema = _arrow_schema(id_type)
    return pa.table({name: pa.array(values, type=schema.field(name).type) for name, values in out.items()})


def _arrow_pairs(column: Any) -> list[Any]:
    """The `pairs` column of an Arrow batch as per-row lists of (instruction, response) tuples (None for a null
    list): two flat string conversions instead of one Python dict per pair."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    item = column.type.value_type if pa.types.is_list(column.type) or pa.types.is_large_list(column.type) else None
    if (
        item is None
        or not pa.types.is_struct(item)
        or {item.field(i).name for i in range(item.num_fields)}
        != {
            C.INSTRUCTION,
            C.RESPONSE,
        }
    ):
        return column.to_pylist()  # an unexpected type: the generic path reports what is wrong row by row
    flat = column.flatten()  # respects the slice, unlike .values
    pairs = list(zip(flat.field(C.INSTRUCTION).to_pylist(), flat.field(C.RESPONSE).to_pylist(), strict=True))
    offsets = column.offsets.to_pylist()
    base = offsets[0]
    if base:
        offsets = [offset - base for offset in offsets]
    rows = [pairs[offsets[row] : offsets[row + 1]] for row in range(len(column))]
    if column.null_count:
        for row, valid in enumerate(column.is_valid().to_pylist()):
            if not valid:
                rows[row] = None
    return rows


class _OptionStyle(NamedTuple):
    """The option style of one entry, shared by its multiple-choice pairs (see options.yaml)."""

    start: str
    symbols: tuple[str, ...]
    label_format: str
    layout: Any  # hf_ipt.templify.templates.OptionLayout
    answer: str
    answer_in_sentence: str
    none_text: str


class _Entry:
    __slots__ = ("position", "text", "status", "pairs", "special", "dropped", "demonstrations", "source_id")

    def __init__(self, position, text, status, pairs, special, dropped, demonstrations, source_id):
        self.position = position
        self.text = text
        self.status = status
        self.pairs = pairs  # (question, answer) tuples for plain pairs, _Pair for the others
        self.special = special  # some pair is multiple-choice or chain-of-thought
        self.dropped = dropped
        self.demonstrations = demonstrations
        self.source_id = source_id


# ---------------------------------------------------------------------------------------------------------------
# The batched map function
# ---------------------------------------------------------------------------------------------------------------


class Templifier:
    """Batched map function: synthesized rows in, one row per pre-training text out (see the module docstring).

    Picklable and hashed stably by `datasets` (it holds only its config and plain values). When mapping it
    yourself, pass `remove_columns=dataset.column_names` and a batch size that keeps chains whole; `templify()`
    does both for you.

    `grouped=True` is for batches laid out by `plan_chain_batches` (what `templify()` maps): every chain is whole
    inside its batch, so positions need not start at 0 (a filtered chain is rendered as it is), and all-null padding
    rows (null `chain_id`) are skipped.

    Example:
        >>> fn = Templifier(TemplifyConfig(seed=0))
        >>> ds = synthesized.map(fn, batched=True, batch_size=1024,  # doctest: +SKIP
        ...                      remove_columns=synthesized.column_names)
    """

    def __init__(self, config: TemplifyConfig | None = None, *, grouped: bool = False) -> None:
        self.config = config if config is not None else TemplifyConfig()
        if not isinstance(self.config, TemplifyConfig):
            raise TypeError(f"Templifier expects a TemplifyConfig, got {type(self.config).__name__}")
        self.target_format = self.config.resolve_target_format()
        self.templates_digest = TEMPLATES.digest  # part of the cache fingerprint: new templates, new texts
        weights = self.config.mode_weights
        self._modes_multi, self._cumulative_multi = self._cumulative(weights)
        single = {mode: (0.0 if mode in MULTI_PAIR_MODES else w) for mode, w in weights.items()}
        single[CLASSIC] += sum(weights[mode] for mode in MULTI_PAIR_MODES)
        self._modes_single, self._cumulative_single = self._cumulative(single)
        self._seed_bytes = str(self.config.seed).encode() + b"\x00"
        self.grouped = grouped

    @staticmethod
    def _cumulative(weights: Mapping[str, float]) -> tuple[tuple[str, ...], tuple[float, ...]]:
        modes = tuple(mode for mode in MODES if weights[mode] > 0)
        total, cumulative = 0.0, []
        for mode in modes:
            total += weights[mode]
            cumulative.append(total)
        return modes, tuple(cumulative)

    def __repr__(self) -> str:
        return f"Templifier({self.config!r}{', grouped=True' if self.grouped else ''})"

    @property
    def input_columns(self) -> list[str]:
        """The columns this function reads."""
        extra = [self.config.id_column] if self.config.id_column else []
        return [self.config.text_column, *INPUT_COLUMNS, *extra]

    def check_columns(self, column_names: Sequence[str]) -> None:
        """Raise a ValueError naming every missing input column and what provides it."""
        missing = [name for name in self.input_columns if name not in column_names]
        if missing:
            hint = (
                "the synthesis columns come from hf_ipt.Synthesizer (run synthesis first)"
                if set(missing) & set(INPUT_COLUMNS)
                else "set TemplifyConfig.text_column to the column synthesis read (and id_column to an existing one)"
            )
            raise ValueError(f"templify needs the columns {missing}, missing from {sorted(column_names)}: {hint}")

    def __call__(self, batch: Any) -> Any:
        """Templify one batch: a mapping of column -> list (or numpy array, pandas Series), or a pyarrow
        Table/RecordBatch. Returns a dict of lists, or a pyarrow Table for an Arrow batch (what
        `Dataset.with_format("arrow").map` and Ray's `batch_format="pyarrow"` pass)."""
        out = self._templify(batch, None)
        if _is_arrow(batch):
            id_type = batch.schema.field(self.config.id_column).type if self.config.id_column else None
            return _to_arrow(out, id_type)
        return out

    def explain(self, batch: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
        """The output rows of `batch` as dicts, each with `options`: how each multiple-choice pair was rendered
        (`items` in shown order, their `labels` and `labelled` forms, `answer_index` into items, `answer_text` as
        synthesized, and `question` / `answer` as written in the text). For inspection and tests; `__call__` renders
        the same texts.
        """
        trace: list[list[dict[str, Any]]] = []
        out = self._templify(batch, trace)
        rows = [dict(zip(out, values, strict=True)) for values in zip(*out.values(), strict=True)]
        for row, options in zip(rows, trace, strict=True):
            row["options"] = options
        return rows

    # -- reading the batch ------------------------------------------------------------------------------------

    def _columns(self, batch: Any) -> tuple[list[Any], ...]:
        names = self.input_columns
        if _is_arrow(batch):
            self.check_columns(batch.schema.names)
            values = [
                _arrow_pairs(batch.column(name)) if name == C.PAIRS else batch.column(name).to_pylist()
                for name in names
            ]
        else:
            self.check_columns(list(batch.keys()))
            values = [batch[name] for name in names]
            values = [v.tolist() if hasattr(v, "tolist") else list(v) for v in values]  # numpy/pandas (Ray)
        lengths = {name: len(v) for name, v in zip(names, values, strict=True)}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"templify got columns of different lengths in one batch: {lengths}")
        if not self.config.id_column:
            values.append([None] * len(values[0]))
        return tuple(values)

    @staticmethod
    def _read_pairs(pairs: Any, where: Callable[[], str]) -> tuple[list[Any], int, bool]:
        """The kept pairs of a row, how many were dropped, and whether any is multiple-choice or chain-of-thought.
        Plain pairs are kept as (question, answer) tuples, the others as `_Pair`; `where` names the row in errors."""
        if pairs is None:
            return [], 0, False
        if type(pairs) is not list:
            if hasattr(pairs, "tolist"):
                pairs = pairs.tolist()
            if isinstance(pairs, (str, bytes, Mapping)) or not isinstance(pairs, Sequence):
                raise ValueError(
                    f"{where()}: column {C.PAIRS!r} must hold a list of {{'instruction': str, 'response': str}}, got "
                    f"{type(pairs).__name__} {pairs!r:.80}"
                )
        kept: list[Any] = []
        dropped = 0
        special = False
        for index, pair in enumerate(pairs):
            question = answer = None
            if type(pair) is tuple and len(pair) == 2:  # from _arrow_pairs
                question, answer = pair
            elif type(pair) is dict or isinstance(pair, Mapping):
                question, answer = pair.get(C.INSTRUCTION), pair.get(C.RESPONSE)
            if type(question) is not str or type(answer) is not str:
                if not isinstance(question, str) or not isinstance(answer, str):
                    raise ValueError(
                        f"{where()}: {C.PAIRS}[{index}] must be a dict with string {C.INSTRUCTION!r} and "
                        f"{C.RESPONSE!r}, got {pair!r:.120}"
                    )
            if not question or not answer or question.isspace() or answer.isspace():
                dropped += 1
                continue
            if OPTIONS_MARKER not in question and not question.endswith(COT_CUE):
                kept.append(pair if type(pair) is tuple else (question, answer))  # most pairs: nothing to recognise
                continue
            classified = classify_pair(question, answer)
            if classified is None:
                dropped += 1
            elif classified.family == FAMILY_QA:
                kept.append((question, answer))
            else:
                kept.append(classified)
                special = True
        return kept, dropped, special

    def _chain_entries(self, chain_id: str, rows: list[int], columns: tuple[list[Any], ...]) -> list[_Entry]:
        texts, pairs_column, _, positions, demonstrations, ids = columns
        ordered: list[tuple[int, int]] = []
        for row in rows:
            position = positions[row]
            if not _is_int(position) or position < 0:
                raise ValueError(
                    f"row {row} of the batch (chain {chain_id!r}): {C.CHAIN_POSITION!r} must be an integer >= 0, "
                    f"got {position!r}"
                )
            ordered.append((int(position), row))
        ordered.sort()
        for (a, _), (b, _) in zip(ordered, ordered[1:], strict=False):
            if a == b:
                raise ValueError(
                    f"chain {chain_id!r} has two rows at {C.CHAIN_POSITION} {a}; each (chain_id, chain_position) "
                    "must appear once (was the synthesized dataset concatenated with itself?)"
                )
        if not self.grouped and [p for p, _ in ordered] != list(range(len(ordered))):
            raise ValueError(
                f"chain {chain_id!r} is incomplete in this batch: it has positions {[p for p, _ in ordered]} instead "
                f"of 0..{len(ordered) - 1}, so the batch boundary (or a filter) cut it and it would be split across "
                "texts. Use hf_ipt.templify.templify(dataset, config), which groups chains whatever the batch size, "
                "or map with batch_size = the synthesis batch size (or a multiple) on the unfiltered, unshuffled "
                "synthesis output."
            )
        entries = []
        for position, row in ordered:

            def where(row: int = row, position: int = position) -> str:
                return f"row {row} of the batch (chain {chain_id!r}, position {position})"

            text = texts[row]
            pairs, dropped, special = self._read_pairs(pairs_column[row], where)
            if not isinstance(text, str):
                status = STATUS_INVALID_TEXT
            elif not text or text.isspace():
                status = STATUS_EMPTY_TEXT
            else:
                status = STATUS_OK
            if status != STATUS_OK:
                pairs, dropped = [], dropped + len(pairs)
            demos = demonstrations[row]
            if not _is_int(demos) or demos < 0:
                raise ValueError(f"{where()}: {C.NUM_DEMONSTRATIONS!r} must be an integer >= 0, got {demos!r}")
            source_id = ids[row]
            if self.config.id_column and source_id is None and status == STATUS_OK:
                raise ValueError(f"{where()}: id column {self.config.id_column!r} is null; every row needs an id")
            entries.append(_Entry(position, text, status, pairs, special, dropped, int(demos), source_id))
        return entries

    # -- writing the output -----------------------------------------------------------------------------------

    def _empty_output(self) -> dict[str, list[Any]]:
        return {name: [] for name in TEMPLIFY_COLUMNS if self.config.id_column or name != SOURCE_IDS}

    def _emit(self, out, text, chain_id, entries, mode, inverted, families, num_pairs, dropped, status) -> None:
        out[TEXT].append(text)
        out[C.CHAIN_ID].append(chain_id)
        out[CHAIN_POSITIONS].append([e.position for e in entries])
        if SOURCE_IDS in out:
            out[SOURCE_IDS].append([e.source_id for e in entries])
        out[MODE].append(mode)
        out[INVERTED].append(inverted)
        out[FAMILIES_COLUMN].append(families)
        out[NUM_PAIRS].append(num_pairs)
        out[DROPPED_PAIRS].append(dropped)
        out[TEMPLIFY_STATUS].append(status)

    def _templify(self, batch: Mapping[str, Sequence[Any]], trace: list | None) -> dict[str, list[Any]]:
        columns = self._columns(batch)
        chain_ids = columns[2]
        chains: dict[str, list[int]] = {}
        for row, chain_id in enumerate(chain_ids):
            if chain_id is None and self.grouped:
                continue  # padding added by templify()
            if not isinstance(chain_id, str):
                raise ValueError(f"row {row} of the batch: {C.CHAIN_ID!r} must be a string, got {chain_id!r}")
            rows = chains.get(chain_id)
            if rows is None:
                chains[chain_id] = [row]
            else:
                rows.append(row)
        out = self._empty_output()
        wrap = None if self.target_format == NO_FORMAT else self.target_format.wrap
        rng = random.Random()
        for chain_id, rows in chains.items():
            run: list[_Entry] = []
            for entry in self._chain_entries(chain_id, rows, columns):
                linked = (
                    entry.status == STATUS_OK
                    and entry.pairs
                    and run
                    and entry.demonstrations >= 1
                    and run[-1].position == entry.position - 1
                )
                if linked:
                    run.append(entry)
                    continue
                if run:
                    self._emit_run(out, chain_id, run, rng, wrap, trace)
                    run = []
                if entry.status != STATUS_OK:
                    self._emit(out, "", chain_id, [entry], SKIPPED, False, [], 0, entry.dropped, entry.status)
                    if trace is not None:
                        trace.append([])
                elif not entry.pairs:
                    text = wrap(entry.text) if wrap else entry.text
                    self._emit(out, text, chain_id, [entry], RAW, False, [], 0, entry.dropped, STATUS_OK)
                    if trace is not None:
                        trace.append([])
                else:
                    run = [entry]
            if run:
                self._emit_run(out, chain_id, run, rng, wrap, trace)
        return out

    # -- rendering --------------------------------------------------------------------------------------------

    def _key(self, run: list[_Entry]) -> int:
        """The run's random seed: a hash of the global seed and of its entries' texts (or ids)."""
        digest = hashlib.blake2b(self._seed_bytes, digest_size=16)
        for entry in run:
            if self.config.id_column:
                key = entry.source_id
                if isinstance(key, str):
                    data = b"s" + key.encode("utf-8", "surrogatepass")
                elif _is_int(key):  # Python and numpy integers alike, so every engine gets the same key
                    data = b"i" + str(int(key)).encode()
                else:
                    data = b"r" + repr(key).encode("utf-8", "backslashreplace")
            else:
                data = entry.text.encode("utf-8", "surrogatepass")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
        return int.from_bytes(digest.digest(), "little")

    def _emit_run(self, out, chain_id: str, run: list[_Entry], rng: random.Random, wrap, trace: list | None) -> None:
        rng.seed(self._key(run))  # reseeding one generator per batch: the same draws as a fresh Random(key)
        rand = rng.random
        config = self.config
        if all(len(entry.pairs) >= 2 for entry in run):
            modes, cumulative = self._modes_multi, self._cumulative_multi
        else:
            modes, cumulative = self._modes_single, self._cumulative_single
        mode = modes[min(bisect.bisect_right(cumulative, rand() * cumulative[-1]), len(modes) - 1)]
        inverted = rand() < config.inversion_rate
        separator = _pick(rand, TEMPLATES.chain_separators) if len(run) > 1 else ""
        families: set[str] = set()
        options_trace = [] if trace is not None else None
        parts = [self._render_entry(entry, mode, inverted, rand, families, options_trace) for entry in run]
        text = separator.join(parts) if len(parts) > 1 else parts[0]
        if wrap:
            text = wrap(text)
        num_pairs = sum(len(entry.pairs) for entry in run)
        dropped = sum(entry.dropped for entry in run)
        self._emit(out, text, chain_id, run, mode, inverted, sorted(families), num_pairs, dropped, STATUS_OK)
        if trace is not None:
            trace.append(options_trace)

    def _render_entry(
        self, entry: _Entry, mode: str, inverted: bool, rand: Callable[[], float], families: set[str], trace
    ) -> str:
        config = self.config
        templates = TEMPLATES
        if rand() < config.opening_rate:
            shown = _pick(rand, templates.openings).format(text=entry.text)
            families.add(FAMILY_OPENING)
        else:
            shown = entry.text
        lead_in = ""
        if rand() < config.lead_in_rate:
            lead_in = _pick(rand, templates.inverted_lead_ins if inverted else templates.lead_ins) + "\n"
            families.add(FAMILY_LEAD_IN)
        gap = _pick(rand, templates.text_gaps)
        if entry.special:
            pairs = self._render_pairs(entry.pairs, rand, families, trace)
        else:
            pairs = entry.pairs
            families.add(FAMILY_QA)
        block = self._layout(mode, pairs, rand)
        if inverted:
            return block + gap + lead_in + shown
        return shown + gap + lead_in + block

    def _render_pairs(self, pairs: list[Any], rand: Callable[[], float], families: set[str], trace) -> list[tuple]:
        """Each pair as (question, answer) strings, with options labelled and chain-of-thought phrased; the style
        choices (option start, labels, cue, final phrase) are made once per entry, when first needed."""
        templates = TEMPLATES
        rendered: list[tuple[str, str]] = []
        option_style = cot_style = None
        for pair in pairs:
            if type(pair) is tuple:
                rendered.append(pair)
                families.add(FAMILY_QA)
                continue
            family = pair.family
            question, answer = pair.question, pair.answer
            if family in (FAMILY_OPTIONS, FAMILY_OPTIONS_COT):
                if option_style is None:
                    option_style = self._option_style(pairs, rand)
                if len(pair.options) + (pair.answer_index < 0) > len(option_style.symbols):
                    # more options than any label set has symbols: keep the pair exactly as written
                    rendered.append(pair.raw)
                    families.add(FAMILY_QA)
                    continue
                question, label, labelled, option = self._render_options(pair, option_style, rand, trace)
                answer_format = (
                    option_style.answer_in_sentence if family == FAMILY_OPTIONS_COT else option_style.answer
                )
                answer = answer_format.format(label=label, labelled=labelled, option=option)
            if family in (FAMILY_COT, FAMILY_OPTIONS_COT):
                if cot_style is None:
                    cot_style = (_pick(rand, templates.cot_cues), _pick(rand, templates.cot_finals))
                question = cot_style[0].format(question=question)
                answer = cot_style[1].format(rationale=pair.rationale, answer=answer)
            if trace is not None and family in (FAMILY_OPTIONS, FAMILY_OPTIONS_COT):
                trace[-1]["question"], trace[-1]["answer"] = question, answer
            rendered.append((question, answer))
            families.add(family)
        return rendered

    @staticmethod
    def _option_style(pairs: list[Any], rand: Callable[[], float]) -> _OptionStyle:
        templates = TEMPLATES
        needed = max(len(p.options) + (p.answer_index < 0) for p in pairs if type(p) is _Pair and p.options)
        symbol_sets = _SYMBOL_SETS_FOR.get(needed) or (max(templates.option_label_symbols, key=len),)
        return _OptionStyle(
            _pick(rand, templates.option_starts),
            _pick(rand, symbol_sets),
            _pick(rand, templates.option_label_formats),
            _pick(rand, templates.option_layouts),
            _pick(rand, templates.option_answers),
            _pick(rand, templates.option_answers_in_sentence),
            _pick(rand, templates.none_of_the_above),
        )

    @staticmethod
    def _render_options(
        pair: _Pair, style: _OptionStyle, rand: Callable[[], float], trace
    ) -> tuple[str, str, str, str]:
        """The question with its shuffled, labelled options; the answer's label, labelled form and option text."""
        symbols, layout = style.symbols, style.layout
        items = list(pair.options)
        _shuffle(rand, items)
        if pair.answer_index < 0:
            items.append(style.none_text)  # "none of the above" goes last, where readers expect it
            correct = len(items) - 1
        else:
            correct = items.index(pair.options[pair.answer_index])
        labelled = [style.label_format.format(label=symbol) for symbol in symbols[: len(items)]]
        listing = layout.between.join([f"{label} {item}" for label, item in zip(labelled, items, strict=True)])
        question = pair.question + layout.before_start + style.start + layout.after_start + listing
        if trace is not None:
            trace.append(
                {
                    "items": items,
                    "labels": list(symbols[: len(items)]),
                    "labelled": labelled,
                    "answer_index": correct,
                    "answer_text": pair.answer,
                }
            )
        return question, symbols[correct], labelled[correct], items[correct]

    def _layout(self, mode: str, pairs: list[tuple[str, str]], rand: Callable[[], float]) -> str:
        templates = TEMPLATES
        if mode == CLASSIC:
            pattern = _pick(rand, templates.qa_formats)
            separator = _pick(rand, templates.pair_separators)
            return separator.join([pattern.format(question=q, answer=a) for q, a in pairs])
        if mode == FEW_SHOT:
            pattern = _pick(rand, templates.few_shot_formats)
            separator = _pick(rand, templates.few_shot_separators)
            return separator.join([pattern.format(question=q, answer=a) for q, a in pairs])
        if mode == NUMBERED:
            style = _pick(rand, templates.numbered_formats)
            questions = "\n".join([style.question.format(n=n, question=q) for n, (q, _) in enumerate(pairs, 1)])
            answers = "\n".join([style.answer.format(n=n, answer=a) for n, (_, a) in enumerate(pairs, 1)])
            if style.questions_header:
                questions = style.questions_header + "\n" + questions
            if style.answers_header:
                answers = style.answers_header + "\n" + answers
            return questions + "\n\n" + answers
        # dialog and next_turn
        asker, answerer = _pick(rand, templates.dialog_speakers)
        turn = _pick(rand, templates.dialog_turns)
        separator = _pick(rand, templates.dialog_separators)
        turns = []
        for q, a in pairs:
            turns.append(turn.format(speaker=asker, utterance=q))
            turns.append(turn.format(speaker=answerer, utterance=a))
        if mode == DIALOG:
            return separator.join(turns)
        prompt = _pick(rand, templates.next_turn_prompts)
        return prompt.format(history=separator.join(turns[:-1]), speaker=answerer, answer=pairs[-1][1])


def templify_batch(batch: Mapping[str, Sequence[Any]], config: TemplifyConfig | None = None) -> dict[str, list[Any]]:
    """Templify one batch with `config` (default settings when None); see `Templifier` for repeated use.

    Example:
        >>> out = templify_batch({"text": ["Hi."], "pairs": [[]], "chain_id": ["a"], "chain_position": [0],
        ...                       "num_demonstrations": [0]})
        >>> out["text"], out["mode"]
        (['Hi.'], ['raw'])
    """
    return Templifier(config)(batch)
