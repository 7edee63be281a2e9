"""The synthesize stage: the source corpus (chunked to the synthesizer's budget) through the `Synthesizer`, in
resumable shards on the run's executor, into `synthesized/`.

Reads the source dataset; writes the source's columns plus the synthesis columns (`hf_ipt.columns.SYNTH_COLUMNS`),
one shard file per `run.shard_size` rows, each committed on its own (`hf_ipt.execution.runner.ShardedRunner`): a
re-run skips finished shards and redoes at most the one in flight. When every shard is there, the stage's report
(`hf_ipt.synthesis.report`) is counted over the shards and committed with the stage marker, which lists every shard
file with its SHA-256. `worker_index` / `num_workers` make this process one of several started by hand (Slurm
arrays); `run.executor` / `run.num_workers` make the stage start its workers itself.

Example:
    >>> stage = SynthesizeStage(SourceConfig(path="bundled:quickstart"), SynthesisConfig(model="output/tiny",
    ...                         engine="transformers", rounds=3, batch_size=30), build_tiny_model=True)
    >>> stage.run(RunConfig(output_dir="output/run", shard_size=60)).figures["pairs"]  # doctest: +SKIP
    386
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, ClassVar

from hf_ipt import columns as C
from hf_ipt.config import RecipeConfig, RunConfig, SourceConfig, check_tiny_model
from hf_ipt.engines import devices_of, engine_class
from hf_ipt.execution import Executor, make_executor
from hf_ipt.execution.runner import (
    MANIFEST_PATH,
    ShardedRunner,
    finished_shards,
    iter_shard_tables,
    plan_shards,
    run_status,
)
from hf_ipt.placement import visible_gpus
from hf_ipt.preflight import Check, check_language, check_source, missing_package, tokenizer_check
from hf_ipt.redaction import without_secrets
from hf_ipt.stages.base import (
    NO_OPTIONS,
    CommandOptions,
    InPlace,
    Stage,
    StageContext,
    StageOutput,
    StageSummary,
    short_list,
)
from hf_ipt.store import StageFolder, config_to_dict
from hf_ipt.synthesis import ChunkConfig, Chunker, SynthesisConfig, Synthesizer
from hf_ipt.synthesis.chunking import ChunkSettings
from hf_ipt.synthesis.report import (
    SYNTHESIS_COLUMNS,
    speculative_stats,
    speculative_summary,
    synthesis_report,
    synthesis_summary,
)
from hf_ipt.tiny_model import build_tiny_synthesizer
from hf_ipt.validation import ConfigError, Problem, check_shard_size, check_workers


class SynthesizeStage(Stage):
    """Synthesize instruction-response pairs for every row of the source, in resumable shards.

    Args:
        source: the raw corpus (`SourceConfig`); its `text_column` is the column synthesis reads.
        synth: the synthesis settings (`SynthesisConfig`); its text column follows the source's.
        chunk: splitting over-long texts first (`ChunkSettings`; on by default).
        build_tiny_model: build hf-ipt's tiny offline synthesizer at `synth.model` first (the quickstart).
        worker_index, num_workers: this process is worker `worker_index` of `num_workers` started by hand.

    Example:
        >>> SynthesizeStage(SourceConfig(path="bundled:quickstart", text_column="content"),
        ...                 SynthesisConfig()).synth.text_column
        'content'
    """

    name: ClassVar[str] = "synthesize"
    description: ClassVar[str] = (
        "synthesize instruction-response pairs, in resumable shards (several workers may share them)"
    )
    folder: ClassVar[str] = "synthesized"
    sections: ClassVar[tuple[str, ...]] = ("source", "chunk", "synth", "run", "build_tiny_model")
    takes_workers: ClassVar[bool] = True

    def __init__(
        self,
        source: SourceConfig,
        synth: SynthesisConfig,
        *,
        chunk: ChunkSettings | None = None,
        build_tiny_model: bool = False,
        worker_index: int = 0,
        num_workers: int = 1,
    ) -> None:
        if synth.text_column not in ("text", source.text_column):
            raise ConfigError(
                f"source.text_column={source.text_column!r} and synth.text_column={synth.text_column!r} differ; they "
                "name the same column (synthesis reads the source's): set only source.text_column"
            )
        check_tiny_model(build_tiny_model, synth.model)
        self.source = source
        self.synth = dataclasses.replace(synth, text_column=source.text_column)
        self.chunk = chunk if chunk is not None else ChunkSettings()
        self.build_tiny_model = build_tiny_model
        self.worker_index, self.num_workers = worker_index, num_workers

    @classmethod
    def from_recipe(cls, recipe: RecipeConfig, options: CommandOptions = NO_OPTIONS) -> SynthesizeStage:
        """The stage of the recipe's `source`, `chunk`, `synth` and `build_tiny_model` sections."""
        return cls(
            recipe.source,
            recipe.synth,
            chunk=recipe.chunk,
            build_tiny_model=recipe.build_tiny_model,
            worker_index=options.worker_index,
            num_workers=options.num_workers,
        )

    def identity(self) -> dict[str, Any]:
        """Everything that decides the synthesized rows: the source, chunking (not its process count) and the
        synthesis settings (neither the scheduler nor speculative decoding changes a row: greedy either way)."""
        return {
            "source": config_to_dict(self.source),
            "chunk": {k: v for k, v in config_to_dict(self.chunk).items() if k != "num_proc"},
            "synth": {k: v for k, v in config_to_dict(self.synth).items() if k not in ("scheduling", "speculative")},
        }

    def settings(self) -> dict[str, Any]:
        return {
            "source": config_to_dict(self.source),
            "chunk": config_to_dict(self.chunk),
            "synth": config_to_dict(self.synth),
            "build_tiny_model": self.build_tiny_model,
        }

    def creates(self) -> set[str]:
        return {self.synth.model} if self.build_tiny_model else set()

    def shares_folder(self) -> bool:
        return self.num_workers > 1  # one of the workers started by hand

    # --- the pieces: input, executor, runner -------------------------------------------------------------------

    def dataset(self):
        """The rows to synthesize: the source split, chunked to the synthesizer's budget when chunking is on.

        Columns: the source's; chunking splits `source.text_column` into more rows.
        """
        dataset = self.source.load()
        if self.chunk.enabled:
            synth = self.synth
            chunker = Chunker(
                ChunkConfig(
                    tokenizer=synth.tokenizer or synth.model,
                    revision=synth.revision if not synth.tokenizer else None,
                    text_column=self.source.text_column,
                    max_model_len=synth.max_model_len,
                    max_new_tokens=synth.max_new_tokens,
                    max_chunk_tokens=self.chunk.max_chunk_tokens,
                )
            )
            dataset = dataset.map(
                chunker, batched=True, with_indices=True, num_proc=self.chunk.num_proc, desc="Chunking long texts"
            )
        return dataset

    def executor(self, run: RunConfig) -> Executor:
        """Where the synthesis workers run, from `run.executor` and `run.num_workers`: this process alone ('local',
        one worker), one process per GPU or core share on this machine ('local' with several workers), or Ray tasks
        ('ray')."""
        devices = devices_of(self.synth.engine, self.synth.engine_kwargs)
        if run.executor == "ray":
            return make_executor(
                "ray",
                num_gpus_per_worker=run.gpus_per_worker,
                max_retries=run.max_retries,
                address=run.ray_address,
                devices_per_worker=devices,
            )
        if run.num_workers > 1:
            return make_executor("processes", devices_per_worker=devices)
        return make_executor("local")

    def runner(self, run: RunConfig, map_fn: Any, executor: Executor | str = "local") -> ShardedRunner:
        """The stage's `ShardedRunner`, built in this one place for the stage and for its preflight check, so both
        judge a resume with the same identity and layout."""
        check_shard_size(run.shard_size, self.synth.batch_size, "run.shard_size", "synth.batch_size")
        check_workers(run.executor, run.num_workers, manual_index=self.worker_index, manual_count=self.num_workers)
        workers = run.num_workers if not isinstance(executor, str) and executor.name != "local" else self.num_workers
        return ShardedRunner(
            map_fn,
            run.folder.stage(self.folder),
            shard_size=run.shard_size,
            batch_size=self.synth.batch_size,
            config=without_secrets(self.identity()),
            split=self.source.output_split,
            worker_index=self.worker_index,
            num_workers=workers,
            overwrite=run.overwrite,
            resume_ignore=run.resume_ignore,
            verify_inputs=run.verify_inputs,
            # rows the engine failed on (a server down, a timeout) are not finished: their shards are redone next run
            failure_status=(C.SYNTH_STATUS, C.STATUS_ENGINE_ERROR),
            desc="Synthesis",
            executor=executor,
            log_folder=run.folder,
        )

    # --- the contract --------------------------------------------------------------------------------------------

    def checks(self, run: RunConfig, built_later: set[str]) -> list[Check]:
        synth = self.synth
        found = [
            Check(f"source {self.source.path}", lambda: check_source(self.source, "source")),
            Check(f"language of {self.source.path}", lambda: check_language(self.source, "source")),
        ]
        tokenizer_key = "synth.tokenizer" if synth.tokenizer else "synth.model"
        revision = None if synth.tokenizer else synth.revision
        found.append(tokenizer_check(tokenizer_key, synth.tokenizer or synth.model, revision, built_later))
        found.append(Check(f"synth.engine_kwargs for the {synth.engine} engine", self._engine_problems))
        if run.executor == "local" and run.num_workers > 1:
            found.append(Check(f"GPUs for run.num_workers={run.num_workers}", lambda: self._gpu_problems(run)))
        found.append(Check(f"packages for executor {run.executor!r}", lambda: self._packages(run)))
        where = f"synthesis shards in {run.folder.stage(self.folder).url}"
        found.append(
            Check(f"{where} (worker {self.worker_index} of {self.num_workers})", lambda: self._resume_problems(run))
        )
        return found

    def _engine_problems(self) -> list[Problem]:
        """The engine's own check of its settings (`Engine.check_settings`: packages, arguments, devices)."""
        synth = self.synth
        return engine_class(synth.engine).check_settings(
            synth.engine_kwargs, model=synth.model, revision=synth.revision
        )

    def _gpu_problems(self, run: RunConfig) -> list[Problem]:
        """On a machine with GPUs, the local workers fit: run.num_workers × the devices one engine occupies (tensor
        × pipeline parallel) at most the visible GPUs (counted without initializing CUDA). A CPU machine splits its
        cores instead."""
        gpus = visible_gpus()
        try:
            devices = devices_of(self.synth.engine, self.synth.engine_kwargs)
        except ValueError:
            return []  # the engine's own check names the setting
        needed = run.num_workers * devices
        if not gpus or needed <= len(gpus):
            return []
        return [
            Problem(
                "run.num_workers",
                f"{run.num_workers} workers × {devices} GPU(s) per engine = {needed} GPUs, but this machine shows "
                f"{len(gpus)} ({', '.join(gpus)})",
                f"lower run.num_workers to {max(1, len(gpus) // devices)}, or make more GPUs visible "
                "(CUDA_VISIBLE_DEVICES), or spread the workers over machines (run.executor: ray)",
            )
        ]

    def _packages(self, run: RunConfig) -> list[Problem]:
        return missing_package("run.executor", "ray", "the ray executor") if run.executor == "ray" else []

    def _resume_problems(self, run: RunConfig) -> list[Problem]:
        """The worker settings agree, and the synthesis folder holds no run this one would refuse to resume
        (`ShardedRunner.resume_conflict`, the runner's own check; the input size is compared when it runs)."""
        try:
            runner = self.runner(run, _no_map)
        except ValueError as err:
            fix = "start the workers one way (by hand or by run.executor), --worker-index from 0 to --num-workers - 1"
            return [Problem("--worker-index", str(err), fix)]
        try:
            conflict = runner.resume_conflict()
        except OSError:
            return []  # the folder cannot be read at all: the output folder's own check reports it
        if conflict is None:
            return []
        fix = "see the options above; --overwrite (run.overwrite) starts over"
        return [Problem("run.output_dir", conflict.replace("\n", " "), fix)]

    def compute(self, context: StageContext) -> StageOutput:
        run = context.run
        executor = self.executor(run)
        runner = self.runner(run, Synthesizer(self.synth), executor)  # refuses contradicting worker settings first
        if self.build_tiny_model:
            build_tiny_synthesizer(self.synth.model)
        # Ray workers each load (and chunk) the input themselves: nothing but the settings travels to them
        dataset = functools.partial(SynthesizeStage.dataset, self) if executor.name == "ray" else self.dataset()
        done = runner.run(dataset)
        figures = {
            "shards": f"{done.num_shards} ({len(done.processed)} computed now, {len(done.skipped)} reused"
            + (f", {len(done.retried)} of them again for failed rows" if done.retried else "")
            + (f", {len(done.missing)} left to other workers" if done.missing else "")
            + ")"
        }
        if not done.complete:
            note = (
                f"shards {short_list(done.missing)} are not finished; run the other workers (same recipe, their "
                "--worker-index) or this command again without --num-workers to finish them"
            )
            return StageOutput(report={}, complete=False, figures=figures, note=note)
        return StageOutput(
            report=self.report(context.output), in_place=shards_in_place(context.output), figures=figures
        )

    def report(self, output: StageFolder) -> dict[str, Any]:
        """The stage's report, counted over the finished shards column by column (`synthesis_report`), with
        speculative decoding's figures from the counts every shard recorded (in whatever process it ran)."""
        report = synthesis_report(iter_shard_tables(output, columns=SYNTHESIS_COLUMNS))
        if self.synth.speculative is not None:
            _, _, markers = finished_shards(output)
            counted = [m["counters"] for m in markers if "counters" in m]
            names = sorted({name for counts in counted for name in counts})
            counters = {name: sum(c.get(name, 0) for c in counted) for name in names} if counted else None
            stats = speculative_stats(counters, dataclasses.asdict(self.synth.speculative))
            report["speculative"] = {**stats, "line": speculative_summary(stats)}
        return report

    def summarize(self, report: Mapping[str, Any], summary: StageSummary, output: StageFolder) -> None:
        if summary.reused:
            shards = run_status(output)["num_shards"]
            summary.figures["shards"] = f"{shards} (0 computed now, {shards} reused)"
        if report.get("speculative"):
            summary.figures["speculative decoding"] = report["speculative"]["line"]
        summary.figures.update(synthesis_summary(report))
        failed = engine_errors(report)
        if failed:
            summary.note = (
                f"{failed:,} row(s) failed in the engine ({C.STATUS_ENGINE_ERROR}, their synth_error says why): they "
                "are not finished work; running the command again synthesizes their shards again"
            )

    def unfinished(self, marker: Mapping[str, Any]) -> str | None:
        """Synthesis is not finished while rows the engine failed on remain: the next run redoes their shards."""
        failed = engine_errors(marker.get("extra") or {})
        if not failed:
            return None
        return f"{failed:,} row(s) failed in the engine ({C.STATUS_ENGINE_ERROR}); synthesizing their shards again"

    @classmethod
    def progress(cls, output: StageFolder) -> list[str]:
        status = run_status(output)
        if not status["started"]:
            return ["not started"]
        done, total = len(status["done"]), status["num_shards"]
        rows, of = status["rows_done"], status["num_input_rows"]
        share = f", {100 * rows / of:.0f}%" if of else ""
        lines = [f"{done}/{total} shards finished ({rows:,} of {of:,} rows{share})"]
        if status["missing"]:
            lines.append(f"missing shards: {short_list(status['missing'])}")
        if status["damaged"]:
            lines.append(f"damaged shards (redone by the next run): {short_list(sorted(status['damaged']))}")
        if status["failed"]:
            rows = sum(status["failed"].values())
            lines.append(
                f"shards with rows the engine failed on ({rows:,} rows; redone by the next run): "
                + short_list(sorted(status["failed"]))
            )
        return lines

    @classmethod
    def describe_damage(cls, output: StageFolder, damage: Mapping[str, str]) -> str:
        names = {s.data_path: s.index for s in plan_shards(**shard_layout(output))} if damage else {}
        return "; ".join(
            f"shard {names[path]} is damaged ({output.url.rstrip('/')}/{path}: {why})"
            if path in names
            else f"{output.url.rstrip('/')}/{path} is damaged ({why})"
            for path, why in damage.items()
        )


def shards_in_place(output: StageFolder) -> InPlace:
    """What the stage marker lists of a finished synthesis: the shard files with rows (an empty shard only when all
    are empty: a loader needs one file), the rows, and every shard file's checksum (from the shards' markers).

    Example:
        >>> shards_in_place(RunFolder("output/quickstart").stage("synthesized")).num_rows  # doctest: +SKIP
        {'train': 321}
    """
    manifest, shards, markers = finished_shards(output)
    with_rows = [s.data_path for s, m in zip(shards, markers, strict=True) if m["num_rows"]]
    checksums = {
        s.data_path: {"bytes": m["bytes"], "sha256": m["sha256"]} for s, m in zip(shards, markers, strict=True)
    }
    split = manifest["split"]
    return InPlace(
        files={split: with_rows or [shards[0].data_path]},
        num_rows={split: sum(m["num_rows"] for m in markers)},
        checksums=checksums,
    )


def engine_errors(report: Mapping[str, Any]) -> int:
    """The rows of a synthesis report (`synthesis_report`) the engine failed on.

    Example:
        >>> engine_errors({"status_counts": {"ok": 9, "engine_error": 2}})
        2
    """
    return int((report.get("status_counts") or {}).get(C.STATUS_ENGINE_ERROR, 0))


def first_engine_errors(output: StageFolder, limit: int = 3) -> list[tuple[int, str]]:
    """(row, synth_error) of the first `limit` rows of a finished synthesis the engine failed on, in row order
    (reading only the status and error columns, shard by shard).

    Example:
        >>> first_engine_errors(RunFolder("output/run").stage("synthesized"))  # doctest: +SKIP
        [(0, 'http://gpu-1:8000/v1/completions: APIConnectionError: Connection error. (...)')]
    """
    found: list[tuple[int, str]] = []
    offset = 0
    for table in iter_shard_tables(output, columns=[C.SYNTH_STATUS, C.SYNTH_ERROR]):
        statuses = table.column(C.SYNTH_STATUS).to_pylist()
        errors = (
            table.column(C.SYNTH_ERROR).to_pylist() if C.SYNTH_ERROR in table.column_names else [""] * len(statuses)
        )
        found += [
            (offset + i, errors[i] or "") for i, status in enumerate(statuses) if status == C.STATUS_ENGINE_ERROR
        ]
        offset += table.num_rows
        if len(found) >= limit:
            break
    return found[:limit]


def _no_map(batch: dict[str, list]) -> dict[str, list]:
    return batch  # the preflight's runner is only asked about resuming, never run


def shard_layout(output: StageFolder) -> dict[str, Any]:
    """`plan_shards`' arguments for the run in `output`, from its manifest."""
    manifest = output.read_json(MANIFEST_PATH) or {}
    return {
        "num_rows": manifest.get("num_input_rows", 0),
        "shard_size": manifest.get("shard_size", 1),
        "split": manifest.get("split", "train"),
    }
