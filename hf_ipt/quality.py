"""Quality of the synthesized pairs: per-row figures as a batched map, a corpus-wide report, filters, comparison.

What the synthesizer wrote, measured without any model:

1. `QualityFigures` (a batched map, CPU only): per row, the pairs' question/answer lengths, each pair's task type,
   whether its answer is grounded in the row's text, a hash of its normalized question, the number of pairs, and
   why a row has none. Its output never depends on the batch size or the number of processes.
2. `quality_report` (a reduction over the mapped rows): distributions, rates, corpus-wide duplicate counts (counted
   here, after the map, so they are the same however the map was split) and the worst examples of each kind.
3. `apply_filters` (the recipe's `quality.*` keys, all off by default): drop ungrounded pairs, drop repeated
   questions, drop texts with too few pairs; every removal is counted in the report and the card.
4. `compare` / `load_report`: two reports side by side (`hf-ipt report A --against B`), with a verdict per figure.

Rules (each pair is one `{"instruction": question, "response": answer}` of the `pairs` column):

- Lengths: tokens of the given tokenizer (`add_special_tokens=False`), or, with no tokenizer, whitespace-separated
  words (`len(s.split())`); the report names which (`length_unit`).
- Task type, the first rule that matches:
  `chain_of_thought`: the question's last line, lower-cased and without a final ".", is "let's think step by step",
  or the answer contains "therefore, the answer is" (any case); its *final answer* is what follows the last such
  phrase (stripped, a final "." removed), else the whole answer.
  `multiple_choice`: the question has a line "Options:" (any case, alone on its line) followed directly by at least
  two lines starting with "- "; the answer is the chosen option's text.
  `yes_no`: the answer, stripped, is "yes" or "no" (any case), alone or followed by one of `, . ; : !`.
  `short_extractive`: an answer of at most `SHORT_ANSWER_WORDS` (5) whitespace-separated words.
  `free_form`: everything else.
- Grounding of the answer (for chain of thought, its final answer) in the row's text, the first that holds:
  `exact`: the stripped answer is a substring of the text; `normalized`: the normalized answer (lower-cased, every
  run of non-alphanumeric characters made one space, stripped) occurs in the normalized text on word boundaries;
  `overlap`: at least `overlap_threshold` (default 0.8) of the answer's distinct normalized words occur in the text;
  else `ungrounded`. A yes/no answer (or final answer) cannot be found in a text: `not_applicable`, left out of
  the grounded rate. The per-pair overlap is 1.0 for exact and normalized matches, the word share otherwise.
- Duplicated questions: the normalized question hashed (blake2b, 64 bits); the report counts, over the whole corpus,
  the pairs whose question occurs more than once and the extra copies (pairs minus distinct questions).
- A row without pairs gets a cause: its `synth_status` when the text was never answered (`empty_text`,
  `invalid_text`, `engine_error`); else the parse-drop reason that dropped the most pieces (ties in the order of
  `hf_ipt.columns.PARSE_DROP_REASONS`); `empty_output` when the parser found no piece at all; `no_pairs` when the
  rows carry no synthesis columns to tell.

Example:
    >>> figures = QualityFigures()({"text": ["Paris is the capital of France."],
    ...                             "pairs": [[{"instruction": "What is the capital of France?",
    ...                                         "response": "Paris"}]]})
    >>> figures["task_types"], figures["grounding"], figures["question_tokens"]
    ([['short_extractive']], [['exact']], [[6]])
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
import re
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_ipt import columns as C
from hf_ipt.language import ENGLISH, MOSTLY_ENGLISH, detect_languages, identifier, language_name
from hf_ipt.plotting import bar_chart
from hf_ipt.stats import Distribution
from hf_ipt.tokenization import FastEncoder, load_tokenizer, tokenizer_name
from hf_ipt.validation import check_fields

REPORT_FORMAT = 1
SHORT_ANSWER_WORDS = 5
DEFAULT_OVERLAP_THRESHOLD = 0.8
EXAMPLES_PER_KIND = 3
EXAMPLE_CHARS = 300  # longer example texts are cut (with "…") so a report stays readable

# task types, in the order the rules are tried (and the report lists them)
CHAIN_OF_THOUGHT, MULTIPLE_CHOICE, YES_NO, SHORT_EXTRACTIVE, FREE_FORM = (
    "chain_of_thought",
    "multiple_choice",
    "yes_no",
    "short_extractive",
    "free_form",
)
TASK_TYPES = (CHAIN_OF_THOUGHT, MULTIPLE_CHOICE, YES_NO, SHORT_EXTRACTIVE, FREE_FORM)

# grounding values of a pair
EXACT, NORMALIZED, OVERLAP, UNGROUNDED, NOT_APPLICABLE = (
    "exact",
    "normalized",
    "overlap",
    "ungrounded",
    "not_applicable",
)
GROUNDING_VALUES = (EXACT, NORMALIZED, OVERLAP, UNGROUNDED, NOT_APPLICABLE)
GROUNDED_VALUES = (EXACT, NORMALIZED, OVERLAP)

# causes of a row without pairs, besides the synth statuses and parse-drop reasons
EMPTY_OUTPUT = "empty_output"
UNKNOWN_CAUSE = "no_pairs"

# --- columns written by QualityFigures (one value per row; the list columns hold one value per pair) ---
NUM_PAIRS_COLUMN = "quality_num_pairs"  # int, pairs of the row
QUESTION_TOKENS = "question_tokens"  # list[int]
ANSWER_TOKENS = "answer_tokens"  # list[int]
TASK_TYPES_COLUMN = "task_types"  # list[str], one of TASK_TYPES
GROUNDING = "grounding"  # list[str], one of GROUNDING_VALUES
ANSWER_OVERLAP = "answer_overlap"  # list[float | None]: share of the answer's words in the text (None: yes/no)
QUESTION_HASHES = "question_hashes"  # list[int], signed 64-bit hash of the normalized question
NO_PAIRS_CAUSE = "no_pairs_cause"  # str, "" when the row has pairs
TEXT_LANGUAGE = "text_language"  # str, ISO 639 code of the text's language ("" for an empty text)
PAIRS_LANGUAGE = "pairs_language"  # str, the language of the row's questions and answers together ("" for none)
QUALITY_COLUMNS = (
    NUM_PAIRS_COLUMN,
    QUESTION_TOKENS,
    ANSWER_TOKENS,
    TASK_TYPES_COLUMN,
    GROUNDING,
    ANSWER_OVERLAP,
    QUESTION_HASHES,
    NO_PAIRS_CAUSE,
    TEXT_LANGUAGE,
    PAIRS_LANGUAGE,
)


class _SpaceNonAlnum(dict):
    """str.translate table: every non-alphanumeric character to a space, filled lazily (all of Unicode is large)."""

    def __missing__(self, code: int) -> int:
        value = code if chr(code).isalnum() else 32
        self[code] = value
        return value


_SPACE_NON_ALNUM = _SpaceNonAlnum()
# the same table for ASCII text as bytes.translate does it (in C, ~5x faster than str.translate with a dict)
_ASCII_SPACE_NON_ALNUM = bytes(code if chr(code).isalnum() else 32 for code in range(128)) + bytes(range(128, 256))
_YES_NO_FIRST = frozenset("YyNn")
_OPTIONS = re.compile(r"(?im)^[ \t]*options:[ \t]*\r?\n(?:[ \t]*- [^\n]*(?:\n|$)){2,}")
_YES_NO = re.compile(r"(?i)(?:yes|no)(?:[,.;:!]|$)")
_COT_PHRASE = "therefore, the answer is"
_COT_QUESTION_ENDS = ("let's think step by step", "let’s think step by step")
_COT_LAST_CHARS = frozenset("pP.")


# ---------------------------------------------------------------------------------------------------- settings
@dataclass
class QualityConfig:
    """The recipe's `quality` section: how pairs are measured, and the filters (all off by default: the method
    keeps every pair). Filters run after synthesis, before templify; each removal is counted in the report.

    Example:
        >>> QualityConfig(drop_ungrounded=True).filters_enabled
        True
    """

    tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer (Hub id or local folder) counting question/answer lengths; null counts "
            "whitespace-separated words (fastest, no download)."
        },
    )
    overlap_threshold: float = field(
        default=DEFAULT_OVERLAP_THRESHOLD,
        metadata={
            "help": "An answer not found verbatim (exact or normalized) in its text is grounded when at least this "
            "share of its distinct normalized words occurs in the text.",
            "min": 0.0,
            "max": 1.0,
        },
    )
    examples: int = field(
        default=EXAMPLES_PER_KIND,
        metadata={"help": "Worst examples of each kind kept in the report (ungrounded, repeated, ...).", "min": 0},
    )
    drop_ungrounded: bool = field(
        default=False,
        metadata={"help": "Drop pairs whose answer is `ungrounded` (yes/no pairs are kept: they cannot be checked)."},
    )
    drop_duplicate_questions: bool = field(
        default=False,
        metadata={
            "help": "Drop a pair whose normalized question already appeared earlier in the corpus (row order; the "
            "first occurrence is kept), counted after drop_ungrounded."
        },
    )
    min_pairs_per_text: int = field(
        default=0,
        metadata={
            "help": "Drop the rows (texts) left with fewer pairs than this after the other filters; 0 keeps all. "
            "A dropped row is gone from the augmented corpus, raw text included.",
            "min": 0,
        },
    )

    def __post_init__(self) -> None:
        check_fields(self, "quality")

    @property
    def filters_enabled(self) -> bool:
        """Whether any filter changes the data."""
        return self.drop_ungrounded or self.drop_duplicate_questions or self.min_pairs_per_text > 0


# ---------------------------------------------------------------------------------------------------- rules
def normalize(text: str) -> str:
    """Lower-case, every run of non-alphanumeric characters made one space, stripped.

    Example:
        >>> normalize("  What's *the* capital—of France?? ")
        'what s the capital of france'
    """
    return " ".join(normalized_words(text))


def normalized_words(text: str) -> list[str]:
    """The words of `normalize(text)`: lower-cased runs of alphanumeric characters.

    Example:
        >>> normalized_words("It's 4 o'clock—GO!")
        ['it', 's', '4', 'o', 'clock', 'go']
    """
    lowered = text.lower()
    if lowered.isascii():  # most text: bytes.translate in C
        return lowered.encode("ascii").translate(_ASCII_SPACE_NON_ALNUM).decode("ascii").split()
    # str.translate with a table filled on first sight of each character: about 1.4x faster than a regex
    # substitution over long texts (bench/bench_quality.py); `[\W_]` in `re` is exactly `not str.isalnum()`
    return lowered.translate(_SPACE_NON_ALNUM).split()


def question_hash(question: str) -> int:
    """Signed 64-bit blake2b hash of the normalized question (stable across processes and runs).

    Example:
        >>> question_hash("What is X?") == question_hash("what is x")
        True
    """
    return _hash_normalized(normalize(question))


def _hash_normalized(normalized: str) -> int:
    return int.from_bytes(hashlib.blake2b(normalized.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


def _is_yes_no(answer: str) -> bool:
    return answer[:1] in _YES_NO_FIRST and _YES_NO.match(answer) is not None


def task_type(question: str, answer: str) -> tuple[str, str]:
    """(task type, the answer to ground) of one pair, by the rules in the module docstring.

    Example:
        >>> task_type("Is it?\\nLet's think step by step.", "Because.\\nTherefore, the answer is no.")
        ('chain_of_thought', 'no')
        >>> task_type("Pick one.\\nOptions:\\n- red\\n- blue", "blue")
        ('multiple_choice', 'blue')
    """
    answer = answer.strip()
    cut = answer.lower().rfind(_COT_PHRASE)
    question_end = question.rstrip()
    # the last line can be "let's think step by step" only when the question ends in "p" or "." (most end in "?")
    last_line = ""
    if question_end[-1:] in _COT_LAST_CHARS:
        last_line = question_end.rpartition("\n")[2].strip().lower().rstrip(".").rstrip()
    if cut >= 0 or last_line in _COT_QUESTION_ENDS:
        final = answer[cut + len(_COT_PHRASE) :].strip() if cut >= 0 else answer
        if final.endswith("."):
            final = final[:-1].rstrip()
        return CHAIN_OF_THOUGHT, final
    if "ptions:" in question and _OPTIONS.search(question):
        return MULTIPLE_CHOICE, answer
    if _is_yes_no(answer):
        return YES_NO, answer
    if len(answer.split()) <= SHORT_ANSWER_WORDS:
        return SHORT_EXTRACTIVE, answer
    return FREE_FORM, answer


class _Context:
    """The row's text, normalized and split into words only when a pair needs it (most answers match exactly)."""

    __slots__ = ("text", "_normalized", "_words")

    def __init__(self, text: str) -> None:
        self.text = text
        self._normalized: str | None = None
        self._words: frozenset[str] | None = None

    def _split(self) -> None:
        words = normalized_words(self.text)
        self._normalized = f" {' '.join(words)} "
        self._words = frozenset(words)

    @property
    def normalized(self) -> str:
        if self._normalized is None:
            self._split()
        return self._normalized  # type: ignore[return-value]

    @property
    def words(self) -> frozenset[str]:
        if self._words is None:
            self._split()
        return self._words  # type: ignore[return-value]


def grounding(target: str, context: _Context | str, threshold: float = DEFAULT_OVERLAP_THRESHOLD):
    """(grounding value, overlap) of an answer in a text, by the rules in the module docstring.

    Example:
        >>> grounding("the Capital!", "Paris is the capital of France.")
        ('normalized', 1.0)
        >>> grounding("capital city of France", "Paris is the capital of France.")
        ('ungrounded', 0.75)
        >>> grounding("capital city of France", "Paris is the capital of France.", threshold=0.7)
        ('overlap', 0.75)
    """
    if type(context) is not _Context:
        context = _Context(context)
    target = target.strip()
    if not target:
        return UNGROUNDED, 0.0
    if _is_yes_no(target):
        return NOT_APPLICABLE, None
    if target in context.text:
        return EXACT, 1.0
    normalized = normalize(target)
    if not normalized:
        return UNGROUNDED, 0.0
    if f" {normalized} " in context.normalized:
        return NORMALIZED, 1.0
    words = set(normalized.split())
    share = len(words & context.words) / len(words)
    return (OVERLAP if share >= threshold else UNGROUNDED), share


def no_pairs_cause(status: Any, drops: Mapping[str, Any] | None) -> str:
    """Why a row has no pairs (rules in the module docstring).

    Example:
        >>> no_pairs_cause("no_pairs", {"unterminated": 1, "malformed": 2}), no_pairs_cause("engine_error", None)
        ('malformed', 'engine_error')
    """
    if status in (C.STATUS_EMPTY_TEXT, C.STATUS_INVALID_TEXT, C.STATUS_ENGINE_ERROR):
        return str(status)
    counts = {reason: int((drops or {}).get(reason) or 0) for reason in C.PARSE_DROP_REASONS}
    best = max(C.PARSE_DROP_REASONS, key=lambda reason: counts[reason])  # max keeps the first of equal counts
    if counts[best] > 0:
        return best
    return EMPTY_OUTPUT if status is not None else UNKNOWN_CAUSE


# ---------------------------------------------------------------------------------------------------- the map
class QualityFigures:
    """Batched map adding the per-row quality columns (`QUALITY_COLUMNS`); all input columns are kept.

    Columns read: `text_column` (default `text`), `pairs`, and when present `synth_status`, `parse_drops`.
    Columns written: `quality_num_pairs`, `question_tokens`, `answer_tokens`, `task_types`, `grounding`,
    `answer_overlap`, `question_hashes`, `no_pairs_cause`, `text_language` and `pairs_language` (`hf_ipt.language`:
    the text's, and the row's questions and answers together). A None/non-string text counts as ""; a None `pairs` as
    none; a pair whose question or answer is not a string counts it as "".

    The tokenizer (a name/path or an object; None: whitespace words) is loaded once per process, on first use, so
    the object can be pickled to `num_proc` workers.

    Example:
        >>> from datasets import Dataset
        >>> ds = Dataset.from_dict({"text": ["Cats purr."], "pairs": [[{"instruction": "Do cats purr?",
        ...                                                             "response": "Yes."}]]})
        >>> ds.map(QualityFigures(), batched=True)[0]["task_types"]
        ['yes_no']
    """

    def __init__(
        self,
        tokenizer: Any = None,
        *,
        text_column: str = C.TEXT,
        overlap_threshold: float = DEFAULT_OVERLAP_THRESHOLD,
    ) -> None:
        if not 0.0 <= float(overlap_threshold) <= 1.0:
            raise ValueError(f"quality.overlap_threshold must be between 0 and 1, got {overlap_threshold!r}")
        self.tokenizer = tokenizer
        self.text_column = text_column
        self.overlap_threshold = float(overlap_threshold)
        self._encoder: FastEncoder | None = None

    @property
    def length_unit(self) -> str:
        """How lengths are counted, as the report names it."""
        if self.tokenizer is None:
            return "whitespace-separated words"
        name = self.tokenizer if isinstance(self.tokenizer, (str, os.PathLike)) else tokenizer_name(self.tokenizer)
        return f"tokens of {str(name)!r}"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_encoder"] = None  # loaded again in each worker process
        return state

    def _lengths(self, texts: list[str]) -> list[int]:
        if self.tokenizer is None:
            return [len(t.split()) for t in texts]
        if self._encoder is None:
            self._encoder = FastEncoder(load_tokenizer(self.tokenizer, key="quality.tokenizer"))
        return self._encoder.lengths(texts)

    def __call__(self, batch: Mapping[str, list]) -> dict[str, list]:
        if C.PAIRS not in batch:
            raise ValueError(
                f"the quality figures read the column {C.PAIRS!r} (written by synthesis), but the rows have only "
                f"{sorted(batch)}; run them on synthesized rows"
            )
        if self.text_column not in batch:
            raise ValueError(
                f"the quality figures read the text column {self.text_column!r}, but the rows have only "
                f"{sorted(batch)}; pass text_column= (the recipe's source.text_column)"
            )
        texts, all_pairs = batch[self.text_column], batch[C.PAIRS]
        statuses = batch.get(C.SYNTH_STATUS)
        drops = batch.get(C.PARSE_DROPS)
        threshold = self.overlap_threshold
        out: dict[str, list] = {name: [] for name in QUALITY_COLUMNS}
        questions: list[str] = []
        answers: list[str] = []
        instruction_key, response_key = C.INSTRUCTION, C.RESPONSE
        for row, (text, pairs) in enumerate(zip(texts, all_pairs, strict=True)):
            context = _Context(text if isinstance(text, str) else "")
            types, grounded, overlaps = [], [], []
            for pair in pairs or ():
                # plain dicts of strings (what `datasets` gives) skip the slower ABC checks
                if type(pair) is dict:
                    question, answer = pair.get(instruction_key), pair.get(response_key)
                elif isinstance(pair, Mapping):
                    question, answer = pair.get(instruction_key), pair.get(response_key)
                else:
                    question = answer = None
                if type(question) is not str:
                    question = question if isinstance(question, str) else ""
                if type(answer) is not str:
                    answer = answer if isinstance(answer, str) else ""
                questions.append(question)
                answers.append(answer)
                kind, target = task_type(question, answer)
                value, overlap = grounding(target, context, threshold)
                types.append(kind)
                grounded.append(value)
                overlaps.append(overlap)
            count = len(types)
            out[NUM_PAIRS_COLUMN].append(count)
            out[TASK_TYPES_COLUMN].append(types)
            out[GROUNDING].append(grounded)
            out[ANSWER_OVERLAP].append(overlaps)
            if count:
                out[NO_PAIRS_CAUSE].append("")
            else:
                status = statuses[row] if statuses is not None else None
                row_drops = drops[row] if drops is not None else None
                out[NO_PAIRS_CAUSE].append(no_pairs_cause(status, row_drops))
        out[TEXT_LANGUAGE] = detect_languages(texts)
        spoken, position = [], 0
        for count in out[NUM_PAIRS_COLUMN]:
            spoken.append(
                " ".join(
                    f"{q} {a}"
                    for q, a in zip(
                        questions[position : position + count], answers[position : position + count], strict=True
                    )
                )
            )
            position += count
        out[PAIRS_LANGUAGE] = detect_languages(spoken)
        lengths = self._lengths(questions + answers)
        hashes = [_hash_normalized(normalize(q)) for q in questions]
        position, total = 0, len(questions)
        for count in out[NUM_PAIRS_COLUMN]:
            end = position + count
            out[QUESTION_TOKENS].append(lengths[position:end])
            out[ANSWER_TOKENS].append(lengths[total + position : total + end])
            out[QUESTION_HASHES].append(hashes[position:end])
            position = end
        return {**batch, **out}


def add_quality_columns(
    dataset: Any,
    tokenizer: Any = None,
    *,
    text_column: str = C.TEXT,
    overlap_threshold: float = DEFAULT_OVERLAP_THRESHOLD,
    num_proc: int | None = None,
    batch_size: int = 1000,
) -> Any:
    """`dataset.map(QualityFigures(...), batched=True)`: the rows with the quality columns added.

    Example:
        >>> figures = add_quality_columns(synthesized, num_proc=4)  # doctest: +SKIP
        >>> figures.column_names[-1]  # doctest: +SKIP
        'no_pairs_cause'
    """
    mapper = QualityFigures(tokenizer, text_column=text_column, overlap_threshold=overlap_threshold)
    kwargs: dict[str, Any] = {"batched": True, "batch_size": batch_size}
    if num_proc is not None:
        kwargs.update(num_proc=num_proc, desc="Quality figures")
    return dataset.map(mapper, **kwargs)


# ---------------------------------------------------------------------------------------------------- the report
class _Worst:
    """The `k` entries with the smallest keys seen, whatever order they come in (keys end with row/pair indices, so
    ties never depend on batching)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.heap: list[tuple[Any, Any]] = []  # (negated key, entry): a max-heap of the k smallest

    def offer(self, key: tuple, make_entry) -> None:
        if self.k <= 0:
            return
        negated = tuple(-x for x in key)
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, (negated, make_entry()))
        elif negated > self.heap[0][0]:
            heapq.heapreplace(self.heap, (negated, make_entry()))

    def entries(self) -> list[Any]:
        return [entry for _, entry in sorted(self.heap, key=lambda item: tuple(-x for x in item[0]))]


def _cut(text: Any) -> str:
    text = text if isinstance(text, str) else ""
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def quality_report(
    dataset: Any,
    *,
    tokenizer: Any = None,
    text_column: str = C.TEXT,
    overlap_threshold: float = DEFAULT_OVERLAP_THRESHOLD,
    examples: int = EXAMPLES_PER_KIND,
    num_proc: int | None = None,
    batch_size: int = 1000,
) -> dict[str, Any]:
    """The quality report of synthesized rows: the map (`QualityFigures`, unless the rows already carry its
    columns), then one reduction in row order, so every figure is the same for any batch size or `num_proc`.

    Columns read: those of `QualityFigures`, plus `pairs` and the text column for the examples and `synth_output`
    (when present) for the examples of rows without pairs. Keys: rows, pairs, texts_with_pairs, length_unit,
    pairs_per_text / question_tokens / answer_tokens (`hf_ipt.stats.Distribution` dicts), task_types ({type:
    pairs}), grounding (counts, rate, by task type), duplicates, no_pairs (by cause), examples (the worst of each
    kind) and filters (None until `apply_filters` adds its counts).

    Example:
        >>> from datasets import Dataset
        >>> rows = Dataset.from_dict({"text": ["A cat sat."], "pairs": [[{"instruction": "Who sat?",
        ...                                                               "response": "A cat"}]]})
        >>> report = quality_report(rows)
        >>> report["pairs"], report["grounding"]["rate"], report["task_types"]["short_extractive"]
        (1, 1.0, 1)
    """
    mapper = QualityFigures(tokenizer, text_column=text_column, overlap_threshold=overlap_threshold)
    if not set(QUALITY_COLUMNS) <= set(dataset.column_names):
        dataset = add_quality_columns(
            dataset,
            tokenizer,
            text_column=text_column,
            overlap_threshold=overlap_threshold,
            num_proc=num_proc,
            batch_size=batch_size,
        )

    def batches(columns: list[str]) -> Iterable[Mapping[str, list]]:
        return dataset.select_columns(columns).iter(batch_size=batch_size)

    return reduce_quality(
        batches,
        dataset.column_names,
        text_column=text_column,
        length_unit=mapper.length_unit,
        overlap_threshold=mapper.overlap_threshold,
        examples=examples,
    )


def reduce_quality(
    batches: Callable[[list[str]], Iterable[Mapping[str, list]]],
    column_names: Sequence[str],
    *,
    text_column: str = C.TEXT,
    length_unit: str = "whitespace-separated words",
    overlap_threshold: float = DEFAULT_OVERLAP_THRESHOLD,
    examples: int = EXAMPLES_PER_KIND,
) -> dict[str, Any]:
    """The reduction of `quality_report` over rows that already carry the quality columns, read as batches of
    columns in row order: `batches(columns)` yields {column: values} batches of the rows (it is called twice: the
    examples of repeated questions are found in a second pass). What a sharded run calls with the batches of its
    shard files, so no whole dataset is ever loaded; the figures do not depend on how the rows are batched.

    Columns read: those of `QualityFigures`, `pairs`, `text_column`, and `synth_output` when `column_names` has it.

    Example:
        >>> rows = add_quality_columns(Dataset.from_dict({"text": ["A cat sat."], "pairs": [[{"instruction":
        ...     "Who sat?", "response": "A cat"}]]}))  # doctest: +SKIP
        >>> reduce_quality(lambda columns: rows.select_columns(columns).iter(batch_size=2),
        ...                rows.column_names)["pairs"]  # doctest: +SKIP
        1
    """
    import numpy as np

    rows = 0
    per_text, question_lengths, answer_lengths = Distribution(), Distribution(), Distribution()
    types: Counter[str] = Counter()
    grounded: Counter[str] = Counter()
    by_type: dict[str, Counter[str]] = {kind: Counter() for kind in TASK_TYPES}
    causes: Counter[str] = Counter()
    text_languages: Counter[str] = Counter()
    pair_languages: Counter[str] = Counter()
    crossed: Counter[str] = Counter()  # non-English texts with pairs: "all", and "english" when their pairs are
    hash_values = array("q")  # 8 bytes per pair: the only figure kept per pair until the end
    worst = {
        "ungrounded": _Worst(examples),
        "longest_questions": _Worst(examples),
        "longest_answers": _Worst(examples),
        "shortest_answers": _Worst(examples),
        "no_pairs": _Worst(examples),
    }
    wanted = [*QUALITY_COLUMNS, C.PAIRS, text_column] + ([C.SYNTH_OUTPUT] if C.SYNTH_OUTPUT in column_names else [])
    start = 0
    for batch in batches(list(dict.fromkeys(wanted))):
        counts = batch[NUM_PAIRS_COLUMN]
        rows += len(counts)
        per_text.add(counts)
        text_languages.update(batch[TEXT_LANGUAGE])
        for count, text_language, pairs_language in zip(
            counts, batch[TEXT_LANGUAGE], batch[PAIRS_LANGUAGE], strict=True
        ):
            if count:
                pair_languages[pairs_language] += 1
                if text_language not in (ENGLISH, ""):
                    crossed["all"] += 1
                    crossed["english"] += pairs_language == ENGLISH
        for offset, count in enumerate(counts):
            index = start + offset
            pairs = batch[C.PAIRS][offset] or []
            if not count:
                cause = batch[NO_PAIRS_CAUSE][offset]
                causes[cause] += 1
                output = batch[C.SYNTH_OUTPUT][offset] if C.SYNTH_OUTPUT in batch else None
                # one example per cause first (the cause's rank), then by row
                worst["no_pairs"].offer(
                    (causes[cause], index),
                    lambda i=index, c=cause, o=output, t=batch[text_column][offset]: {
                        "row": i,
                        "cause": c,
                        "text": _cut(t),
                        "synth_output": _cut(o),
                    },
                )
                continue
            kinds, values = batch[TASK_TYPES_COLUMN][offset], batch[GROUNDING][offset]
            overlaps = batch[ANSWER_OVERLAP][offset]
            questions, answers = batch[QUESTION_TOKENS][offset], batch[ANSWER_TOKENS][offset]
            question_lengths.add(questions)
            answer_lengths.add(answers)
            types.update(kinds)
            grounded.update(values)
            for kind, value in zip(kinds, values, strict=True):
                by_type[kind][value] += 1
            hash_values.extend(batch[QUESTION_HASHES][offset])

            def pair_entry(p: int, i: int = index, ps: list = pairs, row_kinds: list = kinds, **extra: Any):
                pair = ps[p] if isinstance(ps[p], Mapping) else {}
                return {
                    "row": i,
                    "pair": p,
                    "task_type": row_kinds[p],
                    "question": _cut(pair.get(C.INSTRUCTION)),
                    "answer": _cut(pair.get(C.RESPONSE)),
                    **extra,
                }

            text = batch[text_column][offset]
            for p in range(count):
                if values[p] == UNGROUNDED:
                    worst["ungrounded"].offer(
                        (overlaps[p], index, p),
                        lambda p=p, o=overlaps[p], t=text: pair_entry(p, overlap=round(o, 4), text=_cut(t)),
                    )
                worst["longest_questions"].offer(
                    (-questions[p], index, p), lambda p=p, n=questions[p]: pair_entry(p, question_length=n)
                )
                worst["longest_answers"].offer(
                    (-answers[p], index, p), lambda p=p, n=answers[p]: pair_entry(p, answer_length=n)
                )
                if kinds[p] != YES_NO:  # a one-word "yes" is the expected answer, not a poor one
                    worst["shortest_answers"].offer(
                        (answers[p], index, p), lambda p=p, n=answers[p]: pair_entry(p, answer_length=n)
                    )
        start += len(counts)

    hashes = np.frombuffer(hash_values, dtype=np.int64) if hash_values else np.zeros(0, dtype=np.int64)
    unique, first_index, counts_per_hash = np.unique(hashes, return_index=True, return_counts=True)
    repeated = counts_per_hash > 1
    total_pairs = int(hashes.size)
    duplicates = {
        "pairs": total_pairs,
        "distinct_questions": int(unique.size),
        "repeated_questions": int(repeated.sum()),
        "pairs_with_repeated_question": int(counts_per_hash[repeated].sum()),
        "extra_copies": total_pairs - int(unique.size),
        "rate": _share(total_pairs - int(unique.size), total_pairs),
    }
    # the most repeated questions (ties: the one seen first), with the row of their first occurrence
    order = sorted(np.flatnonzero(repeated).tolist(), key=lambda i: (-int(counts_per_hash[i]), int(first_index[i])))
    duplicated_examples = _repeated_examples(
        batches, [(int(unique[i]), int(counts_per_hash[i])) for i in order[:examples]]
    )

    applicable = sum(grounded[v] for v in GROUNDED_VALUES) + grounded[UNGROUNDED]
    grounded_total = sum(grounded[v] for v in GROUNDED_VALUES)
    with_pairs = rows - sum(causes.values())
    return {
        "format": REPORT_FORMAT,
        "rows": rows,
        "pairs": total_pairs,
        "texts_with_pairs": with_pairs,
        "length_unit": length_unit,
        "pairs_per_text": {**per_text.to_dict(), "value_counts": per_text.value_counts()},
        "question_tokens": question_lengths.to_dict(),
        "answer_tokens": answer_lengths.to_dict(),
        "task_types": {kind: types[kind] for kind in TASK_TYPES},
        "grounding": {
            "overlap_threshold": overlap_threshold,
            "counts": {value: grounded[value] for value in GROUNDING_VALUES},
            "grounded": grounded_total,
            "applicable": applicable,
            "rate": _share(grounded_total, applicable),
            "by_task_type": {
                kind: {
                    "grounded": sum(by_type[kind][v] for v in GROUNDED_VALUES),
                    "applicable": sum(by_type[kind][v] for v in GROUNDED_VALUES) + by_type[kind][UNGROUNDED],
                }
                for kind in TASK_TYPES
            },
        },
        "duplicates": duplicates,
        "no_pairs": {
            "rows": rows - with_pairs,
            "rate": _share(rows - with_pairs, rows),
            "by_cause": dict(sorted(causes.items(), key=lambda item: (-item[1], item[0]))),
        },
        "language": {
            "identifier": identifier(),
            "texts": _by_count(text_languages),
            "pairs": _by_count(pair_languages),
            "non_english_with_pairs": crossed["all"],
            "non_english_with_english_pairs": crossed["english"],
        },
        "examples": {
            "ungrounded": worst["ungrounded"].entries(),
            "repeated_questions": duplicated_examples,
            "longest_questions": worst["longest_questions"].entries(),
            "longest_answers": worst["longest_answers"].entries(),
            "shortest_answers": worst["shortest_answers"].entries(),
            "no_pairs": worst["no_pairs"].entries(),
        },
        "filters": None,
    }


def _by_count(counts: Counter[str]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _repeated_examples(
    batches: Callable[[list[str]], Iterable[Mapping[str, list]]], wanted: list[tuple[int, int]]
) -> list[dict[str, Any]]:
    """For each (hash, count), the question's first occurrence (row, pair, text) and how often it occurs."""
    if not wanted:
        return []
    found: dict[int, dict[str, Any]] = {}
    counts = dict(wanted)
    start = 0
    for batch in batches([QUESTION_HASHES, C.PAIRS]):
        for offset, hashes in enumerate(batch[QUESTION_HASHES]):
            for p, value in enumerate(hashes or ()):
                if value in counts and value not in found:
                    pair = batch[C.PAIRS][offset][p]
                    found[value] = {
                        "question": _cut(pair.get(C.INSTRUCTION) if isinstance(pair, Mapping) else None),
                        "occurrences": counts[value],
                        "first_row": start + offset,
                        "first_pair": p,
                    }
        start += len(batch[QUESTION_HASHES])
        if len(found) == len(counts):
            break
    return [found[value] for value, _ in wanted if value in found]


# ---------------------------------------------------------------------------------------------------- filters
@dataclass(frozen=True)
class FilterPlan:
    """What the recipe's filters keep of a corpus, decided over the whole corpus (`plan_filters`) before any row is
    rewritten, so a plan cut into shards (`shard`) gives each shard exactly what the whole-corpus pass would.

    `keep_pairs`: one bool per pair, in row order; `offsets`: the pairs of row r are
    `keep_pairs[offsets[r]:offsets[r + 1]]`; `keep_rows`: one bool per row; `counts`: the report's `filters`.

    Example:
        >>> plan = FilterPlan(np.array([True, False]), np.array([0, 1, 2]), np.array([True, False]), {})
        ... # doctest: +SKIP
        >>> plan.shard(1, 2).keep_pairs.tolist(), plan.shard(1, 2).offsets.tolist()  # doctest: +SKIP
        ([False], [0, 1])
    """

    keep_pairs: Any
    offsets: Any
    keep_rows: Any
    counts: dict[str, Any]

    @property
    def changes_nothing(self) -> bool:
        """Whether every pair and every row is kept."""
        return bool(self.keep_pairs.all() and self.keep_rows.all())

    def shard(self, start: int, stop: int) -> FilterPlan:
        """The plan of rows `[start, stop)` alone (offsets from 0; `counts` left out: they are the corpus')."""
        first, last = int(self.offsets[start]), int(self.offsets[stop])
        return FilterPlan(
            self.keep_pairs[first:last], self.offsets[start : stop + 1] - first, self.keep_rows[start:stop], {}
        )


def plan_filters(figures: Iterable[Any], config: QualityConfig) -> FilterPlan:
    """The filters' decisions over a corpus whose quality columns come as Arrow tables in row order (one table, or
    one per shard): in order, ungrounded pairs (`quality.drop_ungrounded`), then pairs whose normalized question
    appeared earlier in row order among the pairs still kept (`quality.drop_duplicate_questions`), then rows left
    with fewer than `quality.min_pairs_per_text` pairs. Holds 10 bytes per pair and 17 per row, never a Python
    object per row.

    Columns read: `quality_num_pairs`, `grounding`, `question_hashes`.

    Example:
        >>> figures = add_quality_columns(rows).with_format("arrow")[:]  # doctest: +SKIP
        >>> plan = plan_filters([figures], QualityConfig(min_pairs_per_text=1))  # doctest: +SKIP
        >>> plan.counts["rows_dropped_min_pairs"]  # doctest: +SKIP
        2
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    counts, ungrounded, hashes = [], [], []
    for table in figures:
        counts.append(np.asarray(table[NUM_PAIRS_COLUMN].to_numpy(zero_copy_only=False), dtype=np.int64))
        grounding = pa.chunked_array(table[GROUNDING]).combine_chunks().flatten()
        question_hashes = pa.chunked_array(table[QUESTION_HASHES]).combine_chunks().flatten()
        if pa.types.is_null(grounding.type):  # no pair in these rows: their list columns have no value type
            ungrounded.append(np.zeros(len(grounding), dtype=bool))
            hashes.append(np.zeros(len(question_hashes), dtype=np.int64))
            continue
        ungrounded.append(
            np.asarray(pc.fill_null(pc.equal(grounding, UNGROUNDED), False).to_numpy(zero_copy_only=False))
        )
        hashes.append(np.asarray(question_hashes.to_numpy(zero_copy_only=False), dtype=np.int64))
    per_row = np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int64)
    flat_ungrounded = np.concatenate(ungrounded) if ungrounded else np.zeros(0, dtype=bool)
    flat_hashes = np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.int64)
    keep = np.ones(int(offsets[-1]), dtype=bool)
    dropped_ungrounded = dropped_duplicate = 0
    if config.drop_ungrounded:
        keep &= ~flat_ungrounded
        dropped_ungrounded = int((~keep).sum())
    if config.drop_duplicate_questions:
        positions = np.flatnonzero(keep)
        _, first = np.unique(flat_hashes[positions], return_index=True)
        firsts = np.zeros(positions.size, dtype=bool)
        firsts[first] = True
        keep[positions[~firsts]] = False
        dropped_duplicate = int((~firsts).sum())
    kept_so_far = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])
    kept_per_row = kept_so_far[offsets[1:]] - kept_so_far[offsets[:-1]]
    rows_keep = kept_per_row >= config.min_pairs_per_text
    result = {
        "drop_ungrounded": config.drop_ungrounded,
        "drop_duplicate_questions": config.drop_duplicate_questions,
        "min_pairs_per_text": config.min_pairs_per_text,
        "pairs_dropped_ungrounded": dropped_ungrounded,
        "pairs_dropped_duplicate": dropped_duplicate,
        "rows_dropped_min_pairs": int((~rows_keep).sum()),
        "pairs_dropped_with_rows": int(kept_per_row[~rows_keep].sum()),
        "rows_kept": int(rows_keep.sum()),
        "pairs_kept": int(kept_per_row[rows_keep].sum()),
    }
    return FilterPlan(keep, offsets, rows_keep, result)


def filter_rows(dataset: Any, plan: FilterPlan) -> Any:
    """`dataset` (the rows `plan` was made for, row for row) with the plan applied: only the `pairs` column
    changes; dropped rows are removed. The (batched, index-addressed) rewrite never depends on batching.

    Example:
        >>> filter_rows(rows, plan_filters([figures], QualityConfig(drop_ungrounded=True))).num_rows  # doctest: +SKIP
        5
    """
    import numpy as np

    if len(plan.keep_rows) != len(dataset):
        raise ValueError(f"the filter plan is for {len(plan.keep_rows)} rows but the dataset has {len(dataset)}")
    if plan.changes_nothing:
        return dataset
    keep, offsets = plan.keep_pairs, plan.offsets

    def rewrite(batch: Mapping[str, list], indices: list[int]) -> dict[str, list]:
        pairs = []
        for row_pairs, index in zip(batch[C.PAIRS], indices, strict=True):
            mask = keep[offsets[index] : offsets[index + 1]]
            pairs.append([pair for pair, kept in zip(row_pairs or (), mask, strict=True) if kept])
        return {C.PAIRS: pairs}

    filtered = dataset.map(rewrite, batched=True, with_indices=True, desc="Quality filters")
    if not plan.keep_rows.all():
        filtered = filtered.select(np.flatnonzero(plan.keep_rows).tolist()).flatten_indices()
    return filtered


def apply_filters(dataset: Any, config: QualityConfig, figures: Any) -> tuple[Any, dict[str, Any]]:
    """The rows with the recipe's filters applied, and what each filter removed (the report's `filters`).

    `figures` is `dataset` with the quality columns (`add_quality_columns`), row for row. The decisions are
    `plan_filters`' (over the whole corpus), their application `filter_rows`'.

    Example:
        >>> kept, counts = apply_filters(rows, QualityConfig(drop_ungrounded=True), add_quality_columns(rows))
        ...     # doctest: +SKIP
        >>> counts["pairs_dropped_ungrounded"]  # doctest: +SKIP
        3
    """
    if len(figures) != len(dataset):
        raise ValueError(f"figures has {len(figures)} rows but the dataset {len(dataset)}; map the same rows")
    table = figures.select_columns([NUM_PAIRS_COLUMN, GROUNDING, QUESTION_HASHES]).with_format("arrow")[:]
    plan = plan_filters([table], config)
    return filter_rows(dataset, plan), plan.counts


def report_and_filter(dataset: Any, config: QualityConfig, *, text_column: str = C.TEXT) -> tuple[Any, dict]:
    """The quality report of synthesized rows (before any filter) and the rows after `config`'s filters, with the
    filters' counts in the report's `filters` (None when no filter is on). What the pipeline runs before templify.

    Example:
        >>> kept, report = report_and_filter(synthesized, QualityConfig(min_pairs_per_text=1))  # doctest: +SKIP
        >>> report["filters"]["rows_dropped_min_pairs"] == report["no_pairs"]["rows"]  # doctest: +SKIP
        True
    """
    figures = add_quality_columns(
        dataset, config.tokenizer, text_column=text_column, overlap_threshold=config.overlap_threshold
    )
    report = quality_report(
        figures,
        tokenizer=config.tokenizer,
        text_column=text_column,
        overlap_threshold=config.overlap_threshold,
        examples=config.examples,
    )
    if config.filters_enabled:
        dataset, report["filters"] = apply_filters(dataset, config, figures)
    return dataset, report


# ---------------------------------------------------------------------------------------------------- figures
@dataclass(frozen=True)
class Figure:
    """One figure of a report, as the card shows it and `compare` judges it.

    `kind`: "count", "share" (0-1, shown in %) or "number"; `better`: "higher", "lower" or None (neither). A count
    of a part (`whole`: the count it is part of, e.g. chunks without pairs of all chunks) is shown with its share and
    judged by that share, so a count and its share never get two verdicts. `warning`: a plain sentence when the value
    signals a broken synthesizer (the card prints it next to the figure).
    """

    key: str
    label: str
    value: float | int | None
    kind: str = "count"
    better: str | None = None
    whole: int | None = None
    warning: str = ""

    @property
    def share(self) -> float | None:
        """`value / whole` for a count of a part; None otherwise."""
        if self.whole is None or self.value is None:
            return None
        return _share(self.value, self.whole)

    def shown(self) -> str:
        """The value as text: 1,234 / 12.34% / 5.67 / 23 (7.17%); "—" when missing."""
        text = format_value(self.value, self.kind)
        if self.share is not None:
            text += f" ({format_value(self.share, 'share')})"
        return text


def format_value(value: Any, kind: str) -> str:
    """How the card and `hf-ipt report` write a figure's value.

    Example:
        >>> format_value(1234, "count"), format_value(0.12345, "share"), format_value(2.5, "number")
        ('1,234', '12.35%', '2.50')
    """
    if value is None or isinstance(value, bool) or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if kind == "share":
        return f"{100 * value:.2f}%"
    if kind == "number":
        return f"{value:,.2f}"
    return f"{int(value):,}"


# Values that signal a broken synthesizer rather than a corpus' character (the tiny offline model hits them all):
# the real synthesizer's answers come from their text, its questions differ from text to text, and it parses.
LOW_GROUNDING = 0.5
HIGH_REPETITION = 0.3
HIGH_NO_PAIRS = 0.2


def figures(report: Mapping[str, Any]) -> list[Figure]:
    """Every comparable figure of a quality report, in the order the card and the comparison list them. The unit of
    the report is the chunk: a row synthesis read (a source row, or a piece of one when chunking cut it).

    Example:
        >>> [f.key for f in figures(quality_report_of_rows)][:3]  # doctest: +SKIP
        ['rows', 'pairs', 'pairs_per_text.mean']
    """
    pairs = report.get("pairs") or 0
    rows = report.get("rows")
    unit = report.get("length_unit") or "tokens"
    grounding_figures = report.get("grounding") or {}
    counts = grounding_figures.get("counts") or {}
    duplicates = report.get("duplicates") or {}
    no_pairs = report.get("no_pairs") or {}
    rate = grounding_figures.get("rate")
    repeated = duplicates.get("rate")
    missing = no_pairs.get("rate")
    out = [
        Figure("rows", "Chunks (rows synthesized)", rows),
        Figure("pairs", "Pairs", pairs, better="higher"),
        Figure("pairs_per_text.mean", "Pairs per chunk, mean", (report.get("pairs_per_text") or {}).get("mean"),
               "number", "higher"),
        Figure("no_pairs.rows", "Chunks without pairs", no_pairs.get("rows"), better="lower", whole=rows,
               warning=_warn(missing is not None and missing > HIGH_NO_PAIRS,
                             "the synthesizer's output for many chunks could not be parsed into any pair")),
        Figure("question_tokens.mean", f"Question length, mean ({unit})",
               (report.get("question_tokens") or {}).get("mean"), "number"),
        Figure("question_tokens.p50", f"Question length, median ({unit})",
               ((report.get("question_tokens") or {}).get("quantiles") or {}).get("p50"), "number"),
        Figure("answer_tokens.mean", f"Answer length, mean ({unit})",
               (report.get("answer_tokens") or {}).get("mean"), "number"),
        Figure("answer_tokens.p50", f"Answer length, median ({unit})",
               ((report.get("answer_tokens") or {}).get("quantiles") or {}).get("p50"), "number"),
    ]  # fmt: skip
    # JSON writers may sort keys (stats.json does): the order shown is fixed here
    kinds = report.get("task_types") or {}
    for kind in [k for k in TASK_TYPES if k in kinds] + sorted(set(kinds) - set(TASK_TYPES)):
        out.append(
            Figure(f"task_types.{kind}", f"Task type `{kind}` (share of pairs)", _share(kinds[kind], pairs), "share")
        )
    out += [
        Figure("grounding.rate", "Grounded answers (share of checkable pairs)", rate, "share", "higher",
               warning=_warn(rate is not None and rate < LOW_GROUNDING,
                             "most answers are not found in their text: the synthesizer is not answering from it")),
        Figure("grounding.exact", "Answers found verbatim in their text", _share(counts.get(EXACT, 0), pairs),
               "share", "higher"),
        Figure("grounding.not_applicable", "Pairs with a yes/no answer (not checkable)", counts.get(NOT_APPLICABLE),
               whole=pairs),
        Figure("duplicates.rate", "Repeated questions (extra copies, share of pairs)", repeated, "share", "lower",
               warning=_warn(repeated is not None and repeated > HIGH_REPETITION,
                             "the synthesizer asks the same questions whatever the text")),
        Figure("duplicates.pairs_with_repeated_question", "Pairs whose question occurs more than once",
               duplicates.get("pairs_with_repeated_question"), better="lower", whole=pairs),
    ]  # fmt: skip
    causes = no_pairs.get("by_cause") or {}
    for cause in sorted(causes, key=lambda name: (-causes[name], name)):
        out.append(Figure(f"no_pairs.{cause}", f"Chunks without pairs: `{cause}`", causes[cause], better="lower",
                          whole=rows))  # fmt: skip
    out += language_figures(report.get("language"))
    filters = report.get("filters")
    if filters:
        for key, label in (
            ("pairs_dropped_ungrounded", "Filter: ungrounded pairs dropped"),
            ("pairs_dropped_duplicate", "Filter: repeated-question pairs dropped"),
            ("rows_dropped_min_pairs", "Filter: chunks dropped (too few pairs)"),
            ("pairs_dropped_with_rows", "Filter: pairs dropped with those chunks"),
            ("pairs_kept", "Filter: pairs kept"),
            ("rows_kept", "Filter: chunks kept"),
        ):
            out.append(Figure(f"filters.{key}", label, filters.get(key)))
    return out


def language_figures(language: Mapping[str, Any] | None) -> list[Figure]:
    """The figures of a report's `language` block: the chunks whose text is English and in each of the five most
    frequent other languages, the chunks whose pairs are English, and the non-English chunks that got English pairs
    (the synthesizer is English-trained). None for a report made before languages were told.

    Example:
        >>> [f.label for f in language_figures({"texts": {"zh": 9, "en": 1}, "pairs": {"en": 10},
        ...                                     "non_english_with_pairs": 9, "non_english_with_english_pairs": 9})][:2]
        ['Chunks whose text is English', 'Chunks whose text is Chinese (`zh`)']
    """
    if not language:
        return []
    texts, pairs = language.get("texts") or {}, language.get("pairs") or {}
    chunks = sum(texts.values())
    english = texts.get(ENGLISH, 0)
    mostly_other = bool(chunks) and english / chunks < MOSTLY_ENGLISH
    out = [
        Figure(f"language.texts.{ENGLISH}", "Chunks whose text is English", english, whole=chunks,
               warning=_warn(mostly_other, "most texts are not English, and the synthesizer is English-trained")),
    ]  # fmt: skip
    others = [code for code in texts if code != ENGLISH][:5]
    out += [
        Figure(f"language.texts.{code}", f"Chunks whose text is {language_name(code)}", texts[code], whole=chunks)
        for code in others
    ]
    crossed, of = language.get("non_english_with_english_pairs", 0), language.get("non_english_with_pairs", 0)
    out += [
        Figure(f"language.pairs.{ENGLISH}", "Chunks whose pairs are English", pairs.get(ENGLISH, 0),
               whole=sum(pairs.values())),
        Figure("language.non_english_with_english_pairs", "Non-English chunks that got English pairs", crossed,
               better="lower", whole=of,
               warning=_warn(bool(of) and crossed / of > 0.5,
                             "texts in other languages got questions and answers in English")),
    ]  # fmt: skip
    return out


def _warn(condition: bool, text: str) -> str:
    return text if condition else ""


def warnings_of(report: Mapping[str, Any] | None) -> list[str]:
    """The plain warnings a quality report's figures carry, each with its figure: what the card puts first.

    Example:
        >>> warnings_of({"rows": 10, "pairs": 10, "grounding": {"rate": 0.1}})[0].startswith("Grounded answers")
        True
    """
    if not report:
        return []
    return [f"{f.label}: {f.shown()}: {f.warning}." for f in figures(report) if f.warning]


# ---------------------------------------------------------------------------------------------------- comparison
@dataclass(frozen=True)
class FigureChange:
    """One figure of two reports: `value` (the report looked at), `baseline` (the one compared against), change, and
    one verdict (a count of a part is judged by its share, like the share itself)."""

    key: str
    label: str
    baseline: float | int | None
    value: float | int | None
    kind: str
    verdict: str
    share: float | None = None  # value / whole, for a count of a part
    baseline_share: float | None = None

    def change(self) -> str:
        """The difference as text: +1,234 / -2.50 pts / +0.25 / +3 (+0.50 pts); "—" when a side lacks the figure."""
        if self.value is None or self.baseline is None:
            return "—"
        delta = self.value - self.baseline
        if self.kind == "share":
            return f"{100 * delta:+.2f} pts"
        if self.kind == "number":
            return f"{delta:+,.2f}"
        shown = f"{int(delta):+,}"
        if self.share is not None and self.baseline_share is not None:
            shown += f" ({100 * (self.share - self.baseline_share):+.2f} pts)"
        return shown

    def shown(self, which: str) -> str:
        """`value` ("value") or `baseline` ("baseline") as text, with its share for a count of a part."""
        value, share = (self.value, self.share) if which == "value" else (self.baseline, self.baseline_share)
        text = format_value(value, self.kind)
        return text + (f" ({format_value(share, 'share')})" if share is not None else "")


def _verdict(baseline: Any, value: Any, better: str | None, kind: str) -> str:
    if value is None and baseline is None:
        return "missing in both"
    if value is None or baseline is None:
        return "only in " + ("the baseline" if value is None else "this report")
    # equal as shown (the card's precision) counts as unchanged
    if format_value(value, kind) == format_value(baseline, kind):
        return "unchanged"
    if better is None:
        return "changed (neither better nor worse)"
    return "better" if (value > baseline) == (better == "higher") else "worse"


def compare(report: Mapping[str, Any], baseline: Mapping[str, Any]) -> list[FigureChange]:
    """Every figure of `report` next to the same figure of `baseline`, with one verdict per figure: "better",
    "worse", "unchanged", "changed (neither better nor worse)" or "only in ...". A count of a part (chunks without
    pairs) is judged by its share, so it always agrees with the share. Reports are `quality_report`s, as
    `hf_ipt.reports.load_report` reads them from a release folder, a run's output folder or `owner/name@rev`.

    Example:
        >>> changes = compare(load_report("output/m3/release"), load_report("output/m2/release"))  # doctest: +SKIP
        >>> changes[0].verdict  # doctest: +SKIP
        'unchanged'
    """
    mine = {f.key: f for f in figures(report)}
    theirs = {f.key: f for f in figures(baseline)}
    changes = []
    for key in list(mine) + [k for k in theirs if k not in mine]:
        figure = mine.get(key) or theirs[key]
        value = mine[key].value if key in mine else None
        before = theirs[key].value if key in theirs else None
        share = mine[key].share if key in mine else None
        before_share = theirs[key].share if key in theirs else None
        if figure.whole is not None and (share is not None or before_share is not None):
            verdict = _verdict(before_share, share, figure.better, "share")
            if verdict == "unchanged" and format_value(value, "count") != format_value(before, "count"):
                verdict = "changed (same share)"
        else:
            verdict = _verdict(before, value, figure.better, figure.kind)
        changes.append(FigureChange(key, figure.label, before, value, figure.kind, verdict, share, before_share))
    return changes


def format_comparison(changes: Sequence[FigureChange], name: str, other: str) -> str:
    """A side-by-side table in the order of the command (`hf-ipt report NAME --against OTHER`): figure, `name`,
    `other`, the change from `other` to `name`, one verdict; then one line counting the verdicts.

    Example:
        >>> print(format_comparison(compare(a, b), "A", "B").splitlines()[0])  # doctest: +SKIP
        figure  A  B  change  verdict
    """
    header = ("figure", name, other, "change", "verdict")
    rows = [header] + [(c.label, c.shown("value"), c.shown("baseline"), c.change(), c.verdict) for c in changes]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    better = [c.label for c in changes if c.verdict == "better"]
    worse = [c.label for c in changes if c.verdict == "worse"]
    lines.append(
        f"\n{name} against {other} (change: {name} minus {other}): {len(better)} figure(s) better, "
        f"{len(worse)} worse, {len(changes) - len(better) - len(worse)} neither"
    )
    return "\n".join(lines)


def format_report(report: Mapping[str, Any], name: str) -> str:
    """One report as aligned lines (figure, value): what `hf-ipt report RELEASE` prints without --against.

    Example:
        >>> print(format_report(report, "v0.1").splitlines()[0])  # doctest: +SKIP
        Quality of v0.1 (lengths in whitespace-separated words)
    """
    rows = [(f.label, f.shown()) for f in figures(report)]
    width = max((len(label) for label, _ in rows), default=0)
    lines = [f"Quality of {name} (lengths in {report.get('length_unit')})"]
    lines += [f"  {label.ljust(width)}  {value}" for label, value in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- plots, JSON
# name -> (file name, title), in the order the card shows them
# (two: lengths and the causes of chunks without pairs are figures of the table, a plot adds nothing to them)
QUALITY_PLOTS: dict[str, tuple[str, str]] = {
    "quality_task_types": ("quality_task_types.png", "Pairs by task type"),
    "quality_grounding": ("quality_grounding.png", "Grounding of the answers"),
}
# what each grounding value means for the reader: grounded (green), not grounded (red), cannot be checked (grey)
GROUNDING_COLORS = {EXACT: "#55A868", NORMALIZED: "#55A868", OVERLAP: "#8CC084", UNGROUNDED: "#C44E52",
                    NOT_APPLICABLE: "#999999"}  # fmt: skip


def render_quality_plots(report: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """PNG plots of a quality report (`QUALITY_PLOTS`) into `out_dir`; a plot without data is skipped.
    Needs matplotlib (`pip install 'hf-ipt[plots]'`).

    Example:
        >>> sorted(render_quality_plots(report, "/tmp/q"))  # doctest: +SKIP
        ['quality_answer_length', 'quality_grounding', 'quality_question_length', 'quality_task_types']
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Path] = {}

    def draw(name: str, counts: Mapping[str, int], xlabel: str, colors: Mapping[str, str] | None = None) -> None:
        shown = {label: count for label, count in counts.items() if count}  # no empty bars
        if shown:
            file_name, title = QUALITY_PLOTS[name]
            labels = list(shown)
            plots[name] = bar_chart(
                out / file_name, labels, [shown[k] for k in labels], title, xlabel, "pairs",
                colors=[(colors or {}).get(k, "#4C72B0") for k in labels],
            )  # fmt: skip

    draw("quality_task_types", report.get("task_types") or {}, "task type")
    draw("quality_grounding", (report.get("grounding") or {}).get("counts") or {}, "grounding", GROUNDING_COLORS)
    return plots


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike, *, plots: bool = True) -> dict[str, Path]:
    """`quality.json` (the whole report, examples included) and, with matplotlib, the PNG plots into `out_dir`.

    Example:
        >>> sorted(write_report(load_report("output/quickstart"), "out/quality"))  # doctest: +SKIP
        ['quality.json', 'quality_answer_length', ...]
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {"quality.json": out / "quality.json"}
    written["quality.json"].write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if plots:
        written.update(render_quality_plots(report, out))
    return written


# ---------------------------------------------------------------------------------------------------- the card
def card_view(report: Mapping[str, Any] | None, plot_paths: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """What the card's "Quality" block shows of a report: its figures (as `figures` formats them), the filters,
    the rows without pairs by cause, and the plots; None when there is no report.

    Example:
        >>> card_view(None) is None
        True
    """
    if not report:
        return None
    filters = report.get("filters")
    if filters:
        applied = [
            name
            for name, on in (
                ("drop ungrounded pairs", filters.get("drop_ungrounded")),
                ("drop repeated questions", filters.get("drop_duplicate_questions")),
                (f"at least {filters.get('min_pairs_per_text')} pairs per chunk", filters.get("min_pairs_per_text")),
            )
            if on
        ]
        filter_text = "Filters applied (`quality.*`): " + ", ".join(applied) + "; their counts are in the table."
    else:
        filter_text = "No quality filter was applied (`quality.*` filters are off by default): every pair is kept."
    threshold = (report.get("grounding") or {}).get("overlap_threshold")
    return {
        "intro": (
            f"Measured on the {format_value(report.get('pairs'), 'count')} synthesized pairs of "
            f"{format_value(report.get('rows'), 'count')} chunks before any filter; lengths in "
            f"{report.get('length_unit')}. An answer (a chain of thought's final answer) is grounded when it occurs "
            "in its text verbatim or after normalization (lower case, punctuation as spaces), or when at least "
            f"{format_value(threshold, 'share')} of its words occur in the text; yes/no answers cannot be checked. "
            "Repeated questions are counted over the whole config after the same normalization."
            + (
                f" Languages are told by {(report.get('language') or {}).get('identifier')}, for each chunk's text "
                "and for its pairs together."
                if report.get("language")
                else ""
            )
        ),
        "filters": filter_text,
        "rows": [(f.label, f.shown()) for f in figures(report)],
        "plots": [
            {"title": QUALITY_PLOTS[key][1] if key in QUALITY_PLOTS else key, "path": path}
            for key, path in (plot_paths or {}).items()
        ],
    }


def quality_of_splits(splits: Mapping[str, Any]) -> dict[str, Any] | None:
    """The quality report of released rows that still carry a `pairs` column (and a `text` column), all splits
    together in split order; None when they do not (rendered texts: the pipeline passes the synthesized rows'
    report instead, `ReleaseInfo.quality`).

    Example:
        >>> quality_of_splits({"train": synthesized})["pairs"]  # doctest: +SKIP
        120
    """
    if not splits or not all({C.PAIRS, C.TEXT} <= set(d.column_names) for d in splits.values()):
        return None
    import datasets

    names = list(splits)
    rows = splits[names[0]] if len(names) == 1 else datasets.concatenate_datasets([splits[n] for n in names])
    return quality_report(rows)


def quality_summary(reports: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """The figures `hf-ipt templify` prints of the quality reports ({split: report}).

    Example:
        >>> quality_summary({"train": {"grounding": {"rate": 0.5}, "duplicates": {"rate": 0.1}}})
        {'grounded answers': '50.00%', 'repeated questions': '10.00%'}
    """
    out: dict[str, str] = {}
    for split, report in reports.items():
        prefix = f"{split}: " if len(reports) > 1 else ""
        out[f"{prefix}grounded answers"] = format_value((report.get("grounding") or {}).get("rate"), "share")
        out[f"{prefix}repeated questions"] = format_value((report.get("duplicates") or {}).get("rate"), "share")
        filters = report.get("filters")
        if filters:
            out[f"{prefix}quality filters"] = (
                f"{filters['pairs_dropped_ungrounded']:,} ungrounded and {filters['pairs_dropped_duplicate']:,} "
                f"repeated pairs dropped, {filters['rows_dropped_min_pairs']:,} texts dropped"
            )
    return out
