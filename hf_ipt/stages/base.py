"""The stage contract, and the one driver that does for every stage what is the same for all of them.

A stage is one module (`synthesize`, `templify`, `mix`, `release`), listed once in `hf_ipt.stages.STAGES`. Its class
declares what is particular to it:

- `name` (its command and summary label), `folder` (its output folder under `run.output_dir`), `sections` (the recipe
  sections it reads), and `reads`, the stage whose committed output it reads (None for the first);
- `from_recipe(recipe)`: the stage as a recipe configures it (None when the recipe leaves it out);
- `checks(run, built_later)`: its preflight checks, each a name and a function returning `Problem`s, cheap enough to
  run for the whole pipeline in seconds before anything heavy starts; `chain_checks(earlier, run)`: those that need
  the stages running before it in the same command (what they will change: `planned_changes`);
- `identity()`: the settings its output depends on (the driver adds the upstream output's fingerprint);
- `settings()`: the recipe sections it records in its commit marker, free of secrets, from which a release writes its
  provenance (what made the data, not what a recipe says now);
- `compute(context)`: the work itself, returning a `StageOutput`: rows to save, files to write, rows it committed in
  place (synthesis shards, or the shards of `context.run_shards`), and its report;
- `summarize(report, summary)`: the figures its summary prints, read from the committed report;
- `unfinished(marker)`: why an intact output committed with the same identity is still not finished work (synthesis
  with rows the engine failed on), redone by the next run; None for the others.

`run_stage(stage, run)` does the rest, the same for all: the upstream output must be committed and intact (its
fingerprint, settings and files' checksums, join the identity) → an output committed with the same identity,
undamaged and not `unfinished`, is reused → otherwise
`compute` → the output is committed (files, rows, then the marker with the report, the settings and every file's
SHA-256) → a `StageSummary`. Every stage is also its own Python entry point: `stage.run(run_config)`.

A stage whose work splits into shards runs them with `context.run_shards(name, task, num_shards)` (a phase,
`hf_ipt.execution.phases`): on the run's executor (`run.executor`, `run.num_workers`: this process, pinned local
processes, or Ray tasks; `shard_executor`), each shard committed with its own marker, so an interrupted stage
resumes and a damaged shard is made again; the shards' bytes never depend on where they ran. A phase's shards are
kept while the stage's identity stays the same, and forgotten (with the stage's output) when it changes. Data files
the shards wrote are committed in place: `StageOutput(in_place=InPlace.of_shards(markers))`. Scratch phases
(`scratch=True`: files only the computation needs) are removed once the output is committed. The shards read their
input themselves, one at a time (`stage_data_files`, `hf_ipt.store.read_batches`), so a stage's memory is
bounded by its shards, not by the corpus.

Example:
    >>> from hf_ipt.config import RunConfig
    >>> summary = TemplifyStage(TemplifyConfig(seed=0)).run(RunConfig(output_dir="output/run"))  # doctest: +SKIP
    >>> print("\\n".join(summary.lines()))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from hf_ipt.execution import Executor, make_executor
from hf_ipt.execution.phases import PHASES_DIR, WORK_DIR, ShardPhase, ShardTask, clear_phases, phase_fingerprint
from hf_ipt.memory import MappedPagesReleaser, return_freed_memory
from hf_ipt.preflight import Check
from hf_ipt.redaction import process_command, redact, without_secrets
from hf_ipt.store import DATA_DIR, IncompleteRunError, RunFolder, StageFolder, config_diff, fingerprint, json_bytes

if TYPE_CHECKING:
    from hf_ipt.config import RecipeConfig, RunConfig

logger = logging.getLogger("hf_ipt.stages")


# ----------------------------------------------------------------------------------------------------------------
# What a stage returns, and what the driver prints
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class InPlace:
    """Rows a stage committed in its folder itself (synthesis shards, each with its own marker): the data files per
    split, the rows per split and each file's checksum, for the stage's commit marker to list.

    Example:
        >>> InPlace({"train": ["data/train-00000-of-00001.parquet"]}, {"train": 4}, {}).num_rows
        {'train': 4}
    """

    files: dict[str, list[str]]
    num_rows: dict[str, int]
    checksums: dict[str, dict[str, Any]]

    @classmethod
    def of_shards(cls, markers: Sequence[Mapping[str, Any]]) -> InPlace:
        """The data files the shards of a phase committed (`StageContext.run_shards`' markers, in shard order), each
        shard's Hub-layout file (`data/<split>-NNNNN-of-NNNNN.parquet`) under its split: the files with rows (a
        loader rejects a file without), or a split's first file when none has rows; every file's checksum.

        Example:
            >>> InPlace.of_shards([{"files": {"data/train-00000-of-00001.parquet": {"bytes": 9, "sha256": "ab"}},
            ...                     "num_rows": 4}]).num_rows
            {'train': 4}
        """
        found: dict[str, list[tuple[str, int]]] = {}
        checksums: dict[str, dict[str, Any]] = {}
        for marker in markers:
            for relative, checked in marker["files"].items():
                if relative.startswith(f"{DATA_DIR}/"):
                    split = relative.removeprefix(f"{DATA_DIR}/").rsplit("-", 3)[0]
                    found.setdefault(split, []).append((relative, int(marker["num_rows"])))
                    checksums[relative] = dict(checked)
        files = {split: [r for r, rows in shards if rows] or [shards[0][0]] for split, shards in found.items()}
        num_rows = {split: sum(rows for _, rows in shards) for split, shards in found.items()}
        return cls(files, num_rows, checksums)


@dataclass
class StageOutput:
    """What `Stage.compute` returns for the driver to commit.

    Example:
        >>> StageOutput(report={"rows": 3}).complete
        True
    """

    report: dict[str, Any]  # committed with the marker; summaries and the release read it
    data: Any = None  # a DatasetDict to save as the stage's rows
    files: dict[str, bytes] = field(default_factory=dict)  # other files to write before the rows (a card)
    in_place: InPlace | None = None  # rows the stage committed itself
    num_rows: dict[str, int] | None = None  # rows per split when the stage saved none here (a Hub release)
    complete: bool = True  # False: nothing is committed (other workers still hold synthesis shards)
    figures: dict[str, Any] = field(default_factory=dict)  # figures of this computation only (shards done now)
    note: str = ""


@dataclass
class StageSummary:
    """What a stage did: printed at the end of a command, returned by `run_stage` and `Stage.run`.

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


# ----------------------------------------------------------------------------------------------------------------
# The contract
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandOptions:
    """What a command line adds to a recipe for its stages: this process's worker slot (synthesis workers started by
    hand) and the command itself (recorded in a release's card).

    Example:
        >>> CommandOptions(worker_index=1, num_workers=4).num_workers
        4
    """

    worker_index: int = 0
    num_workers: int = 1
    command: str | None = None


NO_OPTIONS = CommandOptions()


@dataclass
class StageContext:
    """What the driver hands to `Stage.compute`: the run settings, the run's folder, this stage's output folder, the
    folder it reads, and the identity its output is committed under.

    Example:
        >>> context.upstream.load()["train"]  # doctest: +SKIP
    """

    run: RunConfig
    folder: RunFolder
    output: StageFolder
    upstream: StageFolder | None
    identity: dict[str, Any]
    previous: dict[str, Any] | None  # the marker this output had before (another identity), or None
    started: bool = False  # whether `run_shards` has checked the output folder's phases against the identity

    def run_shards(
        self,
        name: str,
        task: ShardTask,
        num_shards: int,
        *,
        layout: Mapping[str, Any] | None = None,
        scratch: bool = False,
        desc: str = "",
    ) -> list[dict[str, Any]]:
        """Run phase `name` of this stage: `task` on each of `num_shards` shards, on the run's executor
        (`shard_executor`), each shard committed in the output folder with its marker; the markers, in shard order.
        Shards committed earlier under this identity (and `layout`: what else decides the shards) with intact files
        are kept. `scratch`: the phase's files serve this computation only (under `.hf_ipt/work/`), removed once the
        stage's output is committed.

        Example:
            >>> markers = context.run_shards("templify", TemplifyShards(...), num_shards=6)  # doctest: +SKIP
            >>> StageOutput(report=report, in_place=InPlace.of_shards(markers))  # doctest: +SKIP
        """
        if not self.started:
            start_phases(self.output, self.identity)
            self.started = True
        phase = ShardPhase(
            task,
            self.output,
            name=name,
            num_shards=num_shards,
            fingerprint=phase_fingerprint(self.identity, name, layout),
            executor=shard_executor(self.run),
            num_workers=self.run.num_workers,
            desc=desc or f"{name} shards",
            markers_dir=f"{WORK_DIR}/phases" if scratch else PHASES_DIR,
        )
        return phase.run()


class Stage(ABC):
    """One stage of a run. Subclasses declare `name`, `folder`, `sections`, `reads` and implement `from_recipe`,
    `identity` and `compute` (and `checks`, `settings`, `summarize` where they have something to say).

    Example:
        >>> class Upper(Stage):
        ...     name, folder, sections, reads = "upper", "upper", (), TemplifyStage
        ...     @classmethod
        ...     def from_recipe(cls, recipe, options=NO_OPTIONS):
        ...         return cls()
        ...     def identity(self):
        ...         return {}
        ...     def compute(self, context):
        ...         rows = context.upstream.load().map(lambda row: {"text": row["text"].upper()})
        ...         return StageOutput(report={"rows": sum(len(d) for d in rows.values())}, data=rows)
        >>> Upper().run(RunConfig(output_dir="output/quickstart")).rows  # doctest: +SKIP
        134
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""  # one line: its command's help
    folder: ClassVar[str]
    sections: ClassVar[tuple[str, ...]] = ()
    command_name: ClassVar[str | None] = None  # its `hf-ipt` command, when other than its name
    takes_workers: ClassVar[bool] = False  # its command takes --worker-index / --num-workers (workers started by hand)
    #: when `from_recipe` gives None: whether a chained run (`hf-ipt run`) skips the stage, and the error otherwise
    optional: ClassVar[bool] = True
    missing: ClassVar[str] = ""
    reads: type[Stage] | None = None  # the stage whose output this one reads (None: it reads no stage)

    @classmethod
    @abstractmethod
    def from_recipe(cls, recipe: RecipeConfig, options: CommandOptions = NO_OPTIONS) -> Stage | None:
        """The stage as `recipe` (and the command line's `options`) configure it; None when the recipe leaves this
        stage out (see `missing`)."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """The settings this stage's output depends on (plain data); the driver adds the upstream fingerprint."""

    @abstractmethod
    def compute(self, context: StageContext) -> StageOutput:
        """Do the stage's work; the driver commits what it returns."""

    def checks(self, run: RunConfig, built_later: set[str]) -> list[Check]:
        """The preflight checks of this stage (nothing heavy: seconds for the whole pipeline). `built_later`: local
        paths an earlier stage of this run creates before they are read (their checks are skipped)."""
        return []

    def chain_checks(self, earlier: Sequence[Stage], run: RunConfig) -> list[Check]:
        """The preflight checks of this stage that need the stages of the same command running before it (`earlier`,
        in order): e.g. whether the release would have to replace a version with other data. None by default."""
        return []

    def creates(self) -> set[str]:
        """Local paths this stage creates before later stages read them (the tiny model of the quickstart)."""
        return set()

    def shares_folder(self) -> bool:
        """Whether this stage runs as one of several processes started by hand that write the run folder together
        (synthesis workers, each its own shards): then it takes a shared lease of the run folder, not the
        exclusive one (`RunFolder.lease`)."""
        return False

    def settings(self) -> dict[str, Any]:
        """The recipe sections this stage records in its commit marker (provenance for the release; the driver
        redacts secrets); by default its identity."""
        return self.identity()

    def summarize(self, report: Mapping[str, Any], summary: StageSummary, output: StageFolder) -> None:
        """Add this stage's figures, read from its committed `report` (and its `output` folder), to `summary`."""
        summary.figures.update(report.get("figures") or {})

    def unfinished(self, marker: Mapping[str, Any]) -> str | None:
        """Why an output committed with this stage's identity, and intact, must still be computed again (the driver
        then computes instead of reusing it), None when it is finished work: by default always finished."""
        return None

    @classmethod
    def progress(cls, output: StageFolder) -> list[str]:
        """What `hf-ipt status` says of this stage's output, read from its markers alone (so it can be asked while
        workers run): finished, its damaged files, or not there ("-")."""
        damage = output.damage()
        if damage:
            return [f"damaged: {', '.join(sorted(damage))} (redone by the next run)"]
        return ["finished" if output.fingerprint() is not None else "-"]

    def refuse_repair(self, output: StageFolder, damage: Mapping[str, str], run: RunConfig) -> None:
        """Called before a damaged output is done again: a stage raises when redoing it would destroy what a person
        put there on purpose (a hand-edited card); by default the output is redone."""
        return None

    @classmethod
    def describe_damage(cls, output: StageFolder, damage: Mapping[str, str]) -> str:
        """One line naming the damaged files of this stage's output (for the stage that reads it)."""
        return output.describe_damage(damage)

    def run(self, run: RunConfig) -> StageSummary:
        """Run this stage on `run` (its `output_dir` and settings): `run_stage(self, run)`, with the memory it is done
        with given back as it goes (`hf_ipt.memory`): Arrow's freed memory at once, the pages of the memory-mapped
        files it read when they pile up.

        Example:
            >>> MixStage(mix_config, sources).run(RunConfig(output_dir="output/run"))  # doctest: +SKIP
        """
        return_freed_memory()
        with MappedPagesReleaser():
            return run_stage(self, run)


# ----------------------------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------------------------


def finished_upstream(folder: StageFolder, maker: type[Stage]) -> str:
    """The fingerprint of the committed, intact output a stage reads (made by the stage `maker`); IncompleteRunError
    when there is none or a file of it is damaged, naming the files and the command that (re)makes it.

    Example:
        >>> finished_upstream(RunFolder("output/run").stage("templified"), TemplifyStage)  # doctest: +SKIP
        '5be0...'
    """
    command = maker.command_name or maker.name
    marker = folder.marker()
    if marker is None or marker.get("fingerprint") is None:
        raise IncompleteRunError(f"{folder.url} holds no finished output; run `hf-ipt {command}` first")
    damage = folder.damage(marker)
    if damage:
        raise IncompleteRunError(
            f"{maker.describe_damage(folder, damage)}. Run `hf-ipt {command}` with this recipe (or `hf-ipt run`) to "
            "do that stage again"
        )
    return content_fingerprint(marker)


def content_fingerprint(marker: Mapping[str, Any]) -> str:
    """What a stage that reads a committed output depends on: the settings it was made with and its files' bytes
    (their checksums), so an output made again with the same settings but other rows (synthesis whose failed rows were
    retried) is never taken for the one read before.

    Example:
        >>> content_fingerprint({"fingerprint": "5be0", "checksums": {}}) == fingerprint(["5be0", {}])
        True
    """
    return fingerprint([marker["fingerprint"], marker.get("checksums") or {}])


def stage_identity(
    stage: Stage, folder: RunFolder, ignore: Sequence[str] = (), *, upstream: str | None = None
) -> dict[str, Any]:
    """The identity a stage's output is committed under: its own settings, less the dotted keys of `ignore`
    (`run.resume_ignore`: settings that do not change the output), and the fingerprint of the output it reads
    (`upstream`, else that of the committed, intact output in `folder`).

    Example:
        >>> stage_identity(TemplifyStage(TemplifyConfig()), RunFolder("output/run"))["upstream"]  # doctest: +SKIP
        '3f2a...'
    """
    if stage.reads is not None and upstream is None:
        upstream = finished_upstream(folder.stage(stage.reads.folder), stage.reads)
    # no secret may reach a marker, a manifest or a message, and a rotated credential must not block reuse
    return without_secrets({"upstream": upstream, **without_keys(stage.identity(), ignore)})


def planned_changes(stages: Sequence[Stage], run: RunConfig) -> dict[str, str]:
    """Why running `stages` (one command's stages, in pipeline order) would commit each of them with other content
    than its output holds now, `{stage name: why}`; '' for a stage whose committed output would be reused (or
    repaired to the same bytes). Read from the commit markers alone, in seconds: a stage changes when nothing is
    committed yet, when its settings differ, when its committed output is `unfinished`, or when an earlier stage of
    the same command changes what it reads.

    Example:
        >>> planned_changes(stages_of(load_recipe("r.yaml", ["--templify.seed", "1"])), run)  # doctest: +SKIP
        {'synthesize': '', 'templify': 'other settings: templify.seed', 'mix': 'templified/ is made again first ...}
    """
    folder = run.folder
    changes: dict[str, str] = {}
    first: dict[str, str] = {}  # the stage whose own change makes each changing stage change
    for stage in stages:
        reads = stage.reads
        if reads is not None and changes.get(reads.name):
            first[stage.name] = origin = first[reads.name]
            if origin == reads.name:
                changes[stage.name] = f"{reads.folder}/ is made again first ({changes[origin]})"
            else:
                changes[stage.name] = changes[reads.name]
            continue
        first[stage.name] = stage.name
        marker = folder.stage(stage.folder).marker()
        if marker is None or marker.get("fingerprint") is None:
            changes[stage.name] = "nothing is committed yet"
            continue
        # what it reads as committed: a damaged file of it is repaired to the same bytes by the stage that made it
        read = folder.stage(reads.folder).marker() if reads is not None else None
        if reads is not None and (read is None or read.get("fingerprint") is None):
            changes[stage.name] = f"{reads.folder}/ is not finished"
            continue
        upstream = content_fingerprint(read) if read is not None else None
        identity = stage_identity(stage, folder, run.resume_ignore, upstream=upstream)
        if marker["fingerprint"] != fingerprint(identity):
            changed = config_diff(marker.get("config") or {}, identity)
            shown = ["its input" if key == "upstream" else key for key in changed]
            changes[stage.name] = f"other settings: {', '.join(shown) or 'its identity'}"
        else:
            changes[stage.name] = stage.unfinished(marker) or ""
    return changes


def without_keys(data: Mapping[str, Any], dotted: Sequence[str]) -> dict[str, Any]:
    """A copy of nested plain data without the dotted keys given (those absent are ignored).

    Example:
        >>> without_keys({"synth": {"engine_kwargs": {"seed": 1, "dtype": "f"}}}, ["synth.engine_kwargs.seed"])
        {'synth': {'engine_kwargs': {'dtype': 'f'}}}
    """
    result = {key: dict(value) if isinstance(value, Mapping) else value for key, value in data.items()}
    for key in dotted:
        head, _, rest = key.partition(".")
        if head not in result:
            continue
        if not rest:
            del result[head]
        elif isinstance(result[head], Mapping):
            result[head] = without_keys(result[head], [rest])
    return result


def run_stage(stage: Stage, run: RunConfig) -> StageSummary:
    """Run one stage the way every stage runs, holding the run folder's lease: identity (with the upstream
    fingerprint) → reuse an intact, finished output committed with it → else compute → commit → summary.

    Example:
        >>> run_stage(TemplifyStage(TemplifyConfig()), RunConfig(output_dir="output/run")).reused  # doctest: +SKIP
        True
    """
    # one writer per run folder (re-entrant: under `pipeline.run`, the command already holds the lease)
    with run.folder.lease(process_command() or "", shared=stage.shares_folder()):
        return _run_stage(stage, run)


def _run_stage(stage: Stage, run: RunConfig) -> StageSummary:
    started = time.perf_counter()
    folder = run.folder
    output = folder.stage(stage.folder)
    identity = stage_identity(stage, folder, run.resume_ignore)
    marker = output.marker()
    if marker is not None and marker.get("fingerprint") == fingerprint(identity):
        damage = output.damage(marker)
        unfinished = None if damage else stage.unfinished(marker)
        if not damage and unfinished is None:
            summary = StageSummary(stage.name, output.url, reused=True)
            summary.rows = sum((marker.get("num_rows") or {}).values()) if marker.get("num_rows") else None
            stage.summarize(marker.get("extra") or {}, summary, output)
            logger.info("%s: already done with these settings, reused (%s)", stage.name, output.url)
            logger.debug("%s figures: %s", stage.name, _figures_line(summary))
            return summary
        if damage:
            stage.refuse_repair(output, damage, run)
            logger.warning("%s; doing the %s stage again", output.describe_damage(damage), stage.name)
        else:
            logger.warning("%s: %s; doing the %s stage again", output.url, unfinished, stage.name)
    logger.info("%s: started (output %s)", stage.name, output.url)
    upstream = folder.stage(stage.reads.folder) if stage.reads is not None else None
    context = StageContext(run, folder, output, upstream, identity, marker)
    result = stage.compute(context)
    summary = StageSummary(stage.name, output.url, complete=result.complete, note=result.note)
    summary.figures.update(result.figures)
    if result.complete:
        committed = commit(stage, output, identity, result)
        if context.started:
            output.remove(WORK_DIR)  # the scratch of its shard phases: the committed output no longer needs it
        summary.rows = sum(committed["num_rows"].values()) if committed["num_rows"] else None
        stage.summarize(result.report, summary, output)
    summary.seconds = time.perf_counter() - started
    state = "finished" if summary.complete else "stopped, NOT COMPLETE"
    logger.info("%s: %s in %s", stage.name, state, duration(summary.seconds))
    logger.debug("%s figures: %s", stage.name, _figures_line(summary))  # the log file's record of what it made
    return summary


def _figures_line(summary: StageSummary) -> str:
    """A summary's figures on one line, for the log file."""
    return "; ".join(" ".join(line.split()) for line in summary.lines()[1:])


PHASES_IDENTITY = f"{PHASES_DIR}/identity.json"


def start_phases(output: StageFolder, identity: Mapping[str, Any]) -> None:
    """Before a stage's first phase: shards committed under another identity (or before any phase ran there) are
    forgotten with the output they made (marker first, then data files, phases and scratch), so no stale file
    survives; under the same identity they are kept, and the phases resume.

    Example:
        >>> start_phases(RunFolder("memory://doc-base/run").stage("templified"), {"templify": {"seed": 0}})
    """
    wanted = fingerprint(identity)
    recorded = output.read_json(PHASES_IDENTITY) or {}
    if recorded.get("fingerprint") == wanted:
        return
    output.clear()
    clear_phases(output)
    output.write_atomic(PHASES_IDENTITY, json_bytes({"fingerprint": wanted}))


def shard_executor(run: RunConfig) -> Executor:
    """Where the shards of a stage's phases run, from `run.executor` and `run.num_workers`: Ray tasks reserving no
    GPU ('ray'), one forked process per worker on this machine, each pinned to its share of the cores (local,
    several workers), or this process (local, one worker). Synthesis places its workers on devices itself
    (`SynthesizeStage.executor`).

    Example:
        >>> shard_executor(RunConfig(output_dir="out", num_workers=2)).name
        'processes'
    """
    if run.executor == "ray":
        return make_executor("ray", num_gpus_per_worker=0, max_retries=run.max_retries, address=run.ray_address)
    if run.num_workers > 1:
        # forked, whatever this process holds: the phases run no engine and touch no GPU, and a spawned worker would
        # import everything again for each phase
        return make_executor("processes", start_method="fork")
    return make_executor("local")


def stage_data_files(folder: StageFolder) -> list[tuple[str, str]]:
    """(split, data file) of a committed stage output, split by split, each split's files in order: the shards a
    stage reading it may take one at a time (read them with `hf_ipt.store.read_batches`).

    Example:
        >>> stage_data_files(RunFolder("output/quickstart").stage("synthesized"))  # doctest: +SKIP
        [('train', 'data/train-00000-of-00006.parquet'), ('train', 'data/train-00001-of-00006.parquet'), ...]
    """
    marker = folder.committed_marker()
    return [(split, relative) for split, relatives in marker["files"].items() for relative in relatives]


def commit(stage: Stage, output: StageFolder, identity: Mapping[str, Any], result: StageOutput) -> dict[str, Any]:
    """Commit a stage's output with its report and settings: rows the stage committed in place (synthesis shards) get
    the stage's marker listing them; anything else replaces the folder's previous output (`StageFolder.write_output`).
    Returns the marker.

    Example:
        >>> commit(stage, RunFolder("out").stage("mixed"), {}, StageOutput(report={}, data=rows))  # doctest: +SKIP
    """
    settings = redact(stage.settings())
    if result.in_place is not None:
        return output.commit(
            config=identity,
            files=result.in_place.files,
            num_rows=result.in_place.num_rows,
            extra=result.report,
            checksums=result.in_place.checksums,
            settings=settings,
        )
    return output.write_output(
        config=identity,
        data=result.data,
        files=result.files,
        num_rows=result.num_rows,
        extra=result.report,
        settings=settings,
    )
