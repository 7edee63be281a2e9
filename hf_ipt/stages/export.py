"""The export stage: the released rows (the mix, or the templified texts when the run has no mix: exactly the rows
the release holds, in its order) tokenized once with the mix's tokenizer and written in each format of
`export.formats`, under `run.output_dir/export/<format>/` (`hf_ipt.export`).

Two steps, so the expensive part runs on the run's executor (`run.executor`, `run.num_workers`) like templify and
the mix:

1. `tokens` (a scratch phase, `StageContext.run_shards`: a shard per data file of the released stage, in its order):
   each shard reads its file batch by batch (text, and the mix's `num_tokens` and `source`), loads the tokenizer
   once per worker, and tokenizes every row: `tokenizer(text, add_special_tokens=False)["input_ids"]`, which must
   have the count the mix recorded (else a `TokenCountMismatch` naming the row of its split). It commits the ids and
   each row's count as a piece (`hf_ipt.export.PieceBuilder`) with its marker; its figures are the rows and tokens
   per source.
2. the driver writes every format's files from the committed pieces (`hf_ipt.export.split_batches`), split by split
   and shard by shard, in batches of `export.batch_size` rows across the shards, streaming the ids (the texts are
   read back only for a format that writes them): the batches the export gave when it ran in one process, so the
   files are the same bytes whatever the executor and the worker count.

Memory is bounded by a shard (one file's ids in a worker) and a batch (in the driver). The writers stream their
files part by part through temporary files; the driver commits them with every file's size and SHA-256, then the
pieces are removed. A killed export keeps its committed shards (resumed under the same identity, a damaged piece
made again) and writes the files again to the same bytes; a damaged file is found and the export redone. Its
report holds, per format, the files and what a trainer needs (dtype, dataset names), the tokenizer's facts and the
rows and tokens per source; the release copies the files and shows the lines to paste when `export.in_release`.

Example:
    >>> ExportStage(ExportConfig(formats=["olmo_core"]), "output/tiny-synthesizer").run(run).figures["tokens"]
    ... # doctest: +SKIP
    131072
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from hf_ipt.columns import NUM_TOKENS, SOURCE, TEXT
from hf_ipt.config import AUGMENTED_SOURCE, RecipeConfig, RunConfig
from hf_ipt.execution.phases import WORK_DIR, ShardResult
from hf_ipt.export import (
    FORMATS,
    ExportConfig,
    ExportSettings,
    PieceBuilder,
    TokenBatch,
    TokenizerFacts,
    TokenPiece,
    paste_lines,
    split_batches,
    token_batches,
)
from hf_ipt.preflight import Check, missing_package
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
from hf_ipt.stages.mix import MixStage
from hf_ipt.stages.templify import TemplifyStage
from hf_ipt.store import StageFolder, Store, config_to_dict, parquet_num_rows, read_batches
from hf_ipt.tokenization import FastEncoder, load_tokenizer, tokenizer_name
from hf_ipt.validation import ConfigError, Problem

DEFAULT_DATASET_NAME = "hf_ipt"  # LLaMA-Factory's dataset name when the recipe has no release config name


class ExportStage(Stage):
    """Write the released rows as token files for pre-training frameworks.

    Args:
        config: the export's settings (`ExportConfig`: formats, files' size, batch size, whether they are released).
        tokenizer: the tokenizer the mix counted with (`mix.tokenizer`; `templify.target_tokenizer` without a mix):
            a name, a path or a tokenizer object.
        reads: the stage whose rows are released: `MixStage` (the default) or `TemplifyStage` for a run without a mix.
        dataset_name: the dataset's name in LLaMA-Factory's dataset_info.json (the release's config name).
        count_column: the column of the mix's token counts, checked row by row (None: no check).

    Example:
        >>> ExportStage(ExportConfig(formats=["megatron"]), "gpt2").identity()["export"]["formats"]
        ['megatron']
    """

    name: ClassVar[str] = "export"
    description: ClassVar[str] = (
        "write the released rows as the token files OLMo-core, Megatron and LLaMA-Factory read"
    )
    folder: ClassVar[str] = "export"
    sections: ClassVar[tuple[str, ...]] = ("export", "mix", "templify", "run")
    missing: ClassVar[str] = (
        "this recipe's export.formats is empty; name the formats to write, e.g. --export.formats "
        "'[olmo_core, megatron]'"
    )

    def __init__(
        self,
        config: ExportConfig,
        tokenizer: Any,
        *,
        reads: type[Stage] = MixStage,
        dataset_name: str = DEFAULT_DATASET_NAME,
        count_column: str | None = NUM_TOKENS,
    ) -> None:
        if reads not in (MixStage, TemplifyStage):
            raise ValueError(f"an export reads the output of MixStage or TemplifyStage, got {reads!r}")
        self.config, self.tokenizer, self.reads = config, tokenizer, reads
        self.dataset_name, self.count_column = dataset_name, count_column

    @classmethod
    def from_recipe(cls, recipe: RecipeConfig, options: CommandOptions = NO_OPTIONS) -> ExportStage | None:
        """The stage of the recipe's `export` section, reading what the release releases (the mix, else the
        templified texts) with the tokenizer that counted it; None when `export.formats` is empty."""
        if not recipe.export.formats:
            return None
        name = recipe.release.config_name if recipe.release is not None else DEFAULT_DATASET_NAME
        if recipe.mix is not None:
            return cls(
                recipe.export, recipe.mix.tokenizer, dataset_name=name, count_column=recipe.mix.token_count_column
            )
        return cls(
            recipe.export, recipe.templify.target_tokenizer, reads=TemplifyStage, dataset_name=name, count_column=None
        )

    @property
    def tokenizer_key(self) -> str:
        """The recipe key the tokenizer comes from (named in messages)."""
        return "mix.tokenizer" if self.reads is MixStage else "templify.target_tokenizer"

    def identity(self) -> dict[str, Any]:
        name = self.tokenizer if isinstance(self.tokenizer, str) else tokenizer_name(self.tokenizer)
        return {"export": self.config.identity(), "tokenizer": name, "dataset_name": self.dataset_name}

    def settings(self) -> dict[str, Any]:
        return {"export": config_to_dict(self.config)}

    def checks(self, run: RunConfig, built_later: set[str]) -> list[Check]:
        found = [Check("export tokenizer", self.tokenizer_problems)]
        for name in self.config.formats:
            for module, purpose in FORMATS[name].packages:
                found.append(
                    Check(f"{purpose}: {module}", lambda m=module, p=purpose: missing_package("export.formats", m, p))
                )
        return found

    def tokenizer_problems(self) -> list[Problem]:
        """The export needs the tokenizer the released rows were counted with; without a mix that is
        templify.target_tokenizer, which may be unset."""
        if self.tokenizer is not None:
            return []
        return [
            Problem(
                self.tokenizer_key,
                "unset, so the export has no tokenizer to write the released texts' token ids with",
                f"set {self.tokenizer_key} to the tokenizer of the model to be trained, or empty export.formats",
            )
        ]

    def compute(self, context: StageContext) -> StageOutput:
        problems = self.tokenizer_problems()
        if problems:
            raise ConfigError(f"{problems[0].key}: {problems[0].found}; {problems[0].fix}")
        tokenizer = load_tokenizer(self.tokenizer, key=self.tokenizer_key)
        name = self.tokenizer if isinstance(self.tokenizer, str) else tokenizer_name(tokenizer)
        facts = TokenizerFacts.from_tokenizer(tokenizer, name)
        upstream, output = context.upstream, context.output
        files = stage_data_files(upstream)
        output.discard()  # the old marker first, then every file of the previous export
        task = TokenizeShards(
            upstream,
            files,
            first_rows(upstream, files),
            self.tokenizer,
            self.tokenizer_key,
            count_column=self.count_column,
            batch_size=self.config.batch_size,
            loaded=tokenizer,
        )
        markers = context.run_shards("tokens", task, len(files), scratch=True, desc="Tokenizing the release")
        settings = ExportSettings(facts, self.config.tokens_per_file, self.dataset_name)
        entries, checksums = self.assemble(upstream, output, files, markers, settings)
        num_rows: dict[str, int] = {}
        tally: dict[str, dict[str, int]] = {}
        for (split, _), marker in zip(files, markers, strict=True):
            num_rows[split] = num_rows.get(split, 0) + int(marker["num_rows"])
            for source, counted in marker["figures"]["sources"].items():
                entry = tally.setdefault(source, {"rows": 0, "tokens": 0})
                entry["rows"] += counted["rows"]
                entry["tokens"] += counted["tokens"]
        report = {
            "tokenizer": facts.to_dict(),
            "rows": sum(num_rows.values()),
            "tokens": sum(entry["tokens"] for entry in tally.values()),
            "sources": tally,
            "counts_checked": self.count_column is not None,
            "formats": entries,
        }
        return StageOutput(report=report, in_place=InPlace({}, num_rows, checksums))

    def assemble(
        self,
        upstream: StageFolder,
        output: StageFolder,
        files: list[tuple[str, str]],
        markers: list[dict[str, Any]],
        settings: ExportSettings,
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """Write every format's files from the committed pieces, split by split, each split's shards in order, in
        batches of `export.batch_size` rows across shards (the single-process export's batches, so its bytes);
        the released texts are read back only when a format writes them. Returns (the formats' report entries,
        every file's checksum)."""
        texts_needed = any(FORMATS[format].reads_texts for format in self.config.formats)
        batch_size = self.config.batch_size
        with contextlib.ExitStack() as stack:
            writers = [stack.enter_context(FORMATS[format](output, settings)) for format in self.config.formats]
            for split in dict.fromkeys(split for split, _ in files):
                shards = [index for index, (s, _) in enumerate(files) if s == split]
                pieces = [
                    TokenPiece(output, ids_file(i), lengths_file(i), markers[i]["figures"]["dtype"]) for i in shards
                ]
                texts = (text_columns(upstream, files[i][1], batch_size) for i in shards) if texts_needed else None
                for batch in split_batches(pieces, batch_size=batch_size, texts=texts):
                    for writer in writers:
                        writer.add(split, batch)
            entries = {writer.name: writer.close() for writer in writers}
        checksums = {relative: value for writer in writers for relative, value in writer.checksums.items()}
        return entries, checksums

    def summarize(self, report: Mapping[str, Any], summary: StageSummary, output: StageFolder) -> None:
        if not report:
            return
        summary.figures["tokens"] = report.get("tokens")
        summary.figures["tokens by source"] = ", ".join(
            f"{name} {entry['tokens']:,}" for name, entry in (report.get("sources") or {}).items()
        )
        summary.figures["formats"] = ", ".join(report.get("formats") or {})
        summary.note = "\n".join(f"{name}:\n{text}" for name, text in paste_lines(report, output.url).items())


def count_sources(batch: TokenBatch, tally: dict[str, dict[str, int]]) -> None:
    """Add a batch's rows and tokens to `tally` ({source: {"rows", "tokens"}})."""
    for source, tokens in zip(batch.sources, batch.lengths.tolist(), strict=True):
        entry = tally.setdefault(source, {"rows": 0, "tokens": 0})
        entry["rows"] += 1
        entry["tokens"] += tokens


# ----------------------------------------------------------------------------------------------------------------
# The shards: one per released data file, tokenized on the run's executor
# ----------------------------------------------------------------------------------------------------------------


def ids_file(index: int) -> str:
    """Where shard `index`'s token ids are written (scratch: see `hf_ipt.export.PieceBuilder`)."""
    return f"{WORK_DIR}/tokens/ids-{index:05d}.bin"


def lengths_file(index: int) -> str:
    """Where shard `index`'s token count per row is written (scratch)."""
    return f"{WORK_DIR}/tokens/lengths-{index:05d}.npy"


def first_rows(upstream: StageFolder, files: list[tuple[str, str]]) -> list[int]:
    """The index in its split of each data file's first row (from the files' footers): what messages name a row by."""
    starts, seen = [], {}
    for split, relative in files:
        starts.append(seen.get(split, 0))
        seen[split] = starts[-1] + parquet_num_rows(upstream, relative)
    return starts


def text_columns(upstream: StageFolder, relative: str, batch_size: int) -> Iterator[Any]:
    """The text column of one released data file, as Arrow arrays of at most `batch_size` rows."""
    for batch in read_batches(upstream, relative, columns=[TEXT], batch_size=batch_size):
        yield batch.column(TEXT)


class TokenizeShards:
    """Shard i: the ids of released data file i (`files[i]`: split and file), exactly
    `tokenizer(text, add_special_tokens=False)` of each row, checked against the mix's `count_column` (None: no
    check), as a piece (`hf_ipt.export.PieceBuilder`); its figures: the rows and tokens per source and the ids'
    dtype. The tokenizer (`tokenizer`, the setting `key` names) is loaded once per worker (`loaded`: the driver's
    own, used where the task runs in the driver's process or a fork of it, never pickled).

    Reads the file's `text`, `source` and `count_column` batch by batch; writes `ids_file(i)` and `lengths_file(i)`.
    """

    def __init__(
        self,
        upstream: StageFolder,
        files: list[tuple[str, str]],
        first_rows: list[int],
        tokenizer: Any,
        key: str,
        *,
        count_column: str | None,
        batch_size: int,
        loaded: Any = None,
    ) -> None:
        self.upstream, self.files, self.first_rows = upstream, files, first_rows
        self.tokenizer, self.key, self.loaded = tokenizer, key, loaded
        self.count_column, self.batch_size = count_column, batch_size
        self.encoder: FastEncoder | None = None

    def __getstate__(self) -> dict[str, Any]:
        # a worker elsewhere loads the tokenizer itself; an object given in the recipe travels as the setting
        return {**self.__dict__, "loaded": None, "encoder": None}

    def __call__(self, index: int, store: Store) -> ShardResult:
        if self.encoder is None:
            loaded = self.loaded if self.loaded is not None else load_tokenizer(self.tokenizer, key=self.key)
            self.encoder = FastEncoder(loaded)
        columns = [TEXT, SOURCE, *([self.count_column] if self.count_column else [])]
        tables = read_batches(self.upstream, self.files[index][1], columns=columns, batch_size=self.batch_size)
        piece, tally = PieceBuilder(), {}
        batches = token_batches(
            tables,
            self.encoder,
            default_source=AUGMENTED_SOURCE,
            first_row=self.first_rows[index],
            count_column=self.count_column,
        )
        rows = 0
        for batch in batches:
            count_sources(batch, tally)
            piece.add(batch)
            rows += len(batch)
        ids, lengths, dtype = piece.finish()
        figures = {"sources": tally, "dtype": dtype}
        return ShardResult({ids_file(index): ids, lengths_file(index): lengths}, rows, figures)
