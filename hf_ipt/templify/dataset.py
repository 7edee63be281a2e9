"""`templify(dataset, config)`: templify a whole `Dataset` (chains grouped into whole batches first) or a stream."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from hf_ipt import columns as C
from hf_ipt.columns import STATUS_OK, TEMPLIFY_STATUS
from hf_ipt.templify.batching import plan_chain_batches
from hf_ipt.templify.config import TemplifyConfig
from hf_ipt.templify.templifier import Templifier, output_features

logger = logging.getLogger(__name__)


def _is_ok(status: str) -> bool:
    return status == STATUS_OK


def with_text_column(config: TemplifyConfig, features: Any) -> TemplifyConfig:
    """`config` reading the column synthesis read: when its `text_column` is left at the default and the rows have
    no such column, the one string column that is not a synthesis output (synthesis keeps its input columns); the
    config as it is otherwise (several candidates: `Templifier.check_columns` names them).

    Example:
        >>> from datasets import Features, Value
        >>> with_text_column(TemplifyConfig(), Features({"content": Value("string"), "synth_output": Value("string"),
        ...                                              "chain_position": Value("int64")})).text_column
        'content'
    """
    default = TemplifyConfig().text_column
    if config.text_column in features or config.text_column != default:
        return config
    candidates = [
        name
        for name, feature in features.items()
        if name not in C.SYNTH_COLUMNS and name != config.id_column and getattr(feature, "dtype", None) == "string"
    ]
    if len(candidates) != 1:
        return config
    logger.info("templify: reading the text from column %r (the one text column besides synthesis')", candidates[0])
    return dataclasses.replace(config, text_column=candidates[0])


def templify(dataset: Any, config: TemplifyConfig | None = None) -> Any:
    """Templify a synthesized `Dataset` (or `IterableDataset`): one row per pre-training text.

    For a `Dataset`, the rows of each chain are first brought together (only the chain id and position columns are
    read for this), so every map batch holds whole chains whatever `config.batch_size` and `config.num_proc`: the
    output is byte-identical for any of them. Output rows come chain by chain, in order of each chain's first row,
    a chain's texts in position order. The input's other columns are not carried over (the provenance columns
    `chain_id`, `chain_positions` and `source_ids` lead back to the input rows).

    An `IterableDataset` cannot be regrouped: it is mapped with `config.batch_size`, which must then keep chains
    whole (use the synthesis batch size); a cut chain raises an error naming it.

    Example:
        >>> from datasets import Dataset
        >>> ds = Dataset.from_dict({
        ...     "text": ["First text.", "Second text."],
        ...     "pairs": [[{"instruction": "What comes first?", "response": "The first text."}],
        ...               [{"instruction": "And then?", "response": "The second."}]],
        ...     "chain_id": ["c", "c"], "chain_position": [0, 1], "num_demonstrations": [0, 1]})
        >>> out = templify(ds, TemplifyConfig(seed=0, batch_size=1))
        >>> out.num_rows, out[0]["chain_positions"], out[0]["num_pairs"]
        (1, [0, 1], 2)
    """
    from datasets import Dataset, IterableDataset, concatenate_datasets

    config = config if config is not None else TemplifyConfig()
    if getattr(dataset, "features", None) is not None:
        config = with_text_column(config, dataset.features)
    # a Dataset is regrouped into whole-chain batches below (plan_chain_batches); a stream is mapped as it comes
    function = Templifier(config, grouped=isinstance(dataset, Dataset))
    if isinstance(dataset, IterableDataset):
        if dataset.features is None:
            # the input columns must be removed (the output has other rows), so they must be known: datasets reads
            # them from the first example (there is no public spelling of this)
            dataset = dataset._resolve_features()
        function.check_columns(dataset.column_names)
        id_feature = dataset.features[config.id_column] if config.id_column else None
        mapped = dataset.map(
            function,
            batched=True,
            batch_size=config.batch_size,
            remove_columns=dataset.column_names,
            features=output_features(id_feature),
        )
        return mapped.filter(_is_ok, input_columns=TEMPLIFY_STATUS) if config.drop_skipped else mapped
    if not isinstance(dataset, Dataset):
        raise TypeError(
            f"templify expects a datasets.Dataset or IterableDataset, got {type(dataset).__name__}; for a dict of "
            "lists call Templifier(config)(batch)"
        )
    function.check_columns(dataset.column_names)
    source = dataset.select_columns(function.input_columns)
    features = output_features(source.features[config.id_column] if config.id_column else None)
    if source.num_rows == 0:
        return Dataset.from_dict({name: [] for name in features}, features=features)
    keys = source.select_columns([C.CHAIN_ID, C.CHAIN_POSITION]).with_format("arrow")[:]
    num_proc = config.num_proc or 1
    plan = plan_chain_batches(keys[C.CHAIN_ID], keys[C.CHAIN_POSITION], config.batch_size, num_proc)
    padding = Dataset.from_dict({name: [None] for name in source.column_names}, features=source.features)
    grouped = concatenate_datasets([source, padding]).select(plan.indices)
    out = (
        grouped.with_format("arrow")
        .map(  # Arrow batches: the pairs convert without a dict per pair
            function,
            batched=True,
            batch_size=plan.batch_size,
            num_proc=config.num_proc if num_proc > 1 else None,
            remove_columns=grouped.column_names,
            features=features,
            desc="Templify",
        )
        .with_format(None)
    )
    if config.drop_skipped:
        kept = out.filter(_is_ok, input_columns=TEMPLIFY_STATUS)
        if kept.num_rows < out.num_rows:
            logger.warning(
                "templify: dropped %d rows that give no text (empty or invalid text; drop_skipped=True)",
                out.num_rows - kept.num_rows,
            )
        out = kept
    return out
