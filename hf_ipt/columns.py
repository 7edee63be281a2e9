"""Names of the columns each step writes, and the values of their status columns: the contract between the steps.

`synthesize_batch` keeps every input column and adds the synthesis columns; `templify` reads them and writes one row
per pre-training text; `mix` writes the mix's uniform schema. Every module (and the dataset card) names these
columns through this module, never as literals.
"""

from __future__ import annotations

from collections.abc import Iterable

# --- written by synthesis (hf_ipt.synthesis) ---
PAIRS = "pairs"  # list of {"instruction": str, "response": str}, parsed and deduplicated
SYNTH_OUTPUT = "synth_output"  # raw text the synthesizer wrote ("" when it was not called)
CHAIN_ID = "chain_id"  # str, identical for all rows of one multi-round chain, unique otherwise
CHAIN_POSITION = "chain_position"  # int, round index of the row inside its chain (0 = first)
NUM_DEMONSTRATIONS = "num_demonstrations"  # int, previous chain entries used as demonstrations
PROMPT_TOKENS = "prompt_tokens"  # int, tokens sent to the engine (0 when it was not called)
TRUNCATED = "truncated"  # bool, the row's own text was cut to fit max_model_len
SYNTH_STATUS = "synth_status"  # str, one of SYNTH_STATUSES
SYNTH_ERROR = "synth_error"  # str, human-readable detail for a non-"ok" status ("" otherwise)
PARSE_DROPS = "parse_drops"  # dict[str, int], pieces of the output the parser dropped, by reason
# bool, the prompt's content (the row's text or a demonstration's text/pairs) held a literal special-token string such
# as `<s>` or `</s>`; it was sent as those characters, never as a control id
SPECIAL_STRINGS = "special_strings"

SYNTH_COLUMNS = (
    PAIRS,
    SYNTH_OUTPUT,
    CHAIN_ID,
    CHAIN_POSITION,
    NUM_DEMONSTRATIONS,
    PROMPT_TOKENS,
    TRUNCATED,
    SYNTH_STATUS,
    SYNTH_ERROR,
    PARSE_DROPS,
    SPECIAL_STRINGS,
)

# synth_status values
STATUS_OK = "ok"  # at least one pair
STATUS_NO_PAIRS = "no_pairs"  # engine answered, parser kept nothing
STATUS_EMPTY_TEXT = "empty_text"  # "" or whitespace only: not sent to the engine
STATUS_INVALID_TEXT = "invalid_text"  # None or not a string: not sent to the engine
STATUS_ENGINE_ERROR = "engine_error"  # the engine failed on this row; synth_error says why
SYNTH_STATUSES = (STATUS_OK, STATUS_NO_PAIRS, STATUS_EMPTY_TEXT, STATUS_INVALID_TEXT, STATUS_ENGINE_ERROR)

# keys of PARSE_DROPS, always all present
DROP_UNTERMINATED = "unterminated"  # last piece without </END>
DROP_MALFORMED = "malformed"  # not exactly one <ANS>, or the question does not start with <QUE>
DROP_EMPTY_ANSWER = "empty_answer"
DROP_DUPLICATE = "duplicate"  # same lower-cased question seen before
PARSE_DROP_REASONS = (DROP_UNTERMINATED, DROP_MALFORMED, DROP_EMPTY_ANSWER, DROP_DUPLICATE)

# keys of one pair
INSTRUCTION = "instruction"
RESPONSE = "response"

# --- written by chunking (hf_ipt.synthesis.chunking) ---
SOURCE_ID = "source_id"  # str, hash of the whole source text, shared by all its pieces
SOURCE_ROW = "source_row"  # int, dataset index of the source row (only when mapped with with_indices=True)
CHUNK_INDEX = "chunk_index"  # int, position of the piece inside its source text
NUM_CHUNKS = "num_chunks"  # int, number of pieces the source text was cut into

# --- shared by templify and mixing ---
TEXT = "text"  # str, the pre-training text (wrapped with the target BOS/EOS when a target format is set)

# --- written by templify (hf_ipt.templify), one row per pre-training text ---
# CHAIN_ID (above) is written too: the chain the text's rows came from
CHAIN_POSITIONS = "chain_positions"  # list[int], chain positions of the input rows rendered in this text
SOURCE_IDS = "source_ids"  # list, the id-column values of those rows (only when TemplifyConfig.id_column is set)
MODE = "mode"  # str, how the pairs are laid out: one of hf_ipt.templify.MODES, "raw" (no pairs) or "skipped"
INVERTED = "inverted"  # bool, the pairs come first and the raw text last
FAMILIES_COLUMN = "families"  # list[str], sorted names of the template families used (hf_ipt.templify.FAMILIES)
NUM_PAIRS = "num_pairs"  # int, pairs rendered in the text
DROPPED_PAIRS = "dropped_pairs"  # int, pairs that could not be rendered (or belong to a skipped row)
TEMPLIFY_STATUS = "templify_status"  # str, one of TEMPLIFY_STATUSES

TEMPLIFY_COLUMNS = (
    TEXT,
    CHAIN_ID,
    CHAIN_POSITIONS,
    SOURCE_IDS,
    MODE,
    INVERTED,
    FAMILIES_COLUMN,
    NUM_PAIRS,
    DROPPED_PAIRS,
    TEMPLIFY_STATUS,
)

# templify_status values: the synthesis values for the same cases; a row that is not "ok" gives text ""
TEMPLIFY_STATUSES = (STATUS_OK, STATUS_EMPTY_TEXT, STATUS_INVALID_TEXT)

# --- written by mixing (hf_ipt.mixing) ---
# the mix's uniform schema: TEXT, NUM_TOKENS (MixConfig.token_count_column), SOURCE, SOURCE_INDEX, keep_columns
NUM_TOKENS = "num_tokens"  # int, tokens of TEXT under the target tokenizer, add_special_tokens=False
SOURCE = "source"  # str, name of the source a mixed row came from (a key of MixConfig.weights)
SOURCE_INDEX = "source_index"  # int, index of the row in the dataset passed for its source
MIX_COLUMNS = (TEXT, NUM_TOKENS, SOURCE, SOURCE_INDEX)

# written by GeneralInstructionFormatter before mixing; a row whose status is not "ok" gets text "" and is excluded
FORMAT_STATUS = "format_status"  # str, one of FORMAT_STATUSES
FORMAT_ERROR = "format_error"  # str, human-readable detail for a non-"ok" status ("" otherwise)

# format_status values
FORMAT_OK = STATUS_OK
FORMAT_MISSING_QUESTION = "missing_question"  # the question is None
FORMAT_EMPTY_QUESTION = "empty_question"  # "" or whitespace only
FORMAT_INVALID_QUESTION = "invalid_question"  # not a string
FORMAT_MISSING_RESPONSE = "missing_response"
FORMAT_EMPTY_RESPONSE = "empty_response"
FORMAT_INVALID_RESPONSE = "invalid_response"
FORMAT_STATUSES = (
    FORMAT_OK,
    FORMAT_MISSING_QUESTION,
    FORMAT_EMPTY_QUESTION,
    FORMAT_INVALID_QUESTION,
    FORMAT_MISSING_RESPONSE,
    FORMAT_EMPTY_RESPONSE,
    FORMAT_INVALID_RESPONSE,
)


def check_input_columns(
    columns: Iterable[str], written: Iterable[str], *, step: str, reads: Iterable[str] = ()
) -> None:
    """Refuse input columns that `step` would overwrite: every input column is kept, so a column named like one of the
    step's outputs (`written`) would be silently replaced. `reads` are the step's own declared inputs (e.g. the text
    column synthesis reads), which are allowed. Raises a ValueError naming the columns and the fix (rename them).

    Example:
        >>> check_input_columns(["text", "id"], SYNTH_COLUMNS, step="synthesis", reads=["text"])
        >>> try:
        ...     check_input_columns(["text", "pairs"], SYNTH_COLUMNS, step="synthesis", reads=["text"])
        ... except ValueError as err:
        ...     print(str(err)[:68])
        synthesis would overwrite the input column(s) ['pairs'] with its own
    """
    allowed = set(reads)
    writes = set(written)
    clash = [name for name in columns if name in writes and name not in allowed]
    if clash:
        first = clash[0]
        raise ValueError(
            f"{step} would overwrite the input column(s) {clash} with its own output column(s) of the same name "
            f"(it writes {sorted(writes)}); rename them before this step, e.g. "
            f"dataset.rename_column({first!r}, 'input_{first}'), or remove them with dataset.remove_columns({clash})"
        )


# what each column holds, in words for a reader of the dataset card ("Dataset structure")
DESCRIPTIONS: dict[str, str] = {
    TEXT: "The pre-training text. An augmented row is a text: a chain of source chunks, each followed (or preceded) "
    "by its synthesized question-answer pairs; another source's row is formatted like it (a general instruction "
    "is `question response`). Wrapped in the target model's BOS/EOS when one is set",
    NUM_TOKENS: "Tokens of `text` under the target tokenizer (`mix.tokenizer`), special tokens not added: the count "
    "the mix ratio is measured in",
    SOURCE: "The source the row comes from, by its name in `mix.weights` (`augmented`: the instruction-augmented "
    "texts)",
    SOURCE_INDEX: "Index of the row in its source as the mix read it (for `augmented`: the row of the templified "
    "texts)",
    CHAIN_ID: "The synthesis chain the text's chunks belong to",
    CHAIN_POSITIONS: "Positions in the chain of the chunks rendered in this text",
    SOURCE_IDS: "The id-column values of those chunks",
    MODE: "How the pairs are laid out (`classic`, `dialog`, `next_turn`, ...; `raw`: a text without pairs)",
    INVERTED: "Whether the pairs come before the text",
    FAMILIES_COLUMN: "The question/answer template families used",
    NUM_PAIRS: "Pairs rendered in the text",
    DROPPED_PAIRS: "Pairs that could not be rendered",
    TEMPLIFY_STATUS: "`ok`, or why the text is empty",
    PAIRS: "The parsed question-answer pairs of the chunk, each {instruction, response}",
    SYNTH_OUTPUT: "The synthesizer's raw output for the chunk",
    CHAIN_POSITION: "Round of the chunk in its chain (0 = first)",
    NUM_DEMONSTRATIONS: "Earlier chunks of the chain shown to the synthesizer as demonstrations",
    PROMPT_TOKENS: "Tokens sent to the synthesizer for the chunk",
    TRUNCATED: "Whether the chunk was cut to fit the synthesizer's context",
    SYNTH_STATUS: "`ok` (pairs), `no_pairs`, `empty_text`, `invalid_text` or `engine_error`",
    SYNTH_ERROR: "Detail of a status other than `ok`",
    PARSE_DROPS: "Pieces of the output the parser dropped, by reason",
    SPECIAL_STRINGS: "Whether the prompt held a literal `<s>`/`</s>` sent as text",
}
