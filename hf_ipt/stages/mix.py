"""The mix stage: the templified texts mixed with the recipe's other corpora by token ratio.

Reads `templified/` and each mix source; every other source is first formatted like the templified texts, with the
BOS/EOS templify wrapped them in (`hf_ipt.mixing.SourcePreparer`, what `prepare_source` maps), so both halves of the
mix look alike and the ratio is counted on equal wrappings. Writes `mixed/` (the mix's columns: `text`, `num_tokens`,
`source`, `source_index`) and commits the mix report (`hf_ipt.mixing.MixReport`).

The rows and their order are those of `hf_ipt.mixing.mix` (the same selection, the same `Dataset.shuffle(seed)`
order), made in shards on the run's executor (`run.executor`, `run.num_workers`; `StageContext.run_shards`), so
memory is bounded by `mix.shard_rows`, not by the corpus:

1. `count` (a shard per templified file, and per `mix.shard_rows` rows of every other source): each shard's token
   counts, written as an array (-1 for a row the mix leaves out), and its excluded rows by reason;
2. the driver selects from the counts alone, memory-mapped on local disk (`hf_ipt.mixing.select_mix`), draws the
   final order, and writes for each input shard its selected rows and their places in the mix;
3. `route` (a shard per input shard): its selected rows labelled (`MixRowLabeller`), cut by the output shard they
   go to, as one Arrow file;
4. `gather` (a shard per `mix.shard_rows` rows of the mix): its rows from every routed file, in the mix's order,
   written as `data/<split>-NNNNN-of-NNNNN.parquet`.

Example:
    >>> stage = MixStage(MixConfig(weights={"augmented": 1, "general": 1}, tokenizer="output/tiny"),
    ...                  {"general": MixSourceConfig(path="bundled:quickstart_general", kind="general_instructions")})
    >>> stage.run(RunConfig(output_dir="output/quickstart")).figures["achieved ratio"]  # doctest: +SKIP
    'augmented 1, general 1'
"""

from __future__ import annotations

import dataclasses
import io
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from hf_ipt.config import AUGMENTED_SOURCE, MixSourceConfig, RecipeConfig, RunConfig, check_mix_sources
from hf_ipt.execution.phases import WORK_DIR, ShardResult, read_columns
from hf_ipt.formatting import TargetFormat
from hf_ipt.mixing import (
    GENERAL_INSTRUCTIONS,
    DiskArrays,
    MixConfig,
    MixRowLabeller,
    MixWarning,
    SourceCounts,
    SourcePreparer,
    TokenCounter,
    check_format_counts,
    check_source_features,
    excluded_rows,
    load_tokenizer,
    log_mix,
    mix_features,
    mix_report,
    random_order,
    select_mix,
)
from hf_ipt.preflight import Check, check_source, tokenizer_check
from hf_ipt.stages.base import (
    NO_OPTIONS,
    CommandOptions,
    InPlace,
    Stage,
    StageContext,
    StageOutput,
    StageSummary,
    stage_data_files,
)
from hf_ipt.stages.templify import TemplifyStage
from hf_ipt.store import DATA_DIR, StageFolder, Store, config_to_dict
from hf_ipt.tokenization import tokenizer_name
from hf_ipt.validation import ConfigError, Problem

POSITION = "__mix_position"  # a routed row's place in the mix (dropped before the mix is written)


class MixStage(Stage):
    """Mix the templified texts (source `augmented`) with other corpora by token ratio.

    Args:
        config: the mix's settings (`MixConfig`: weights by source name, the target tokenizer, tolerance, seed).
        sources: the other corpora by their names in `config.weights` (`MixSourceConfig`: a dataset and its kind,
            `general_instructions` or `raw`).

    Example:
        >>> MixStage(MixConfig(weights={"augmented": 1, "web": 3}, tokenizer="gpt2"),
        ...          {"web": MixSourceConfig(path="allenai/c4", name="en")}).identity()["mix"]["weights"]
        {'augmented': 1, 'web': 3}
    """

    name: ClassVar[str] = "mix"
    description: ClassVar[str] = "mix the templified texts with other corpora by token ratio"
    folder: ClassVar[str] = "mixed"
    sections: ClassVar[tuple[str, ...]] = ("mix", "mix_sources", "templify", "run")
    missing: ClassVar[str] = "this recipe has no `mix` section; add one (see recipes/README.md) or skip `hf-ipt mix`"
    reads = TemplifyStage

    def __init__(self, config: MixConfig, sources: Mapping[str, MixSourceConfig]) -> None:
        check_mix_sources(config, sources)
        self.config = config
        self.sources = dict(sources)

    @classmethod
    def from_recipe(cls, recipe: RecipeConfig, options: CommandOptions = NO_OPTIONS) -> MixStage | None:
        """The stage of the recipe's `mix` and `mix_sources` sections; None when it has no `mix` section."""
        return None if recipe.mix is None else cls(recipe.mix, recipe.mix_sources)

    def identity(self) -> dict[str, Any]:
        return {"mix": config_to_dict(self.config), "mix_sources": config_to_dict(self.sources)}

    def checks(self, run: RunConfig, built_later: set[str]) -> list[Check]:
        found = [
            Check(f"mix source {name!r} ({source.path})", lambda name=name: self.source_problems(name))
            for name, source in self.sources.items()
        ]
        if isinstance(self.config.tokenizer, str):
            found.append(tokenizer_check("mix.tokenizer", self.config.tokenizer, None, built_later))
        return found

    def source_problems(self, name: str) -> list[Problem]:
        """Mix source `name` is readable and has the columns its kind reads (question/response for general
        instructions, the text column for raw corpora)."""
        source = self.sources[name]
        key = f"mix_sources.{name}"
        if source.kind == GENERAL_INSTRUCTIONS:
            columns = {
                f"{key}.question_column": source.question_column,
                f"{key}.response_column": source.response_column,
            }
        elif name in self.config.text_columns:
            columns = {f"mix.text_columns.{name}": self.config.text_columns[name]}
        else:
            columns = {f"{key}.text_column": source.text_column}
        return check_source(source, key, columns)

    def compute(self, context: StageContext) -> StageOutput:
        import warnings

        files = stage_data_files(context.upstream)
        splits = sorted({split for split, _ in files})
        if len(splits) != 1:
            raise ConfigError(f"the mix reads one split of templified texts, {context.upstream.url} holds {splits}")
        split = splits[0]
        config, sources = self.inputs(context.upstream, [relative for _, relative in files])
        check_source_features({name: source.features for name, source in sources.items()}, config)
        tokenizer = load_tokenizer(config.tokenizer, key="mix.tokenizer")
        bare = TargetFormat(tokenizer.bos_token or "", tokenizer.eos_token or "")
        shards = [(name, k) for name, source in sources.items() for k in range(len(source.starts) - 1)]
        layout = {"inputs": [source.layout() for source in sources.values()], "shard_rows": config.shard_rows}
        count = CountShards(sources, shards, config, bare)
        counted = context.run_shards("count", count, len(shards), layout=layout, scratch=True, desc="Counting tokens")
        with tempfile.TemporaryDirectory(prefix="hf-ipt-mix-") as scratch:
            allocate = DiskArrays(scratch)
            per_source = gather_counts(context.output, sources, shards, counted, config, allocate)
            formats = {name: summed_formats(counted, shards, name) for name in sources}
            check_format_counts(formats, bare)
            selection = select_mix(per_source, config, allocate=allocate)
            for note in selection.notes:
                warnings.warn(note, MixWarning, stacklevel=2)
            columns = {name: list(source.features) for name, source in sources.items()}
            report = mix_report(selection, per_source, config, tokenizer=tokenizer_name(tokenizer), columns=columns)
            num_outputs = max(1, -(-selection.rows // config.shard_rows))
            write_routes(context.output, sources, shards, selection, config, allocate)
        layout["outputs"] = num_outputs
        features = mix_features(config, next(iter(sources.values())).features)
        route = RouteShards(sources, shards, config, features, num_outputs)
        context.run_shards("route", route, len(shards), layout=layout, scratch=True, desc="Routing the mix")
        targets = [f"{DATA_DIR}/{split}-{j:05d}-of-{num_outputs:05d}.parquet" for j in range(num_outputs)]
        gather = GatherShards(len(shards), targets, features)
        markers = context.run_shards("gather", gather, num_outputs, layout=layout, desc="Writing the mix")
        log_mix(report)
        return StageOutput(report=report.to_dict(), in_place=InPlace.of_shards(markers))

    def inputs(self, templified: StageFolder, files: list[str]) -> tuple[MixConfig, dict[str, MixInput]]:
        """The mix's settings with every source's text column, and its sources in the order of `mix.weights`: the
        templified files (source `augmented`) and each mix source, with how it is prepared."""
        target = target_format_of(templified)
        text_columns = dict(self.config.text_columns)
        found: dict[str, MixInput] = {AUGMENTED_SOURCE: StageInput(templified, files)}
        for name, source in self.sources.items():
            general = source.kind == GENERAL_INSTRUCTIONS
            column = text_columns.setdefault(name, self.config.text_column if general else source.text_column)
            preparer = SourcePreparer(
                source.kind,
                column,
                target,
                source.question_column if general else None,
                source.response_column if general else None,
                name=name,
            )
            found[name] = DatasetInput(source, preparer, self.config.shard_rows)
        config = dataclasses.replace(self.config, text_columns=text_columns)
        return config, {name: found[name] for name in config.weights}

    def summarize(self, report: Mapping[str, Any], summary: StageSummary, output: StageFolder) -> None:
        if not report:
            return
        summary.figures["tokens"] = report.get("total_tokens")
        summary.figures["tokens by source"] = ", ".join(
            f"{name} {entry['tokens_selected']:,}" for name, entry in report.get("sources", {}).items()
        )
        summary.figures["achieved ratio"] = ", ".join(
            f"{name} {value:.4g}" for name, value in report.get("achieved_ratio", {}).items()
        )


def target_format_of(templified: StageFolder) -> TargetFormat:
    """The BOS/EOS templify wrapped its texts in, as its stage recorded them.

    Example:
        >>> target_format_of(RunFolder("output/quickstart").stage("templified")).bos  # doctest: +SKIP
        '<s>'
    """
    recorded = templified.report().get("target_format") or {}
    return TargetFormat(recorded.get("bos", ""), recorded.get("eos", ""))


# ----------------------------------------------------------------------------------------------------------------
# The sources, cut in shards
# ----------------------------------------------------------------------------------------------------------------


class MixInput(ABC):
    """One source of the mix cut in shards: `starts` (the first row of each shard, then the row count), its prepared
    rows' `features`, and `read(k, columns)`, the prepared rows of shard k (only `columns`, those it has)."""

    starts: list[int]
    features: Any

    @abstractmethod
    def read(self, shard: int, columns: Sequence[str]) -> pa.Table:
        """The prepared rows of shard `shard`, only `columns` (those it has)."""

    @abstractmethod
    def layout(self) -> dict[str, Any]:
        """What identifies the source's rows and shards (a phase's layout)."""


class StageInput(MixInput):
    """The templified texts: one shard per data file of the templify stage."""

    def __init__(self, folder: StageFolder, files: list[str]) -> None:
        import pyarrow.parquet as pq

        self.folder, self.files = folder, files
        self.features = folder.read_features(files)
        rows = []
        for relative in files:
            with folder.fs.open(folder.path(relative), "rb") as handle:
                rows.append(pq.ParquetFile(handle).metadata.num_rows)
        self.starts = [0, *np.cumsum(rows).tolist()]

    def read(self, shard: int, columns: Sequence[str]) -> pa.Table:
        return read_columns(self.folder, self.files[shard], columns)

    def layout(self) -> dict[str, Any]:
        return {"files": self.files, "rows": self.starts}


class DatasetInput(MixInput):
    """A mix source (`MixSourceConfig`): `shard_rows` rows a shard, prepared (`SourcePreparer`) as they are read. Each
    shard loads the dataset (memory-mapped, from `datasets`' cache) and lets it go, so the pages it read leave this
    process with it."""

    def __init__(self, source: MixSourceConfig, preparer: SourcePreparer, shard_rows: int) -> None:
        self.source, self.preparer = source, preparer
        dataset = source.load()
        self.features = preparer.features(dataset.features)
        self.cache_files = [entry["filename"] for entry in dataset.cache_files]
        rows = len(dataset)
        self.starts = [*range(0, rows, shard_rows), rows] if rows else [0, 0]

    def read(self, shard: int, columns: Sequence[str]) -> pa.Table:
        dataset = self.source.load()
        rows = dataset.with_format("arrow")[self.starts[shard] : self.starts[shard + 1]]
        # a copy in this process's memory: the memory map is released with the dataset when this returns
        rows = rows.take(pa.array(np.arange(rows.num_rows, dtype=np.int64)))
        del dataset
        prepared = self.preparer.apply(rows)
        return prepared.select([c for c in columns if c in prepared.column_names])

    def layout(self) -> dict[str, Any]:
        return {"source": config_to_dict(self.source), "cache_files": self.cache_files, "rows": self.starts}


# ----------------------------------------------------------------------------------------------------------------
# count -> select -> route -> gather
# ----------------------------------------------------------------------------------------------------------------


def count_file(index: int) -> str:
    return f"{WORK_DIR}/count/counts-{index:05d}.npy"


def route_file(index: int) -> str:
    return f"{WORK_DIR}/route/selected-{index:05d}.npz"


def routed_file(index: int) -> str:
    return f"{WORK_DIR}/route/rows-{index:05d}.arrow"


def array_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    if len(arrays) == 1:
        np.save(buffer, next(iter(arrays.values())))
    else:
        np.savez(buffer, **arrays)
    return buffer.getvalue()


def read_array(store: Store, relative: str) -> Any:
    return np.load(io.BytesIO(store.fs.cat_file(store.path(relative))))


class CountShards:
    """Shard i (input shard `shards[i]`: a source and its k-th shard): each row's token count under the mix's
    tokenizer, -1 for a row the mix leaves out (`excluded_rows`), as an .npy array; its figures: the exclusions by
    reason and the texts carrying the tokenizer's BOS/EOS (`format_counts`)."""

    def __init__(
        self, sources: dict[str, MixInput], shards: list[tuple[str, int]], config: MixConfig, bare: TargetFormat
    ) -> None:
        self.sources, self.shards, self.config, self.bare = sources, shards, config, bare
        self.counters: dict[str, TokenCounter] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "counters": {}}  # each worker loads the tokenizer itself, once

    def __call__(self, index: int, store: Store) -> ShardResult:
        from hf_ipt.mixing import format_counts

        name, shard = self.shards[index]
        config = self.config
        column = config.text_column_of(name)
        table = self.sources[name].read(shard, [*config.status_columns, column])
        if name not in self.counters:
            self.counters[name] = TokenCounter(config.tokenizer, column, config.token_count_column)
        counts = np.zeros(table.num_rows, dtype=np.int64)
        for start in range(0, table.num_rows, config.batch_size):
            texts = table.column(column).slice(start, config.batch_size)
            counts[start : start + len(texts)] = self.counters[name].count(texts)
        mask, reasons = excluded_rows(table, counts, name=name, text_column=column, config=config)
        formats = format_counts(table.column(column), self.bare)
        figures = {"excluded": reasons, "eligible": int((~mask).sum()), "formats": formats}
        return ShardResult({count_file(index): array_bytes(counts=np.where(mask, -1, counts))}, len(counts), figures)


def gather_counts(
    output: StageFolder,
    sources: Mapping[str, MixInput],
    shards: list[tuple[str, int]],
    counted: list[dict[str, Any]],
    config: MixConfig,
    allocate: Any,
) -> dict[str, SourceCounts]:
    """Every source's eligible rows and their counts, from the count shards, into arrays from `allocate`."""
    per_source = {}
    for name, source in sources.items():
        indices = [i for i, (owner, _) in enumerate(shards) if owner == name]
        total = sum(counted[i]["figures"]["eligible"] for i in indices)
        eligible, counts = allocate(total, np.int64), allocate(total, np.int64)
        excluded: dict[str, int] = {}
        end = 0
        for i in indices:
            found = read_array(output, count_file(i))
            kept = np.flatnonzero(found >= 0)
            eligible[end : end + len(kept)] = kept + source.starts[shards[i][1]]
            counts[end : end + len(kept)] = found[kept]
            end += len(kept)
            for reason, rows in counted[i]["figures"]["excluded"].items():
                excluded[reason] = excluded.get(reason, 0) + rows
        per_source[name] = SourceCounts(eligible, counts, source.starts[-1], excluded)
    return per_source


def summed_formats(counted: list[dict[str, Any]], shards: list[tuple[str, int]], name: str) -> tuple[int, int] | None:
    """A source's `format_counts`, added over its shards (None when no shard holds any text)."""
    found = [counted[i]["figures"]["formats"] for i, (owner, _) in enumerate(shards) if owner == name]
    found = [pair for pair in found if pair is not None]
    return (sum(p[0] for p in found), sum(p[1] for p in found)) if found else None


def write_routes(
    output: StageFolder,
    sources: Mapping[str, MixInput],
    shards: list[tuple[str, int]],
    selection: Any,
    config: MixConfig,
    allocate: Any,
) -> None:
    """For each input shard, its selected rows (relative to the shard) and their places in the mix: the order of
    `Dataset.shuffle(seed)` over the sources' selected rows, concatenated in the order of `mix.weights`."""
    order = random_order(selection.rows, np.random.default_rng(config.seed), allocate)
    places = allocate(selection.rows, np.int64)  # the place in the mix of each concatenated selected row
    block = 1 << 20
    for start in range(0, selection.rows, block):
        places[order[start : start + block]] = np.arange(start, min(selection.rows, start + block), dtype=np.int64)
    offsets, offset = {}, 0
    for name in sources:  # the sources' selected rows are concatenated in this order, each ascending
        offsets[name], offset = offset, offset + len(selection.selected[name])
    for index, (name, shard) in enumerate(shards):
        selected = selection.selected[name]
        first, stop = sources[name].starts[shard], sources[name].starts[shard + 1]
        low, high = (int(at) for at in np.searchsorted(selected, [first, stop]))
        rows = np.asarray(selected[low:high]) - first
        found = np.asarray(places[offsets[name] + low : offsets[name] + high])
        output.write_atomic(route_file(index), array_bytes(rows=rows, places=found))


class RouteShards:
    """Shard i (input shard `shards[i]`): its selected rows prepared and labelled (`MixRowLabeller`, the counts from
    its count shard), with their places in the mix, sorted by place and cut by output shard: an Arrow file of one
    record batch per output shard (empty where none of its rows go)."""

    def __init__(
        self,
        sources: dict[str, MixInput],
        shards: list[tuple[str, int]],
        config: MixConfig,
        features: Any,
        num_outputs: int,
    ) -> None:
        self.sources, self.shards, self.config = sources, shards, config
        self.features, self.num_outputs = features, num_outputs

    def __call__(self, index: int, store: Store) -> ShardResult:
        name, shard = self.shards[index]
        config = self.config
        route = read_array(store, route_file(index))
        rows, places = route["rows"], route["places"]
        counts = read_array(store, count_file(index))[rows]
        column = config.text_column_of(name)
        table = self.sources[name].read(shard, [column, *config.keep_columns]).take(pa.array(rows))
        table = table.append_column(config.token_count_column, pa.array(counts, type=pa.int64()))
        first = self.sources[name].starts[shard]
        labeller = MixRowLabeller(name, column, config.token_count_column, config.keep_columns, rows + first)
        labelled = labeller(table, np.arange(len(rows))).cast(self.features.arrow_schema)
        labelled = labelled.append_column(POSITION, pa.array(places, type=pa.int64()))
        by_place = np.argsort(places, kind="stable")
        labelled, places = labelled.take(pa.array(by_place)), places[by_place]
        cuts = np.searchsorted(places, np.arange(self.num_outputs + 1) * config.shard_rows)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, labelled.schema) as writer:
            for j in range(self.num_outputs):  # exactly one record batch per output shard, so batch j is shard j's
                part = labelled.slice(int(cuts[j]), int(cuts[j + 1] - cuts[j]))
                arrays = [column.combine_chunks() for column in part.columns]
                writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=labelled.schema))
        return ShardResult({routed_file(index): sink.getvalue().to_pybytes()}, len(rows))


class GatherShards:
    """Shard j of the mix: its rows from every routed file (record batch j), in the mix's order, written as a
    Parquet file with the mix's features, as `datasets` writes a dataset."""

    def __init__(self, num_inputs: int, targets: list[str], features: Any) -> None:
        self.num_inputs, self.targets, self.features = num_inputs, targets, features

    def __call__(self, index: int, store: Store) -> ShardResult:
        import datasets

        pieces, schema = [], None
        for i in range(self.num_inputs):
            with store.fs.open(store.path(routed_file(i)), "rb") as handle:
                reader = pa.ipc.open_file(handle)
                schema = reader.schema
                batch = reader.get_batch(index)
            if batch.num_rows:
                pieces.append(batch)
        table = pa.Table.from_batches(pieces, schema=schema)
        table = table.take(pa.array(np.argsort(table.column(POSITION).to_numpy(), kind="stable")))
        table = table.drop_columns([POSITION]).cast(self.features.arrow_schema)
        buffer = io.BytesIO()
        datasets.Dataset(table).to_parquet(buffer)
        return ShardResult({self.targets[index]: buffer.getvalue()}, table.num_rows)
