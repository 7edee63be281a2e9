"""Run a recipe: the stages it configures, checked first, then run in order. What `hf-ipt run` (and each stage's
command) does, as one call.

    from hf_ipt.pipeline import run
    summaries = run("recipes/quickstart.yaml")                       # synthesize -> templify -> mix -> release
    run("recipe.yaml", ["templify"], overrides={"templify.seed": 1})   # one stage, with a dotted override

The stages are `hf_ipt.stages` (each one also usable alone from Python, with its settings); this module only builds
them from a recipe, runs their preflight checks together (`hf_ipt.preflight`) and loops over them. Every stage writes
under `run.output_dir` (`synthesized/`, `templified/`, `mixed/`, `release/`), and an output already committed with the
same settings is reused, so running again after a crash continues where it stopped.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

from hf_ipt import stages as registry
from hf_ipt.config import ConfigError, RecipeConfig, load_recipe
from hf_ipt.preflight import ensure_ready, run_checks
from hf_ipt.redaction import process_command, register_secrets, scrub_command, secret_values
from hf_ipt.stages import CommandOptions, Stage, StageSummary
from hf_ipt.store import config_to_dict
from hf_ipt.validation import Problem


def stage_names() -> tuple[str, ...]:
    """The names of the stages, in pipeline order (`hf_ipt.stages.STAGES`, read when called).

    Example:
        >>> stage_names()
        ('synthesize', 'templify', 'mix', 'export', 'release')
    """
    return tuple(stage.name for stage in registry.STAGES)


def stages_of(recipe: RecipeConfig, names: Sequence[str] | None = None, options: CommandOptions | None = None):
    """The stages `names` of `recipe`, in pipeline order. In a chained run (several names) a stage the recipe leaves
    out and that may be skipped (`Stage.optional`: the mix) is skipped; asked for alone, or not skippable, it is a
    ConfigError saying what the recipe lacks.

    Example:
        >>> [s.name for s in stages_of(load_recipe("recipes/quickstart.yaml"))]  # doctest: +SKIP
        ['synthesize', 'templify', 'mix', 'release']
    """
    names = stage_names() if names is None else tuple(names)
    unknown = [name for name in names if name not in stage_names()]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; the stages are {list(stage_names())}")
    chained = len(names) > 1
    found: list[Stage] = []
    for cls in registry.STAGES:
        if cls.name not in names:
            continue
        stage = cls.from_recipe(recipe, options or CommandOptions())
        if stage is None:
            if chained and cls.optional:
                continue
            raise ConfigError(cls.missing)
        found.append(stage)
    return found


def check(
    recipe: RecipeConfig, stages: Sequence[str] | None = None, *, worker_index: int = 0, num_workers: int = 1
) -> list[Problem]:
    """Every problem that would make the given stages of `recipe` fail, found in seconds before any model is built or
    loaded (each stage's preflight checks, `hf_ipt.preflight.run_checks`).

    Example:
        >>> check(load_recipe("recipes/quickstart.yaml"))  # doctest: +SKIP
        []
    """
    options = CommandOptions(worker_index=worker_index, num_workers=num_workers)
    results = run_checks(stages_of(recipe, stages, options), recipe.run)
    return [problem for result in results for problem in result.problems if not problem.warning]


def run(
    recipe: RecipeConfig | str | os.PathLike | None,
    stages: Sequence[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    worker_index: int = 0,
    num_workers: int = 1,
    command: str | Sequence[str] | None = None,
    preflight: bool = True,
) -> list[StageSummary]:
    """Run the given stages of a recipe (all when None), in pipeline order; returns one summary per stage run.

    First (unless `preflight=False`) every input of these stages is checked (`hf_ipt.preflight`): all problems are
    raised at once as a `PreflightError`, in seconds, before any model is built or loaded.

    `recipe` is a `RecipeConfig` or the path of a recipe file (with `overrides`, {"section.key": value}). Several
    stages chain (what `hf-ipt run` does): each runs only when the previous one is complete (another worker may
    still hold synthesis shards), and `mix` is skipped when the recipe has none. `worker_index` / `num_workers` make
    this process one synthesis worker of several started by hand; `command` (a string, or the `hf-ipt` arguments)
    is recorded in the release card.

    Example:
        >>> summaries = run("recipes/quickstart.yaml", overrides={"release_to": "local"})  # doctest: +SKIP
        >>> [s.stage for s in summaries], all(s.complete for s in summaries)  # doctest: +SKIP
        (['synthesize', 'templify', 'mix', 'release'], True)
    """
    if not isinstance(recipe, RecipeConfig):
        recipe = load_recipe(recipe, dict(overrides or {}))
    elif overrides:
        raise ValueError("overrides apply to a recipe file; change the RecipeConfig itself (dataclasses.replace)")
    # the recipe's token and storage credentials are scrubbed from every later card, report and log line
    register_secrets(secret_values(config_to_dict(recipe)))
    options = CommandOptions(worker_index=worker_index, num_workers=num_workers, command=scrub_command(command))
    chosen = stages_of(recipe, stages, options)
    # one writer per run folder, for the whole command: its checks see what its stages will find
    holder = options.command or process_command() or ""
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(recipe.run.folder.lease(holder, shared=any(s.shares_folder() for s in chosen)))
        except OSError:
            if preflight:  # a folder that cannot be written: said with every other problem of the recipe
                ensure_ready(chosen, recipe.run)
            raise
        if preflight:
            ensure_ready(chosen, recipe.run)
        summaries: list[StageSummary] = []
        for stage in chosen:
            if summaries and not summaries[-1].complete:
                break  # a chained stage needs the whole output of the one before
            summaries.append(stage.run(recipe.run))
    return summaries


def status(recipe: RecipeConfig) -> dict[str, list[str]]:
    """What each stage's output folder holds, as `hf-ipt status` prints it ({folder: lines}): shards finished while
    workers run, a finished output, damaged files (redone by the next run), or nothing yet. Read from the commit
    markers alone.

    Example:
        >>> status(recipe)["mixed"]  # doctest: +SKIP
        ['finished']
    """
    folder = recipe.run.folder
    return {stage.folder: stage.progress(folder.stage(stage.folder)) for stage in registry.STAGES}
