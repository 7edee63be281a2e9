"""Names of the columns each step writes; the contract between the steps of the pipeline.

`synthesize_batch` keeps every input column and adds the columns below. `templify_batch` reads them.
"""

from __future__ import annotations

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
