"""Preflight: every input of the stages about to run checked in seconds, before any model is built or loaded.

A typo in a mix source, a missing tokenizer, wrong `engine_kwargs`, an unwritable output folder or a token that
cannot write the release repo would otherwise surface only when its stage starts, possibly after hours of synthesis.
Each stage declares its own checks (`hf_ipt.stages.Stage.checks`); this module runs them all and returns every
problem at once (`run_checks`, `ensure_ready`), and holds the checks several stages share: the output folder, a
source dataset (its first row, streamed), a tokenizer (its files only), a package, the Hub. `hf-ipt check RECIPE`
prints each check with its result; `hf_ipt.pipeline.run` calls `ensure_ready` first.

    from hf_ipt.preflight import run_checks
    for result in run_checks(stages, run):
        print(result.name, result.problems)     # mix_sources.general.path: ... ; fix: ...
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import os
import posixpath
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from hf_ipt._deps import INSTALL_HINTS
from hf_ipt.config import BUNDLED_PREFIX, RunConfig, SourceConfig
from hf_ipt.deadline import looks_local, within
from hf_ipt.language import ENGLISH, MOSTLY_ENGLISH, detect_languages, language_name
from hf_ipt.validation import PreflightError, Problem

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

HUB_TIMEOUT = 20.0  # seconds for one Hub API call (whoami, repo info)
HUB_PROBE_TIMEOUT = 5.0  # seconds for the one probe that tells whether the Hub answers at all
SOURCE_TIMEOUT = 60.0  # seconds to open a dataset and read its first row (streaming from the Hub can be slow)
TOKENIZER_TIMEOUT = 60.0

T = TypeVar("T")


@dataclass(frozen=True)
class Check:
    """One preflight check of a stage: a name (what `hf-ipt check` prints) and a function returning the problems it
    found (none: ready). `skipped` says why a check does not look (e.g. a model built later by the run itself).

    Example:
        >>> Check("source bundled:quickstart", lambda: []).run()
        []
    """

    name: str
    run: Callable[[], list[Problem]] = lambda: []
    skipped: str = ""


@runtime_checkable
class CheckedStage(Protocol):
    """What the preflight needs of a stage (`hf_ipt.stages.Stage`): its checks, those that need the stages running
    before it in the same command (`chain_checks`), and the paths it creates first.

    Example:
        >>> class Nothing:
        ...     def checks(self, run, built_later): return []
        ...     def chain_checks(self, earlier, run): return []
        ...     def creates(self): return set()
        >>> isinstance(Nothing(), CheckedStage)
        True
    """

    def checks(self, run: RunConfig, built_later: set[str]) -> list[Check]: ...

    def chain_checks(self, earlier: Sequence[Any], run: RunConfig) -> list[Check]: ...

    def creates(self) -> set[str]: ...


@dataclass
class CheckResult:
    """One check and its outcome: `ok` when it found no problem; `skipped` says why it did not look.

    Example:
        >>> CheckResult("output folder output/run", []).ok
        True
    """

    name: str
    problems: list[Problem] = field(default_factory=list)
    skipped: str = ""

    @property
    def ok(self) -> bool:
        """Whether the check passed (or was skipped); warnings do not count."""
        return not [p for p in self.problems if not p.warning]


# ----------------------------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------------------------


def run_checks(stages: Sequence[CheckedStage], run: RunConfig) -> list[CheckResult]:
    """The output folder's check, then every check of `stages` in order, each with its result (what `hf-ipt check`
    prints). A check that fails unexpectedly is reported as its own problem, never raised.

    Example:
        >>> [r.name for r in run_checks([TemplifyStage(TemplifyConfig())], run)]  # doctest: +SKIP
        ['output folder output/quickstart']
    """
    _HUB.clear()  # one probe per preflight: the network may have changed since the last one
    built_later: set[str] = set()
    for stage in stages:
        built_later |= {normalized(path) for path in stage.creates()}
    results = [guarded(f"output folder {run.output_dir}", lambda: check_output_dir(run))]
    for index, stage in enumerate(stages):
        for check in [*stage.checks(run, built_later), *stage.chain_checks(stages[:index], run)]:
            results.append(
                CheckResult(check.name, skipped=check.skipped) if check.skipped else guarded(check.name, check.run)
            )
    return results


def ensure_ready(stages: Sequence[CheckedStage], run: RunConfig) -> None:
    """Raise `PreflightError` listing every problem `run_checks` finds; return quietly when there is none.

    Example:
        >>> ensure_ready([SynthesizeStage(source, synth)], run)  # doctest: +SKIP
    """
    found = [problem for result in run_checks(stages, run) for problem in result.problems]
    for warning in (p for p in found if p.warning):
        logger.warning("%s: %s (%s)", warning.key, warning.found, warning.fix)
    problems = [p for p in found if not p.warning]
    if problems:
        raise PreflightError(problems)


# ----------------------------------------------------------------------------------------------------------------
# The checks several stages share (each returns its problems; `guarded` turns an unexpected error into one)
# ----------------------------------------------------------------------------------------------------------------


def check_output_dir(run: RunConfig) -> list[Problem]:
    """`run.output_dir` can be written: a probe file is created and deleted there (the folder is created as the run
    would, and removed again if the probe created it).

    Example:
        >>> check_output_dir(RunConfig(output_dir="/proc/x"))  # doctest: +SKIP
        [Problem(key='run.output_dir', ...)]
    """
    url = run.output_dir
    try:
        store = run.folder
        created = []  # the folders the probe creates, deepest first, removed again afterwards
        folder = store.root
        while folder and not store.fs.exists(folder):
            created.append(folder)
            parent = posixpath.dirname(folder)
            folder = "" if parent == folder else parent
        store.fs.makedirs(store.root, exist_ok=True)
        probe = store.path(f".hf_ipt-preflight-{uuid.uuid4().hex}")
        store.fs.pipe_file(probe, b"hf-ipt preflight probe\n")
        store.fs.rm_file(probe)
        for folder in created:
            try:
                store.fs.rmdir(folder)
            except OSError:
                break  # not empty (another process wrote there meanwhile), or an object store without folders
    except Exception as err:  # noqa: BLE001 - whatever stops a write is the problem to report
        return [
            Problem(
                "run.output_dir",
                f"cannot write to {url!r} ({type(err).__name__}: {err})",
                "choose a folder this process can create and write (or fix run.storage_options for a remote URL)",
            )
        ]
    return []


def check_source(source: SourceConfig, key: str, columns: Mapping[str, str] | None = None) -> list[Problem]:
    """The dataset `source` names exists and is readable, and has the `columns` ({recipe key: column}) read from it
    (default: its text column); only the first row is read (streaming).

    Example:
        >>> check_source(SourceConfig(path="bundled:quickstart"), "source")
        []
    """
    columns = dict(columns) if columns is not None else {f"{key}.text_column": source.text_column}
    where = _source_location(source, key)
    if isinstance(where, Problem):
        return [where]
    if where == "hub":
        problem = _hub_dataset_problem(source, key)
        if problem is not None:
            return [problem]
    try:
        found = within(SOURCE_TIMEOUT, lambda: _first_row_columns(source), f"reading the first row of {source.path}")
    except Exception as err:  # noqa: BLE001 - any loading failure is the problem, with datasets' own message
        return [
            Problem(
                f"{key}.path",
                f"could not read {source.path!r} (name={source.name!r}, split={source.split!r}): "
                f"{type(err).__name__}: {first_line(err)}",
                "fix the path, name, split or data_files",
            )
        ]
    if found is None:
        return []  # no row to read the columns from: an empty split; the stage reports it
    problems = []
    for column_key, column in columns.items():
        if column not in found:
            close = difflib.get_close_matches(column, found, n=1)
            problems.append(
                Problem(
                    column_key,
                    f"{source.path!r} has no column {column!r} (its columns: {', '.join(found)})",
                    f"set {column_key} to one of them" + (f" (did you mean {close[0]!r}?)" if close else ""),
                )
            )
    return problems


LANGUAGE_SAMPLE_ROWS = 100


def check_language(source: SourceConfig, key: str) -> list[Problem]:
    """A warning when most of the source's first `LANGUAGE_SAMPLE_ROWS` texts (streamed) are not English: the
    synthesizer is English-trained and writes English pairs about any text (`hf_ipt.language`).

    Example:
        >>> check_language(SourceConfig(path="bundled:quickstart"), "source")
        []
    """
    where = _source_location(source, key)
    if isinstance(where, Problem) or (where == "hub" and hub_down()):
        return []  # the source's own check reports it

    def first_texts() -> list[Any]:
        import datasets

        arguments = source.load_arguments()
        arguments["split"] = source.output_split
        rows = datasets.load_dataset(**arguments, streaming=True).take(LANGUAGE_SAMPLE_ROWS)
        return [row.get(source.text_column) for row in rows]

    try:
        texts = within(SOURCE_TIMEOUT, first_texts, f"reading the first rows of {source.path}")
    except Exception:  # noqa: BLE001 - unreadable: the source's own check says why
        return []
    codes = [code for code in detect_languages(texts) if code]
    if not codes:
        return []
    english = codes.count(ENGLISH) / len(codes)
    if english >= MOSTLY_ENGLISH:
        return []
    others = sorted({c for c in codes if c != ENGLISH}, key=lambda c: -codes.count(c))[:3]
    return [
        Problem(
            f"{key}.path",
            f"{100 * (1 - english):.0f}% of its first {len(codes)} texts are not English ("
            + ", ".join(f"{language_name(c)} {codes.count(c)}" for c in others)
            + "); the synthesizer is English-trained: it writes English questions and answers about them",
            "expect English pairs (the card and `hf-ipt report` count them), or use a synthesizer trained for the "
            "corpus' language (synth.model)",
            warning=True,
        )
    ]


def check_tokenizer(key: str, name: str, revision: str | None = None) -> list[Problem]:
    """The tokenizer `name` (a local folder or a Hub id) loads; its files only, never the model's weights.

    Example:
        >>> check_tokenizer("templify.target_tokenizer", "/nonexistent/tok")[0].found
        "no tokenizer folder '/nonexistent/tok'"
    """
    if looks_local(name) and not Path(name).expanduser().exists():
        return [
            Problem(key, f"no tokenizer folder {name!r}", "give the folder of a saved tokenizer/model or a Hub id")
        ]

    offline = not looks_local(name) and hub_down() is not None

    def load() -> None:
        from transformers import AutoTokenizer

        # the Hub is unreachable: the local cache alone answers (no retries against a network that is not there)
        AutoTokenizer.from_pretrained(name, revision=revision, local_files_only=offline)

    try:
        within(TOKENIZER_TIMEOUT, load, f"loading the tokenizer {name}")
    except Exception as err:  # noqa: BLE001 - any loading failure is the problem to report
        if offline:
            return hub_unreachable_once(key)  # not in the cache, and the Hub does not answer
        return [
            Problem(
                key,
                f"could not load the tokenizer {name!r}: {type(err).__name__}: {first_line(err)}",
                "give the folder of a saved tokenizer/model or a Hub id (with network access or in the cache)",
            )
        ]
    return []


def tokenizer_check(key: str, name: str, revision: str | None, built_later: set[str]) -> Check:
    """The preflight check of a tokenizer setting: `check_tokenizer`, or skipped when an earlier stage of the run
    builds that folder first (`Stage.creates`).

    Example:
        >>> tokenizer_check("mix.tokenizer", "output/tiny", None, {normalized("output/tiny")}).skipped
        'built by build_tiny_model before synthesis'
    """
    label = f"{key} {name}"
    if normalized(name) in built_later:
        return Check(label, skipped="built by build_tiny_model before synthesis")
    return Check(label, lambda: check_tokenizer(key, name, revision))


def missing_package(key: str, module: str, purpose: str) -> list[Problem]:
    """A problem when `module` is not installed (found without importing it, so the check stays fast), naming what
    needs it and the pip line that installs it.

    Example:
        >>> missing_package("run.executor", "json", "the ray executor")
        []
    """
    if importlib.util.find_spec(module) is not None:
        return []
    return [Problem(key, f"{purpose} needs the `{module}` package, which is not installed", INSTALL_HINTS[module])]


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


def guarded(name: str, run: Callable[[], list[Problem]]) -> CheckResult:
    """Run one check; an error it did not expect is reported as that check's problem, not raised.

    Example:
        >>> guarded("a check", lambda: 1 / 0).problems[0].found
        'the check failed: ZeroDivisionError: division by zero'
    """
    try:
        return CheckResult(name, run())
    except SkipCheck as skip:
        return CheckResult(name, skipped=str(skip))
    except Exception as err:  # noqa: BLE001 - a check must never hide the other checks' problems
        return CheckResult(name, [Problem(name, f"the check failed: {type(err).__name__}: {err}", "see the error")])


class SkipCheck(Exception):
    """Raised by a check that cannot look (the Hub it needs is unreachable, already reported): `hf-ipt check` shows
    it as skipped, with the reason."""


_HUB: dict[str, Any] = {}  # this preflight's Hub probe: {"down": reason or None, "reported": bool}


def hub_down(refresh: bool = False) -> str | None:
    """Why the Hub cannot be reached, asked once per preflight with one short request (`HUB_PROBE_TIMEOUT`); None
    when it answers, or in offline mode (`HF_HUB_OFFLINE`: the local caches answer instead). Every Hub check asks
    this first, so an offline machine gets one line in seconds, never each library's retries. `refresh` probes
    again (outside a preflight).

    Example:
        >>> hub_down() is None or "did not answer" in hub_down()  # doctest: +SKIP
        True
    """
    if refresh or "down" not in _HUB:
        _HUB["down"] = None if _hub_offline() else _probe_hub()
    return _HUB["down"]


def _probe_hub() -> str | None:
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    url = f"{constants.ENDPOINT.rstrip('/')}/api/whoami-v2"
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=HUB_PROBE_TIMEOUT).close()
    except urllib.error.HTTPError:
        return None  # an answer (401 without a token): the Hub is there
    except Exception as err:  # noqa: BLE001 - no answer of any kind: refused, no route, DNS, timeout
        reason = getattr(err, "reason", err)
        return f"{constants.ENDPOINT} did not answer in {HUB_PROBE_TIMEOUT:.0f} s ({type(reason).__name__}: {reason})"
    return None


def hub_unreachable_once(key: str) -> list[Problem]:
    """The problem of an unreachable Hub for the first check that needs it; later checks are skipped (`SkipCheck`)
    so the preflight says it once.

    Example:
        >>> hub_unreachable_once("source.path")  # doctest: +SKIP
        [Problem(key='source.path', found='the Hub is unreachable: ...', fix='...')]
    """
    if _HUB.get("reported"):
        raise SkipCheck("no Hub: see above")
    _HUB["reported"] = True
    return [
        Problem(
            key,
            f"the Hub is unreachable: {_HUB.get('down')}",
            "check the network (HF_ENDPOINT, proxies); or set HF_HUB_OFFLINE=1 to use only the local caches",
        )
    ]


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its repr when it has none).

    Example:
        >>> first_line(ValueError("one\\ntwo"))
        'one'
    """
    text = str(err).strip()
    return text.splitlines()[0] if text else repr(err)


def normalized(path: str) -> str:
    """A local path made absolute and normal (a Hub id is left as it is), to compare two spellings of one path.

    Example:
        >>> normalized("org/model")
        'org/model'
    """
    return os.path.normpath(os.path.abspath(os.path.expanduser(path))) if looks_local(path) else path


def _packaged_loaders() -> set[str]:
    # datasets keeps this registry private: if a release renames it, fall back to the loaders every release has,
    # rather than report a sound `json`/`parquet` source as a problem
    try:
        from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES
    except ImportError:
        return {"arrow", "csv", "json", "pandas", "parquet", "text", "webdataset", "imagefolder", "audiofolder"}
    return set(_PACKAGED_DATASETS_MODULES)


def _source_location(source: SourceConfig, key: str) -> str | Problem:
    """'bundled', 'loader' (json, parquet... with data_files), 'local' or 'hub'; a Problem when a local path or a
    loader's data_files are missing."""
    path = source.path
    if path.startswith(BUNDLED_PREFIX):
        return "bundled"
    if path in _packaged_loaders():
        files = source.data_files
        if files is None:
            return Problem(f"{key}.data_files", f"the {path!r} loader needs data_files", f"set {key}.data_files")
        patterns = [files] if isinstance(files, str) else list(files)
        missing = [p for p in patterns if "://" not in p and not _glob_matches(p)]
        if missing:
            return Problem(f"{key}.data_files", f"no file matches {missing}", "fix the path(s) or glob(s)")
        return "loader"
    if looks_local(path):
        if not Path(path).expanduser().exists():
            return Problem(
                f"{key}.path",
                f"no such file or folder {path!r}",
                "fix the path (relative paths start from the current folder), or give a Hub dataset id",
            )
        return "local"
    return "hub"


def _glob_matches(pattern: str) -> bool:
    import glob

    return bool(glob.glob(os.path.expanduser(pattern), recursive=True))


def _hub_dataset_problem(source: SourceConfig, key: str) -> Problem | None:
    """The Hub dataset exists at the revision; an unreachable Hub is a problem, since this source is on it."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    if hub_down():
        return hub_unreachable_once(f"{key}.path")[0]
    try:
        within(
            HUB_TIMEOUT,
            lambda: HfApi().dataset_info(source.path, revision=source.revision, timeout=HUB_TIMEOUT),
            f"asking the Hub about {source.path}",
        )
    except RepositoryNotFoundError:
        return Problem(
            f"{key}.path",
            f"{source.path!r} is neither a local path nor a dataset on the Hub (or it is private or gated)",
            "fix the path or Hub id; for a private/gated dataset log in (`hf auth login`)",
        )
    except RevisionNotFoundError:
        return Problem(f"{key}.revision", f"{source.path!r} has no revision {source.revision!r}", "fix the revision")
    except Exception as err:  # noqa: BLE001 - offline mode, a network failure, a timeout
        if _hub_offline():
            return None  # offline: the dataset may be in the cache; reading its first row tells
        return hub_unreachable(f"{key}.path", err)
    return None


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_unreachable(key: str, err: BaseException) -> Problem:
    """The problem of a Hub that did not answer, naming the key whose check needed it.

    Example:
        >>> hub_unreachable("release.repo_id", TimeoutError("no answer")).found
        'the Hub did not answer (TimeoutError: no answer)'
    """
    return Problem(
        key,
        f"the Hub did not answer ({type(err).__name__}: {first_line(err)})",
        "check the network (HF_ENDPOINT, proxies) and try again",
    )


def _first_row_columns(source: SourceConfig) -> list[str] | None:
    """The column names of the source's first row, read by streaming (nothing else is downloaded)."""
    import datasets

    arguments = source.load_arguments()
    arguments["split"] = source.output_split  # streaming takes no slices (`train[:100]`)
    dataset = datasets.load_dataset(**arguments, streaming=True)
    if dataset.column_names:
        return list(dataset.column_names)
    row = next(iter(dataset), None)
    return None if row is None else list(row)
