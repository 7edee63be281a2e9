"""Run a recipe from Python: the stages the `hf-ipt` command runs, as library calls.

    from hf_ipt.pipeline import run
    summaries = run("recipes/quickstart.yaml")                       # synthesize -> templify -> mix -> release
    run("recipe.yaml", ["templify"], overrides={"templify.seed": 1})   # one stage, with a dotted override

Every stage writes under `run.output_dir`: `synthesized/` (resumable shards), `templified/`, `mixed/`, `release/`.
A stage whose output is already there with the same configuration is reused, so running again after a crash
continues where it stopped. Each stage computes its report once (`hf_ipt.stats`) and commits it with its stage
marker; the release only reads those reports (plus the figures of the released rows).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets

from hf_ipt.config import AUGMENTED_SOURCE, ConfigError, RecipeConfig, load_recipe
from hf_ipt.engines.vllm import speculative_counters_in_process
from hf_ipt.mixing import mix, prepare_source
from hf_ipt.parallel import Backend, devices_per_rank, make_backend
from hf_ipt.preflight import STAGES, SYNTHESIZED, ensure_ready, synthesis_runner
from hf_ipt.quality import QualityConfig, quality_summary, report_and_filter
from hf_ipt.redaction import redact, register_secrets, scrub_command, secret_values
from hf_ipt.release.bundle import build_bundle
from hf_ipt.release.card import ReleaseInfo, SourceInfo, SynthesizerInfo
from hf_ipt.release.hub import publish_release
from hf_ipt.release.local import check_local_version, clear_release, write_to_folder
from hf_ipt.runner import assemble_shards, iter_shard_tables, read_manifest, run_status
from hf_ipt.stats import (
    SYNTHESIS_COLUMNS,
    speculative_stats,
    speculative_summary,
    synthesis_report,
    synthesis_summary,
    templify_report,
    templify_summary,
)
from hf_ipt.store import (
    IncompleteRunError,
    commit_stage,
    config_to_dict,
    describe_damage,
    fingerprint,
    load_stage,
    read_stage_marker,
    save_stage,
    stage_damage,
    stage_fingerprint,
)
from hf_ipt.synthesis import ChunkConfig, Chunker, Synthesizer
from hf_ipt.templify import MODE, templify
from hf_ipt.testing import build_tiny_synthesizer
from hf_ipt.validation import check_workers

logger = logging.getLogger("hf_ipt.pipeline")

TEMPLIFIED, MIXED, RELEASE = "templified", "mixed", "release"  # SYNTHESIZED and STAGES: hf_ipt.preflight's


# ----------------------------------------------------------------------------------------------------------------
# Stage summaries
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class StageSummary:
    """What a stage did: printed at the end of a command, returned by `run` and the stage functions.

    Example:
        >>> print("\\n".join(StageSummary("mix", "out/mixed", seconds=3, rows=10).lines()))
        mix         3s
          rows                   10
          output                 out/mixed
    """

    stage: str
    output: str
    seconds: float = 0.0
    rows: int | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    reused: bool = False  # the output was already there with the same configuration
    complete: bool = True
    note: str = ""

    def lines(self) -> list[str]:
        """The summary as aligned text lines."""
        state = "already done, reused" if self.reused else f"{duration(self.seconds)}"
        if not self.complete:
            state += ", NOT COMPLETE"
        lines = [f"{self.stage:<11} {state}"]
        if self.rows is not None:
            lines.append(f"  {'rows':<22} {self.rows:,}")
        for name, value in self.figures.items():
            shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
            lines.append(f"  {name:<22} {shown}")
        lines.append(f"  {'output':<22} {self.output}")
        if self.note:
            lines.extend(f"  {line}" for line in self.note.splitlines())
        return lines


def duration(seconds: float) -> str:
    """A duration for people: '5s', '2m 03s', '1h 02m 03s'.

    Example:
        >>> duration(3723)
        '1h 02m 03s'
    """
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def short_list(values: Sequence[int], limit: int = 12) -> str:
    """At most `limit` values, then how many there are in all.

    Example:
        >>> short_list(list(range(20)), limit=3)
        '0, 1, 2, ... (20 in all)'
    """
    shown = ", ".join(map(str, values[:limit]))
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def stage_extra(output: str, recipe: RecipeConfig) -> dict[str, Any]:
    """The report committed with a stage output (e.g. the mix report), or {}.

    Example:
        >>> stage_extra(recipe.run.stage_dir("mixed"), recipe)["total_tokens"]  # doctest: +SKIP
        1048576
    """
    marker = read_stage_marker(output, recipe.run.storage_options) or {}
    return marker.get("extra", {})


def reusable(output: str, identity: Mapping[str, Any], recipe: RecipeConfig, stage: str) -> bool:
    """Whether a stage's committed output in `output` was made with `identity` and every file of it is still what
    was committed (size and SHA-256, `hf_ipt.store.stage_damage`). A damaged output is reported by name with a
    warning and not reused, so the stage is done again.

    Example:
        >>> reusable(recipe.run.stage_dir("templified"), identity, recipe, "templify")  # doctest: +SKIP
        False
    """
    marker = read_stage_marker(output, recipe.run.storage_options)
    if marker is None or marker.get("fingerprint") != fingerprint(identity):
        return False
    damage = stage_damage(output, recipe.run.storage_options, marker=marker)
    if damage:
        logger.warning("%s; doing the %s stage again", describe_damage(output, damage), stage)
        return False
    return True


def finished_upstream(output: str, recipe: RecipeConfig, command: str) -> str:
    """The fingerprint of the committed, intact stage output a later stage reads; IncompleteRunError when there is
    none or a file of it is damaged, naming the files and the command that (re)makes it.

    Example:
        >>> finished_upstream(recipe.run.stage_dir("templified"), recipe, "templify")  # doctest: +SKIP
        '5be0...'
    """
    storage = recipe.run.storage_options
    marker = read_stage_marker(output, storage)
    if marker is None or marker.get("fingerprint") is None:
        raise IncompleteRunError(f"{output} holds no finished output; run `hf-ipt {command}` first")
    damage = stage_damage(output, storage, marker=marker)
    if damage:
        raise IncompleteRunError(
            f"{describe_damage(output, damage)}. Run `hf-ipt {command}` with this recipe (or `hf-ipt run`) to do "
            "that stage again"
        )
    return marker["fingerprint"]


# ----------------------------------------------------------------------------------------------------------------
# Synthesis
# ----------------------------------------------------------------------------------------------------------------


def prepare_model(recipe: RecipeConfig) -> None:
    """Build the tiny offline synthesizer when the recipe asks for it (reused when already built).

    Example:
        >>> prepare_model(load_recipe("recipes/quickstart.yaml"))  # doctest: +SKIP
    """
    if recipe.build_tiny_model:
        logger.info("building (or reusing) the tiny offline synthesizer at %s", recipe.synth.model)
        build_tiny_synthesizer(recipe.synth.model)


def synthesis_input(recipe: RecipeConfig):
    """The rows the synthesis runs on: the source split, chunked to the synthesizer's budget when enabled.

    Columns: the source's; chunking splits `source.text_column` into more rows.

    Example:
        >>> synthesis_input(load_recipe("recipes/quickstart.yaml")).num_rows  # doctest: +SKIP
        200
    """
    dataset = recipe.source.load()
    if recipe.chunk.enabled:
        synth = recipe.synth
        chunker = Chunker(
            ChunkConfig(
                tokenizer=synth.tokenizer or synth.model,
                revision=synth.revision if not synth.tokenizer else None,
                text_column=recipe.source.text_column,
                max_model_len=synth.max_model_len,
                max_new_tokens=synth.max_new_tokens,
                max_chunk_tokens=recipe.chunk.max_chunk_tokens,
            )
        )
        dataset = dataset.map(
            chunker, batched=True, with_indices=True, num_proc=recipe.chunk.num_proc, desc="Chunking long texts"
        )
    return dataset


def synthesis_fingerprint(recipe: RecipeConfig) -> str:
    """The fingerprint of the finished synthesis (its manifest's); IncompleteRunError while shards are missing.

    Example:
        >>> synthesis_fingerprint(load_recipe("recipes/quickstart.yaml"))  # doctest: +SKIP
        '3f2a9c...'
    """
    manifest = read_manifest(recipe.run.stage_dir(SYNTHESIZED), recipe.run.storage_options)
    status = run_status(recipe.run.stage_dir(SYNTHESIZED), recipe.run.storage_options)
    if manifest is None or status["missing"]:
        damaged = "".join(f"; shard {i} is damaged ({why})" for i, why in list(status["damaged"].items())[:5])
        raise IncompleteRunError(
            f"synthesis in {recipe.run.stage_dir(SYNTHESIZED)} is not finished "
            f"({'not started' if manifest is None else 'shards ' + short_list(status['missing']) + ' missing'}"
            f"{damaged}); run `hf-ipt synthesize` with this recipe first"
            + (" (it synthesizes the damaged shards again)" if damaged else "")
        )
    return manifest["fingerprint"]


def synthesis_stage_report(recipe: RecipeConfig, speculative: dict[str, Any] | None = None) -> dict[str, Any]:
    """The finished synthesis' report (`hf_ipt.stats.synthesis_report`), computed once over the shards and
    committed with a stage marker in `synthesized/`; later calls read it back. `speculative`
    (`hf_ipt.stats.speculative_stats` of this run) is recorded with it when it is computed.

    Example:
        >>> synthesis_stage_report(recipe)["pairs"]  # doctest: +SKIP
        1234
    """
    output, storage = recipe.run.stage_dir(SYNTHESIZED), recipe.run.storage_options
    identity = {"synthesized": synthesis_fingerprint(recipe)}
    marker = read_stage_marker(output, storage)
    if marker is not None and marker.get("fingerprint") == fingerprint(identity) and "extra" in marker:
        return marker["extra"]
    report = synthesis_report(iter_shard_tables(output, columns=SYNTHESIS_COLUMNS, storage_options=storage))
    if speculative:
        report["speculative"] = speculative
    commit_stage(
        output,
        config=identity,
        num_rows={recipe.source.output_split: report["rows"]},
        extra=report,
        storage_options=storage,
    )
    return report


def synthesis_backend(recipe: RecipeConfig) -> Backend:
    """Where the synthesis workers run, from `run.executor` and `run.num_workers`: this process alone ('local', one
    worker: as before executors existed), one process per GPU or core share on this machine ('local' with several
    workers), or Ray tasks ('ray').

    Example:
        >>> synthesis_backend(load_recipe("recipes/quickstart.yaml", {"run.num_workers": 2})).name  # doctest: +SKIP
        'processes'
    """
    run_config = recipe.run
    devices = devices_per_rank(recipe.synth.engine_kwargs)
    if run_config.executor == "ray":
        return make_backend(
            "ray",
            num_gpus_per_worker=run_config.gpus_per_worker,
            max_retries=run_config.max_retries,
            address=run_config.ray_address,
            devices_per_worker=devices,
        )
    if run_config.num_workers > 1:
        return make_backend("processes", devices_per_worker=devices)
    return make_backend("local")


def run_speculative_stats(recipe: RecipeConfig) -> dict[str, Any] | None:
    """Speculative decoding's figures for this process's synthesis (`hf_ipt.stats.speculative_stats`, with its
    summary `line`); None when `synth.speculative` is off. Counted by this process's vLLM engines only.

    Example:
        >>> run_speculative_stats(recipe)["line"]  # doctest: +SKIP
        'ngram, 4 draft tokens: 37.5 % of 3,248 draft tokens accepted, 2.50 tokens per verification step'
    """
    if recipe.synth.speculative is None:
        return None
    stats = speculative_stats(speculative_counters_in_process(), dataclasses.asdict(recipe.synth.speculative))
    return {**stats, "line": speculative_summary(stats)}


def stage_synthesize(recipe: RecipeConfig, *, worker_index: int = 0, num_workers: int = 1) -> StageSummary:
    """Run the synthesis shards (resuming) on the recipe's executor, then report; the summary is complete when all
    shards are. `worker_index` / `num_workers` make this process one of several started by hand (Slurm arrays);
    `run.executor` / `run.num_workers` make this command start the workers itself (`synthesis_backend`).

    Writes `synthesized/` (the synthesis columns, see `hf_ipt.columns`).

    Example:
        >>> stage_synthesize(recipe, worker_index=1, num_workers=4).complete  # doctest: +SKIP
        False
    """
    started = time.perf_counter()
    check_workers(recipe.run.executor, recipe.run.num_workers, manual_index=worker_index, manual_count=num_workers)
    output = recipe.run.stage_dir(SYNTHESIZED)
    prepare_model(recipe)
    backend = synthesis_backend(recipe)
    if backend.name != "local":
        num_workers = recipe.run.num_workers
    # Ray workers each load (and chunk) the input themselves: nothing but the recipe travels to them
    dataset = functools.partial(synthesis_input, recipe) if backend.name == "ray" else synthesis_input(recipe)
    runner = synthesis_runner(
        recipe, Synthesizer(recipe.synth), worker_index=worker_index, num_workers=num_workers, backend=backend
    )
    report = runner.run(dataset)
    speculative = run_speculative_stats(recipe)
    summary = StageSummary("synthesize", output, seconds=time.perf_counter() - started, complete=report.complete)
    summary.figures["shards"] = (
        f"{report.num_shards} ({len(report.processed)} computed now, {len(report.skipped)} reused"
        + (f", {len(report.missing)} left to other workers" if report.missing else "")
        + ")"
    )
    if speculative:
        summary.figures["speculative decoding"] = speculative["line"]
    if report.complete:
        figures = synthesis_stage_report(recipe, speculative)
        summary.rows = figures["rows"]
        summary.figures.update(synthesis_summary(figures))
        summary.reused = not report.processed and bool(report.skipped)
    else:
        summary.note = (
            f"shards {short_list(report.missing)} are not finished; run the other workers (same recipe, their "
            "--worker-index) or this command again without --num-workers to finish them"
        )
    return summary


# ----------------------------------------------------------------------------------------------------------------
# Templify and mix
# ----------------------------------------------------------------------------------------------------------------


def stage_templify(recipe: RecipeConfig) -> StageSummary:
    """Turn the synthesized rows into pre-training texts (reused when done with the same configuration).

    Reads `synthesized/`, writes `templified/` (templify's output columns) with its report per split.

    Example:
        >>> stage_templify(recipe).figures["texts"]  # doctest: +SKIP
        180
    """
    started = time.perf_counter()
    storage = recipe.run.storage_options
    output = recipe.run.stage_dir(TEMPLIFIED)
    identity = {"synthesized": synthesis_fingerprint(recipe), "templify": config_to_dict(recipe.templify)}
    if recipe.quality.filters_enabled:  # filters change the rows; without them older outputs stay reusable
        identity["quality"] = config_to_dict(recipe.quality)
    reused = reusable(output, identity, recipe, "templify")
    reports = stage_extra(output, recipe).get("statistics") if reused else None
    if reused:
        templified = load_stage(output, storage_options=storage)
        quality = templify_quality(recipe)
    else:
        synthesized, quality = quality_stage_report(recipe)
        templified = datasets.DatasetDict(
            {split: templify(dataset, recipe.templify) for split, dataset in synthesized.items()}
        )
    if reports is None:  # a new output, or one committed before the stage committed its report
        reports = {split: templify_report(dataset) for split, dataset in templified.items()}
    if not reused:
        extra = {"statistics": reports, "quality": quality}
        save_stage(templified, output, config=identity, storage_options=storage, extra=extra)
    summary = StageSummary("templify", output, seconds=time.perf_counter() - started, reused=reused)
    summary.rows = sum(len(d) for d in templified.values())
    summary.figures.update(quality_summary(quality["reports"]))
    for split, report in reports.items():
        summary.figures.update(templify_summary(report, f"{split}: " if len(reports) > 1 else ""))
    return summary


def templify_quality(recipe: RecipeConfig) -> dict[str, Any]:
    """The quality reports committed with `templified/` when made with the recipe's `quality` section; else
    (an output made before, or other report settings: tokenizer, threshold, examples) measured again now.

    Example:
        >>> templify_quality(recipe)["reports"]["train"]["pairs"]  # doctest: +SKIP
        612
    """
    stored = stage_extra(recipe.run.stage_dir(TEMPLIFIED), recipe).get("quality")
    if stored and stored.get("config") == config_to_dict(recipe.quality):
        return stored
    return quality_stage_report(recipe)[1]


def quality_stage_report(recipe: RecipeConfig) -> tuple[datasets.DatasetDict, dict[str, Any]]:
    """The synthesized rows after the recipe's `quality.*` filters, and the quality report of each split (measured
    before the filters, with their counts), as committed with `templified/`: {"config": the quality section,
    "reports": {split: report}}.

    Example:
        >>> rows, quality = quality_stage_report(recipe)  # doctest: +SKIP
        >>> quality["reports"]["train"]["grounding"]["rate"]  # doctest: +SKIP
        0.42
    """
    synthesized = assemble_shards(recipe.run.stage_dir(SYNTHESIZED), storage_options=recipe.run.storage_options)
    kept, reports = {}, {}
    for split, dataset in synthesized.items():
        kept[split], reports[split] = report_and_filter(dataset, recipe.quality, text_column=recipe.source.text_column)
    return datasets.DatasetDict(kept), {"config": config_to_dict(recipe.quality), "reports": reports}


def stage_mix(recipe: RecipeConfig) -> StageSummary:
    """Mix the templified texts with the recipe's other corpora by token ratio (all formatted with templify's
    target BOS/EOS, so both halves of the mix look alike). Reads `templified/`, writes `mixed/` with the mix report.

    Example:
        >>> stage_mix(recipe).figures["achieved ratio"]  # doctest: +SKIP
        'augmented 0.5, general 0.5'
    """
    started = time.perf_counter()
    if recipe.mix is None:
        raise ConfigError("this recipe has no `mix` section; add one (see recipes/README.md) or skip `hf-ipt mix`")
    output = recipe.run.stage_dir(MIXED)
    templified_dir = recipe.run.stage_dir(TEMPLIFIED)
    upstream = finished_upstream(templified_dir, recipe, "templify")
    identity = {
        "templified": upstream,
        "mix": config_to_dict(recipe.mix),
        "mix_sources": config_to_dict(recipe.mix_sources),
    }
    if reusable(output, identity, recipe, "mix"):
        mixed = load_stage(output, storage_options=recipe.run.storage_options)
        return _mix_summary(mixed, output, time.perf_counter() - started, stage_extra(output, recipe), reused=True)

    split = recipe.source.output_split
    sources = {AUGMENTED_SOURCE: load_stage(templified_dir, storage_options=recipe.run.storage_options)[split]}
    target = recipe.templify.resolve_target_format()
    text_columns = dict(recipe.mix.text_columns)
    for name, source in recipe.mix_sources.items():
        general = source.kind == "general_instructions"
        column = text_columns.setdefault(name, recipe.mix.text_column if general else source.text_column)
        sources[name] = prepare_source(
            source.load(),
            kind=source.kind,
            text_column=column,
            target_format=target,
            question_column=source.question_column if general else None,
            response_column=source.response_column if general else None,
            name=name,
        )
    mixed, report = mix(sources, dataclasses.replace(recipe.mix, text_columns=text_columns))
    mixed = datasets.DatasetDict({split: mixed.flatten_indices()})
    save_stage(mixed, output, config=identity, storage_options=recipe.run.storage_options, extra=report.to_dict())
    return _mix_summary(mixed, output, time.perf_counter() - started, report.to_dict(), reused=False)


def _mix_summary(mixed, output: str, seconds: float, report: dict[str, Any], *, reused: bool) -> StageSummary:
    summary = StageSummary("mix", output, seconds=seconds, rows=sum(len(d) for d in mixed.values()), reused=reused)
    if report:
        summary.figures["tokens"] = report.get("total_tokens")
        summary.figures["tokens by source"] = ", ".join(
            f"{name} {entry['tokens_selected']:,}" for name, entry in report.get("sources", {}).items()
        )
        summary.figures["achieved ratio"] = ", ".join(
            f"{name} {value:.4g}" for name, value in report.get("achieved_ratio", {}).items()
        )
    return summary


# ----------------------------------------------------------------------------------------------------------------
# Release
# ----------------------------------------------------------------------------------------------------------------


def release_info(recipe: RecipeConfig, *, command: str | None = None) -> ReleaseInfo:
    """Everything the card says beyond the released rows: synthesizer and sources (under the recipe's names), the
    stages' committed reports, the recipe and the command.

    Example:
        >>> release_info(recipe, command="hf-ipt run recipe.yaml").synthesizer.rounds  # doctest: +SKIP
        2
    """
    synth = recipe.synth
    synthesizer = SynthesizerInfo(
        model=synth.model,
        revision=synth.revision,
        engine=synth.engine,
        rounds=synth.rounds,
        max_model_len=synth.max_model_len,
        sampling={"temperature": 0, "max_new_tokens": synth.max_new_tokens},
    )
    sources: dict[str, SourceInfo] = {}
    entries = [("raw_corpus", AUGMENTED_SOURCE, recipe.source)] + [
        ("general_instructions" if s.kind == "general_instructions" else "raw_corpus", mix_name, s)
        for mix_name, s in recipe.mix_sources.items()
    ]
    for kind, mix_name, source in entries:
        # one dataset can feed two roles (from scratch: augmented part and raw part): the card lists it once, with
        # the mix names its rows carry in the source column
        sources.setdefault(
            source.path,
            SourceInfo(
                path=source.path,
                kind=kind,
                license=source.license,
                revision=source.revision,
                name=source.name,
                split=source.split,
            ),
        ).mix_names.append(mix_name)
    split = recipe.source.output_split
    templified_dir = recipe.run.stage_dir(TEMPLIFIED)
    templify_reports = stage_extra(templified_dir, recipe).get("statistics") or {
        name: templify_report(dataset)
        for name, dataset in load_stage(templified_dir, storage_options=recipe.run.storage_options).items()
    }
    return ReleaseInfo(
        synthesizer=synthesizer,
        sources=list(sources.values()),
        mixing_report=stage_extra(recipe.run.stage_dir(MIXED), recipe) if recipe.mix is not None else None,
        templify_stats=templify_reports[split],
        synthesis_stats=synthesis_stage_report(recipe),
        quality=templify_quality(recipe)["reports"].get(split),
        recipe=recipe.recorded(),
        command=command,
        template_column=MODE,
        tokenizer=recipe.mix.tokenizer if recipe.mix is not None else recipe.templify.target_tokenizer,
    )


def stage_release(recipe: RecipeConfig, *, command: str | None = None) -> StageSummary:
    """Release the final data (mixed, or templified when there is no mix) with its card: to the Hub, or locally.

    One bundle (`hf_ipt.release.bundle`) is built from the data and the stages' reports, then written to
    `release_to` ("hub": commit then tag; "local": `release/`). `command` is recorded in the card.

    Example:
        >>> stage_release(recipe, command="hf-ipt push recipe.yaml").output  # doctest: +SKIP
        'https://huggingface.co/datasets/me/ipt/tree/v0.1'
    """
    started = time.perf_counter()
    if recipe.release is None:
        raise ConfigError(
            "this recipe has no `release` section (repo_id, version, config_name); add one or skip `hf-ipt push`"
        )
    storage = recipe.run.storage_options
    data_stage = MIXED if recipe.mix is not None else TEMPLIFIED
    data_dir = recipe.run.stage_dir(data_stage)
    upstream = finished_upstream(data_dir, recipe, "mix" if recipe.mix is not None else "templify")
    output = recipe.run.stage_dir(RELEASE)
    release_settings = {k: v for k, v in config_to_dict(recipe.release).items() if k != "token"}
    identity = {
        "data": upstream,
        "release": release_settings,
        "release_to": recipe.release_to,
        "card": config_to_dict(recipe.card),
    }
    if config_to_dict(recipe.quality) != config_to_dict(QualityConfig()):  # the card's Quality section changes
        identity["quality"] = config_to_dict(recipe.quality)
    # recorded in the release's marker: no secret (a credential in a card text) may reach it
    identity = redact(identity)
    if reusable(output, identity, recipe, "release"):
        marker = read_stage_marker(output, storage) or {}
        summary = StageSummary("release", marker.get("extra", {}).get("url", output), reused=True)
        summary.rows = sum(marker.get("num_rows", {}).values()) or None
        return summary
    if recipe.release_to == "local":
        # a version never changes: a local release of this version with other content is replaced only when forced
        check_local_version(
            output, identity, recipe.release.version, force=recipe.run.overwrite, storage_options=storage
        )

    clear_release(output, storage)
    data = load_stage(data_dir, storage_options=storage)
    info = release_info(recipe, command=command)
    summary = StageSummary("release", output, rows=sum(len(d) for d in data.values()))
    if recipe.release_to == "hub":
        result = publish_release(data, recipe.release, info=info, card=recipe.card)
        commit_stage(
            output,
            config=identity,
            num_rows={split: len(d) for split, d in data.items()},
            extra={"url": result.url, "commit": result.commit, "version": result.version},
            storage_options=storage,
        )
        summary.output = result.url
        summary.figures["commit"] = result.commit
    else:
        release = recipe.release
        bundle = build_bundle(
            dict(data), info, config_name=release.config_name, version=release.version, plots=release.plots
        )
        report = write_to_folder(
            bundle,
            output,
            repo_id=release.repo_id,
            version=release.version,
            identity=identity,
            card=recipe.card,
            storage_options=storage,
        )
        text_stats = report["statistics"].get("text") or {}
        if text_stats.get("tokens"):
            summary.figures["tokens"] = text_stats["tokens"]["total"]
        summary.figures["card"] = f"{output}/README.md"
        summary.figures["plots"] = len(report["files"]["plots"])
        summary.note = f"load it with datasets.load_dataset({output!r})"
    summary.figures["version"] = f"{recipe.release.repo_id} {recipe.release.version} ({recipe.release.config_name})"
    summary.seconds = time.perf_counter() - started
    return summary


# ----------------------------------------------------------------------------------------------------------------
# Whole runs
# ----------------------------------------------------------------------------------------------------------------


def status(recipe: RecipeConfig) -> dict[str, Any]:
    """Which parts of a run are finished: the synthesis shards (`runner.run_status`) and each later stage; a stage
    whose files are damaged since its commit is not finished, and `damaged` names its files.

    Example:
        >>> status(recipe)["stages"]  # doctest: +SKIP
        {'templified': True, 'mixed': False, 'release': False}
    """
    storage = recipe.run.storage_options
    stages, damaged = {}, {}
    for stage in (TEMPLIFIED, MIXED, RELEASE):
        damage = stage_damage(recipe.run.stage_dir(stage), storage)
        stages[stage] = stage_fingerprint(recipe.run.stage_dir(stage), storage) is not None and not damage
        if damage:
            damaged[stage] = sorted(damage)
    return {
        "output_dir": recipe.run.output_dir,
        "synthesis": run_status(recipe.run.stage_dir(SYNTHESIZED), storage),
        "stages": stages,
        "damaged": damaged,
    }


def run(
    recipe: RecipeConfig | str | os.PathLike | None,
    stages: Sequence[str] = STAGES,
    *,
    overrides: Mapping[str, Any] | None = None,
    worker_index: int = 0,
    num_workers: int = 1,
    command: str | Sequence[str] | None = None,
    preflight: bool = True,
) -> list[StageSummary]:
    """Run the given stages of a recipe, in pipeline order; returns one summary per stage run.

    First (unless `preflight=False`) every input of these stages is checked (`hf_ipt.preflight`): all problems are
    raised at once as a `PreflightError`, in seconds, before any model is built or loaded.

    `recipe` is a `RecipeConfig` or the path of a recipe file (with `overrides`, {"section.key": value}). Several
    stages chain (what `hf-ipt run` does): each runs only when the previous one is complete (another worker may
    still hold synthesis shards), and `mix` is skipped when the recipe has none. A single stage just runs (`mix`
    without a `mix` section is a ConfigError). `command` (a string, or the `hf-ipt` arguments) is recorded in the
    release card.

    Example:
        >>> summaries = run("recipes/quickstart.yaml", overrides={"release_to": "local"})  # doctest: +SKIP
        >>> [s.stage for s in summaries], all(s.complete for s in summaries)  # doctest: +SKIP
        (['synthesize', 'templify', 'mix', 'release'], True)
    """
    if not isinstance(recipe, RecipeConfig):
        recipe = load_recipe(recipe, dict(overrides or {}))
    elif overrides:
        raise ValueError("overrides apply to a recipe file; change the RecipeConfig itself (dataclasses.replace)")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; the stages are {list(STAGES)}")
    # the recipe's token and storage credentials are scrubbed from every later card, report and log line
    register_secrets(secret_values(config_to_dict(recipe)))
    command = scrub_command(command)
    if "synthesize" in stages:  # before the preflight: a contradiction in the command itself comes first
        check_workers(recipe.run.executor, recipe.run.num_workers, manual_index=worker_index, manual_count=num_workers)
    if preflight:
        ensure_ready(recipe, stages, worker_index=worker_index, num_workers=num_workers)
    chained = len(stages) > 1
    summaries: list[StageSummary] = []

    def wanted(stage: str) -> bool:
        if stage not in stages:
            return False
        return not chained or not summaries or summaries[-1].complete

    if wanted("synthesize"):
        summaries.append(stage_synthesize(recipe, worker_index=worker_index, num_workers=num_workers))
    if wanted("templify"):
        summaries.append(stage_templify(recipe))
    if wanted("mix") and (recipe.mix is not None or not chained):
        summaries.append(stage_mix(recipe))
    if wanted("release"):
        summaries.append(stage_release(recipe, command=command))
    return summaries
