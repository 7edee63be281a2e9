"""The `hf-ipt` command: one recipe, one command, from a raw corpus to a release, resumable at every step.

    hf-ipt run recipes/quickstart.yaml                     # the whole pipeline
    hf-ipt synthesize RECIPE.yaml --synth.rounds 2         # one stage, with a dotted override
    hf-ipt synthesize RECIPE.yaml --worker-index 1 --num-workers 4    # one of four workers sharing the shards
    hf-ipt status RECIPE.yaml                              # which shards and stages are done
    hf-ipt config RECIPE.yaml                              # the resolved, validated configuration

Every stage writes under `run.output_dir`: `synthesized/` (resumable shards), `templified/`, `mixed/`, `release/`.
A stage whose output is already there with the same configuration is skipped, so re-running a command after a crash
continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hf_ipt.config import (
    ConfigError,
    RecipeConfig,
    describe_fields,
    load_recipe,
    parse_overrides,
)
from hf_ipt.hub import ReleaseError
from hf_ipt.runner import (
    ResumeConflictError,
    ShardedRunner,
    assemble_shards,
    iter_shard_tables,
    read_manifest,
    run_status,
)
from hf_ipt.store import (
    IncompleteRunError,
    commit_stage,
    config_to_dict,
    fingerprint,
    load_stage,
    read_stage_marker,
    save_stage,
    stage_fingerprint,
)

logger = logging.getLogger("hf_ipt.cli")

SYNTHESIZED, TEMPLIFIED, MIXED, RELEASE = "synthesized", "templified", "mixed", "release"


# ----------------------------------------------------------------------------------------------------------------
# Stage summaries
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class StageSummary:
    """What a stage did, printed at the end of a command (and returned by the stage functions)."""

    stage: str
    output: str
    seconds: float = 0.0
    rows: int | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    reused: bool = False  # the output was already there with the same configuration
    complete: bool = True
    note: str = ""

    def lines(self) -> list[str]:
        state = "already done, reused" if self.reused else f"{_duration(self.seconds)}"
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


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def synthesis_figures(tables) -> dict[str, Any]:
    """Totals over synthesized rows given as pyarrow Tables (e.g. `iter_shard_tables`): rows, pairs, statuses, prompt
    tokens, truncated texts. Computed column-wise with pyarrow, shard by shard, so a large run is never loaded whole.
    """
    import pyarrow.compute as pc

    from hf_ipt import columns as C

    rows = pairs = prompt_tokens = truncated = 0
    statuses: dict[str, int] = {}
    for table in tables:
        rows += table.num_rows
        if not table.num_rows:
            continue
        if C.PAIRS in table.column_names:
            pairs += int(pc.sum(pc.list_value_length(table[C.PAIRS])).as_py() or 0)
        if C.PROMPT_TOKENS in table.column_names:
            prompt_tokens += int(pc.sum(table[C.PROMPT_TOKENS]).as_py() or 0)
        if C.TRUNCATED in table.column_names:
            truncated += int(pc.sum(pc.cast(table[C.TRUNCATED], "int64")).as_py() or 0)
        if C.SYNTH_STATUS in table.column_names:
            for entry in pc.value_counts(table[C.SYNTH_STATUS]).to_pylist():
                statuses[entry["values"]] = statuses.get(entry["values"], 0) + entry["counts"]
    ordered = [k for k in C.SYNTH_STATUSES if k in statuses] + sorted(set(statuses) - set(C.SYNTH_STATUSES))
    return {
        "rows": rows,
        "pairs": pairs,
        "prompt tokens": prompt_tokens,
        "rows by status": ", ".join(f"{k} {statuses[k]:,}" for k in ordered),
        "truncated texts": truncated,
    }


# ----------------------------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------------------------


def prepare_model(recipe: RecipeConfig) -> None:
    """Build the tiny offline synthesizer when the recipe asks for it (reused when already built)."""
    if recipe.build_tiny_model:
        from hf_ipt.testing import build_tiny_synthesizer

        logger.info("building (or reusing) the tiny offline synthesizer at %s", recipe.synth.model)
        build_tiny_synthesizer(recipe.synth.model)


def synthesis_input(recipe: RecipeConfig):
    """The rows the synthesis runs on: the source split, chunked to the synthesizer's budget when enabled."""
    dataset = recipe.source.load()
    if recipe.chunk.enabled:
        from hf_ipt.synthesis import ChunkConfig, Chunker

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


def stage_synthesize(recipe: RecipeConfig, *, worker_index: int = 0, num_workers: int = 1) -> StageSummary:
    """Run this worker's synthesis shards (resuming), then report; the summary is complete when all shards are."""
    from hf_ipt.synthesis import Synthesizer

    started = time.perf_counter()
    output = recipe.run.stage_dir(SYNTHESIZED)
    prepare_model(recipe)
    dataset = synthesis_input(recipe)
    runner = ShardedRunner(
        Synthesizer(recipe.synth),
        output,
        shard_size=recipe.run.shard_size,
        batch_size=recipe.synth.batch_size,
        config=recipe.synthesis_identity(),
        split=recipe.source.output_split,
        worker_index=worker_index,
        num_workers=num_workers,
        overwrite=recipe.run.overwrite,
        resume_ignore=recipe.run.resume_ignore,
        verify_inputs=recipe.run.verify_inputs,
        storage_options=recipe.run.storage_options,
        desc="Synthesis",
    )
    report = runner.run(dataset)
    summary = StageSummary("synthesize", output, seconds=time.perf_counter() - started, complete=report.complete)
    summary.figures["shards"] = (
        f"{report.num_shards} ({len(report.processed)} computed now, {len(report.skipped)} reused"
        + (f", {len(report.missing)} left to other workers" if report.missing else "")
        + ")"
    )
    if report.complete:
        from hf_ipt import columns as C

        wanted = [C.PAIRS, C.PROMPT_TOKENS, C.TRUNCATED, C.SYNTH_STATUS]
        figures = synthesis_figures(
            iter_shard_tables(output, columns=wanted, storage_options=recipe.run.storage_options)
        )
        summary.rows = figures.pop("rows")
        summary.figures.update(figures)
        summary.reused = not report.processed and bool(report.skipped)
    else:
        summary.note = (
            f"shards {_short_list(report.missing)} are not finished; run the other workers (same recipe, their "
            "--worker-index) or this command again without --num-workers to finish them"
        )
    return summary


def _short_list(values: Sequence[int], limit: int = 12) -> str:
    shown = ", ".join(map(str, values[:limit]))
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def _synthesis_fingerprint(recipe: RecipeConfig) -> str:
    manifest = read_manifest(recipe.run.stage_dir(SYNTHESIZED), recipe.run.storage_options)
    status = run_status(recipe.run.stage_dir(SYNTHESIZED), recipe.run.storage_options)
    if manifest is None or status["missing"]:
        raise IncompleteRunError(
            f"synthesis in {recipe.run.stage_dir(SYNTHESIZED)} is not finished "
            f"({'not started' if manifest is None else 'shards ' + _short_list(status['missing']) + ' missing'}); "
            "run `hf-ipt synthesize` with this recipe first"
        )
    return manifest["fingerprint"]


def stage_templify(recipe: RecipeConfig) -> StageSummary:
    """Turn the synthesized rows into pre-training texts (skipped when done with the same configuration)."""
    import datasets

    from hf_ipt.templify import templify, templify_stats

    started = time.perf_counter()
    output = recipe.run.stage_dir(TEMPLIFIED)
    identity = {"synthesized": _synthesis_fingerprint(recipe), "templify": config_to_dict(recipe.templify)}
    reused = stage_fingerprint(output, recipe.run.storage_options) == fingerprint(identity)
    if reused:
        templified = load_stage(output, storage_options=recipe.run.storage_options)
    else:
        synthesized = assemble_shards(recipe.run.stage_dir(SYNTHESIZED), storage_options=recipe.run.storage_options)
        templified = datasets.DatasetDict(
            {split: templify(dataset, recipe.templify) for split, dataset in synthesized.items()}
        )
        save_stage(templified, output, config=identity, storage_options=recipe.run.storage_options)
    summary = StageSummary("templify", output, seconds=time.perf_counter() - started, reused=reused)
    summary.rows = sum(len(d) for d in templified.values())
    for split, dataset in templified.items():
        stats = templify_stats(dataset)
        prefix = f"{split}: " if len(templified) > 1 else ""
        summary.figures[f"{prefix}texts"] = stats["texts"]
        summary.figures[f"{prefix}pairs in texts"] = stats["pairs_per_text"]["total"]
        summary.figures[f"{prefix}characters"] = stats["chars_per_text"]["total"]
        summary.figures[f"{prefix}modes"] = ", ".join(f"{k} {v:,}" for k, v in stats["modes"].items())
    return summary


class WrapTexts:
    """Batched map function writing a target BOS/EOS around every non-blank text of a column (blank texts stay
    blank, so the mix excludes and counts them). Columns read and written: `column`; one row out per row in.

    Example:
        >>> from hf_ipt.formatting import TargetFormat
        >>> WrapTexts("text", TargetFormat("<s>", "</s>"))({"text": ["a", " ", None]})
        {'text': ['<s>a</s>', ' ', None]}
    """

    def __init__(self, column: str, target_format: Any):
        self.column = column
        self.target_format = target_format

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        wrap = self.target_format.wrap
        return {self.column: [t if not isinstance(t, str) or not t.strip() else wrap(t) for t in batch[self.column]]}


def stage_mix(recipe: RecipeConfig) -> StageSummary:
    """Mix the templified texts with the recipe's other corpora by token ratio (all formatted with templify's
    target BOS/EOS, so both halves of the mix look alike)."""
    import dataclasses

    import datasets

    from hf_ipt.config import AUGMENTED_SOURCE
    from hf_ipt.mixing import GeneralInstructionFormatter, mix

    started = time.perf_counter()
    if recipe.mix is None:
        raise ConfigError("this recipe has no `mix` section; add one (see recipes/README.md) or skip `hf-ipt mix`")
    output = recipe.run.stage_dir(MIXED)
    templified_dir = recipe.run.stage_dir(TEMPLIFIED)
    upstream = stage_fingerprint(templified_dir, recipe.run.storage_options)
    if upstream is None:
        raise IncompleteRunError(f"{templified_dir} holds no templified output; run `hf-ipt templify` first")
    identity = {
        "templified": upstream,
        "mix": config_to_dict(recipe.mix),
        "mix_sources": config_to_dict(recipe.mix_sources),
    }
    if stage_fingerprint(output, recipe.run.storage_options) == fingerprint(identity):
        mixed = load_stage(output, storage_options=recipe.run.storage_options)
        return _mix_summary(mixed, output, time.perf_counter() - started, stage_extra(output, recipe), reused=True)

    split = recipe.source.output_split
    sources = {AUGMENTED_SOURCE: load_stage(templified_dir, storage_options=recipe.run.storage_options)[split]}
    target = recipe.templify.resolve_target_format()
    text_columns = dict(recipe.mix.text_columns)
    for name, source in recipe.mix_sources.items():
        dataset = source.load()
        if source.kind == "general_instructions":
            column = text_columns.setdefault(name, recipe.mix.text_column)
            formatter = GeneralInstructionFormatter(source.question_column, source.response_column, column, target)
            dataset = dataset.map(formatter, batched=True, desc=f"Formatting {name}")
        else:
            column = text_columns.setdefault(name, source.text_column)
            if target.bos or target.eos:
                dataset = dataset.map(WrapTexts(column, target), batched=True, desc=f"Wrapping {name} texts")
        sources[name] = dataset
    mixed, report = mix(sources, dataclasses.replace(recipe.mix, text_columns=text_columns))
    mixed = datasets.DatasetDict({split: mixed.flatten_indices()})
    save_stage(mixed, output, config=identity, storage_options=recipe.run.storage_options, extra=report.to_dict())
    return _mix_summary(mixed, output, time.perf_counter() - started, report.to_dict(), reused=False)


def stage_extra(output: str, recipe: RecipeConfig) -> dict[str, Any]:
    """The report saved with a committed stage output (e.g. the mix report), or {}."""
    marker = read_stage_marker(output, recipe.run.storage_options) or {}
    return marker.get("extra", {})


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


def _synthesis_stats(dataset) -> dict[str, Any]:
    """Synthesis figures for the card, from the synthesized rows (the released texts no longer carry them)."""
    from collections import Counter

    import pyarrow.compute as pc

    from hf_ipt import columns as C

    table = dataset.with_format("arrow")[:] if len(dataset) else None
    if table is None:
        return {"status_counts": {}, "parse_drops": {}, "pairs_per_text": {}, "pairs": 0}
    lengths = pc.list_value_length(table[C.PAIRS]).to_pylist()
    drops: dict[str, int] = {}
    if C.PARSE_DROPS in table.column_names:
        column = table[C.PARSE_DROPS].combine_chunks()
        for index, reason in enumerate(field.name for field in column.type):
            drops[reason] = int(pc.sum(pc.struct_field(column, [index])).as_py() or 0)
    counts = {d["values"]: d["counts"] for d in pc.value_counts(table[C.SYNTH_STATUS]).to_pylist()}
    return {
        "status_counts": dict(sorted(counts.items())),
        "parse_drops": drops,
        "pairs_per_text": {str(n): c for n, c in sorted(Counter(lengths).items())},
        "pairs": int(sum(lengths)),
    }


def _templify_report(templified) -> dict[str, Any]:
    """templify_stats plus the {pairs: texts} counts the card plots."""
    from collections import Counter

    from hf_ipt.templify import NUM_PAIRS, STATUS_OK, TEMPLIFY_STATUS, templify_stats

    stats = templify_stats(templified)
    statuses = templified[TEMPLIFY_STATUS]
    ok = [n for n, status in zip(templified[NUM_PAIRS], statuses, strict=True) if status == STATUS_OK]
    stats["pairs_per_text_distribution"] = stats["pairs_per_text"]
    stats["pairs_per_text"] = {str(n): c for n, c in sorted(Counter(ok).items())}
    return stats


def release_info(recipe: RecipeConfig, *, command: str | None = None):
    """Everything the card says beyond the released rows: synthesizer, sources, stage reports, recipe, command."""
    from hf_ipt.cards import ReleaseInfo, SourceInfo, SynthesizerInfo

    synth = recipe.synth
    synthesizer = SynthesizerInfo(
        model_id=synth.model,
        revision=synth.revision,
        engine=synth.engine,
        num_rounds=synth.rounds,
        max_model_len=synth.max_model_len,
        sampling={"temperature": 0, "max_new_tokens": synth.max_new_tokens},
    )
    sources: dict[str, SourceInfo] = {}
    entries = [("raw_corpus", recipe.source)] + [
        ("general_instructions" if s.kind == "general_instructions" else "raw_corpus", s)
        for s in recipe.mix_sources.values()
    ]
    for kind, source in entries:
        # one dataset can feed two roles (from scratch: augmented part and raw part): the card lists it once
        sources.setdefault(
            source.path,
            SourceInfo(
                name=source.path,
                kind=kind,
                license=source.license,
                revision=source.revision,
                subset=source.name,
                split=source.split,
            ),
        )
    storage = recipe.run.storage_options
    synthesized = assemble_shards(recipe.run.stage_dir(SYNTHESIZED), storage_options=storage)
    templified = load_stage(recipe.run.stage_dir(TEMPLIFIED), storage_options=storage)
    split = recipe.source.output_split
    mixing_report = None
    if recipe.mix is not None:
        report = stage_extra(recipe.run.stage_dir(MIXED), recipe)
        mixing_report = {
            **report,
            "unit": "tokens",
            "sources": {
                name: {**entry, "rows": entry["rows_selected"], "tokens": entry["tokens_selected"]}
                for name, entry in report.get("sources", {}).items()
            },
        }
    return ReleaseInfo(
        synthesizer=synthesizer,
        sources=list(sources.values()),
        mixing_report=mixing_report,
        templify_stats=_templify_report(templified[split]),
        synthesis_stats=_synthesis_stats(synthesized[split]),
        recipe=recipe.recorded(),
        command=command,
        template_column="mode",
        tokenizer=recipe.mix.tokenizer if recipe.mix is not None else recipe.templify.target_tokenizer,
    )


def write_local_release(data, output: str, recipe: RecipeConfig, info, identity: dict[str, Any]) -> dict[str, Any]:
    """The release as a folder laid out like the Hub repo would be: README.md (the card, whose `configs` metadata
    lets `load_dataset(output)` read it), data/ (Parquet), release_info/{config}/ (stats.json, recipe.yaml, plots).
    The data and its commit marker are written last. Returns the config report (stats.json)."""
    import tempfile
    from pathlib import Path

    import yaml

    from hf_ipt.cards import config_report, render_card, sidecar_dir
    from hf_ipt.hub import hf_ipt_version
    from hf_ipt.plots import render_plots
    from hf_ipt.store import clear_stage, write_file

    storage = recipe.run.storage_options
    release = recipe.release
    clear_stage(output, storage_options=storage)
    report = config_report(
        dict(data), info, config_name=release.config_name, version=release.version, hf_ipt_version=hf_ipt_version()
    )
    folder = sidecar_dir(release.config_name)
    files: dict[str, Any] = {"stats": f"{folder}/stats.json", "recipe": f"{folder}/recipe.yaml", "plots": {}}
    recipe_text = yaml.safe_dump(recipe.recorded(), sort_keys=False, allow_unicode=True)
    write_file(output, files["recipe"], recipe_text.encode("utf-8"), storage_options=storage)
    if release.plots:
        with tempfile.TemporaryDirectory(prefix="hf-ipt-plots-") as workdir:
            for key, path in render_plots(report["statistics"], Path(workdir)).items():
                files["plots"][key] = f"{folder}/plots/{path.name}"
                write_file(output, files["plots"][key], path.read_bytes(), storage_options=storage)
    report["files"] = files
    stats = json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"
    write_file(output, files["stats"], stats.encode("utf-8"), storage_options=storage)
    hub_configs = [
        {
            "config_name": release.config_name,
            "data_files": [{"split": split, "path": f"data/{split}-*"} for split in data],
        }
    ]
    card = render_card(
        {release.config_name: report},
        repo_id=release.repo_id,
        version=release.version,
        hub_configs=hub_configs,
        dataset_info=_local_dataset_info(data, release.config_name),
        options=recipe.card,
    )
    write_file(output, "README.md", str(card).encode("utf-8"), storage_options=storage)
    save_stage(data, output, config=identity, storage_options=storage, extra={"files": files})
    return report


def _local_dataset_info(data, config_name: str) -> dict[str, Any]:
    """The `dataset_info` card metadata `push_to_hub` would write (features, rows and bytes per split).

    Besides describing the folder like the Hub repo, it keys `datasets`' cache: for a local folder whose card
    declares `configs`, `load_dataset` caches by the card's metadata and the folder's name, not by the files, so
    without it a new release into a folder of the same name would load the previous release from the cache.
    """
    splits = [
        {"name": split, "num_bytes": int(dataset.data.nbytes), "num_examples": len(dataset)}
        for split, dataset in data.items()
    ]
    features = next(iter(data.values())).info.features if data else None
    info: dict[str, Any] = {"config_name": config_name}
    if features is not None:
        info["features"] = features._to_yaml_list()
    info["splits"] = splits
    info["dataset_size"] = sum(split["num_bytes"] for split in splits)
    return info


def _clear_release(output: str, storage: dict[str, Any]) -> None:
    """Remove a previous release record (its marker first), so a release never shows another one's files."""
    from hf_ipt.cards import RELEASE_INFO_DIR
    from hf_ipt.store import Store, clear_stage

    clear_stage(output, storage_options=storage)
    store = Store(output, storage)
    store.remove("README.md")
    store.remove(RELEASE_INFO_DIR)


def stage_release(recipe: RecipeConfig, *, argv: Sequence[str] | None = None) -> StageSummary:
    """Release the final data (mixed, or templified when there is no mix) with its card: to the Hub, or locally."""
    started = time.perf_counter()
    if recipe.release is None:
        raise ConfigError(
            "this recipe has no `release` section (repo_id, version, config_name); add one or skip `hf-ipt push`"
        )
    storage = recipe.run.storage_options
    data_stage = MIXED if recipe.mix is not None else TEMPLIFIED
    data_dir = recipe.run.stage_dir(data_stage)
    upstream = stage_fingerprint(data_dir, storage)
    if upstream is None:
        previous = "mix" if recipe.mix is not None else "templify"
        raise IncompleteRunError(f"{data_dir} holds no finished output; run `hf-ipt {previous}` first")
    output = recipe.run.stage_dir(RELEASE)
    release_settings = {k: v for k, v in config_to_dict(recipe.release).items() if k != "token"}
    identity = {
        "data": upstream,
        "release": release_settings,
        "release_to": recipe.release_to,
        "card": config_to_dict(recipe.card),
    }
    marker = read_stage_marker(output, storage)
    if marker is not None and marker.get("fingerprint") == fingerprint(identity):
        summary = StageSummary("release", marker.get("extra", {}).get("url", output), reused=True)
        summary.rows = sum(marker.get("num_rows", {}).values()) or None
        return summary

    _clear_release(output, storage)
    data = load_stage(data_dir, storage_options=storage)
    command = "hf-ipt " + " ".join(shlex.quote(a) for a in argv) if argv else None
    info = release_info(recipe, command=command)
    summary = StageSummary("release", output, rows=sum(len(d) for d in data.values()))
    if recipe.release_to == "hub":
        from hf_ipt.hub import publish_release

        result = publish_release(data, recipe.release, info=info, card=recipe.card, recipe=recipe.recorded())
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
        report = write_local_release(data, output, recipe, info, identity)
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
# Command line
# ----------------------------------------------------------------------------------------------------------------

COMMANDS = {
    "run": "the whole pipeline: synthesize -> templify -> mix -> release",
    "synthesize": "synthesize instruction-response pairs, in resumable shards (several workers may share them)",
    "templify": "turn synthesized rows into pre-training texts",
    "mix": "mix the templified texts with other corpora by token ratio",
    "push": "write the release (dataset, card, plots) to the Hub or to a local folder",
    "status": "show which shards and stages of a run are finished",
    "config": "print the resolved configuration (YAML) after validating it; loads nothing",
}


def _keys_help() -> str:
    rows = describe_fields(RecipeConfig)
    lines = [
        "recipe keys (set in RECIPE.yaml, or override: --section.key VALUE, --section.key=VALUE, or a bare --flag "
        "for true):"
    ]
    for key, type_name, default, help_text in rows:
        lines.append(f"  --{key}  ({type_name}, default {default})")
        lines.extend(textwrap.wrap(help_text, width=100, initial_indent="      ", subsequent_indent="      "))
    lines.append(
        "  --mix_sources.NAME.KEY  sets KEY of one mix source (keys: those of source plus kind, question_column, "
        "response_column)"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-ipt",
        description="Instruction Pre-Training as a datasets-native pipeline. See recipes/README.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    keys_help = _keys_help()
    for name, help_text in COMMANDS.items():
        sub = commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=keys_help,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,
            usage=f"hf-ipt {name} [RECIPE.yaml] [options] [--section.key VALUE ...]",
        )
        sub.add_argument("-q", "--quiet", action="store_true", help="no progress bars and no info logs")
        if name in ("run", "synthesize"):
            sub.add_argument(
                "--worker-index",
                "--rank",
                type=int,
                default=0,
                dest="worker_index",
                help="index of this worker, 0-based (default 0); it takes the shards i with i %% num_workers == index",
            )
            sub.add_argument(
                "--num-workers",
                "--world-size",
                type=int,
                default=1,
                dest="num_workers",
                help="number of workers sharing the synthesis shards (default 1)",
            )
        if name in ("run", "synthesize", "templify", "mix", "push"):
            sub.add_argument(
                "--overwrite",
                action="store_true",
                help="same as --run.overwrite: replace a previous run made with another configuration",
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `hf-ipt` console script; returns the exit status (0 done, 2 bad input or refused resume,
    3 this worker finished but other shards are still missing, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # argparse knows the command's own options; everything else is the recipe path and --section.key overrides
    args, extras = build_parser().parse_known_args(argv)
    args.argv = argv
    _configure_output(args.quiet)
    try:
        positionals: list[str] = []
        overrides = parse_overrides(extras, RecipeConfig, positionals=positionals)
        if len(positionals) > 1:
            raise ConfigError(f"expected at most one recipe file, got {positionals}")
        if getattr(args, "overwrite", False):
            overrides["run.overwrite"] = True
        recipe = load_recipe(positionals[0] if positionals else None, overrides)
        return _dispatch(args, recipe)
    except (ConfigError, ResumeConflictError, IncompleteRunError, ReleaseError, ValueError) as err:
        # the stages' errors name the setting or column at fault and how to fix it: show them, not a traceback
        print(f"hf-ipt {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"hf-ipt {args.command}: interrupted; finished shards are kept, run the same command to resume",
            file=sys.stderr,
        )
        return 130


def _configure_output(quiet: bool) -> None:
    """hf-ipt's own log lines on stderr (info, or warnings only with --quiet); progress bars off with --quiet."""
    import datasets

    log = logging.getLogger("hf_ipt")
    # one handler on hf-ipt's logger (not the root's), so other libraries' log lines are not printed twice
    if not any(getattr(h, "_hf_ipt_cli", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._hf_ipt_cli = True  # type: ignore[attr-defined]
        log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    if quiet:
        datasets.disable_progress_bars()
    else:
        datasets.enable_progress_bars()


def _dispatch(args: argparse.Namespace, recipe: RecipeConfig) -> int:
    import yaml

    if args.command == "config":
        print(yaml.safe_dump(config_to_dict(recipe), sort_keys=False, allow_unicode=True), end="")
        return 0
    if args.command == "status":
        return _print_status(recipe)
    started = time.perf_counter()
    summaries: list[StageSummary] = []
    if args.command in ("run", "synthesize"):
        summaries.append(stage_synthesize(recipe, worker_index=args.worker_index, num_workers=args.num_workers))
    if args.command == "templify" or (args.command == "run" and summaries[-1].complete):
        summaries.append(stage_templify(recipe))
    if args.command == "mix" or (args.command == "run" and summaries[-1].complete and recipe.mix is not None):
        summaries.append(stage_mix(recipe))
    if args.command == "push" or (args.command == "run" and summaries[-1].complete):
        summaries.append(stage_release(recipe, argv=getattr(args, "argv", None)))
    _print_summary(args.command, summaries, time.perf_counter() - started)
    return 0 if all(s.complete for s in summaries) else 3


def _print_summary(command: str, summaries: list[StageSummary], seconds: float) -> None:
    print(f"\nhf-ipt {command}: finished in {_duration(seconds)}")
    for summary in summaries:
        for line in summary.lines():
            print(f"  {line}")


def _print_status(recipe: RecipeConfig) -> int:
    status = run_status(recipe.run.stage_dir(SYNTHESIZED), recipe.run.storage_options)
    print(f"run {recipe.run.output_dir}")
    if not status["started"]:
        print("  synthesize  not started")
    else:
        done, total = len(status["done"]), status["num_shards"]
        print(f"  synthesize  {done}/{total} shards finished ({status['rows_done']:,} rows)")
        if status["missing"]:
            print(f"              missing shards: {_short_list(status['missing'])}")
    for stage in (TEMPLIFIED, MIXED, RELEASE):
        state = "finished" if stage_fingerprint(recipe.run.stage_dir(stage), recipe.run.storage_options) else "-"
        print(f"  {stage:<11} {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
