"""Templify: synthesized rows (raw text + instruction-response pairs) become instruction-augmented pre-training texts.

Each chain of linked entries becomes ONE text: every entry is rendered (its raw text, then its pairs laid out through
natural-language templates) and the entries are joined by a separator chosen per chain. The templates are data, in
`hf_ipt/templify/templates/*.yaml`; see `hf_ipt.templify.templates`.

Modules: `config` (TemplifyConfig, the modes), `templifier` (Templifier, pair classification, output features),
`batching` (plan_chain_batches), `dataset` (templify), `templates` (the template data), `report` (its statistics,
`templify_stats`, and the templify stage's report).

Two entry points:

- `templify(dataset, config)` (use this one): groups the rows of each chain into the same map batch first, so any
  `batch_size` and `num_proc` give byte-identical output, then maps `Templifier` over the batches.
- `Templifier(config)`, the batched map function itself, for `Dataset.map`, `IterableDataset.map` and Ray Data
  `map_batches`. It needs every chain whole inside one batch: synthesis forms chains inside its own batches and
  keeps the row order, so map with `batch_size` = the synthesis batch size (or a multiple of it). A batch holding
  only part of a chain is refused with an error (a chain is never split across two texts). Pass
  `remove_columns=dataset.column_names`: the output has its own rows and columns. Batches may be dicts of lists,
  numpy/pandas columns, or pyarrow Tables (then a pyarrow Table comes back).

Columns read: the text column (`TemplifyConfig.text_column`, default `text`), `pairs`, `chain_id`, `chain_position`,
`num_demonstrations` (see `hf_ipt.columns`), and `TemplifyConfig.id_column` when set.

Columns written (`hf_ipt.columns.TEMPLIFY_COLUMNS`), one row per output text (every input row lands in exactly one
output row):
- `text`: the pre-training text (wrapped with the target BOS/EOS when a target format is set; "" for a skipped row);
- `chain_id`, `chain_positions` (the chain positions of the rows rendered in this text): the provenance;
- `source_ids`: the `id_column` values of those rows (only when `id_column` is set);
- `mode`: `classic`, `dialog`, `numbered`, `few_shot`, `next_turn`, `raw` (a text with no pairs, emitted as is) or
  `skipped` (no text);
- `inverted` (pairs first, text last), `families` (sorted names of the template families used: `qa`, `options`,
  `cot`, `options_cot`, `opening`, `lead_in`), `num_pairs`, `dropped_pairs` (pairs that could not be rendered:
  a multiple-choice answer that is not an option, an empty question or answer, or the pairs of a skipped row);
- `templify_status`: `ok`, or `empty_text` / `invalid_text` for a row whose text is "" / whitespace or not a
  string: such a row gives no text but keeps its own output row (text ""), so nothing disappears unaccounted;
  `TemplifyConfig.drop_skipped=True` removes them in `templify` (their count is logged).

Chains and links: the rows of one chain share `chain_id` and are ordered by `chain_position`. Entry k is linked to
entry k-1 when its `num_demonstrations` >= 1 and entry k-1 has pairs; a chain splits into runs of linked entries,
each run becoming one text. An entry without pairs gives its raw text as a text of its own.

Rendering one text (modes, options, chain of thought) and its determinism: see `hf_ipt.templify.templifier`. The
same rows and seed give byte-identical texts for any batch size, `num_proc`, shard order or run.

Target formatting (off by default): `target_tokenizer=` (or `target_format=TargetFormat(bos, eos)`) wraps every text
as `{bos}{text}{eos}`, e.g. `<|begin_of_text|>…<|end_of_text|>` for Llama-3. Tokenize such texts with
`add_special_tokens=False`, or the model gets a second BOS.

Example:
    >>> rows = {
    ...     "text": ["Cats sleep a lot.", "Dogs bark."],
    ...     "pairs": [[{"instruction": "Do cats sleep?", "response": "Yes."}], []],
    ...     "chain_id": ["c1", "c2"],
    ...     "chain_position": [0, 0],
    ...     "num_demonstrations": [0, 0],
    ... }
    >>> out = Templifier(TemplifyConfig(seed=1))(rows)
    >>> out["mode"], out["chain_id"], out["num_pairs"]
    (['classic', 'raw'], ['c1', 'c2'], [1, 0])
    >>> all(piece in out["text"][0] for piece in ("Cats sleep a lot.", "Do cats sleep?", "Yes."))
    True
    >>> out["text"][1]
    'Dogs bark.'
"""

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
    TEMPLIFY_STATUS,
    TEMPLIFY_STATUSES,
    TEXT,
)
from hf_ipt.templify.batching import ChainBatches, plan_chain_batches
from hf_ipt.templify.config import (
    CLASSIC,
    DEFAULT_MODE_WEIGHTS,
    DIALOG,
    FEW_SHOT,
    INPUT_COLUMNS,
    MODES,
    MULTI_PAIR_MODES,
    NEXT_TURN,
    NUMBERED,
    RAW,
    SKIPPED,
    TemplifyConfig,
)
from hf_ipt.templify.dataset import templify
from hf_ipt.templify.report import templify_stats
from hf_ipt.templify.templifier import (
    COT_CUE,
    COT_FINAL,
    FAMILIES,
    FAMILY_COT,
    FAMILY_LEAD_IN,
    FAMILY_OPENING,
    FAMILY_OPTIONS,
    FAMILY_OPTIONS_COT,
    FAMILY_QA,
    OPTION_SEPARATOR,
    OPTIONS_MARKER,
    Templifier,
    classify_pair,
    output_features,
    templify_batch,
)

__all__ = [
    "CHAIN_POSITIONS",
    "CLASSIC",
    "COT_CUE",
    "COT_FINAL",
    "DEFAULT_MODE_WEIGHTS",
    "DIALOG",
    "DROPPED_PAIRS",
    "FAMILIES",
    "FAMILIES_COLUMN",
    "FAMILY_COT",
    "FAMILY_LEAD_IN",
    "FAMILY_OPENING",
    "FAMILY_OPTIONS",
    "FAMILY_OPTIONS_COT",
    "FAMILY_QA",
    "FEW_SHOT",
    "INPUT_COLUMNS",
    "INVERTED",
    "MODE",
    "MODES",
    "MULTI_PAIR_MODES",
    "NEXT_TURN",
    "NUMBERED",
    "NUM_PAIRS",
    "OPTIONS_MARKER",
    "OPTION_SEPARATOR",
    "RAW",
    "SKIPPED",
    "SOURCE_IDS",
    "STATUS_EMPTY_TEXT",
    "STATUS_INVALID_TEXT",
    "STATUS_OK",
    "TEMPLIFY_STATUS",
    "TEMPLIFY_STATUSES",
    "TEXT",
    "ChainBatches",
    "Templifier",
    "TemplifyConfig",
    "classify_pair",
    "output_features",
    "plan_chain_batches",
    "templify",
    "templify_batch",
    "templify_stats",
]
