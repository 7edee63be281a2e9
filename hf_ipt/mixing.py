"""Mixing corpora by token ratio, counted with the tokenizer of the model that will be trained on the mix.

One call mixes: `mix({name: dataset}, MixConfig(weights=..., tokenizer=...))`. Each corpus other than the
instruction-augmented one is first formatted like it with `prepare_source` (same target BOS/EOS):

- continual pre-training: general instructions (OpenOrca) at 1:1 in tokens, each example written
  `"{question} {response}"` with one space and its system prompt discarded (`kind="general_instructions"`);
- pre-training from scratch: unchanged raw corpora at a ratio the user chooses (`kind="raw"`).

Every source must carry the same wrapping: `mix` refuses a mix where some sources' texts carry the BOS/EOS of
`MixConfig.tokenizer` and others do not (one corpus, two text formats, and a ratio counted on unequal wrappings),
naming the sources and how to format them alike (`prepare_source` with the target format the augmented texts got).

`datasets.interleave_datasets` samples by example probability, so a 1:1 ratio of examples is not a 1:1 ratio of
tokens. Here every source is counted (`count_tokens`, a cached `Dataset.map`), then whole examples are selected so
that each source's share of the mix's tokens matches the requested share.

What "within tolerance" means: with requested weights w_i, the requested share of source i is s_i = w_i / sum(w);
the achieved share is a_i = tokens selected from i / tokens in the mix. The mix is within tolerance when
|a_i - s_i| <= tolerance * s_i for every source (tolerance 0.01 by default, i.e. within 1 % of the share).

Selection, for sources with eligible token totals T_i: the largest total the sources can fill at the ratio is
C = min_i T_i / s_i (the source reaching the minimum is the binding one and is used whole). The mix aims at
X = C, or at `total_tokens` when given (an error naming every short source and its shortfall when X > C, or C with a
warning when `allow_partial=True`). Each other source is shuffled with a generator seeded from (seed, source name)
and taken in that order while its running total stays <= s_i * X; the examples after the first that overshoots are
scanned in the same order and each one that still fits is taken (first fit); then, if it brings the total closer to
the target, one remaining example is added or swapped for a taken one (the single change that helps most). The
achieved figures are reported exactly.

Output schema (uniform over sources): `text` (string), `num_tokens` (int64, tokens of the text counted with
`add_special_tokens=False`), `source` (string, the source name), `source_index` (int64, row index in the dataset
passed for that source), plus the `keep_columns` you ask for. Every other column is dropped (listed in the report,
per source, as `dropped_columns`). Rows are shuffled deterministically with `Dataset.shuffle(seed=seed)`, so the result
carries an indices mapping; call `.flatten_indices()` for contiguous storage.

Nothing is dropped silently: per source the report gives the rows excluded and why (a status column such as
`format_status` other than "ok", a null text, an empty or whitespace-only text, a text of zero tokens), the rows
selected and the eligible rows left unused; `rows_total == rows_selected + rows_unused + sum(rows_excluded)`.

IterableDataset: `prepare_source`, `GeneralInstructionFormatter`, `TokenCounter` and `count_tokens` work on streams
(lazy `IterableDataset.map`). Mixing needs every source's token total before it can choose examples, so `mix*`
accept only map-style `Dataset`s and raise a TypeError for an `IterableDataset` saying how to materialise it.

Example:
    >>> from datasets import Dataset
    >>> augmented = Dataset.from_dict({"text": templified_texts})  # doctest: +SKIP
    >>> orca = Dataset.from_dict({"id": ids, "system_prompt": sp, "question": qs, "response": rs})  # doctest: +SKIP
    >>> llama3 = TargetFormat("<|begin_of_text|>", "<|end_of_text|>")
    >>> general = prepare_source(orca, kind="general_instructions", text_column="text", target_format=llama3,
    ...                          name="general")  # doctest: +SKIP
    >>> config = MixConfig(weights={"augmented": 1, "general": 1}, tokenizer="meta-llama/Meta-Llama-3-8B")
    >>> mixed, report = mix({"augmented": augmented, "general": general}, config)  # doctest: +SKIP
    >>> report.to_dict()["achieved_ratio"]  # doctest: +SKIP
    {'augmented': 1.0, 'general': 0.9987}
"""

from __future__ import annotations

import logging
import math
import typing
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hf_ipt.columns import (
    FORMAT_EMPTY_QUESTION,
    FORMAT_EMPTY_RESPONSE,
    FORMAT_ERROR,
    FORMAT_INVALID_QUESTION,
    FORMAT_INVALID_RESPONSE,
    FORMAT_MISSING_QUESTION,
    FORMAT_MISSING_RESPONSE,
    FORMAT_OK,
    FORMAT_STATUS,
    FORMAT_STATUSES,
    NUM_TOKENS,
    SOURCE,
    SOURCE_INDEX,
    TEXT,
    check_input_columns,
)
from hf_ipt.formatting import NO_FORMAT, TargetFormat
from hf_ipt.tokenization import FastEncoder, invalid_unicode_at, load_tokenizer, tokenizer_name
from hf_ipt.validation import check_fields

logger = logging.getLogger(__name__)

# the mix's columns and the formatter's statuses are part of the column contract (hf_ipt.columns)
# reasons a row is excluded from mixing (besides "<status column>=<value>")
EXCLUDED_NULL_TEXT = "null_text"
EXCLUDED_EMPTY_TEXT = "empty_text"  # "" or whitespace only
EXCLUDED_NO_TOKENS = "no_tokens"  # non-blank text the tokenizer turns into zero tokens

_TEXT_TYPES = (pa.string(), pa.large_string())


class MixWarning(UserWarning):
    """The mix was returned although it is not what was asked for (allow_partial=True); the message says what it is.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:  # doctest: +SKIP
        ...     mixed, report = mix(sources, MixConfig(weights=weights, tokenizer=tok, allow_partial=True))
        >>> report.partial == any(w.category is MixWarning for w in caught)  # doctest: +SKIP
        True
    """


class InsufficientTokensError(ValueError):
    """Some sources hold too few eligible tokens for the requested mix.

    `shortfalls` maps each short source to the tokens it lacks; `achievable_total_tokens` is the largest mix the
    sources can fill at the requested ratio.

    Example:
        >>> err = InsufficientTokensError("raw lacks 120 tokens", shortfalls={"raw": 120}, achievable_total_tokens=880)
        >>> err.shortfalls, err.achievable_total_tokens
        ({'raw': 120}, 880)
    """

    def __init__(self, message: str, shortfalls: dict[str, int], achievable_total_tokens: int):
        super().__init__(message)
        self.shortfalls = shortfalls
        self.achievable_total_tokens = achievable_total_tokens


class FormatMismatchError(ValueError):
    """The sources of a mix are formatted differently (some texts carry the target BOS/EOS, others not); the message
    names them and how to format them alike (`check_formats_agree`).

    Example:
        >>> raise FormatMismatchError("the sources of the mix are formatted differently: ...")  # doctest: +SKIP
    """


class RatioToleranceError(ValueError):
    """Whole examples could not match the requested shares within the tolerance (examples too long for the mix).

    Example:
        >>> try:  # doctest: +SKIP
        ...     mixed, report = mix(sources, MixConfig(weights=weights, tokenizer=tok, tolerance=0.001))
        ... except RatioToleranceError:
        ...     mixed, report = mix(sources, MixConfig(weights=weights, tokenizer=tok, tolerance=0.05))
    """


# ----------------------------------------------------------------------------------------------------------------
# General instructions (OpenOrca schema) -> text
# ----------------------------------------------------------------------------------------------------------------


# role -> (status when null, when not a string, when blank)
_FIELD_STATUSES = {
    "question": (FORMAT_MISSING_QUESTION, FORMAT_INVALID_QUESTION, FORMAT_EMPTY_QUESTION),
    "response": (FORMAT_MISSING_RESPONSE, FORMAT_INVALID_RESPONSE, FORMAT_EMPTY_RESPONSE),
}


def _field_problem(value: Any, role: str, column: str) -> tuple[str, str] | None:
    """(status, error) when one field of a general instruction cannot be used, None when it can."""
    missing, invalid, empty = _FIELD_STATUSES[role]
    if value is None:
        return missing, f"column {column!r} is null"
    if not isinstance(value, str):
        return invalid, f"column {column!r} holds a {type(value).__name__}, not a string: {value!r:.80}"
    if not value.strip():
        return empty, f"column {column!r} is empty or whitespace only"
    return None


@dataclass(frozen=True)
class GeneralInstructionFormatter:
    """Batched map function: OpenOrca-style rows -> `text = question + " " + response`, the system prompt dropped.

    Columns read: `question_column`, `response_column` (the system prompt and id are not read; they stay in the row
    and the mix drops them). Columns written: `text_column` (the text, wrapped with `target_format`; "" for a bad row),
    `format_status` ("ok" or one of FORMAT_STATUSES) and `format_error` ("" or what is wrong). Input columns are kept,
    one row out per row in, so it works with `Dataset.map`, `IterableDataset.map` and Ray Data `map_batches`.
    The question and response are used as they are (not stripped), exactly as the reference writes them.

    Example:
        >>> fmt = GeneralInstructionFormatter(target_format=TargetFormat("<s>", "</s>"))
        >>> out = fmt({"system_prompt": ["Be brief."], "question": ["2+2?"], "response": ["4"]})
        >>> out["text"], out["format_status"]
        (['<s>2+2? 4</s>'], ['ok'])
        >>> fmt({"question": [""], "response": ["4"]})["format_status"]
        ['empty_question']
    """

    question_column: str = field(
        default="question", metadata={"help": "Column holding the instruction/question.", "nonempty": True}
    )
    response_column: str = field(default="response", metadata={"help": "Column holding the answer.", "nonempty": True})
    text_column: str = field(
        default=TEXT, metadata={"help": "Column to write the formatted text to.", "nonempty": True}
    )
    target_format: TargetFormat = field(
        default=NO_FORMAT,
        metadata={
            "help": "BOS/EOS of the model to be trained, written around each text; use the same as templify so both "
            "halves of the mix are formatted alike. Tokenize the result with add_special_tokens=False."
        },
    )

    def __post_init__(self) -> None:
        check_fields(self, "GeneralInstructionFormatter")
        if self.question_column == self.response_column:
            raise ValueError(
                f"GeneralInstructionFormatter.question_column and response_column are both {self.question_column!r}; "
                "they must name two different columns"
            )
        if self.text_column in (self.question_column, self.response_column, FORMAT_STATUS, FORMAT_ERROR):
            raise ValueError(
                f"GeneralInstructionFormatter.text_column {self.text_column!r} would overwrite an input column or a "
                f"status column; choose another name (default {TEXT!r})"
            )
        if not isinstance(self.target_format, TargetFormat):
            raise ValueError(
                "GeneralInstructionFormatter.target_format must be a hf_ipt.TargetFormat (e.g. "
                f"TargetFormat.from_tokenizer(tokenizer)), got {type(self.target_format).__name__}"
            )

    def check_columns(self, column_names: Sequence[str]) -> None:
        """Raise a ValueError naming a missing question/response column, or an input column this step would
        overwrite (`text_column`, `format_status`, `format_error`) and how to rename it."""
        for column, role in ((self.question_column, "question"), (self.response_column, "response")):
            if column not in column_names:
                raise ValueError(
                    f"general instructions need a {role} column {column!r}, but the batch has columns "
                    f"{sorted(column_names)}; set {role}_column= to the column that holds the {role}"
                )
        check_input_columns(
            column_names,
            [self.text_column, FORMAT_STATUS, FORMAT_ERROR],
            step="formatting general instructions",
            reads=[self.question_column, self.response_column],
        )

    def output_features(self, features: Any) -> Any:
        """The `datasets.Features` of the output for input `features`: the input's plus the three written columns."""
        from datasets import Features, Value

        written = {name: Value("string") for name in (self.text_column, FORMAT_STATUS, FORMAT_ERROR)}
        return Features({**features, **written})

    def __call__(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        self.check_columns(list(batch))
        texts: list[str] = []
        statuses: list[str] = []
        errors: list[str] = []
        for question, response in zip(batch[self.question_column], batch[self.response_column], strict=True):
            problem = _field_problem(question, "question", self.question_column) or _field_problem(
                response, "response", self.response_column
            )
            if problem is None:
                texts.append(self.target_format.wrap(question + " " + response))
                statuses.append(FORMAT_OK)
                errors.append("")
            else:
                texts.append("")
                statuses.append(problem[0])
                errors.append(problem[1])
        return {**batch, self.text_column: texts, FORMAT_STATUS: statuses, FORMAT_ERROR: errors}


def format_general_instructions(
    batch: Mapping[str, Sequence[Any]],
    *,
    question_column: str = "question",
    response_column: str = "response",
    text_column: str = TEXT,
    target_format: TargetFormat = NO_FORMAT,
) -> dict[str, list[Any]]:
    """Function form of `GeneralInstructionFormatter`, for `Dataset.map(..., batched=True, fn_kwargs={...})`.

    Example:
        >>> format_general_instructions({"question": ["Why?"], "response": ["Because."]})["text"]
        ['Why? Because.']
    """
    formatter = GeneralInstructionFormatter(question_column, response_column, text_column, target_format)
    return formatter(batch)


# ----------------------------------------------------------------------------------------------------------------
# Token counting
# ----------------------------------------------------------------------------------------------------------------


class TokenCounter:
    """Batched map function adding each row's token count under the target model's tokenizer.

    Counts are `len(tokenizer(text, add_special_tokens=False)["input_ids"])`: texts wrapped with the target BOS/EOS
    strings count those once, as they will be trained. With a fast tokenizer whose Rust backend gives the same ids as
    its call (checked on probe texts at construction) the backend is called directly (`encode_batch_fast`, no
    offsets), which makes counting as fast as the bare tokenizer; otherwise the tokenizer's call. A null text counts 0.

    Columns read: `text_column`. Written: `count_column` (int). Input columns are kept. A text that is not valid
    Unicode (a lone surrogate) is a ValueError naming the column and the row.

    Example:
        >>> counter = TokenCounter("path/to/target-tokenizer")  # doctest: +SKIP
        >>> counter({"text": ["Hello world", None]})["num_tokens"]  # doctest: +SKIP
        [2, 0]
    """

    def __init__(self, tokenizer: Any, text_column: str = TEXT, count_column: str = NUM_TOKENS):
        for name, value in (("text_column", text_column), ("count_column", count_column)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"TokenCounter.{name} must be a non-empty column name, got {value!r}")
        if text_column == count_column:
            raise ValueError(f"TokenCounter.count_column {count_column!r} would overwrite the text column")
        self.tokenizer = load_tokenizer(tokenizer)
        self.text_column = text_column
        self.count_column = count_column
        # decided once here, not lazily: the instance's state is its `datasets` fingerprint and must not change
        self.use_backend = FastEncoder(self.tokenizer).uses_backend

    def count(self, texts: Sequence[str | None]) -> list[int]:
        """Token counts of `texts` (a list, a NumPy array or an Arrow array of strings; None counts 0)."""
        if hasattr(texts, "to_pylist"):
            texts = texts.to_pylist()
        elif not isinstance(texts, list):
            texts = list(texts)
        if any(not isinstance(t, str) for t in texts):
            bad = next((t for t in texts if t is not None and not isinstance(t, str)), None)
            if bad is not None:
                raise TypeError(
                    f"column {self.text_column!r} must hold strings to count tokens, found a {type(bad).__name__}: "
                    f"{bad!r:.80}; set text_column= to the column holding the text"
                )
            texts = ["" if t is None else t for t in texts]
        for row, text in enumerate(texts):
            at = invalid_unicode_at(text)
            if at is not None:
                raise ValueError(
                    f"column {self.text_column!r} holds text that is not valid Unicode at row {row} of the batch (a "
                    f"lone surrogate at character {at}), which no tokenizer accepts; repair or drop that row first"
                )
        # without the backend (a slow tokenizer, or one whose wrapper pre-processes) the tokenizer's own call counts
        return FastEncoder(self.tokenizer, uses_backend=self.use_backend).lengths(texts)

    def count_batch(self, texts: Sequence[str | None]) -> dict[str, list[int]]:
        """Map function for `Dataset.map(..., input_columns=[text_column])`: returns only the count column, so
        `datasets` re-writes the other columns from Arrow without converting them to Python."""
        return {self.count_column: self.count(texts)}

    def __call__(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        if self.text_column not in batch:
            raise ValueError(
                f"cannot count tokens: no column {self.text_column!r} in the batch (columns: {sorted(batch.keys())}); "
                "set text_column= to the column holding the text"
            )
        return {**batch, self.count_column: self.count(batch[self.text_column])}

    def __repr__(self) -> str:
        return f"TokenCounter({tokenizer_name(self.tokenizer)!r}, {self.text_column!r}, {self.count_column!r})"


def empty_dataset(features: Any) -> Any:
    """A 0-row `Dataset` with `features`: what a step returns over 0 rows, since `Dataset.map` returns an empty dataset
    unchanged (without the columns the function would have written).

    Example:
        >>> from datasets import Features, Value
        >>> empty_dataset(Features({"text": Value("string"), "num_tokens": Value("int64")})).column_names
        ['text', 'num_tokens']
    """
    from datasets import Dataset

    return Dataset.from_dict({name: [] for name in features}, features=features)


def _check_text_feature(dataset: Any, text_column: str, what: str) -> None:
    features = getattr(dataset, "features", None)
    if features is None:  # a stream with unknown features: checked row by row by TokenCounter
        return
    if text_column not in features:
        raise ValueError(
            f"{what} has no text column {text_column!r} (columns: {list(features)}); set the text column to the "
            "column holding the text"
        )
    feature = features[text_column]
    # a null-typed column (e.g. `Dataset.from_dict({"text": []})`, 0 rows) holds no text: counted 0, excluded
    if getattr(feature, "pa_type", None) not in (*_TEXT_TYPES, pa.null()):
        raise ValueError(
            f"column {text_column!r} of {what} must hold strings, but its feature is {feature}; point the text column "
            "at a string column"
        )


def count_tokens(
    dataset: Any,
    tokenizer: Any,
    *,
    text_column: str = TEXT,
    count_column: str = NUM_TOKENS,
    num_proc: int | None = None,
    batch_size: int = 1000,
    load_from_cache_file: bool | None = None,
    desc: str | None = None,
) -> Any:
    """Add `count_column` with each row's token count (`add_special_tokens=False`) to a Dataset or IterableDataset.

    A `Dataset` is counted with a batched `Dataset.map` (parallel with `num_proc`, cached through the usual
    fingerprinting: counting the same data with the same tokenizer again reads the cache); an `IterableDataset`
    lazily. An existing `count_column` is replaced (a recount). Over 0 rows the result still has `count_column`.

    Example:
        >>> counted = count_tokens(Dataset.from_dict({"text": ["a b c"]}), "path/to/tokenizer")  # doctest: +SKIP
        >>> counted[0]["num_tokens"]  # doctest: +SKIP
        3
    """
    from datasets import Dataset, Features, IterableDataset, Value

    counter = tokenizer if isinstance(tokenizer, TokenCounter) else TokenCounter(tokenizer, text_column, count_column)
    if isinstance(dataset, IterableDataset):
        _check_text_feature(dataset, counter.text_column, "the dataset")
        return dataset.map(
            counter.count_batch, batched=True, batch_size=batch_size, input_columns=[counter.text_column]
        )
    if not isinstance(dataset, Dataset):
        raise TypeError(
            f"count_tokens needs a datasets.Dataset or IterableDataset, got {type(dataset).__name__}"
            + ("; pick a split first, e.g. dataset['train']" if isinstance(dataset, Mapping) else "")
        )
    _check_text_feature(dataset, counter.text_column, "the dataset")
    features = Features({**dataset.features, counter.count_column: Value("int64")})
    if dataset.num_rows == 0:
        return empty_dataset(features)
    return dataset.map(
        counter.count_batch,
        batched=True,
        batch_size=batch_size,
        input_columns=[counter.text_column],
        num_proc=num_proc,
        features=features,
        load_from_cache_file=load_from_cache_file,
        desc=desc or f"Counting tokens ({tokenizer_name(counter.tokenizer)})",
    )


# ----------------------------------------------------------------------------------------------------------------
# Preparing a source: every text formatted like the augmented ones before the mix
# ----------------------------------------------------------------------------------------------------------------

SourceKind = Literal["general_instructions", "raw"]  # what a corpus other than the augmented one is
SOURCE_KINDS: tuple[str, ...] = typing.get_args(SourceKind)
GENERAL_INSTRUCTIONS, RAW = SOURCE_KINDS  # OpenOrca-style question/response rows; plain texts, mixed unchanged


class TextWrapper:
    """Batched map function writing the target BOS/EOS around every non-blank text of `text_column`.

    Blank texts ("" or whitespace only) and non-strings (None) stay as they are, so the mix excludes and counts them
    instead of mixing a text made of BOS/EOS alone. Column read and written: `text_column`; one row out per row in.
    Call it on a whole batch (`Dataset.map(wrapper, batched=True)`), or pass `wrapper.wrap_texts` with
    `input_columns=[text_column]` so that only the text column is converted to Python.

    Example:
        >>> TextWrapper("text", TargetFormat("<s>", "</s>"))({"text": ["a", " ", None]})
        {'text': ['<s>a</s>', ' ', None]}
    """

    def __init__(self, text_column: str, target_format: TargetFormat):
        if not isinstance(text_column, str) or not text_column:
            raise ValueError(f"TextWrapper.text_column must be a non-empty column name, got {text_column!r}")
        if not isinstance(target_format, TargetFormat):
            raise ValueError(f"target_format must be a hf_ipt.TargetFormat, got {type(target_format).__name__}")
        self.text_column = text_column
        self.target_format = target_format

    def wrap_texts(self, texts: Sequence[str | None]) -> dict[str, list[Any]]:
        """Map function for `Dataset.map(..., input_columns=[text_column])`: returns only the wrapped column."""
        wrap = self.target_format.wrap
        return {self.text_column: [t if not isinstance(t, str) or not t.strip() else wrap(t) for t in texts]}

    def __call__(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        return self.wrap_texts(batch[self.text_column])


def prepare_source(
    dataset: Any,
    *,
    kind: str,
    text_column: str,
    target_format: TargetFormat,
    question_column: str | None = None,
    response_column: str | None = None,
    name: str = "",
    batch_size: int = 1000,
) -> Any:
    """Format one corpus for the mix, so that its texts look like the augmented ones (same BOS/EOS).

    - `kind="general_instructions"`: OpenOrca-style rows become `"{question} {response}"` wrapped with
      `target_format` (`GeneralInstructionFormatter`), written to `text_column`, with `format_status` /
      `format_error`; a row with a missing or empty question/response gets text "" and is excluded by the mix,
      counted under `format_status=...`. `question_column` / `response_column` default to "question" / "response".
    - `kind="raw"`: the non-blank texts of `text_column` are wrapped with `target_format` (`TextWrapper`); blank
      texts stay blank, so the mix excludes and counts them. With an empty target format the dataset is returned as
      it is. `question_column` / `response_column` are not read.

    A `Dataset` is prepared with a cached `Dataset.map`, an `IterableDataset` lazily (the mix itself needs a
    `Dataset`). `name` names the source in progress bars and errors. Mix the result with `text_columns={name:
    text_column}`.

    Example:
        >>> from datasets import Dataset
        >>> orca = Dataset.from_dict({"system_prompt": ["Be brief."], "question": ["2+2?"], "response": ["4"]})
        >>> prepare_source(orca, kind="general_instructions", text_column="text",
        ...                target_format=TargetFormat("<s>", "</s>"))[:]["text"]
        ['<s>2+2? 4</s>']
        >>> web = Dataset.from_dict({"content": ["Some page.", "  "]})
        >>> prepare_source(web, kind="raw", text_column="content",
        ...                target_format=TargetFormat("<s>", "</s>"))[:]["content"]
        ['<s>Some page.</s>', '  ']
    """
    from datasets import Dataset, IterableDataset

    label = f"source {name!r}" if name else "the source"
    if kind not in SOURCE_KINDS:
        raise ValueError(f"{label}: kind must be one of {list(SOURCE_KINDS)}, got {kind!r}")
    if not isinstance(dataset, Dataset | IterableDataset):
        hint = "; pick a split first, e.g. dataset['train']" if isinstance(dataset, Mapping) else ""
        raise TypeError(f"{label} must be a datasets.Dataset or IterableDataset, got {type(dataset).__name__}{hint}")
    streaming = isinstance(dataset, IterableDataset)
    if kind == GENERAL_INSTRUCTIONS:
        function: Any = GeneralInstructionFormatter(
            question_column or "question", response_column or "response", text_column, target_format
        )
        if dataset.column_names is not None:  # a stream of unknown columns is checked batch by batch
            function.check_columns(dataset.column_names)
        if not streaming and dataset.num_rows == 0:
            return empty_dataset(function.output_features(dataset.features))
        input_columns = None
        desc = f"Formatting general instructions of {label}"
    else:
        function = TextWrapper(text_column, target_format)
        if not (target_format.bos or target_format.eos):
            return dataset
        _check_text_feature(dataset, text_column, label)
        function, input_columns = function.wrap_texts, [text_column]
        desc = f"Wrapping the texts of {label} with the target BOS/EOS"
    if streaming:
        return dataset.map(function, batched=True, batch_size=batch_size, input_columns=input_columns)
    return dataset.with_format(None).map(
        function, batched=True, batch_size=batch_size, input_columns=input_columns, desc=desc
    )


# ----------------------------------------------------------------------------------------------------------------
# Mixing
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class MixConfig:
    """Settings of the mixing step: the sources' weights in tokens, the target tokenizer and how to select.

    Example:
        >>> MixConfig(weights={"augmented": 1, "general": 1}, tokenizer="meta-llama/Meta-Llama-3-8B").tolerance
        0.01
    """

    weights: dict[str, float] = field(
        metadata={
            "help": "Source name -> weight; the mix's tokens are split in these proportions, e.g. "
            "{augmented: 1, general: 1} for the paper's continual pre-training mix. At least two sources.",
            "gt": 0,
            "finite": True,
            "hint": "leave a source out instead of giving it weight 0",
        }
    )
    tokenizer: Any = field(
        metadata={"help": "Tokenizer of the model to be trained (id or path, or a tokenizer object): tokens are its."}
    )
    seed: int = field(
        default=0, metadata={"help": "Seed of the example selection and of the final shuffle.", "min": 0}
    )
    text_column: str = field(
        default=TEXT, metadata={"help": "Column holding the text in every source.", "nonempty": True}
    )
    text_columns: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "Per-source text column, overriding text_column for those sources.", "nonempty": True},
    )
    token_count_column: str = field(
        default=NUM_TOKENS,
        metadata={"help": "Column the token counts are written to (and kept in the mix).", "nonempty": True},
    )
    status_columns: list[str] = field(
        default_factory=lambda: [FORMAT_STATUS],
        metadata={
            "help": "Columns that, where a source has them, exclude a row whose value is not 'ok' (counted in the "
            "report), e.g. format_status from GeneralInstructionFormatter."
        },
    )
    keep_columns: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Extra columns to keep in the mix; every source must have them with the same type. All other "
            "columns besides text, the token count, source and source_index are dropped."
        },
    )
    total_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Tokens the mix should hold; null = the largest mix the sources fill at the ratio (the binding "
            "source used whole).",
            "min": 1,
        },
    )
    tolerance: float = field(
        default=0.01,
        metadata={
            "help": "Largest allowed |achieved share - requested share| / requested share, for every source.",
            "gt": 0,
            "lt": 1,
            "hint": "e.g. 0.01 for 1 %",
        },
    )
    allow_partial: bool = field(
        default=False,
        metadata={
            "help": "When total_tokens cannot be filled, or whole examples cannot meet the tolerance: return the "
            "largest achievable mix with a warning instead of raising."
        },
    )
    num_proc: int | None = field(
        default=None, metadata={"help": "Processes for token counting (Dataset.map).", "min": 1}
    )
    batch_size: int = field(
        default=1000, metadata={"help": "Rows per map batch for counting and labelling.", "min": 1}
    )

    def __post_init__(self) -> None:
        check_fields(self, "mix")
        if len(self.weights) < 2:
            raise ValueError(
                "mix.weights must map at least two source names to weights, e.g. {'augmented': 1, 'general': 1}, "
                f"got {self.weights!r}"
            )
        self.weights = dict(self.weights)
        for name in self.weights:
            if not isinstance(name, str) or not name:
                raise ValueError(f"mix.weights: source names must be non-empty strings, got {name!r}")
        if self.tokenizer is None or (isinstance(self.tokenizer, str) and not self.tokenizer):
            raise ValueError("mix.tokenizer must name the tokenizer of the model to be trained (id or path)")
        unknown = sorted(set(self.text_columns) - set(self.weights))
        if unknown:
            raise ValueError(
                f"mix.text_columns names sources {unknown} that are not in mix.weights ({sorted(self.weights)})"
            )
        self.status_columns, self.keep_columns = list(self.status_columns), list(self.keep_columns)
        reserved = {TEXT, self.token_count_column, SOURCE, SOURCE_INDEX}
        if self.token_count_column in (TEXT, SOURCE, SOURCE_INDEX):
            raise ValueError(
                f"mix.token_count_column {self.token_count_column!r} clashes with an output column of the mix "
                f"({TEXT!r}, {SOURCE!r}, {SOURCE_INDEX!r})"
            )
        clashes = sorted(reserved & set(self.keep_columns))
        if clashes:
            raise ValueError(
                f"mix.keep_columns {clashes} are written by the mix itself ({sorted(reserved)}); leave them out"
            )

    def text_column_of(self, source: str) -> str:
        return self.text_columns.get(source, self.text_column)

    def shares(self) -> dict[str, float]:
        """Requested share of the mix's tokens per source (weights normalised to sum 1)."""
        total = float(sum(self.weights.values()))
        return {name: weight / total for name, weight in self.weights.items()}


@dataclass
class SourceMixReport:
    """What one source contributed to a mix, and what it did not.

    Example:
        >>> mixed, report = mix({"augmented": augmented, "raw": raw}, config)  # doctest: +SKIP
        >>> report.sources["raw"].tokens_selected, report.sources["raw"].rows_excluded  # doctest: +SKIP
        (250000, {'empty_text': 3})
    """

    name: str
    text_column: str
    weight: float
    requested_share: float
    achieved_share: float
    target_tokens: float  # tokens the selection aimed at
    tokens_selected: int
    rows_selected: int
    tokens_available: int  # eligible tokens in the source
    rows_total: int
    rows_eligible: int
    rows_unused: int  # eligible but not selected
    rows_excluded: dict[str, int]  # reason -> rows
    used_whole: bool  # every eligible row was selected
    dropped_columns: list[str]


@dataclass
class MixReport:
    """The figures of a mix, for the dataset card: tokens and rows per source, requested vs achieved ratio.

    `requested_ratio` / `achieved_ratio` are token ratios relative to the first source (1:3 reads {a: 1.0, b: 3.0}).

    Example:
        >>> mixed, report = mix({"a": a, "b": b}, MixConfig(weights={"a": 1, "b": 3}, tokenizer=tok))  # doctest: +SKIP
        >>> report.requested_ratio, report.within_tolerance  # doctest: +SKIP
        ({'a': 1.0, 'b': 3.0}, True)
    """

    sources: dict[str, SourceMixReport]
    tokenizer: str
    token_count_column: str
    seed: int
    tolerance: float
    requested_total_tokens: int | None
    total_tokens: int
    total_rows: int
    requested_ratio: dict[str, float]
    achieved_ratio: dict[str, float | None]
    max_share_error: float  # max over sources of |achieved - requested share| / requested share
    within_tolerance: bool
    partial: bool  # a fallback was returned with a MixWarning (allow_partial=True)
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (dicts, lists, str, int, float, bool, None), JSON/YAML-serialisable, for the dataset card."""
        return asdict(self)


class MixResult(NamedTuple):
    """The mixed dataset and its report; unpacks as `mixed, report = mix(...)`.

    Example:
        >>> result = mix({"augmented": augmented, "raw": raw}, config)  # doctest: +SKIP
        >>> result.dataset.column_names[:2], result.report.total_tokens  # doctest: +SKIP
        (['text', 'num_tokens'], 1000000)
    """

    dataset: Any
    report: MixReport


class _SourceCounts(NamedTuple):
    eligible: np.ndarray  # indices (into the source) of rows that may be mixed
    counts: np.ndarray  # token count of each eligible row
    rows_total: int
    excluded: dict[str, int]


def _arrow_column(dataset: Any, column: str) -> pa.ChunkedArray | pa.Array:
    """A column as Arrow, honouring an indices mapping, without converting to Python."""
    return dataset.with_format("arrow", columns=[column])[:].column(column)


def _classify_rows(dataset: Any, name: str, text_column: str, config: MixConfig) -> _SourceCounts:
    """Eligible rows and their counts; every other row is counted under the first reason that excludes it."""
    rows_total = len(dataset)
    excluded_mask = np.zeros(rows_total, dtype=bool)
    excluded: dict[str, int] = {}

    def exclude(mask: np.ndarray, reason: str) -> None:
        new = mask & ~excluded_mask
        if new.any():
            excluded[reason] = excluded.get(reason, 0) + int(new.sum())
            excluded_mask[:] |= new

    for status_column in config.status_columns:
        if status_column not in dataset.column_names:
            continue
        statuses = _arrow_column(dataset, status_column)
        if statuses.type not in _TEXT_TYPES:
            raise ValueError(
                f"status column {status_column!r} of source {name!r} must hold strings ('ok' or a reason), got "
                f"{statuses.type}; remove it from mix.status_columns"
            )
        not_ok = pc.fill_null(pc.not_equal(statuses, FORMAT_OK), True)
        for value in pc.unique(statuses.filter(not_ok)).to_pylist():
            matches = pc.is_null(statuses) if value is None else pc.fill_null(pc.equal(statuses, value), False)
            exclude(np.asarray(matches.to_numpy(zero_copy_only=False), dtype=bool), f"{status_column}={value}")

    texts = _arrow_column(dataset, text_column)
    if texts.type == pa.null():  # an all-null (or 0-row) column: every row is a null text
        texts = texts.cast(pa.string())
    null_mask = np.asarray(texts.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    exclude(null_mask, EXCLUDED_NULL_TEXT)
    blank = pc.or_(pc.equal(pc.utf8_length(texts), 0), pc.utf8_is_space(texts))
    exclude(np.asarray(pc.fill_null(blank, False).to_numpy(zero_copy_only=False), dtype=bool), EXCLUDED_EMPTY_TEXT)
    counts = np.asarray(
        _arrow_column(dataset, config.token_count_column).to_numpy(zero_copy_only=False), dtype=np.int64
    )
    exclude(counts <= 0, EXCLUDED_NO_TOKENS)
    eligible = np.flatnonzero(~excluded_mask)
    return _SourceCounts(eligible, counts[eligible], rows_total, excluded)


def _source_rng(seed: int, name: str) -> np.random.Generator:
    # crc32 of the name, not hash(): stable across processes (PYTHONHASHSEED)
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode("utf-8"))]))


def _select_for_target(counts: np.ndarray, target: float, rng: np.random.Generator) -> np.ndarray:
    """Positions (into `counts`) of whole examples whose token total is as close to `target` as a seeded first-fit
    pass allows: the shuffled prefix that fits, then every later example (same order) that still fits, then the single
    addition or swap of one leftover example that brings the total closest to the target."""
    order = rng.permutation(len(counts))
    running = np.cumsum(counts[order])
    taken = int(np.searchsorted(running, target, side="right"))
    chosen = list(order[:taken])
    deficit = target - (float(running[taken - 1]) if taken else 0.0)
    # First fit over the rest: a prefix alone can stop short by up to one long example (the next one in the order
    # overshoots), which a source of long texts turns into an error of several percent.
    smallest = float(counts.min()) if len(counts) else 0.0
    skipped: list[int] = []
    for cursor in range(taken, len(order)):
        if deficit < smallest:
            skipped.extend(order[cursor:].tolist())
            break
        position = int(order[cursor])
        if counts[position] <= deficit:
            chosen.append(position)
            deficit -= float(counts[position])
        else:
            skipped.append(position)
    if deficit > 0 and skipped:
        chosen = _close_the_gap(counts, chosen, skipped, deficit)
    return np.sort(np.asarray(chosen, dtype=np.int64))


def _close_the_gap(counts: np.ndarray, chosen: list[int], leftover: list[int], deficit: float) -> list[int]:
    """The best of: keep `chosen`, add one leftover example, or swap one chosen example for a leftover one — whichever
    leaves the token total closest to the target (`deficit` = target - total of `chosen`, >= 0)."""
    rest = counts[leftover].astype(np.float64)
    order = np.argsort(rest, kind="stable")
    ranked = rest[order]

    def nearest(wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # index (into `ranked`) of the leftover count nearest each wanted value, and the distance to it
        right = np.clip(np.searchsorted(ranked, wanted), 0, len(ranked) - 1)
        left = np.clip(right - 1, 0, len(ranked) - 1)
        pick = np.where(np.abs(ranked[left] - wanted) <= np.abs(ranked[right] - wanted), left, right)
        return pick, np.abs(ranked[pick] - wanted)

    best_error, best = deficit, list(chosen)
    add_pick, add_error = nearest(np.asarray([deficit]))
    if add_error[0] < best_error:
        best_error, best = float(add_error[0]), [*chosen, leftover[int(order[add_pick[0]])]]
    if chosen:
        given = counts[chosen].astype(np.float64)
        swap_pick, swap_error = nearest(deficit + given)
        i = int(np.argmin(swap_error))
        if swap_error[i] < best_error:
            best = [p for k, p in enumerate(chosen) if k != i] + [leftover[int(order[swap_pick[i]])]]
    return best


class _MixRowLabeller:
    """Arrow-batch map function writing the uniform mix schema for the selected rows of one source."""

    def __init__(self, name: str, text_column: str, count_column: str, keep_columns: list[str], indices: np.ndarray):
        self.name = name
        self.text_column = text_column
        self.count_column = count_column
        self.keep_columns = keep_columns
        self.indices = indices  # source index of each selected row, by position in the selection

    def __call__(self, table: pa.Table, positions: list[int]) -> pa.Table:
        columns = {
            TEXT: pc.cast(table.column(self.text_column), pa.string()),
            self.count_column: pc.cast(table.column(self.count_column), pa.int64()),
            SOURCE: pa.array([self.name] * table.num_rows, type=pa.string()),
            SOURCE_INDEX: pa.array(self.indices[np.asarray(positions, dtype=np.int64)], type=pa.int64()),
        }
        for column in self.keep_columns:
            columns[column] = table.column(column)
        return pa.table(columns)


def _validate_sources(datasets: Mapping[str, Any], config: MixConfig) -> None:
    from datasets import Dataset, IterableDataset

    if not isinstance(datasets, Mapping):
        raise TypeError(f"mix needs a mapping of source name -> Dataset, got {type(datasets).__name__}")
    if set(datasets) != set(config.weights):
        raise ValueError(
            f"the datasets given ({sorted(datasets)}) and the sources weighted in mix.weights "
            f"({sorted(config.weights)}) must be the same names"
        )
    for name, dataset in datasets.items():
        if isinstance(dataset, IterableDataset):
            raise TypeError(
                f"source {name!r} is an IterableDataset, but mixing by token ratio needs every source's token total "
                "before choosing examples, so it works on map-style Datasets only. Materialise the stream (load it "
                "without streaming=True, or `Dataset.from_generator(lambda: (yield from stream.take(n)), "
                "features=stream.features)` for a bounded part); formatting and count_tokens do work on streams."
            )
        if not isinstance(dataset, Dataset):
            hint = "; pick a split first, e.g. dataset['train']" if isinstance(dataset, Mapping) else ""
            raise TypeError(f"source {name!r} must be a datasets.Dataset, got {type(dataset).__name__}{hint}")
        _check_text_feature(dataset, config.text_column_of(name), f"source {name!r}")
        for column in config.keep_columns:
            if column not in dataset.column_names:
                raise ValueError(
                    f"mix.keep_columns asks for {column!r}, which source {name!r} does not have (columns: "
                    f"{dataset.column_names}); add it to that source or leave it out of keep_columns"
                )
    first_name, first = next(iter(datasets.items()))
    for column in config.keep_columns:
        for name, dataset in datasets.items():
            if dataset.features[column] != first.features[column]:
                raise ValueError(
                    f"kept column {column!r} has type {dataset.features[column]} in source {name!r} but "
                    f"{first.features[column]} in {first_name!r}; cast one (Dataset.cast_column) or drop it from "
                    "keep_columns"
                )


def check_formats_agree(datasets: Mapping[str, Any], config: MixConfig, target: TargetFormat) -> None:
    """Refuse a mix whose sources are formatted differently: most texts of some sources carry `target`'s BOS/EOS
    (the tokenizer's) while most texts of others do not. Such a corpus would train on two text formats, and its
    token ratio would be counted on unequal wrappings. Reads each source's text column as Arrow (no copy).

    Example:
        >>> from datasets import Dataset
        >>> check_formats_agree({"a": Dataset.from_dict({"text": ["<s>x</s>"]}), "b": Dataset.from_dict(
        ...     {"text": ["y"]})}, MixConfig(weights={"a": 1, "b": 1}, tokenizer="t"), TargetFormat("<s>", "</s>"))
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        hf_ipt.mixing.FormatMismatchError: the sources of the mix are formatted differently: most texts of 'a' (1 of \
1) carry the BOS/EOS of mix.tokenizer ('<s>' ... '</s>'), those of 'b' (0 of 1) do not. Format every source alike: ...
    """
    if not (target.bos or target.eos):
        return
    counts = {}
    for name, dataset in datasets.items():
        texts = _arrow_column(dataset, config.text_column_of(name))
        if pa.types.is_null(texts.type):  # a source with no text at all (e.g. empty): nothing formatted
            continue
        present = pc.fill_null(pc.greater(pc.utf8_length(texts), 0), False)
        wrapped = present
        if target.bos:
            wrapped = pc.and_(wrapped, pc.fill_null(pc.starts_with(texts, target.bos), False))
        if target.eos:
            wrapped = pc.and_(wrapped, pc.fill_null(pc.ends_with(texts, target.eos), False))
        counts[name] = (int(pc.sum(wrapped).as_py() or 0), int(pc.sum(present).as_py() or 0))
    carrying = [name for name, (wrapped, texts) in counts.items() if texts and wrapped * 2 > texts]
    bare = [name for name, (wrapped, texts) in counts.items() if texts and wrapped * 2 <= texts]
    if not carrying or not bare:
        return

    def shown(names: list[str]) -> str:
        return ", ".join(f"{name!r} ({counts[name][0]:,} of {counts[name][1]:,})" for name in names)

    raise FormatMismatchError(
        f"the sources of the mix are formatted differently: most texts of {shown(carrying)} carry the BOS/EOS of "
        f"mix.tokenizer ({target.bos!r} ... {target.eos!r}), those of {shown(bare)} do not. Format every source "
        f"alike: prepare_source(dataset, kind=..., text_column=..., target_format=TargetFormat({target.bos!r}, "
        f"{target.eos!r})) wraps a source's texts as templify's target_tokenizer wraps the augmented ones (or "
        "leave every source bare)"
    )


def _fmt_tokens(value: float) -> str:
    return f"{value:,.0f}"


def mix(datasets: Mapping[str, Any], config: MixConfig) -> MixResult:
    """Mix datasets so that each source's share of the tokens matches `config.weights` within `config.tolerance`.

    Counts tokens (cached `Dataset.map`), excludes unusable rows (counted in the report), selects whole examples as
    described in the module docstring, writes the uniform schema (`text`, token count, `source`, `source_index`,
    keep_columns) and shuffles deterministically with `config.seed`.

    Raises InsufficientTokensError (naming each short source and its shortfall) when `total_tokens` cannot be filled
    or a source has no usable tokens, and RatioToleranceError when whole examples cannot meet the tolerance, unless
    `allow_partial=True` (then a MixWarning says what was achieved).

    Example:
        >>> config = MixConfig(weights={"augmented": 3, "raw": 1}, tokenizer=tokenizer, seed=42)  # doctest: +SKIP
        >>> mixed, report = mix({"augmented": augmented, "raw": raw}, config)  # doctest: +SKIP
    """
    from datasets import Features, Value, concatenate_datasets

    if not isinstance(config, MixConfig):
        raise TypeError(f"mix needs a MixConfig, got {type(config).__name__}")
    _validate_sources(datasets, config)
    tokenizer = load_tokenizer(config.tokenizer, key="mix.tokenizer")
    check_formats_agree(datasets, config, TargetFormat(tokenizer.bos_token or "", tokenizer.eos_token or ""))
    shares = config.shares()
    names = list(config.weights)  # the report and the ratios follow the order of the weights

    counted: dict[str, Any] = {}
    per_source: dict[str, _SourceCounts] = {}
    for name in names:
        text_column = config.text_column_of(name)
        counter = TokenCounter(tokenizer, text_column, config.token_count_column)
        counted[name] = count_tokens(
            datasets[name].with_format(None),
            counter,
            num_proc=config.num_proc,
            batch_size=config.batch_size,
            desc=f"Counting tokens of {name!r}",
        )
        per_source[name] = _classify_rows(counted[name], name, text_column, config)

    available = {name: int(per_source[name].counts.sum()) for name in names}
    empty = [name for name in names if available[name] == 0]
    if empty:
        details = "; ".join(
            f"{name!r}: {per_source[name].rows_total} rows, excluded {per_source[name].excluded or 'none'}"
            for name in empty
        )
        raise InsufficientTokensError(
            f"no usable tokens in source(s) {empty} ({details}); every source needs at least one row with non-empty "
            "text and an 'ok' status",
            shortfalls={name: math.ceil(shares[name] * (config.total_tokens or 1)) for name in empty},
            achievable_total_tokens=0,
        )

    capacity = min(available[name] / shares[name] for name in names)
    notes: list[str] = []
    partial = False
    target_total = capacity
    if config.total_tokens is not None:
        target_total = float(config.total_tokens)
        shortfalls = {
            name: math.ceil(shares[name] * target_total - available[name])
            for name in names
            if shares[name] * target_total > available[name]
        }
        if shortfalls:
            details = "; ".join(
                f"source {name!r} needs {_fmt_tokens(shares[name] * target_total)} tokens but holds "
                f"{_fmt_tokens(available[name])} usable ones: short by {_fmt_tokens(short)}"
                for name, short in shortfalls.items()
            )
            message = (
                f"not enough tokens for a mix of {_fmt_tokens(target_total)} tokens at "
                f"{_ratio_text(config.weights)}: {details}. The largest mix these sources fill at this ratio holds "
                f"{_fmt_tokens(capacity)} tokens"
            )
            if not config.allow_partial:
                raise InsufficientTokensError(
                    message + "; lower mix.total_tokens, add data, or pass allow_partial=True to get that mix",
                    shortfalls=shortfalls,
                    achievable_total_tokens=int(capacity),
                )
            partial = True
            notes.append(message + "; returning that mix (allow_partial=True)")
            target_total = capacity

    selected: dict[str, np.ndarray] = {}
    targets: dict[str, float] = {}
    for name in names:
        source = per_source[name]
        targets[name] = shares[name] * target_total
        # float noise must not cost the binding source its last example
        if targets[name] >= available[name] * (1 - 1e-12):
            selected[name] = source.eligible
        else:
            positions = _select_for_target(source.counts, targets[name], _source_rng(config.seed, name))
            selected[name] = source.eligible[positions]

    tokens = {name: int(_tokens_of(per_source[name], selected[name])) for name in names}
    total = sum(tokens.values())
    if total == 0:
        shortest = min(int(per_source[name].counts.min()) for name in names)
        raise RatioToleranceError(
            f"a mix of {_fmt_tokens(target_total)} tokens is smaller than any whole example (the shortest holds "
            f"{shortest:,} tokens), so nothing could be selected; raise mix.total_tokens or leave it null"
        )
    achieved_shares = {name: tokens[name] / total for name in names}
    errors = {name: abs(achieved_shares[name] - shares[name]) / shares[name] for name in names}
    max_error = max(errors.values())
    within = max_error <= config.tolerance
    if not within:
        worst = max(errors, key=errors.get)
        longest = int(per_source[worst].counts.max())
        message = (
            f"whole examples cannot match {_ratio_text(config.weights)} within {config.tolerance:.2%}: source "
            f"{worst!r} got {achieved_shares[worst]:.4%} of the tokens instead of {shares[worst]:.4%} (off by "
            f"{errors[worst]:.2%}); its examples are long compared with its target of {_fmt_tokens(targets[worst])} "
            f"tokens (longest {longest:,} tokens)"
        )
        if not config.allow_partial:
            raise RatioToleranceError(
                message + "; mix more tokens, split long texts, or raise mix.tolerance (allow_partial=True returns "
                "this mix with a warning)"
            )
        partial = True
        notes.append(message + "; returning it anyway (allow_partial=True)")
    for note in notes:
        warnings.warn(note, MixWarning, stacklevel=2)

    out_features = {TEXT: Value("string"), config.token_count_column: Value("int64")}
    out_features.update({SOURCE: Value("string"), SOURCE_INDEX: Value("int64")})
    parts = []
    for name in names:
        indices = selected[name]
        part = counted[name].select(indices)
        features = Features({**out_features, **{column: part.features[column] for column in config.keep_columns}})
        labeller = _MixRowLabeller(
            name, config.text_column_of(name), config.token_count_column, config.keep_columns, indices
        )
        part = part.with_format("arrow").map(
            labeller,
            batched=True,
            batch_size=config.batch_size,
            with_indices=True,
            remove_columns=part.column_names,
            features=features,
            desc=f"Selecting {len(indices):,} rows of {name!r}",
        )
        parts.append(part.with_format(None))
    mixed = concatenate_datasets(parts).shuffle(seed=config.seed)

    reports = {}
    for name in names:
        source = per_source[name]
        kept = {config.text_column_of(name), config.token_count_column, *config.keep_columns}
        reports[name] = SourceMixReport(
            name=name,
            text_column=config.text_column_of(name),
            weight=float(config.weights[name]),
            requested_share=shares[name],
            achieved_share=achieved_shares[name],
            target_tokens=targets[name],
            tokens_selected=tokens[name],
            rows_selected=len(selected[name]),
            tokens_available=available[name],
            rows_total=source.rows_total,
            rows_eligible=len(source.eligible),
            rows_unused=len(source.eligible) - len(selected[name]),
            rows_excluded=dict(sorted(source.excluded.items())),
            used_whole=len(selected[name]) == len(source.eligible),
            dropped_columns=[c for c in datasets[name].column_names if c not in kept],
        )
    first = names[0]
    report = MixReport(
        sources=reports,
        tokenizer=tokenizer_name(tokenizer),
        token_count_column=config.token_count_column,
        seed=config.seed,
        tolerance=float(config.tolerance),
        requested_total_tokens=config.total_tokens,
        total_tokens=total,
        total_rows=len(mixed),
        requested_ratio={name: config.weights[name] / config.weights[first] for name in names},
        # None where the first source got no tokens (possible only with allow_partial=True)
        achieved_ratio={name: tokens[name] / tokens[first] if tokens[first] else None for name in names},
        max_share_error=max_error,
        within_tolerance=within,
        partial=partial,
        warnings=notes,
    )
    logger.info(
        "mixed %s tokens in %s rows: %s",
        f"{total:,}",
        f"{len(mixed):,}",
        ", ".join(f"{n} {tokens[n]:,} tokens ({achieved_shares[n]:.2%})" for n in names),
    )
    return MixResult(mixed, report)


def _tokens_of(source: _SourceCounts, selected: np.ndarray) -> int:
    """Tokens of the `selected` source indices (all of them eligible)."""
    positions = np.searchsorted(source.eligible, selected)
    return int(source.counts[positions].sum())


def _ratio_text(weights: Mapping[str, float]) -> str:
    return "the ratio " + " : ".join(f"{name} {weight:g}" for name, weight in weights.items())


__all__ = [
    "FORMAT_STATUSES",
    "FORMAT_STATUS",
    "FORMAT_ERROR",
    "NUM_TOKENS",
    "SOURCE",
    "SOURCE_INDEX",
    "TEXT",
    "GENERAL_INSTRUCTIONS",
    "RAW",
    "SOURCE_KINDS",
    "GeneralInstructionFormatter",
    "FormatMismatchError",
    "InsufficientTokensError",
    "MixConfig",
    "MixReport",
    "MixResult",
    "MixWarning",
    "RatioToleranceError",
    "SourceMixReport",
    "TextWrapper",
    "TokenCounter",
    "count_tokens",
    "format_general_instructions",
    "load_tokenizer",
    "mix",
    "prepare_source",
]
