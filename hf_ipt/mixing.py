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
that each source's share of the mix's tokens matches the requested share (`select_mix`). The selection reads only
the counts, block by block, and takes its working arrays from an allocator: the mix stage
(`hf_ipt.stages.MixStage`) counts in shards, keeps the counts and selections in memory-mapped files
(`DiskArrays`), and makes `mix`'s rows, in `mix`'s order, in bounded memory.

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
import os
import tempfile
import typing
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
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


def _check_text_feature(features: Any, text_column: str, what: str) -> None:
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
        _check_text_feature(dataset.features, counter.text_column, "the dataset")
        return dataset.map(
            counter.count_batch, batched=True, batch_size=batch_size, input_columns=[counter.text_column]
        )
    if not isinstance(dataset, Dataset):
        raise TypeError(
            f"count_tokens needs a datasets.Dataset or IterableDataset, got {type(dataset).__name__}"
            + ("; pick a split first, e.g. dataset['train']" if isinstance(dataset, Mapping) else "")
        )
    _check_text_feature(dataset.features, counter.text_column, "the dataset")
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

    preparer = SourcePreparer(kind, text_column, target_format, question_column, response_column, name=name)
    if not isinstance(dataset, Dataset | IterableDataset):
        hint = "; pick a split first, e.g. dataset['train']" if isinstance(dataset, Mapping) else ""
        raise TypeError(
            f"{preparer.label} must be a datasets.Dataset or IterableDataset, got {type(dataset).__name__}{hint}"
        )
    if preparer.changes_nothing:
        return dataset
    streaming = isinstance(dataset, IterableDataset)
    if preparer.formatter is not None:
        if dataset.column_names is not None:  # a stream of unknown columns is checked batch by batch
            preparer.formatter.check_columns(dataset.column_names)
        if not streaming and dataset.num_rows == 0:
            return empty_dataset(preparer.formatter.output_features(dataset.features))
    else:
        _check_text_feature(dataset.features, text_column, preparer.label)
    function, input_columns, desc = preparer.map_arguments()
    if streaming:
        return dataset.map(function, batched=True, batch_size=batch_size, input_columns=input_columns)
    return dataset.with_format(None).map(
        function, batched=True, batch_size=batch_size, input_columns=input_columns, desc=desc
    )


class SourcePreparer:
    """How one corpus is formatted for the mix, so that its texts look like the augmented ones: what
    `prepare_source` maps over a whole dataset, also applicable to an Arrow table of any of its rows (`apply`), as
    the mix stage prepares a source shard by shard. See `prepare_source` for the kinds.

    Example:
        >>> preparer = SourcePreparer("raw", "text", TargetFormat("<s>", "</s>"))
        >>> preparer.apply(pa.table({"text": ["a", " "]})).column("text").to_pylist()
        ['<s>a</s>', ' ']
    """

    def __init__(
        self,
        kind: str,
        text_column: str,
        target_format: TargetFormat,
        question_column: str | None = None,
        response_column: str | None = None,
        *,
        name: str = "",
    ) -> None:
        self.label = f"source {name!r}" if name else "the source"
        if kind not in SOURCE_KINDS:
            raise ValueError(f"{self.label}: kind must be one of {list(SOURCE_KINDS)}, got {kind!r}")
        self.text_column = text_column
        self.formatter: GeneralInstructionFormatter | None = None
        self.wrapper: TextWrapper | None = None
        if kind == GENERAL_INSTRUCTIONS:
            self.formatter = GeneralInstructionFormatter(
                question_column or "question", response_column or "response", text_column, target_format
            )
        elif target_format.bos or target_format.eos:
            self.wrapper = TextWrapper(text_column, target_format)

    @property
    def changes_nothing(self) -> bool:
        """A raw corpus with an empty target format is mixed as it is."""
        return self.formatter is None and self.wrapper is None

    def features(self, features: Any) -> Any:
        """The `datasets.Features` of the prepared rows for a source of `features`; the errors `prepare_source`
        raises for a missing or clashing column."""
        if self.formatter is not None:
            self.formatter.check_columns(list(features))
            return self.formatter.output_features(features)
        if self.wrapper is not None:
            _check_text_feature(features, self.text_column, self.label)
        return features

    def map_arguments(self) -> tuple[Any, list[str] | None, str]:
        """(function, input_columns, desc) of the `Dataset.map` that prepares a whole dataset."""
        if self.formatter is not None:
            return self.formatter, None, f"Formatting general instructions of {self.label}"
        assert self.wrapper is not None
        return (
            self.wrapper.wrap_texts,
            [self.text_column],
            f"Wrapping the texts of {self.label} with the target BOS/EOS",
        )

    def apply(self, table: pa.Table, batch_size: int = 1000) -> pa.Table:
        """The rows of `table` prepared: what the map writes for them, the other columns kept as they are. Converts
        only the columns it reads to Python, `batch_size` rows at a time."""
        if self.changes_nothing:
            return table
        if self.formatter is not None:
            read = (self.formatter.question_column, self.formatter.response_column)
            written: dict[str, list[Any]] = {self.text_column: [], FORMAT_STATUS: [], FORMAT_ERROR: []}
            for start in range(0, table.num_rows, batch_size):
                piece = table.slice(start, batch_size)
                out = self.formatter({column: piece.column(column).to_pylist() for column in read})
                for column, values in written.items():
                    values.extend(out[column])
            for column, values in written.items():
                table = table.append_column(column, pa.array(values, type=pa.string()))
            return table
        assert self.wrapper is not None
        texts: list[Any] = []
        for start in range(0, table.num_rows, batch_size):
            piece = table.slice(start, batch_size).column(self.text_column).to_pylist()
            texts.extend(self.wrapper.wrap_texts(piece)[self.text_column])
        index = table.column_names.index(self.text_column)
        return table.set_column(index, self.text_column, pa.array(texts, type=pa.string()))


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
        default=None,
        metadata={
            "help": "Processes for token counting (Dataset.map) in mix(); the mix stage counts its shards on "
            "run.num_workers workers instead.",
            "min": 1,
        },
    )
    batch_size: int = field(
        default=1000, metadata={"help": "Rows per map batch for counting and labelling.", "min": 1}
    )
    shard_rows: int = field(
        default=10_000,
        metadata={
            "help": "Rows per shard of the mix stage's work (counting a source, writing the mix), each shard on one "
            "of run.num_workers workers: a worker holds about one shard of rows in memory at a time, and each data "
            "file of the mix holds this many rows. The rows and their order do not depend on it.",
            "min": 1,
        },
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


class SourceCounts(NamedTuple):
    """What the selection reads of one source: its eligible rows and their token counts, and what was excluded.

    `eligible` (int64, ascending row indices into the source) and `counts` (int64, each > 0, one per eligible row)
    may be memory-mapped arrays on disk (the mix stage's), so a source of any size costs no memory here.

    Example:
        >>> int(SourceCounts(np.array([0, 2]), np.array([5, 7]), 3, {"empty_text": 1}).counts.sum())
        12
    """

    eligible: np.ndarray
    counts: np.ndarray
    rows_total: int
    excluded: dict[str, int]


CLASSIFY_ROWS = 65_536  # rows read at a time when classifying a dataset's rows
SCAN_ROWS = 1 << 20  # positions per block of the selection's passes over a source (8 MB of int64)


def _arrow_column(dataset: Any, column: str) -> pa.ChunkedArray | pa.Array:
    """A column as Arrow, honouring an indices mapping, without converting to Python."""
    return dataset.with_format("arrow", columns=[column])[:].column(column)


def excluded_rows(
    table: pa.Table, counts: np.ndarray, *, name: str, text_column: str, config: MixConfig
) -> tuple[np.ndarray, dict[str, int]]:
    """Which rows of a piece of a source the mix leaves out (a bool per row), and how many for each reason: each row
    under the first reason that excludes it, in this order: a status column of `config.status_columns` (where the
    piece has it) other than 'ok', a null text, an empty or whitespace-only text, a text of no tokens. Rows are
    judged one by one, so the pieces of a source (shards, batches) add up to the whole source's figures.

    Columns read: the status columns present and `text_column`; `counts` are the piece's token counts.

    Example:
        >>> table = pa.table({"text": ["a", " ", None]})
        >>> mask, reasons = excluded_rows(table, np.array([1, 1, 0]), name="raw", text_column="text",
        ...                               config=MixConfig(weights={"raw": 1, "b": 1}, tokenizer="t"))
        >>> mask.tolist(), reasons
        ([False, True, True], {'null_text': 1, 'empty_text': 1})
    """
    mask = np.zeros(table.num_rows, dtype=bool)
    excluded: dict[str, int] = {}

    def exclude(hit: np.ndarray, reason: str) -> None:
        new = hit & ~mask
        if new.any():
            excluded[reason] = excluded.get(reason, 0) + int(new.sum())
            mask[:] |= new

    for status_column in config.status_columns:
        if status_column not in table.column_names:
            continue
        statuses = table.column(status_column)
        if statuses.type not in _TEXT_TYPES:
            raise ValueError(
                f"status column {status_column!r} of source {name!r} must hold strings ('ok' or a reason), got "
                f"{statuses.type}; remove it from mix.status_columns"
            )
        not_ok = pc.fill_null(pc.not_equal(statuses, FORMAT_OK), True)
        for value in pc.unique(statuses.filter(not_ok)).to_pylist():
            matches = pc.is_null(statuses) if value is None else pc.fill_null(pc.equal(statuses, value), False)
            exclude(np.asarray(matches.to_numpy(zero_copy_only=False), dtype=bool), f"{status_column}={value}")

    texts = table.column(text_column)
    if texts.type == pa.null():  # an all-null (or 0-row) column: every row is a null text
        texts = texts.cast(pa.string())
    exclude(np.asarray(texts.is_null().to_numpy(zero_copy_only=False), dtype=bool), EXCLUDED_NULL_TEXT)
    blank = pc.or_(pc.equal(pc.utf8_length(texts), 0), pc.utf8_is_space(texts))
    exclude(np.asarray(pc.fill_null(blank, False).to_numpy(zero_copy_only=False), dtype=bool), EXCLUDED_EMPTY_TEXT)
    exclude(np.asarray(counts) <= 0, EXCLUDED_NO_TOKENS)
    return mask, excluded


def _classify_rows(dataset: Any, name: str, text_column: str, config: MixConfig) -> SourceCounts:
    """Eligible rows and their counts (read from the token count column), a block of rows at a time."""
    wanted = [c for c in config.status_columns if c in dataset.column_names] + [text_column, config.token_count_column]
    view = dataset.with_format("arrow", columns=list(dict.fromkeys(wanted)))
    eligible, counts, excluded = [], [], Counter()
    for start in range(0, len(dataset), CLASSIFY_ROWS):
        table = view[start : start + CLASSIFY_ROWS]
        piece = np.asarray(table.column(config.token_count_column).to_numpy(zero_copy_only=False), dtype=np.int64)
        mask, reasons = excluded_rows(table, piece, name=name, text_column=text_column, config=config)
        kept = np.flatnonzero(~mask)
        eligible.append(kept + start)
        counts.append(piece[kept])
        excluded.update(reasons)
    empty = np.zeros(0, dtype=np.int64)
    return SourceCounts(
        np.concatenate(eligible) if eligible else empty,
        np.concatenate(counts) if counts else empty,
        len(dataset),
        dict(excluded),
    )


def _source_rng(seed: int, name: str) -> np.random.Generator:
    # crc32 of the name, not hash(): stable across processes (PYTHONHASHSEED)
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode("utf-8"))]))


Allocate = Callable[[int, Any], np.ndarray]


def allocate_in_memory(length: int, dtype: Any) -> np.ndarray:
    """An array of `length` items of `dtype` in memory: how `select_for_target` and `select_mix` get their working
    arrays by default (the mix stage gives them memory-mapped files instead).

    Example:
        >>> allocate_in_memory(3, np.int64).shape
        (3,)
    """
    return np.empty(length, dtype=dtype)


class DiskArrays:
    """Allocates arrays as memory-mapped `.npy` files in `folder` (local disk): what the mix stage gives
    `select_mix`, so counts, orders and selections of any size live on disk, paged in as they are read.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     DiskArrays(folder)(4, np.int64).shape
        (4,)
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def __call__(self, length: int, dtype: Any) -> np.ndarray:
        if length == 0:  # a file cannot map 0 bytes
            return np.zeros(0, dtype=dtype)
        handle, path = tempfile.mkstemp(suffix=".npy", prefix="array-", dir=self.folder)  # never another's file
        os.close(handle)
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(length,))


def random_order(length: int, rng: np.random.Generator, allocate: Allocate = allocate_in_memory) -> np.ndarray:
    """`rng.permutation(length)` (the same draws, the same order) written into an array from `allocate`, so a
    permutation of a billion positions can live in a memory-mapped file.

    Example:
        >>> random_order(5, np.random.default_rng(1)).tolist() == np.random.default_rng(1).permutation(5).tolist()
        True
    """
    order = allocate(length, np.int64)
    for start in range(0, length, SCAN_ROWS):
        order[start : start + SCAN_ROWS] = np.arange(start, min(length, start + SCAN_ROWS), dtype=np.int64)
    # Generator.permutation(n) is arange(n) shuffled in place; a plain-ndarray view shuffles a memory map in place
    rng.shuffle(order.view(np.ndarray))
    return order


def select_for_target(
    counts: np.ndarray,
    target: float,
    rng: np.random.Generator,
    *,
    allocate: Allocate = allocate_in_memory,
    block: int = SCAN_ROWS,
) -> np.ndarray:
    """Positions (ascending, into `counts`) of whole examples whose token total is as close to `target` as a seeded
    first-fit pass allows: the shuffled prefix that fits, then every later example (same order) that still fits, then
    the single addition or swap of one leftover example that brings the total closest to the target.

    Every pass reads `counts` and the shuffled order `block` positions at a time, and the working arrays (the order,
    a flag per example, the result) come from `allocate`: with memory-mapped counts and arrays, a source of any size
    is selected in bounded memory. Ties are broken as a whole-array pass would break them (the leftover nearest a
    wanted count is the last of the smaller ones or the first of the larger ones in the shuffled order; the swapped
    example is the first best in the chosen order).

    Example:
        >>> select_for_target(np.array([5, 3, 2, 4]), 7.0, np.random.default_rng(0)).tolist()
        [0, 2]
    """
    length = len(counts)
    order = random_order(length, rng, allocate)
    taken, total = length, 0
    for start in range(0, length, block):
        running = np.cumsum(counts[order[start : start + block]]) + total
        over = np.flatnonzero(running > target)  # compared as float64, as numpy's searchsorted compares
        if over.size:
            taken = start + int(over[0])
            total = int(running[over[0] - 1]) if over[0] else total
            break
        total = int(running[-1])
    deficit = target - float(total)
    # First fit over the rest: a prefix alone can stop short by up to one long example (the next one in the order
    # overshoots), which a source of long texts turns into an error of several percent.
    smallest = float(counts.min()) if length else 0.0
    picks, cursor, window = [], taken, 1024
    while cursor < length and not deficit < smallest:
        values = counts[order[cursor : cursor + window]]
        fits = np.flatnonzero(values <= deficit)
        if not fits.size:
            cursor += len(values)
            window = min(window * 2, block)
            continue
        picks.append(int(order[cursor + int(fits[0])]))
        deficit -= float(values[int(fits[0])])
        cursor += int(fits[0]) + 1
    chosen = allocate(length, np.bool_)
    chosen[:] = False
    for start in range(0, taken, block):
        chosen[order[start : min(taken, start + block)]] = True
    picked = np.asarray(picks, dtype=np.int64)
    chosen[picked] = True
    if deficit > 0 and length - taken - len(picks):
        change = _closest_change(counts, order, taken, picked, chosen, deficit, block)
        if change is not None:
            removed, added = change
            if removed is not None:
                chosen[removed] = False
            chosen[added] = True
    return true_positions(chosen, allocate, block)


def true_positions(flags: np.ndarray, allocate: Allocate = allocate_in_memory, block: int = SCAN_ROWS) -> np.ndarray:
    """The positions where `flags` is True, ascending, in an array from `allocate`.

    Example:
        >>> true_positions(np.array([False, True, True])).tolist()
        [1, 2]
    """
    found = allocate(int(np.count_nonzero(flags)), np.int64)
    end = 0
    for start in range(0, len(flags), block):
        positions = np.flatnonzero(flags[start : start + block]) + start
        found[end : end + len(positions)] = positions
        end += len(positions)
    return found


class _Leftover:
    """The examples left out of a selection, as much of them as the nearest-count questions need: each distinct
    count with its first and last example in the shuffled order, and the last two examples of the largest count."""

    def __init__(self) -> None:
        self.values = np.zeros(0, dtype=np.float64)  # distinct counts, ascending
        self.first = np.zeros(0, dtype=np.int64)  # position of each count's first example in the order
        self.last = np.zeros(0, dtype=np.int64)  # position of each count's last example in the order
        self.top: float | None = None  # the largest count
        self.top_tail: list[int] = []  # the last two positions holding it, in the order
        self.size = 0

    def add(self, positions: np.ndarray, values: np.ndarray) -> None:
        """More left-out examples (positions and counts), in the order's sequence."""
        distinct, first = np.unique(values, return_index=True)
        _, from_end = np.unique(values[::-1], return_index=True)
        last = len(values) - 1 - from_end
        merged = np.concatenate([self.values, distinct])
        self.values, kept_first = np.unique(merged, return_index=True)  # an earlier first stays first
        self.first = np.concatenate([self.first, positions[first]])[kept_first]
        _, kept_last = np.unique(merged[::-1], return_index=True)  # a later last replaces the earlier one
        self.last = np.concatenate([self.last, positions[last]])[::-1][kept_last]
        top = float(distinct[-1])
        tail = positions[np.flatnonzero(values == top)[-2:]].tolist()
        if self.top is None or top > self.top:
            self.top, self.top_tail = top, tail
        elif top == self.top:
            self.top_tail = (self.top_tail + tail)[-2:]
        self.size += len(values)

    def errors(self, wanted: np.ndarray) -> np.ndarray:
        """The distance from each wanted count to the nearest left-out count."""
        at = np.searchsorted(self.values, wanted, side="left")
        top = len(self.values) - 1
        below = np.abs(self.values[np.clip(at - 1, 0, top)] - wanted)
        above = np.abs(self.values[np.clip(at, 0, top)] - wanted)
        return np.where((at == 0) | (at > top), above, np.minimum(below, above))

    def nearest(self, wanted: float) -> tuple[int, float]:
        """The left-out example nearest `wanted` tokens (ties as a stable sort of the leftovers breaks them), and the
        distance."""
        at = int(np.searchsorted(self.values, wanted, side="left"))
        if at == 0:
            return int(self.first[0]), abs(float(self.values[0]) - wanted)
        if at == len(self.values):  # all below: the last in sorted order, or the one before it when it is as near
            position = self.top_tail[-2] if len(self.top_tail) == 2 else self.top_tail[-1]
            return int(position), abs(float(self.values[-1]) - wanted)
        below, above = abs(float(self.values[at - 1]) - wanted), abs(float(self.values[at]) - wanted)
        return (int(self.last[at - 1]), below) if below <= above else (int(self.first[at]), above)


def _closest_change(
    counts: np.ndarray,
    order: np.ndarray,
    taken: int,
    picked: np.ndarray,
    chosen: np.ndarray,
    deficit: float,
    block: int,
) -> tuple[int | None, int] | None:
    """The best of: keep the chosen examples, add one leftover example, or swap one chosen example for a leftover one
    — whichever leaves the token total closest to the target (`deficit` = target - total chosen, > 0). Returns
    (the position removed or None, the position added), or None to keep. The chosen examples, in their order, are the
    shuffled prefix `order[:taken]` then `picked`; the leftovers are the rest of the order, in its sequence."""
    leftover = _Leftover()
    for start in range(taken, len(order), block):
        positions = order[start : start + block]
        positions = positions[~chosen[positions]]
        if len(positions):
            leftover.add(positions, counts[positions].astype(np.float64))
    best_error, best = deficit, None
    position, error = leftover.nearest(deficit)
    if error < best_error:
        best_error, best = error, (None, position)
    swap_error, swap = np.inf, None
    blocks = [order[start : min(taken, start + block)] for start in range(0, taken, block)] + [picked]
    for given in blocks:
        if not len(given):
            continue
        wanted = deficit + counts[given].astype(np.float64)
        errors = leftover.errors(wanted)
        at = int(np.argmin(errors))
        if errors[at] < swap_error:  # strictly: the first best in the chosen order wins
            swap_error, swap = float(errors[at]), (int(given[at]), float(wanted[at]))
    if swap is not None and swap_error < best_error:
        removed, wanted_count = swap
        best = (removed, leftover.nearest(wanted_count)[0])
    return best


@dataclass
class MixSelection:
    """Which rows of each source a mix takes, and the figures of that choice (what `mix_report` reports).

    `selected[name]`: the chosen row indices of the source, ascending (an array from the allocator: memory-mapped in
    the mix stage); the other fields are per source (tokens, targets, available tokens, achieved shares) or for the
    whole mix (the largest share error, whether it is within the tolerance, the warnings, the total).

    Example:
        >>> selection = select_mix(per_source, config)  # doctest: +SKIP
        >>> selection.total == sum(selection.tokens.values())  # doctest: +SKIP
        True
    """

    selected: dict[str, np.ndarray]
    tokens: dict[str, int]
    targets: dict[str, float]
    available: dict[str, int]
    achieved_shares: dict[str, float]
    max_error: float
    within: bool
    partial: bool
    notes: list[str]

    @property
    def total(self) -> int:
        return sum(self.tokens.values())

    @property
    def rows(self) -> int:
        return sum(len(rows) for rows in self.selected.values())


def select_mix(
    per_source: Mapping[str, SourceCounts], config: MixConfig, *, allocate: Allocate = allocate_in_memory
) -> MixSelection:
    """Choose the whole examples of every source as the module docstring says (the binding source whole, the others
    seeded first fit toward their share of the target). Raises InsufficientTokensError when `total_tokens` cannot be
    filled or a source has no usable tokens, RatioToleranceError when whole examples cannot meet the tolerance,
    unless `allow_partial=True` (then the selection's `notes` say what was achieved). Streams over each source's
    arrays (`select_for_target`), so memory-mapped counts are selected in bounded memory.

    Example:
        >>> selection = select_mix({"a": counts_a, "b": counts_b}, MixConfig(weights={"a": 1, "b": 1},
        ...                        tokenizer="t"))  # doctest: +SKIP
    """
    shares = config.shares()
    names = list(config.weights)  # the report and the ratios follow the order of the weights
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
    tokens: dict[str, int] = {}
    for name in names:
        source = per_source[name]
        targets[name] = shares[name] * target_total
        # float noise must not cost the binding source its last example
        if targets[name] >= available[name] * (1 - 1e-12):
            selected[name], tokens[name] = source.eligible, available[name]
            continue
        positions = select_for_target(source.counts, targets[name], _source_rng(config.seed, name), allocate=allocate)
        rows = allocate(len(positions), np.int64)
        tokens[name] = 0
        for start in range(0, len(positions), SCAN_ROWS):
            block = positions[start : start + SCAN_ROWS]
            rows[start : start + len(block)] = source.eligible[block]
            tokens[name] += int(source.counts[block].sum())
        selected[name] = rows

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
    return MixSelection(selected, tokens, targets, available, achieved_shares, max_error, within, partial, notes)


def mix_report(
    selection: MixSelection,
    per_source: Mapping[str, SourceCounts],
    config: MixConfig,
    *,
    tokenizer: str,
    columns: Mapping[str, Sequence[str]],
) -> MixReport:
    """The report of a selection: per source what it gave and what it did not, and the mix's ratios. `tokenizer` is
    the tokenizer's name; `columns` each source's columns (those not kept are listed as dropped).

    Example:
        >>> mix_report(selection, per_source, config, tokenizer="gpt2", columns={"a": ["text"], "b": ["text"]})
        ... # doctest: +SKIP
    """
    shares = config.shares()
    names = list(config.weights)
    reports = {}
    for name in names:
        source = per_source[name]
        rows = len(selection.selected[name])
        kept = {config.text_column_of(name), config.token_count_column, *config.keep_columns}
        reports[name] = SourceMixReport(
            name=name,
            text_column=config.text_column_of(name),
            weight=float(config.weights[name]),
            requested_share=shares[name],
            achieved_share=selection.achieved_shares[name],
            target_tokens=selection.targets[name],
            tokens_selected=selection.tokens[name],
            rows_selected=rows,
            tokens_available=selection.available[name],
            rows_total=source.rows_total,
            rows_eligible=len(source.eligible),
            rows_unused=len(source.eligible) - rows,
            rows_excluded=dict(sorted(source.excluded.items())),
            used_whole=rows == len(source.eligible),
            dropped_columns=[c for c in columns[name] if c not in kept],
        )
    first = names[0]
    tokens = selection.tokens
    return MixReport(
        sources=reports,
        tokenizer=tokenizer,
        token_count_column=config.token_count_column,
        seed=config.seed,
        tolerance=float(config.tolerance),
        requested_total_tokens=config.total_tokens,
        total_tokens=selection.total,
        total_rows=selection.rows,
        requested_ratio={name: config.weights[name] / config.weights[first] for name in names},
        # None where the first source got no tokens (possible only with allow_partial=True)
        achieved_ratio={name: tokens[name] / tokens[first] if tokens[first] else None for name in names},
        max_share_error=selection.max_error,
        within_tolerance=selection.within,
        partial=selection.partial,
        warnings=selection.notes,
    )


class MixRowLabeller:
    """Arrow-batch map function writing the uniform mix schema for the selected rows of one source: `text`, the token
    count, `source` (the source's name), `source_index` (`indices[p]` for the row at position p of the selection),
    and the kept columns.

    Example:
        >>> labeller = MixRowLabeller("raw", "text", "num_tokens", [], np.array([7]))
        >>> labeller(pa.table({"text": ["a"], "num_tokens": [1]}), [0]).column("source_index").to_pylist()
        [7]
    """

    def __init__(self, name: str, text_column: str, count_column: str, keep_columns: list[str], indices: np.ndarray):
        self.name = name
        self.text_column = text_column
        self.count_column = count_column
        self.keep_columns = keep_columns
        self.indices = indices  # source index of each selected row, by position in the selection

    def __call__(self, table: pa.Table, positions: Sequence[int]) -> pa.Table:
        columns = {
            TEXT: pc.cast(table.column(self.text_column), pa.string()),
            self.count_column: pc.cast(table.column(self.count_column), pa.int64()),
            SOURCE: pa.array([self.name] * table.num_rows, type=pa.string()),
            SOURCE_INDEX: pa.array(self.indices[np.asarray(positions, dtype=np.int64)], type=pa.int64()),
        }
        for column in self.keep_columns:
            columns[column] = table.column(column)
        return pa.table(columns)


def mix_features(config: MixConfig, features: Any) -> Any:
    """The `datasets.Features` of a mix: `text`, the token count, `source`, `source_index`, then the kept columns
    with their type in the sources (`features`: any source's).

    Example:
        >>> list(mix_features(MixConfig(weights={"a": 1, "b": 1}, tokenizer="t"), {}))
        ['text', 'num_tokens', 'source', 'source_index']
    """
    from datasets import Features, Value

    written = {TEXT: Value("string"), config.token_count_column: Value("int64")}
    written.update({SOURCE: Value("string"), SOURCE_INDEX: Value("int64")})
    return Features({**written, **{column: features[column] for column in config.keep_columns}})


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
    check_source_features({name: dataset.features for name, dataset in datasets.items()}, config)


def check_source_features(features: Mapping[str, Any], config: MixConfig) -> None:
    """The sources of a mix, by their `datasets.Features`: each has its text column holding strings, and every kept
    column (`keep_columns`) with one type in all of them; a ValueError naming the source and the fix otherwise.

    Example:
        >>> from datasets import Features, Value
        >>> check_source_features({"a": Features({"text": Value("int64")}), "b": Features({"text": Value("string")})},
        ...                       MixConfig(weights={"a": 1, "b": 1}, tokenizer="t"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: column 'text' of source 'a' must hold strings, but its feature is Value('int64'); ...
    """
    for name, found in features.items():
        _check_text_feature(found, config.text_column_of(name), f"source {name!r}")
        for column in config.keep_columns:
            if column not in found:
                raise ValueError(
                    f"mix.keep_columns asks for {column!r}, which source {name!r} does not have (columns: "
                    f"{list(found)}); add it to that source or leave it out of keep_columns"
                )
    first_name, first = next(iter(features.items()))
    for column in config.keep_columns:
        for name, found in features.items():
            if found[column] != first[column]:
                raise ValueError(
                    f"kept column {column!r} has type {found[column]} in source {name!r} but {first[column]} in "
                    f"{first_name!r}; cast one (Dataset.cast_column) or drop it from keep_columns"
                )


def format_counts(texts: pa.Array | pa.ChunkedArray, target: TargetFormat) -> tuple[int, int] | None:
    """(texts carrying `target`'s BOS and EOS, non-empty texts) of a text column or a piece of one; None for a column
    of no text at all (null-typed, e.g. a source of 0 rows). Pieces add up (`check_format_counts`).

    Example:
        >>> format_counts(pa.array(["<s>x</s>", "y", ""]), TargetFormat("<s>", "</s>"))
        (1, 2)
    """
    if pa.types.is_null(texts.type):
        return None
    present = pc.fill_null(pc.greater(pc.utf8_length(texts), 0), False)
    wrapped = present
    if target.bos:
        wrapped = pc.and_(wrapped, pc.fill_null(pc.starts_with(texts, target.bos), False))
    if target.eos:
        wrapped = pc.and_(wrapped, pc.fill_null(pc.ends_with(texts, target.eos), False))
    return int(pc.sum(wrapped).as_py() or 0), int(pc.sum(present).as_py() or 0)


def check_format_counts(counts: Mapping[str, tuple[int, int] | None], target: TargetFormat) -> None:
    """Refuse a mix whose sources are formatted differently, from each source's `format_counts` (None: no text):
    most texts of some sources carry `target`'s BOS/EOS while most texts of others do not (`check_formats_agree`).

    Example:
        >>> check_format_counts({"a": (3, 3), "b": (3, 4)}, TargetFormat("<s>", "</s>"))
    """
    if not (target.bos or target.eos):
        return
    counts = {name: found for name, found in counts.items() if found is not None}
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
    counts = {
        name: format_counts(_arrow_column(dataset, config.text_column_of(name)), target)
        for name, dataset in datasets.items()
    }
    check_format_counts(counts, target)


def _fmt_tokens(value: float) -> str:
    return f"{value:,.0f}"


def mix(datasets: Mapping[str, Any], config: MixConfig) -> MixResult:
    """Mix datasets so that each source's share of the tokens matches `config.weights` within `config.tolerance`.

    Counts tokens (cached `Dataset.map`), excludes unusable rows (counted in the report), selects whole examples as
    described in the module docstring (`select_mix`), writes the uniform schema (`text`, token count, `source`,
    `source_index`, keep_columns) and shuffles deterministically with `config.seed`. The mix stage
    (`hf_ipt.stages.MixStage`) makes the same rows in the same order shard by shard, in bounded memory.

    Raises InsufficientTokensError (naming each short source and its shortfall) when `total_tokens` cannot be filled
    or a source has no usable tokens, and RatioToleranceError when whole examples cannot meet the tolerance, unless
    `allow_partial=True` (then a MixWarning says what was achieved).

    Example:
        >>> config = MixConfig(weights={"augmented": 3, "raw": 1}, tokenizer=tokenizer, seed=42)  # doctest: +SKIP
        >>> mixed, report = mix({"augmented": augmented, "raw": raw}, config)  # doctest: +SKIP
    """
    from datasets import concatenate_datasets

    if not isinstance(config, MixConfig):
        raise TypeError(f"mix needs a MixConfig, got {type(config).__name__}")
    _validate_sources(datasets, config)
    tokenizer = load_tokenizer(config.tokenizer, key="mix.tokenizer")
    check_formats_agree(datasets, config, TargetFormat(tokenizer.bos_token or "", tokenizer.eos_token or ""))
    names = list(config.weights)

    counted: dict[str, Any] = {}
    per_source: dict[str, SourceCounts] = {}
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

    selection = select_mix(per_source, config)
    for note in selection.notes:
        warnings.warn(note, MixWarning, stacklevel=2)

    parts = []
    for name in names:
        indices = selection.selected[name]
        part = counted[name].select(indices)
        labeller = MixRowLabeller(
            name, config.text_column_of(name), config.token_count_column, config.keep_columns, indices
        )
        part = part.with_format("arrow").map(
            labeller,
            batched=True,
            batch_size=config.batch_size,
            with_indices=True,
            remove_columns=part.column_names,
            features=mix_features(config, part.features),
            desc=f"Selecting {len(indices):,} rows of {name!r}",
        )
        parts.append(part.with_format(None))
    mixed = concatenate_datasets(parts).shuffle(seed=config.seed)
    columns = {name: datasets[name].column_names for name in names}
    report = mix_report(selection, per_source, config, tokenizer=tokenizer_name(tokenizer), columns=columns)
    log_mix(report)
    return MixResult(mixed, report)


def log_mix(report: MixReport) -> None:
    """The one log line of a mix: its tokens and rows, each source's tokens and share.

    Example:
        >>> log_mix(report)  # doctest: +SKIP
    """
    logger.info(
        "mixed %s tokens in %s rows: %s",
        f"{report.total_tokens:,}",
        f"{report.total_rows:,}",
        ", ".join(
            f"{name} {entry.tokens_selected:,} tokens ({entry.achieved_share:.2%})"
            for name, entry in report.sources.items()
        ),
    )


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
    "DiskArrays",
    "GeneralInstructionFormatter",
    "FormatMismatchError",
    "InsufficientTokensError",
    "MixConfig",
    "MixReport",
    "MixResult",
    "MixRowLabeller",
    "MixSelection",
    "MixWarning",
    "RatioToleranceError",
    "SourceCounts",
    "SourceMixReport",
    "SourcePreparer",
    "TextWrapper",
    "TokenCounter",
    "count_tokens",
    "format_general_instructions",
    "load_tokenizer",
    "mix",
    "mix_report",
    "prepare_source",
    "select_for_target",
    "select_mix",
]
