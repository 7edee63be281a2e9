"""The `hf-ipt` command: one recipe, one command, from a raw corpus to a release, resumable at every step.

    hf-ipt run recipes/quickstart.yaml                     # the whole pipeline
    hf-ipt synthesize RECIPE.yaml --synth.rounds 2         # one stage, with a dotted override
    hf-ipt synthesize RECIPE.yaml --worker-index 1 --num-workers 4    # one of four workers sharing the shards
    hf-ipt status RECIPE.yaml                              # which shards and stages are done
    hf-ipt config RECIPE.yaml                              # the resolved, validated configuration
    hf-ipt check RECIPE.yaml                               # every input checked, in seconds, nothing run
    hf-ipt config --keys                                   # every recipe key, with type, default and help

vLLM, transformers, torch and datasets log only warnings and errors (`hf_ipt.quiet`); `--verbose` shows everything.

Every stage writes under `run.output_dir`: `synthesized/` (resumable shards), `templified/`, `mixed/`, `release/`.
A stage whose output is already there with the same configuration is skipped, so re-running a command after a crash
continues where it stopped. This module only parses, dispatches and prints: the stages are `hf_ipt.pipeline`'s.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import re
import sys
import textwrap
import time
import traceback
from collections.abc import Callable, Sequence

import yaml

from hf_ipt import stages as registry
from hf_ipt.config import ConfigError, RecipeConfig, describe_fields, load_recipe, parse_overrides
from hf_ipt.engines import EngineStartError
from hf_ipt.execution import WorkersLostError
from hf_ipt.execution.runner import ResumeConflictError
from hf_ipt.logs import LogFile, ScrubbingFormatter, progress_lines_off_terminal
from hf_ipt.pipeline import run, stage_names, stages_of, status
from hf_ipt.preflight import run_checks
from hf_ipt.quality import compare, format_comparison, format_report, write_report
from hf_ipt.quiet import quiet_third_party
from hf_ipt.redaction import install_log_scrubbing, redact, register_secrets, scrub, scrub_command, secret_values
from hf_ipt.release.hub import ReleaseError
from hf_ipt.reports import load_report, verify_files
from hf_ipt.stages import CommandOptions, FailedRowsError, StageSummary
from hf_ipt.stages.base import duration
from hf_ipt.store import IncompleteRunError, LeaseHeldError, config_to_dict
from hf_ipt.version import __version__

logger = logging.getLogger("hf_ipt.cli")

OTHER_COMMANDS = {
    "status": "show which shards and stages of a run are finished",
    "config": "print the resolved configuration (YAML) after validating it; loads nothing",
    "check": "check every input of the whole run (sources, tokenizers, output folder, Hub access, engine_kwargs, "
    "resume) in seconds, loading no model; exit 0 when all is ready, 2 otherwise",
    "report": "quality of the synthesized pairs of a release or run (RELEASE: a release folder, a run's output folder "
    "or owner/name@revision on the Hub), or two side by side with --against OTHER",
    "estimate": "the dry run before a long job: every stage on the first rows (a few batches, in a temporary "
    "folder), then prompt/generated tokens, GPU-hours, output size and mix sources projected for the whole input",
}
# the recipe sections a command reads (the keys its --help lists); None: all of them
OTHER_SECTIONS: dict[str, tuple[str, ...] | None] = {
    "status": ("source", "chunk", "synth", "run", "templify", "mix", "release"),
    "config": None,
    "check": None,
    "report": (),
    "estimate": None,
}


def commands() -> dict[str, tuple[str, tuple[str, ...] | None, tuple[str, ...]]]:
    """Every command: {name: (help, recipe sections read, stages run)}. `run` and one command per stage come from
    the stages themselves (`hf_ipt.stages.STAGES`, read when called), so a new stage is a new command.

    Example:
        >>> list(commands())[:3]
        ['run', 'synthesize', 'templify']
    """
    found = {"run": ("the whole pipeline: " + " -> ".join(stage_names()), None, stage_names())}
    for stage in registry.STAGES:
        found[stage.command_name or stage.name] = (stage.description, stage.sections, (stage.name,))
    found.update({name: (text, OTHER_SECTIONS[name], ()) for name, text in OTHER_COMMANDS.items()})
    return found


def keys_help(sections: Sequence[str] | None = None, *, full: bool = False) -> str:
    """The recipe keys of `sections` (top-level recipe keys; None: all) with type, default and help: in full (one
    entry each, its help wrapped: `hf-ipt config --keys`) or one line each, the help cut to its first sentence (the
    epilog of `hf-ipt COMMAND --help`, kept short).

    Example:
        >>> print(keys_help(["run"], full=True).splitlines()[1])
          --run.output_dir  (str, default "")
        >>> keys_help(["run"]).splitlines()[1].startswith("  --run.output_dir (str, default \"\"): Root of all")
        True
    """
    rows = [row for row in describe_fields(RecipeConfig) if sections is None or row[0].split(".")[0] in sections]
    shown = "all sections" if sections is None else "sections " + ", ".join(sections)
    lines = textwrap.wrap(
        f"recipe keys read ({shown}; set in RECIPE.yaml, or override: --section.key VALUE, --section.key=VALUE, or "
        "a bare --flag for true)" + (":" if full else "; the full help of each: `hf-ipt config --keys`:"),
        width=119,
    )
    for key, type_name, default, help_text in rows:
        given = "required" if default == "required" else f"default {default}"
        if full:
            lines.append(f"  --{key}  ({type_name}, {given})")
            lines.extend(textwrap.wrap(help_text, width=100, initial_indent="      ", subsequent_indent="      "))
        else:
            # a sentence ends at '. ' or '; ', not inside an abbreviation ('e.g. ', 'i.e. ')
            first = re.split(r"(?<!e\.g\.)(?<!i\.e\.)(?<=[.;])\s", help_text, maxsplit=1)[0].rstrip(".;")
            line = f"  --{key} ({type_name}, {given}): {first}"
            lines.append(line if len(line) <= 119 else line[:118] + "…")
    if sections is None or "mix_sources" in sections:
        lines.append(
            "  --mix_sources.NAME.KEY  sets KEY of one mix source (keys: those of source plus kind, question_column, "
            "response_column)"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The `hf-ipt` argument parser: one sub-command per stage, with its own options; recipe keys are parsed apart.

    Example:
        >>> args, extras = build_parser().parse_known_args(["synthesize", "r.yaml", "--num-workers", "2"])
        >>> args.command, args.num_workers, extras
        ('synthesize', 2, ['r.yaml'])
    """
    parser = argparse.ArgumentParser(
        prog="hf-ipt",
        description="Instruction Pre-Training as a datasets-native pipeline. See recipes/README.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"hf-ipt {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, sections, runs) in commands().items():
        stages = [stage for stage in registry.STAGES if stage.name in runs]
        sub = subparsers.add_parser(
            name,
            help=help_text,
            description=textwrap.fill(help_text, width=119),
            epilog=keys_help(sections),
            # the width of the epilog and the description: argparse would wrap the options at 80 columns off a tty
            formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, width=119, max_help_position=32),
            allow_abbrev=False,
            usage=f"hf-ipt {name} [RECIPE.yaml] [options] [--section.key VALUE ...]",
        )
        sub.add_argument("-q", "--quiet", action="store_true", help="no progress bars and no info logs")
        sub.add_argument(
            "--verbose",
            action="store_true",
            help="show every log line of vLLM, transformers, torch and datasets (hidden below WARNING by default), "
            "and the traceback of an error",
        )
        if name == "config":
            sub.add_argument(
                "--keys", action="store_true", help="list every recipe key with its type, default and help; no recipe"
            )
        if name == "check" or any(stage.takes_workers for stage in stages):
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
        if name == "report":
            add_report_arguments(sub)
        if name == "estimate":
            sub.add_argument(
                "--rows", type=int, default=None, help="source rows the trial runs (default: 2 synthesis batches)"
            )
            sub.add_argument(
                "--input-rows", type=int, default=None, help="rows of the whole input, when it cannot be counted"
            )
        if name == "check" or stages:
            sub.add_argument(
                "--overwrite",
                action="store_true",
                help="same as --run.overwrite: replace a previous run made with another configuration",
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `hf-ipt` console script; returns the exit status: 0 done; 2 bad input, a refused resume
    or a run folder another command is writing (its holder named); 3 this worker finished but other shards are still
    missing; 4 release refused: more synthesized rows failed in the engine than release.max_engine_error_share allows
    (run the command again once the engine answers); 5 a worker process or a Ray node died (committed shards are
    kept: run the command again); 130 interrupted. No error prints a traceback unless --verbose; a command that runs
    stages writes its log file (`hf_ipt.logs`), the traceback included.

    Example:
        >>> main(["run", "recipes/quickstart.yaml", "--synth.rounds", "2", "--quiet"])  # doctest: +SKIP
        0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # argparse knows the command's own options; everything else is the recipe path and --section.key overrides
    args, extras = build_parser().parse_known_args(argv)
    args.argv = argv
    restore = _configure_output(args.quiet, args.verbose)
    try:
        return _main(args, extras)
    finally:
        restore()


def _main(args: argparse.Namespace, extras: Sequence[str]) -> int:
    if getattr(args, "keys", False):
        print(keys_help(full=True))
        return 0
    if args.command == "report":
        return _print_report(args, extras)
    log: LogFile | None = None
    try:
        positionals: list[str] = []
        overrides = parse_overrides(extras, RecipeConfig, positionals=positionals)
        if len(positionals) > 1:
            raise ConfigError(f"expected at most one recipe file, got {positionals}")
        if getattr(args, "overwrite", False):
            overrides["run.overwrite"] = True
        recipe = load_recipe(positionals[0] if positionals else None, overrides)
        register_secrets(secret_values(config_to_dict(recipe)))  # scrubbed from every line printed from now on
        log = _open_log(args, recipe)
        return _dispatch(args, recipe)
    except FailedRowsError as err:
        _record_error(log, err)
        print(f"hf-ipt {args.command}: error: {scrub(str(err))}", file=sys.stderr)
        return 4
    except WorkersLostError as err:  # a worker process, a Ray node or the cluster died: one line, then resume
        _record_error(log, err)
        print(f"hf-ipt {args.command}: error: {scrub(str(err))}", file=sys.stderr)
        return 5
    except (ConfigError, ResumeConflictError, IncompleteRunError, ReleaseError, LeaseHeldError, ValueError) as err:
        # the stages' errors name the setting or column at fault and how to fix it: show them, not a traceback
        _record_error(log, err)
        print(f"hf-ipt {args.command}: error: {scrub(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        _record_error(log, err)
        print(
            f"hf-ipt {args.command}: interrupted; finished shards are kept, run the same command to resume",
            file=sys.stderr,
        )
        return 130
    except Exception as err:  # noqa: BLE001 - whatever else stopped it: one line, the traceback with --verbose
        _record_error(log, err)
        return _report_environment_error(args, err, log)
    finally:
        if log is not None:
            log.close()


def _open_log(args: argparse.Namespace, recipe: RecipeConfig) -> LogFile | None:
    """The log file of a command that runs stages (`run.output_dir/logs/`); None for the others, or when the output
    folder cannot be written (the preflight then says why)."""
    if not commands()[args.command][2]:
        return None
    name = args.command
    if getattr(args, "num_workers", 1) > 1:
        name += f"-worker-{args.worker_index}-of-{args.num_workers}"
    try:
        log = LogFile(recipe.run.folder, name).start()
    except OSError as err:
        logger.warning("no log file in %s (%s: %s)", recipe.run.output_dir, type(err).__name__, err)
        return None
    logger.debug("hf-ipt %s (Python %s): %s", __version__, sys.version.split()[0], scrub_command(args.argv))
    logger.info("log file: %s", scrub(log.url))
    return log


def _record_error(log: LogFile | None, err: BaseException) -> None:
    if log is not None:
        log.record_error(err)


def _report_environment_error(args: argparse.Namespace, err: BaseException, log: LogFile | None = None) -> int:
    """One line for what the user's machine or settings caused (an engine that does not start, a file or model that
    cannot be read, a missing package, any other failure); the traceback only with --verbose (and in the log
    file)."""
    if args.verbose:
        print(scrub("".join(traceback.format_exception(err))), end="", file=sys.stderr)
    shown = str(err) if isinstance(err, EngineStartError) else f"{type(err).__name__}: {err}"
    where = f"; it is in {scrub(log.url)}" if log is not None else ""
    hint = "" if args.verbose else f" (--verbose shows the traceback{where})"
    print(f"hf-ipt {args.command}: error: {scrub(shown)}{hint}", file=sys.stderr)
    return 2


def _configure_output(quiet: bool, verbose: bool = False) -> Callable[[], None]:
    """hf-ipt's own log lines on stderr (info, or warnings only with --quiet), timestamped when stderr is not a
    terminal; progress bars off with --quiet, and as periodic lines off a terminal (`hf_ipt.logs.ProgressLines`);
    third-party libraries' logs below WARNING hidden unless --verbose. Returns what puts `sys.stderr` back."""
    import datasets

    if verbose:
        datasets.logging.set_verbosity_info()
    else:
        quiet_third_party()
    terminal = sys.stderr.isatty()
    put_back = progress_lines_off_terminal() if not quiet else (lambda: None)
    log = logging.getLogger("hf_ipt")
    # one handler on hf-ipt's logger (not the root's), so other libraries' log lines are not printed twice; this
    # command's own, removed when it returns (a process calling main() twice gets no stale stream)
    for stale in [h for h in log.handlers if getattr(h, "_hf_ipt_cli", False)]:
        log.removeHandler(stale)
    handler = logging.StreamHandler(sys.stderr)
    handler._hf_ipt_cli = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    level_before = log.level
    fmt = "%(message)s" if terminal else "%(asctime)s %(message)s"
    handler.setFormatter(ScrubbingFormatter(fmt) if not terminal else logging.Formatter(fmt))
    level = logging.WARNING if quiet else logging.INFO
    handler.setLevel(level)
    log.setLevel(level)
    install_log_scrubbing("hf_ipt", "huggingface_hub", "datasets", logging.getLogger())
    if quiet:
        datasets.disable_progress_bars()
    else:
        datasets.enable_progress_bars()

    def restore() -> None:
        log.removeHandler(handler)
        log.setLevel(level_before)
        put_back()

    return restore


def _dispatch(args: argparse.Namespace, recipe: RecipeConfig) -> int:
    if args.command == "config":
        print(yaml.safe_dump(redact(config_to_dict(recipe)), sort_keys=False, allow_unicode=True), end="")
        return 0
    if args.command == "status":
        return _print_status(recipe)
    if args.command == "check":
        return _print_check(recipe, args)
    if args.command == "estimate":
        from hf_ipt.estimate import estimate

        print("\n".join(estimate(recipe, rows=args.rows, input_rows=args.input_rows).lines()))
        return 0
    started = time.perf_counter()
    summaries = run(
        recipe,
        commands()[args.command][2],
        worker_index=getattr(args, "worker_index", 0),
        num_workers=getattr(args, "num_workers", 1),
        command=getattr(args, "argv", None),
    )
    _print_summary(args.command, summaries, time.perf_counter() - started)
    return 0 if all(s.complete for s in summaries) else 3


def _print_summary(command: str, summaries: list[StageSummary], seconds: float) -> None:
    print(f"\nhf-ipt {command}: finished in {duration(seconds)}")
    for summary in summaries:
        for line in summary.lines():
            print(f"  {scrub(line)}")  # an output URL may carry credentials (s3://KEY:SECRET@...)


def _print_check(recipe: RecipeConfig, args: argparse.Namespace) -> int:
    """`hf-ipt check`: each preflight check of the whole run and its result; 0 when none found a problem."""
    options = CommandOptions(worker_index=args.worker_index, num_workers=args.num_workers)
    results = run_checks(stages_of(recipe, None, options), recipe.run)
    for result in results:
        state = "PROBLEM" if not result.ok else "warning" if result.problems else "ok"
        # a check's name holds its input, e.g. the output folder's URL with its credentials
        print(
            scrub(
                f"{state:<8} {result.name}"
                if not result.skipped
                else f"{'-':<8} {result.name}: skipped ({result.skipped})"
            )
        )
        for problem in result.problems:
            print(f"         {problem.key}: {scrub(str(problem.found))}")
            print(f"           {'note' if problem.warning else 'fix'}: {scrub(str(problem.fix))}")
    problems = sum(not p.warning for r in results for p in r.problems)
    warnings = sum(p.warning for r in results for p in r.problems)
    said = f" ({warnings} warning(s) above)" if warnings else ""
    print(f"\nhf-ipt check: {'ready to run' if not problems else f'{problems} problem(s) found'}{said}")
    return 0 if not problems else 2


def add_report_arguments(sub: argparse.ArgumentParser) -> None:
    """The options of `hf-ipt report` (it reads no recipe)."""
    sub.epilog = None  # it reads no recipe keys
    sub.usage = "hf-ipt report RELEASE [--against OTHER] [--config NAME] [--split NAME] [--output DIR]"
    sub.add_argument("release", metavar="RELEASE", help="release folder, run output folder, or owner/name@revision")
    sub.add_argument("--against", metavar="OTHER", help="a second release or run: both side by side, with verdicts")
    sub.add_argument("--config", help="the release config to read when a release has several")
    sub.add_argument("--split", help="the split to read when a run has several")
    sub.add_argument("--output", metavar="DIR", help="also write quality.json and the PNG plots of RELEASE to DIR")


def _print_report(args: argparse.Namespace, extras: Sequence[str]) -> int:
    """`hf-ipt report`: one quality report, or two side by side (`hf_ipt.quality.compare`)."""
    if extras:
        print(scrub(f"hf-ipt report: error: unexpected argument(s) {list(extras)}"), file=sys.stderr)
        return 2
    try:
        checked = [verify_files(name) for name in (args.release, args.against) if name is not None]
        # what was checked first (it was), so the report's table ends the output
        print("\n".join(scrub(line) for line in checked) + "\n")
        report = load_report(args.release, config=args.config, split=args.split, verify=False)
        if args.output:
            written = write_report(report, args.output, plots=importlib.util.find_spec("matplotlib") is not None)
            print(scrub(f"wrote {', '.join(str(p) for p in written.values())}\n"))
        if args.against is None:
            print(scrub(format_report(report, args.release)))
        else:
            baseline = load_report(args.against, config=args.config, split=args.split, verify=False)
            print(scrub(format_comparison(compare(report, baseline), args.release, args.against)))
        return 0
    except (ValueError, OSError, ImportError) as err:
        print(f"hf-ipt report: error: {scrub(str(err))}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - whatever else: one line, the traceback with --verbose
        return _report_environment_error(args, err)


def _print_status(recipe: RecipeConfig) -> int:
    print(f"run {scrub(str(recipe.run.output_dir))}")
    for folder, lines in status(recipe).items():
        for index, line in enumerate(lines):
            print(f"  {folder if index == 0 else '':<11} {scrub(line)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
