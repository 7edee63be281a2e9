"""The templify stage: the synthesized rows, after the optional `quality.*` filters, become pre-training texts.

Reads `synthesized/` (the text column and the synthesis columns); writes `templified/` (templify's output columns,
`hf_ipt.columns.TEMPLIFY_COLUMNS`), one split per synthesized split. Its report holds, per split, templify's
statistics (`hf_ipt.templify.report`) and the quality report of the synthesized pairs (`hf_ipt.quality`, measured
before the filters, with their counts), and the BOS/EOS every text was wrapped in (the mix formats its other sources
with the same).

It works shard by shard, one shard per synthesized data file, on the run's executor (`run.executor`,
`run.num_workers`; `StageContext.run_shards`): a synthesis shard holds whole chains (its rows are whole synthesis
batches, and chains never cross a batch), so templifying each file gives the texts of the whole corpus, in its order.
Two phases: `quality` (the quality columns of each file, scratch), then `templify` (each file's texts, after the
filters the driver decided over the whole corpus); between them the driver reduces the quality report, and after
them templify's statistics, reading the shard files batch by batch. No phase ever holds more than one file's rows.

Example:
    >>> TemplifyStage(TemplifyConfig(seed=0)).run(RunConfig(output_dir="output/quickstart")).figures["texts"]
    ... # doctest: +SKIP
    134
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

from hf_ipt.config import RecipeConfig, RunConfig
from hf_ipt.execution.phases import WORK_DIR, ShardResult, parquet_bytes, read_columns
from hf_ipt.preflight import Check, tokenizer_check
from hf_ipt.quality import (
    ANSWER_OVERLAP,
    ANSWER_TOKENS,
    GROUNDING,
    NO_PAIRS_CAUSE,
    NUM_PAIRS_COLUMN,
    QUALITY_COLUMNS,
    QUESTION_HASHES,
    QUESTION_TOKENS,
    TASK_TYPES_COLUMN,
    FilterPlan,
    QualityConfig,
    QualityFigures,
    filter_rows,
    plan_filters,
    quality_summary,
    reduce_quality,
)
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
from hf_ipt.stages.synthesize import SynthesizeStage
from hf_ipt.store import DATA_DIR, StageFolder, Store, config_to_dict
from hf_ipt.templify import TemplifyConfig, templify
from hf_ipt.templify.report import TEMPLIFY_REPORT_COLUMNS, templify_report, templify_summary

QUALITY_BATCH = 1000  # rows per batch of the quality columns' map and of the report's reductions


class TemplifyStage(Stage):
    """Turn the synthesized rows into pre-training texts.

    Args:
        config: templify's settings (`TemplifyConfig`). Its `text_column` need not be repeated: when left at the
            default it is the column synthesis read (as the synthesize stage recorded it).
        quality: the quality report's settings and its optional filters (`QualityConfig`), applied before templify.

    Example:
        >>> TemplifyStage(TemplifyConfig(seed=1)).identity()["templify"]["seed"]
        1
    """

    name: ClassVar[str] = "templify"
    description: ClassVar[str] = "turn synthesized rows into pre-training texts"
    folder: ClassVar[str] = "templified"
    sections: ClassVar[tuple[str, ...]] = ("templify", "quality", "run")
    reads = SynthesizeStage

    def __init__(self, config: TemplifyConfig | None = None, quality: QualityConfig | None = None) -> None:
        self.config = config if config is not None else TemplifyConfig()
        self.quality = quality if quality is not None else QualityConfig()

    @classmethod
    def from_recipe(cls, recipe: RecipeConfig, options: CommandOptions = NO_OPTIONS) -> TemplifyStage:
        """The stage of the recipe's `templify` and `quality` sections."""
        return cls(recipe.templify, recipe.quality)

    def identity(self) -> dict[str, Any]:
        identity: dict[str, Any] = {"templify": config_to_dict(self.config)}
        # the filters change the rows and the report settings the committed report; the defaults leave older
        # outputs reusable
        if config_to_dict(self.quality) != config_to_dict(QualityConfig()):
            identity["quality"] = config_to_dict(self.quality)
        return identity

    def settings(self) -> dict[str, Any]:
        return {"templify": config_to_dict(self.config), "quality": config_to_dict(self.quality)}

    def checks(self, run: RunConfig, built_later: set[str]) -> list[Check]:
        if self.config.target_tokenizer is None:
            return []
        return [tokenizer_check("templify.target_tokenizer", self.config.target_tokenizer, None, built_later)]

    def compute(self, context: StageContext) -> StageOutput:
        config = self.resolved(context.upstream)
        upstream, output = context.upstream, context.output
        files = stage_data_files(upstream)
        counts = {split: sum(1 for s, _ in files if s == split) for split, _ in files}
        targets, seen = [], dict.fromkeys(counts, 0)
        for split, _ in files:  # templify's files are named like synthesis': one per synthesized file, in order
            targets.append(f"{DATA_DIR}/{split}-{seen[split]:05d}-of-{counts[split]:05d}.parquet")
            seen[split] += 1
        quality = QualityShards(upstream, [relative for _, relative in files], self.quality, config.text_column)
        figures = context.run_shards("quality", quality, len(files), scratch=True, desc="Quality figures")
        column_names = [*upstream.read_features([files[0][1]]), *QUALITY_COLUMNS]
        reports, plans = {}, {}
        for split in counts:
            shards = [index for index, (s, _) in enumerate(files) if s == split]
            reports[split] = reduce_quality(
                lambda columns, shards=shards: quality_batches(upstream, output, files, shards, columns),
                column_names,
                text_column=config.text_column,
                length_unit=quality.mapper.length_unit,
                overlap_threshold=quality.mapper.overlap_threshold,
                examples=self.quality.examples,
            )
            if self.quality.filters_enabled:
                plan = plan_filters(
                    (read_columns(output, figures_file(i), FILTER_COLUMNS) for i in shards), self.quality
                )
                reports[split]["filters"] = plan.counts
                start = 0
                for index in shards:
                    stop = start + figures[index]["num_rows"]
                    plans[index] = plan.shard(start, stop)
                    start = stop
        for index, plan in plans.items():  # each templify shard reads its part of the corpus-wide decisions
            output.write_atomic(filter_file(index), plan_bytes(plan))
        # templify's own map batches stay whole chains inside each shard; the shards are the parallel part
        task = TemplifyShards(upstream, files, targets, dataclasses.replace(config, num_proc=None), bool(plans))
        markers = context.run_shards("templify", task, len(files), desc="Templify")
        statistics = {
            split: templify_report(
                batch
                for target, (s, _) in zip(targets, files, strict=True)
                if s == split
                for batch in column_batches(output, target, TEMPLIFY_REPORT_COLUMNS, 10_000)
            )
            for split in counts
        }
        target = config.resolve_target_format()
        report = {
            "statistics": statistics,
            "quality": {"config": config_to_dict(self.quality), "reports": reports},
            "target_format": {"bos": target.bos, "eos": target.eos},
        }
        return StageOutput(report=report, in_place=InPlace.of_shards(markers))

    def resolved(self, synthesized: StageFolder | None) -> TemplifyConfig:
        """The settings with the text column synthesis read (recorded by the synthesize stage), when `text_column`
        was left at its default."""
        recorded = ((synthesized.marker() if synthesized is not None else None) or {}).get("settings") or {}
        column = (recorded.get("source") or {}).get("text_column")
        default = TemplifyConfig().text_column
        if column and self.config.text_column == default and column != default:
            return dataclasses.replace(self.config, text_column=column)
        return self.config

    def summarize(self, report: Mapping[str, Any], summary: StageSummary, output: StageFolder) -> None:
        summary.figures.update(quality_summary((report.get("quality") or {}).get("reports") or {}))
        statistics = report.get("statistics") or {}
        for split, figures in statistics.items():
            summary.figures.update(templify_summary(figures, f"{split}: " if len(statistics) > 1 else ""))


# ----------------------------------------------------------------------------------------------------------------
# The shards: one per synthesized data file
# ----------------------------------------------------------------------------------------------------------------

FILTER_COLUMNS = [NUM_PAIRS_COLUMN, GROUNDING, QUESTION_HASHES]


def figures_file(index: int) -> str:
    """Where shard `index`'s quality columns are written (scratch)."""
    return f"{WORK_DIR}/quality/figures-{index:05d}.parquet"


def filter_file(index: int) -> str:
    """Where shard `index`'s part of the filters' decisions is written (scratch)."""
    return f"{WORK_DIR}/filters/plan-{index:05d}.npz"


def plan_bytes(plan: FilterPlan) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, keep_pairs=plan.keep_pairs, offsets=plan.offsets, keep_rows=plan.keep_rows)
    return buffer.getvalue()


def read_plan(store: Store, relative: str) -> FilterPlan:
    import numpy as np

    with np.load(io.BytesIO(store.fs.cat_file(store.path(relative)))) as arrays:
        return FilterPlan(arrays["keep_pairs"], arrays["offsets"], arrays["keep_rows"], {})


def column_batches(store: Store, relative: str, columns: Sequence[str], batch_size: int) -> Iterator[dict[str, list]]:
    """The rows of one shard file as {column: values} batches (only `columns`)."""
    table = read_columns(store, relative, columns)
    for start in range(0, table.num_rows, batch_size):
        yield table.slice(start, batch_size).to_pydict()


def quality_batches(
    upstream: StageFolder, output: StageFolder, files: list[tuple[str, str]], shards: list[int], columns: list[str]
) -> Iterator[dict[str, list]]:
    """The synthesized rows of `shards` with their quality columns, as {column: values} batches in row order: what
    `reduce_quality` reads. One shard's columns are in memory at a time."""
    wanted = [column for column in columns if column not in QUALITY_COLUMNS]
    computed = [column for column in columns if column in QUALITY_COLUMNS]
    for index in shards:
        rows = read_columns(upstream, files[index][1], wanted)
        figures = read_columns(output, figures_file(index), computed)
        for start in range(0, rows.num_rows, QUALITY_BATCH):
            yield {**rows.slice(start, QUALITY_BATCH).to_pydict(), **figures.slice(start, QUALITY_BATCH).to_pydict()}


class QualityShards:
    """Shard i: the quality columns (`hf_ipt.quality.QualityFigures`) of synthesized file i, as the map over the
    whole corpus writes them (the figures of a row depend on that row alone).

    Reads the file's text column and synthesis columns; writes `figures_file(i)` with `QUALITY_COLUMNS`.
    """

    def __init__(self, upstream: StageFolder, files: list[str], quality: QualityConfig, text_column: str) -> None:
        self.upstream, self.files = upstream, files
        # one map function per worker: its tokenizer is loaded once, on first use
        self.mapper = QualityFigures(
            quality.tokenizer, text_column=text_column, overlap_threshold=quality.overlap_threshold
        )

    def __call__(self, index: int, store: Store) -> ShardResult:
        import datasets

        rows = datasets.Dataset(self.upstream.read_table(self.files[index]))
        if not rows.num_rows:  # `Dataset.map` returns 0 rows as they are, without the columns it would write
            return ShardResult({figures_file(index): parquet_bytes(empty_figures())}, 0)
        figures = rows.map(self.mapper, batched=True, batch_size=QUALITY_BATCH).select_columns(list(QUALITY_COLUMNS))
        return ShardResult({figures_file(index): parquet_bytes(figures.data.table)}, figures.num_rows)


def empty_figures() -> Any:
    """The quality columns of no row, typed as `QualityFigures` writes them."""
    import pyarrow as pa

    lists = {name: pa.list_(pa.int64()) for name in (QUESTION_TOKENS, ANSWER_TOKENS, QUESTION_HASHES)}
    types = {
        NUM_PAIRS_COLUMN: pa.int64(),
        **lists,
        TASK_TYPES_COLUMN: pa.list_(pa.string()),
        GROUNDING: pa.list_(pa.string()),
        ANSWER_OVERLAP: pa.list_(pa.float64()),
        NO_PAIRS_CAUSE: pa.string(),
    }
    return pa.table({name: pa.array([], type=types[name]) for name in QUALITY_COLUMNS})


class TemplifyShards:
    """Shard i: the pre-training texts of synthesized file i (`hf_ipt.templify.templify`), after its part of the
    filters' decisions when the recipe filters (`filter_file(i)`).

    Reads the file's text column and synthesis columns; writes `targets[i]` with templify's output columns.
    """

    def __init__(
        self,
        upstream: StageFolder,
        files: list[tuple[str, str]],
        targets: list[str],
        config: TemplifyConfig,
        filtered: bool,
    ) -> None:
        self.upstream, self.files, self.targets, self.config, self.filtered = (
            upstream,
            files,
            targets,
            config,
            filtered,
        )

    def __call__(self, index: int, store: Store) -> ShardResult:
        import datasets

        rows = datasets.Dataset(self.upstream.read_table(self.files[index][1]))
        if self.filtered:
            rows = filter_rows(rows, read_plan(store, filter_file(index)))
        texts = templify(rows, self.config)
        buffer = io.BytesIO()
        texts.to_parquet(buffer)
        return ShardResult({self.targets[index]: buffer.getvalue()}, texts.num_rows)
