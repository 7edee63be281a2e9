"""Recipes: one YAML file holding the configuration of every stage, with dotted command-line overrides.

A recipe has one section per stage, each loaded into that stage's config dataclass before anything heavy (dataset,
model) is loaded. Every value is checked by `hf_ipt.validation` against its field's type and the range declared in the
field's metadata, with the recipe's own key in the message (`synth.rounds`); the dataclass's `__post_init__` applies
the same check in Python and adds the rules between fields:

```yaml
source:   {path: allenai/c4, name: en, split: train, revision: 1588ec4, text_column: text}
synth:    {model: instruction-pretrain/instruction-synthesizer, rounds: 3, batch_size: 256}
templify: {...}
mix:      {...}
release:  {...}
run:      {output_dir: s3://bucket/ipt-run, shard_size: 4096}
```

Precedence, lowest first: dataclass defaults < the YAML file < command-line overrides (`--synth.rounds 2`,
`--synth.rounds=2`, `--run.overwrite`). An unknown key anywhere is an error naming the key and the closest valid one.

Example:
    >>> recipe = load_recipe("recipes/quickstart.yaml", ["--synth.rounds", "2"])  # doctest: +SKIP
    >>> recipe.synth.rounds  # doctest: +SKIP
    2
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from hf_ipt.export import ExportConfig
from hf_ipt.markers import DEFAULT_MODEL
from hf_ipt.mixing import RAW, MixConfig, SourceKind
from hf_ipt.quality import QualityConfig
from hf_ipt.release.card import CardOptions
from hf_ipt.release.hub import ReleaseConfig
from hf_ipt.store import RunFolder, config_to_dict
from hf_ipt.synthesis import SynthesisConfig
from hf_ipt.synthesis.chunking import ChunkSettings
from hf_ipt.templify import TemplifyConfig
from hf_ipt.validation import (
    ConfigError,
    check_executor,
    check_fields,
    check_shard_size,
    check_value,
    dataclass_in,
    field_hints,
    is_union,
    type_name,
)

BUNDLED_PREFIX = "bundled:"
BUNDLED_DATA_DIR = Path(__file__).parent / "data"


# ----------------------------------------------------------------------------------------------------------------
# Stage-independent sections (the stage sections live next to their stage: hf_ipt.synthesis, .templify, ...)
# ----------------------------------------------------------------------------------------------------------------


def bundled_corpora() -> list[str]:
    """Names of the corpora shipped inside the package, usable as `source.path: bundled:NAME`.

    Example:
        >>> "quickstart" in bundled_corpora()
        True
    """
    return sorted(p.name.removesuffix(".jsonl") for p in BUNDLED_DATA_DIR.glob("*.jsonl"))


@dataclass
class SourceConfig:
    """The raw corpus to synthesize from: any dataset `datasets.load_dataset` can read.

    Example:
        >>> SourceConfig(path="bundled:quickstart").load_arguments()["path"]
        'json'
    """

    path: str = field(
        default="",
        metadata={
            "help": "Dataset to read: a Hub id (`allenai/c4`), a local directory, a packaged loader (`json`, "
            "`parquet`, `text`) used with `data_files`, or `bundled:NAME` for a corpus shipped with hf-ipt "
            "(`bundled:quickstart`)."
        },
    )
    name: str | None = field(default=None, metadata={"help": "Dataset configuration (subset) name, e.g. `en`."})
    split: str = field(default="train", metadata={"help": "Split to read; the output keeps this split name."})
    revision: str | None = field(
        default=None,
        metadata={
            "help": "Git revision (branch, tag or commit) of a Hub dataset. Pin a commit for long runs: resuming "
            "against a moved branch would mix two versions of the corpus."
        },
    )
    data_files: str | list[str] | None = field(
        default=None, metadata={"help": "Files for a packaged loader (`json`, `parquet`, ...): a path, glob or list."}
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the raw texts.", "nonempty": True})
    max_rows: int | None = field(
        default=None,
        metadata={"help": "Use only the first N rows (trial runs); null reads the whole split.", "min": 1},
    )
    license: str | None = field(
        default=None,
        metadata={"help": "License id of this dataset (e.g. `odc-by`), shown in the release card; null = unknown."},
    )

    def __post_init__(self) -> None:
        check_fields(self, "source")
        if not self.path.strip():
            raise ConfigError(
                f"source.path must name a dataset (a Hub id, a local directory, a loader like `json` with "
                f"source.data_files, or `bundled:quickstart`), got {self.path!r}"
            )
        if self.path.startswith(BUNDLED_PREFIX):
            corpus = self.path.removeprefix(BUNDLED_PREFIX)
            if corpus not in bundled_corpora():
                raise ConfigError(
                    f"source.path {self.path!r} names no bundled corpus; available: "
                    f"{', '.join(BUNDLED_PREFIX + c for c in bundled_corpora()) or '(none)'}"
                )
            if self.data_files is not None:
                raise ConfigError("source.data_files cannot be combined with a `bundled:` source.path; drop one")
        if not re.fullmatch(r"\w+(\.\w+)*", self.output_split):
            raise ConfigError(
                f"source.split must be a split name such as `train` (optionally sliced, `train[:1000]`), got "
                f"{self.split!r}"
            )

    @property
    def output_split(self) -> str:
        """Name of the split in the outputs: `split` without a slice (`train[:1000]` -> `train`)."""
        return re.split(r"[\[+]", self.split, maxsplit=1)[0].strip()

    def load_arguments(self) -> dict[str, Any]:
        """Keyword arguments for `datasets.load_dataset` that read this source."""
        if self.path.startswith(BUNDLED_PREFIX):
            corpus = self.path.removeprefix(BUNDLED_PREFIX)
            return {"path": "json", "data_files": str(BUNDLED_DATA_DIR / f"{corpus}.jsonl"), "split": self.split}
        arguments: dict[str, Any] = {"path": self.path, "split": self.split}
        if self.name is not None:
            arguments["name"] = self.name
        if self.revision is not None:
            arguments["revision"] = self.revision
        if self.data_files is not None:
            arguments["data_files"] = self.data_files
        return arguments

    def load(self):
        """Load the split as a `datasets.Dataset`, checking the text column exists (before any model is loaded)."""
        dataset = self.load_rows()
        if self.text_column not in dataset.column_names:
            raise ConfigError(
                f"source {self.path!r} has no column {self.text_column!r} (source.text_column); its columns are "
                f"{dataset.column_names}"
            )
        return dataset

    def load_rows(self):
        """The split (its first `max_rows` rows when set); a loading error names the settings that caused it."""
        import datasets

        try:
            dataset = datasets.load_dataset(**self.load_arguments())
        except Exception as err:  # noqa: BLE001 - any loading failure is reported with the settings that caused it
            # datasets' own message (unknown split with the valid ones, missing repo, offline...) is kept as is
            raise ConfigError(
                f"could not load the dataset {self.path!r} (name={self.name!r}, split={self.split!r}, "
                f"revision={self.revision!r}): {type(err).__name__}: {err}"
            ) from err
        if self.max_rows is not None and self.max_rows < len(dataset):
            dataset = dataset.select(range(self.max_rows))
        return dataset


@dataclass
class RunConfig:
    """Where outputs go and how the synthesis is cut into resumable shards.

    Example:
        >>> RunConfig(output_dir="output/run", shard_size=512).shard_size
        512
    """

    output_dir: str = field(
        default="",
        metadata={
            "help": "Root of all outputs: a local path or any fsspec URL (`s3://bucket/run`). Each stage writes a "
            "sub-folder: `synthesized/`, `templified/`, `mixed/`, `export/`, `release/`."
        },
    )
    shard_size: int = field(
        default=2000,
        metadata={
            "help": "Input rows per synthesis shard, the unit of resumption and of work split between workers; a "
            "shard's output is held in memory until it is committed. Must be a multiple of synth.batch_size (batch "
            "boundaries decide which rows form M-shot chains).",
            "min": 1,
        },
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Start over when output_dir holds a synthesis made with another configuration: delete it instead "
            "of refusing to resume. A synthesis with the same configuration is always resumed (so every worker of a "
            "job may pass it); delete the folder to recompute it. Also lets a local release replace the same "
            "release.version made with other content (refused otherwise: versions never change)."
        },
    )
    resume_ignore: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Dotted config keys whose change does not prevent resuming, for settings that do not change the "
            "output, e.g. [synth.engine_kwargs.gpu_memory_utilization]."
        },
    )
    verify_inputs: bool = field(
        default=True,
        metadata={
            "help": "On resume, re-hash the input rows of every finished shard and refuse if they changed (a moved "
            "dataset revision, other data_files)."
        },
    )
    storage_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "fsspec options for a remote output_dir (credentials, endpoint); never written to disk."},
    )
    executor: Literal["local", "ray"] = field(
        default="local",
        metadata={
            "help": "Where the synthesis shards run. `local`: on this machine, in run.num_workers processes (one "
            "per GPU, or a share of the cores each); other machines can join by hand with --worker-index / "
            "--num-workers. `ray`: run.num_workers Ray tasks on the cluster at run.ray_address, each loading the "
            "input itself and writing its shards to run.output_dir (storage every worker reaches); a task whose "
            "process dies is retried and its unfinished shard redone. Templify and mix run their shards on the same "
            "executor (no GPU); the export and the release run here."
        },
    )
    num_workers: int = field(
        default=1,
        metadata={
            "help": "Workers sharing the synthesis shards, then templify's and the mix's (worker i takes shards i, "
            "i+n, ...). With executor local: processes on this machine, each pinned to its GPUs "
            "(tensor_parallel_size × pipeline_parallel_size per process) or its share of the cores. With executor "
            "ray: Ray tasks.",
            "min": 1,
        },
    )
    gpus_per_worker: float | None = field(
        default=None,
        metadata={
            "help": "GPUs Ray reserves for each worker (executor ray only). Unset: tensor_parallel_size × "
            "pipeline_parallel_size of synth.engine_kwargs when the cluster has GPUs, 0 on a CPU-only cluster.",
            "min": 0,
        },
    )
    ray_address: str | None = field(
        default=None,
        metadata={
            "help": "Address of the Ray cluster (`auto`, `ray://head:10001`, `head:6379`); executor ray only. Unset: "
            "the RAY_ADDRESS environment variable, else the Ray instance this process is already connected to, "
            "else a new local instance."
        },
    )
    max_retries: int = field(
        default=3,
        metadata={
            "help": "Times Ray restarts a worker whose process or node died (executor ray only); the restarted "
            "worker skips its committed shards and redoes the one that was in flight. Python errors are not retried.",
            "min": 0,
        },
    )

    def __post_init__(self) -> None:
        check_fields(self, "run")
        check_executor(self.executor, gpus_per_worker=self.gpus_per_worker, ray_address=self.ray_address)
        if not self.output_dir.strip():
            raise ConfigError(
                f"run.output_dir must be a local path or an fsspec URL, got {self.output_dir!r}; "
                "set it in the recipe or with --run.output_dir PATH"
            )

    @property
    def folder(self) -> RunFolder:
        """The run's folder (`output_dir` with `storage_options`), and through it each stage's output folder."""
        return RunFolder(self.output_dir, self.storage_options)

    def recorded(self) -> dict[str, Any]:
        """This section as a release records it (its recipe.yaml): the storage options (credentials) left out.

        Example:
            >>> RunConfig(output_dir="out", storage_options={"key": "K"}).recorded()["storage_options"]
            '<not recorded>'
        """
        data = config_to_dict(self)
        data["storage_options"] = "<not recorded>" if self.storage_options else {}
        return data


# ----------------------------------------------------------------------------------------------------------------
# Generic machinery: dicts -> nested dataclasses, dotted overrides, unknown-key suggestions
# ----------------------------------------------------------------------------------------------------------------

_MISSING = object()
_TRUE_WORDS = {"true", "yes", "on", "1"}
_FALSE_WORDS = {"false", "no", "off", "0"}
_NONE_WORDS = {"none", "null", "~"}


def _init_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def dotted_keys(cls: type, prefix: str = "") -> list[str]:
    """Every settable dotted key of a (nested) config dataclass, e.g. `["run.output_dir", "run.shard_size", ...]`.

    Example:
        >>> dotted_keys(RunConfig)[:2]
        ['output_dir', 'shard_size']
    """
    keys = []
    hints = field_hints(cls)
    for name in _init_fields(cls):
        nested = dataclass_in(hints[name])
        if nested is not None:
            keys.extend(dotted_keys(nested, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def closest_key(key: str, candidates: Sequence[str]) -> str | None:
    """The candidate closest to a misspelt `key` (same section first, then anywhere by its last part), or None.

    Example:
        >>> closest_key("synth.roundz", ["synth.rounds", "synth.model", "run.output_dir"])
        'synth.rounds'
        >>> closest_key("rounds", ["synth.rounds", "run.output_dir"])
        'synth.rounds'
    """
    match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if match:
        return match[0]
    leaf = key.rsplit(".", 1)[-1]
    by_leaf = {c.rsplit(".", 1)[-1]: c for c in candidates}
    match = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)
    return by_leaf[match[0]] if match else None


def _unknown_key_error(full_key: str, valid_here: Sequence[str], root_keys: Sequence[str], origin: str) -> ConfigError:
    section = full_key.rsplit(".", 1)[0] if "." in full_key else ""
    prefix = f"{section}." if section else ""
    leaf = full_key.rsplit(".", 1)[-1]
    # a valid key put in the wrong section (`rounds` instead of `synth.rounds`) beats a fuzzy match in this one
    elsewhere = [k for k in root_keys if k.rsplit(".", 1)[-1] == leaf and k != full_key]
    suggestion = (
        (elsewhere[0] if len(elsewhere) == 1 else None)
        or closest_key(full_key, [prefix + k for k in valid_here])
        or closest_key(full_key, root_keys)
    )
    hint = f"; did you mean {suggestion!r}?" if suggestion else ""
    where = f"section {section!r}" if section else "the top level"
    return ConfigError(
        f"unknown key {full_key!r}{origin}{hint} Valid keys in {where}: {', '.join(sorted(valid_here))}"
    )


def _check_value(
    value: Any, hint: Any, key: str, root_keys: Sequence[str], origin: str, meta: Mapping[str, Any] | None = None
) -> Any:
    """A value read from YAML (already typed) checked by the one validation layer; nested sections are built."""

    def build(cls: type, data: Mapping[str, Any], dotted: str) -> Any:
        return _build(cls, data, f"{dotted}.", root_keys, origin)

    return check_value(value, hint, key, meta, origin=origin, build=build)


def _build(cls: type, data: Mapping[str, Any], prefix: str, root_keys: Sequence[str], origin: str) -> Any:
    fields = _init_fields(cls)
    hints = field_hints(cls)
    for key in data:
        if key not in fields:
            raise _unknown_key_error(f"{prefix}{key}", list(fields), root_keys, origin)
    kwargs = {
        name: _check_value(value, hints[name], f"{prefix}{name}", root_keys, origin, fields[name].metadata)
        for name, value in data.items()
    }
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        example = f"{prefix}{missing[0]}" + (".KEY" if dataclass_in(hints[missing[0]]) else "")
        raise ConfigError(
            f"missing required {'section' if dataclass_in(hints[missing[0]]) else 'key'} "
            f"{', '.join(repr(prefix + m) for m in missing)}{origin}; set it in the recipe or with --{example} VALUE"
        )
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{err}{origin}") from err
    except (ValueError, TypeError) as err:
        section = prefix.rstrip(".") or cls.__name__
        raise ConfigError(f"invalid {section!r}{origin}: {err}") from err


def config_from_dict(cls: type, data: Mapping[str, Any], *, origin: str = "") -> Any:
    """Build a (nested) config dataclass from a mapping, validating every key and value type.

    `origin` (e.g. `" in recipes/x.yaml"`) is appended to error messages.

    Example:
        >>> config_from_dict(RunConfig, {"output_dir": "out", "shard_size": 64}).shard_size
        64
        >>> config_from_dict(RunConfig, {"output_dir": "out", "shard_sise": 64})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        hf_ipt.validation.ConfigError: unknown key 'shard_sise'; did you mean 'shard_size'? ...
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"a recipe must be a mapping of sections{origin}, got {type(data).__name__}: {data!r}")
    return _build(cls, data, "", dotted_keys(cls), origin)


def _field_hint(cls: type, dotted: str, root_keys: Sequence[str]) -> Any:
    """Type of the field a dotted key points at; keys inside a free-form dict field are typed Any."""
    current: Any = cls
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        nested = dataclass_in(current)
        if nested is None:
            if typing.get_origin(current) in (dict, Mapping) or current is dict:
                args = typing.get_args(current)
                current = args[1] if args else Any
                continue
            done = ".".join(parts[:depth])
            raise ConfigError(f"--{dotted}: {done!r} is a single value, not a section with keys")
        fields = _init_fields(nested)
        if part not in fields:
            prefix = ".".join(parts[:depth])
            raise _unknown_key_error(
                f"{prefix}.{part}" if prefix else part, list(fields), root_keys, " (command-line override)"
            )
        current = field_hints(nested)[part]
    return current


def coerce_text(raw: str, hint: Any, key: str) -> Any:
    """Turn a command-line string into a value of the field's type (`"2"` -> 2, `"true"` -> True, `"[a, b]"`...).

    Strings stay verbatim for str fields (so `--source.revision 0123` stays "0123").

    Example:
        >>> coerce_text("3", int, "synth.rounds"), coerce_text("no", bool, "run.overwrite")
        (3, False)
        >>> coerce_text("null", int | None, "source.max_rows") is None
        True
    """
    args = typing.get_args(hint) if is_union(hint) else ()
    if args and type(None) in args and raw.strip().lower() in _NONE_WORDS:
        return None
    if args:
        non_none = [a for a in args if a is not type(None)]
        # a str alternative keeps the raw text unless it is written as a YAML list or mapping
        if str in non_none and not raw.lstrip().startswith(("[", "{")):
            return raw
        for arg in sorted(non_none, key=lambda a: a is str):
            try:
                return coerce_text(raw, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"--{key} must be {type_name(hint)}, got {raw!r}")
    if hint is str:
        return raw
    if hint is bool:
        word = raw.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
        raise ConfigError(f"--{key} must be true or false, got {raw!r}")
    if hint is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"--{key} must be an integer, got {raw!r}") from None
    if hint is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"--{key} must be a number, got {raw!r}") from None
    if typing.get_origin(hint) is Literal:
        for allowed in typing.get_args(hint):
            if str(allowed) == raw:
                return allowed
        raise ConfigError(f"--{key} must be one of {list(typing.get_args(hint))}, got {raw!r}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"--{key}: could not read {raw!r} as a YAML value ({err})") from None
    return _check_value(value, hint, key, (), " (command-line override)")


def parse_overrides(args: Sequence[str], cls: type, *, positionals: list[str] | None = None) -> dict[str, Any]:
    """Read `--section.key VALUE`, `--section.key=VALUE` and bare boolean flags (`--run.overwrite`) into typed values.

    Arguments that are not options are an error, unless a `positionals` list is given to collect them.

    Example:
        >>> parse_overrides(["--output_dir=out", "--shard_size", "64", "--overwrite"], RunConfig)
        {'output_dir': 'out', 'shard_size': 64, 'overwrite': True}
    """
    root_keys = dotted_keys(cls)
    overrides: dict[str, Any] = {}
    position = 0
    while position < len(args):
        token = args[position]
        if positionals is not None and not token.startswith("--"):
            positionals.append(token)
            position += 1
            continue
        if not token.startswith("--") or len(token) <= 2:
            raise ConfigError(
                f"unexpected argument {token!r}; overrides look like --section.key VALUE (e.g. --synth.rounds 2)"
            )
        key, has_value, raw = token[2:].partition("=")
        key = key.replace("-", "_")
        hint = _field_hint(cls, key, root_keys)
        if dataclass_in(hint) is not None and not has_value:
            raise ConfigError(
                f"--{key} is a section; set one of its keys, e.g. --{key}.{dotted_keys(dataclass_in(hint))[0]}"
            )
        if not has_value:
            following = args[position + 1] if position + 1 < len(args) else None
            is_flag = hint is bool or (is_union(hint) and bool in typing.get_args(hint))
            if is_flag and (following is None or following.lower() not in _TRUE_WORDS | _FALSE_WORDS):
                raw = "true"
            elif following is None:
                raise ConfigError(f"--{key} needs a value, e.g. --{key} VALUE")
            else:
                raw = following
                position += 1
        overrides[key] = coerce_text(raw, hint, key)
        position += 1
    return overrides


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of `data` (the YAML mapping) with each dotted override set, creating sections as needed.

    Example:
        >>> apply_overrides({"synth": {"rounds": 3}}, {"synth.rounds": 2, "run.output_dir": "out"})
        {'synth': {'rounds': 2}, 'run': {'output_dir': 'out'}}
    """
    merged = json.loads(json.dumps(data, default=str)) if data else {}
    for dotted, value in overrides.items():
        target = merged
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        target[parts[-1]] = value
    return merged


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A YAML mapping names one key twice (YAML keeps the last silently; a recipe must not).

    Example:
        >>> yaml.load("synth:\\n  rounds: 2\\n  rounds: 3\\n", Loader=UniqueKeyLoader)
        Traceback (most recent call last):
        ...
        hf_ipt.config.DuplicateKeyError: key 'synth.rounds' appears twice: on line 2 and on line 3; keep one of them
    """

    def __str__(self) -> str:  # only the sentence: YAML's own rendering adds the document's text around it
        return self.problem or ""


class UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping, naming the dotted key and both lines.

    Example:
        >>> yaml.load("run: {shard_size: 8}", Loader=UniqueKeyLoader)
        {'run': {'shard_size': 8}}
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges keys that the mapping's own keys may override: not a duplicate
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: the base constructor reports it
            if first is not None:
                path = ".".join(str(part) for part in (*self._key_path(node), key))
                raise DuplicateKeyError(
                    problem=f"key {path!r} appears twice: on line {first} and on line {line}; keep one of them",
                    problem_mark=key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)

    def _key_path(self, node: yaml.Node) -> list[str]:
        """The keys leading from the document's root to `node` (for the error message)."""
        path: list[str] = []
        current = node
        while True:
            parent = self._parents.get(id(current))
            if parent is None:
                return path
            path.insert(0, parent[1])
            current = parent[0]

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        node = super().compose_node(parent, index)
        if not hasattr(self, "_parents"):
            self._parents: dict[int, tuple[yaml.Node, str]] = {}
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    self._parents[id(value_node)] = (node, key_node.value)
        return node


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a recipe file into a mapping, with errors naming the file (and, for a key given twice, the key and its
    two lines).

    Example:
        >>> read_yaml("recipes/quickstart.yaml")["synth"]["rounds"]  # doctest: +SKIP
        3
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file {str(path)!r} does not exist (paths are relative to the current directory)")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except DuplicateKeyError as err:
        raise ConfigError(f"recipe {str(path)!r}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {str(path)!r} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {str(path)!r} must be a mapping of sections, got {type(data).__name__}")
    return data


def in_field_order(cls: type, data: Any) -> Any:
    """`data` (plain data of config dataclass `cls`, e.g. read back from JSON with sorted keys) with its keys in the
    order of `cls`'s fields, nested sections too; keys `cls` does not have come last, as they were.

    Example:
        >>> list(in_field_order(RunConfig, {"shard_size": 8, "output_dir": "out"}))
        ['output_dir', 'shard_size']
    """
    if not isinstance(data, Mapping):
        return data
    hints = field_hints(cls)
    ordered = {}
    for name in _init_fields(cls):
        if name not in data:
            continue
        nested = dataclass_in(hints[name])
        args = typing.get_args(hints[name]) if typing.get_origin(hints[name]) in (dict, Mapping) else ()
        inner = dataclass_in(args[1]) if len(args) == 2 else None
        if nested is not None:
            ordered[name] = in_field_order(nested, data[name])
        elif inner is not None and isinstance(data[name], Mapping):
            ordered[name] = {key: in_field_order(inner, value) for key, value in data[name].items()}
        else:
            ordered[name] = data[name]
    ordered.update({key: value for key, value in data.items() if key not in ordered})
    return ordered


def describe_fields(cls: type, prefix: str = "", parent_help: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, help) for every settable key: the body of `hf-ipt ... --help`.

    A field of a nested value type without help of its own (e.g. `bos` of a `TargetFormat`) is described by its
    parent field's help.

    Example:
        >>> from hf_ipt.formatting import TargetFormat
        >>> describe_fields(TargetFormat, prefix="target_format.")[0][:3]
        ('target_format.bos', 'str', '""')
    """
    rows = []
    hints = field_hints(cls)
    for name, f in _init_fields(cls).items():
        nested = dataclass_in(hints[name])
        if nested is not None:
            rows.extend(describe_fields(nested, f"{prefix}{name}.", f.metadata.get("help", "")))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = _MISSING
        shown = "required" if default is _MISSING else json.dumps(config_to_dict(default))
        help_text = f.metadata.get("help", "") or (f"{parent_help} (its `{name}`)" if parent_help else "")
        rows.append((f"{prefix}{name}", type_name(hints[name]), shown, help_text))
    return rows


# ----------------------------------------------------------------------------------------------------------------
# The recipe: every stage's section
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class MixSourceConfig(SourceConfig):
    """A corpus the instruction-augmented texts are mixed with (OpenOrca, or raw corpora), keyed by its name in
    mix.weights. `kind: general_instructions` formats each row as "{question} {response}" (system prompt dropped);
    `kind: raw` takes `text_column` unchanged.

    Example:
        >>> MixSourceConfig(path="Open-Orca/OpenOrca", kind="general_instructions").question_column
        'question'
    """

    kind: SourceKind = field(
        default=RAW,
        metadata={"help": "`general_instructions` (OpenOrca-style question/response rows) or `raw` (plain texts)."},
    )
    question_column: str = field(default="question", metadata={"help": "Question column (general_instructions)."})
    response_column: str = field(default="response", metadata={"help": "Response column (general_instructions)."})

    def load(self):
        """Load the split, checking the columns its kind reads."""
        if self.kind == RAW:
            return super().load()
        dataset = self.load_rows()
        missing = [c for c in (self.question_column, self.response_column) if c not in dataset.column_names]
        if missing:
            raise ConfigError(
                f"mix source {self.path!r} (kind general_instructions) has no column(s) {missing}; its columns are "
                f"{dataset.column_names}; set question_column / response_column"
            )
        return dataset


AUGMENTED_SOURCE = "augmented"  # name of the instruction-augmented corpus in mix.weights


def check_tiny_model(build_tiny_model: bool, model: str) -> None:
    """`build_tiny_model` builds the tiny synthesizer at `synth.model`: that must be a local folder, not the real
    synthesizer's Hub id.

    Example:
        >>> check_tiny_model(True, "output/tiny-synthesizer")
    """
    if build_tiny_model and model == DEFAULT_MODEL:
        raise ConfigError(
            "build_tiny_model is set but synth.model is the real synthesizer's Hub id; set synth.model to the "
            "local folder the tiny model should be built in (e.g. output/tiny-synthesizer)"
        )


def check_mix_sources(mix: MixConfig | None, mix_sources: Mapping[str, MixSourceConfig]) -> None:
    """The mix's weights and its sources agree: the augmented corpus has a weight, every other weight names a
    defined source, every source has a weight, and no source takes the augmented corpus' name.

    Example:
        >>> check_mix_sources(None, {"general": MixSourceConfig(path="bundled:quickstart_general")})
        Traceback (most recent call last):
        ...
        hf_ipt.validation.ConfigError: mix_sources ['general'] have no weight in mix.weights (there is no mix \
section); give them a weight or remove them
    """
    if mix is not None:
        if AUGMENTED_SOURCE not in mix.weights:
            raise ConfigError(
                f"mix.weights must give a weight to {AUGMENTED_SOURCE!r} (the instruction-augmented corpus), got "
                f"{sorted(mix.weights)}"
            )
        undefined = sorted(set(mix.weights) - {AUGMENTED_SOURCE} - set(mix_sources))
        if undefined:
            raise ConfigError(
                f"mix.weights names source(s) {undefined} that mix_sources does not define; add e.g. "
                f"`mix_sources: {{{undefined[0]}: {{path: ..., kind: raw}}}}`"
            )
    unused = sorted(set(mix_sources) - set(mix.weights if mix else {}))
    if unused:
        raise ConfigError(
            f"mix_sources {unused} have no weight in mix.weights"
            + ("" if mix else " (there is no mix section)")
            + "; give them a weight or remove them"
        )
    if AUGMENTED_SOURCE in mix_sources:
        raise ConfigError(f"mix_sources cannot define {AUGMENTED_SOURCE!r}: that name is the augmented corpus")


@dataclass
class RecipeConfig:
    """A whole Instruction Pre-Training run: source corpus -> synthesis -> templify -> mix -> release.

    Example:
        >>> recipe = RecipeConfig(source=SourceConfig(path="bundled:quickstart"), run=RunConfig(output_dir="out"),
        ...                       synth=SynthesisConfig(batch_size=64), )
        >>> recipe.run.shard_size % recipe.synth.batch_size
        0
    """

    source: SourceConfig = field(metadata={"help": "The raw corpus to augment."})
    run: RunConfig = field(metadata={"help": "Output location and sharding."})
    synth: SynthesisConfig = field(default_factory=SynthesisConfig, metadata={"help": "The synthesis step."})
    chunk: ChunkSettings = field(default_factory=ChunkSettings, metadata={"help": "Splitting over-long texts."})
    templify: TemplifyConfig = field(
        default_factory=TemplifyConfig, metadata={"help": "Turning synthesized rows into pre-training texts."}
    )
    quality: QualityConfig = field(
        default_factory=QualityConfig,
        metadata={
            "help": "Quality report of the synthesized pairs (card section Quality) and optional filters applied "
            "before templify (all off by default)."
        },
    )
    mix: MixConfig | None = field(
        default=None,
        metadata={"help": "Mixing by token ratio; null skips mixing (the release holds the templified texts)."},
    )
    mix_sources: dict[str, MixSourceConfig] = field(
        default_factory=dict,
        metadata={
            "help": f"Corpora to mix with, by the names used in mix.weights ({AUGMENTED_SOURCE!r} is the augmented "
            "corpus itself), e.g. {general: {path: Open-Orca/OpenOrca, kind: general_instructions}}."
        },
    )
    export: ExportConfig = field(
        default_factory=ExportConfig,
        metadata={
            "help": "Token files of the released rows for OLMo-core, Megatron and LLaMA-Factory (run.output_dir/"
            "export/); none by default."
        },
    )
    release: ReleaseConfig | None = field(
        default=None,
        metadata={"help": "The release (repo_id, version, config_name, ...); null: stop after the last data stage."},
    )
    release_to: Literal["hub", "local"] = field(
        default="hub",
        metadata={
            "help": "`hub`: push to release.repo_id on the Hub and tag release.version. `local`: write the same "
            "release (data, card, statistics, recipe, plots) to run.output_dir/release/, nothing uploaded."
        },
    )
    card: CardOptions = field(
        default_factory=CardOptions, metadata={"help": "Dataset card settings (title, summary, license, tags)."}
    )
    build_tiny_model: bool = field(
        default=False,
        metadata={
            "help": "Build hf-ipt's tiny offline synthesizer (hf_ipt.tiny_model) at synth.model first, if not there "
            "yet: for the quickstart and smoke tests, no download. Its pairs have the right format, not real content."
        },
    )

    def __post_init__(self) -> None:
        check_fields(self, "")
        self._reconcile_text_column()
        check_tiny_model(self.build_tiny_model, self.synth.model)
        check_shard_size(self.run.shard_size, self.synth.batch_size, "run.shard_size", "synth.batch_size")
        check_mix_sources(self.mix, self.mix_sources)

    def _reconcile_text_column(self) -> None:
        """source.text_column, synth.text_column and templify.text_column name the same column (synthesis keeps the
        input columns); the one set to something other than the default `text` applies to all three."""
        default = "text"
        sections = {"source": self.source, "synth": self.synth, "templify": self.templify}
        chosen = {name: section.text_column for name, section in sections.items() if section.text_column != default}
        if len(set(chosen.values())) > 1:
            shown = ", ".join(f"{name}.text_column={column!r}" for name, column in chosen.items())
            raise ConfigError(
                f"{shown} differ; they name the same column (synthesis keeps its input columns): set only "
                "source.text_column"
            )
        column = next(iter(chosen.values()), default)
        for name, section in sections.items():
            if section.text_column != column:
                setattr(self, name, dataclasses.replace(section, text_column=column))


def load_recipe(path: str | os.PathLike | None, overrides: Sequence[str] | Mapping[str, Any] = ()) -> RecipeConfig:
    """Read a recipe YAML (or none: everything from `overrides`), apply command-line overrides, validate everything.

    `overrides` is either argv-style (`["--synth.rounds", "2"]`) or already parsed (`{"synth.rounds": 2}`).

    Example:
        >>> recipe = load_recipe(None, ["--source.path", "bundled:quickstart", "--run.output_dir", "out"])
        >>> recipe.source.path, recipe.synth.rounds
        ('bundled:quickstart', 1)
    """
    data = read_yaml(path) if path is not None else {}
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(list(overrides), RecipeConfig)
    if path is not None:
        # check the file's keys on their own first, so a misspelt key is blamed on the file
        _check_keys(RecipeConfig, data, "", dotted_keys(RecipeConfig), f" (in {path})")
    if path is None:
        _check_required_without_recipe(overrides)
    sources = ([str(path)] if path is not None else []) + (["command-line overrides"] if overrides else [])
    origin = f" (in {' + '.join(sources)})" if sources else ""
    merged = apply_overrides(data, overrides)
    return config_from_dict(RecipeConfig, merged, origin=origin)


# what a run needs when no recipe file is given: the keys that have no usable default
_REQUIRED_WITHOUT_RECIPE = {"source": ("source.path", "DATASET"), "run": ("run.output_dir", "DIR")}


def _check_required_without_recipe(overrides: Mapping[str, Any]) -> None:
    """No recipe file: the required sections must come from overrides; if not, say how to give a recipe."""
    given = {key.split(".")[0] for key in overrides}
    missing = [section for section in _REQUIRED_WITHOUT_RECIPE if section not in given]
    if missing:
        flags = " ".join(f"--{key} {value}" for key, value in (_REQUIRED_WITHOUT_RECIPE[m] for m in missing))
        raise ConfigError(
            "no recipe given: pass RECIPE.yaml (e.g. recipes/quickstart.yaml; see recipes/README.md), or set the "
            f"required section{'s' if len(missing) > 1 else ''} {' and '.join(missing)} on the command line: {flags}"
        )


def _check_keys(cls: type, data: Mapping[str, Any], prefix: str, root_keys: Sequence[str], origin: str) -> None:
    """Unknown-key check only (no values), so a recipe can be completed by overrides but never misspelt."""
    fields = _init_fields(cls)
    hints = field_hints(cls)
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key_error(f"{prefix}{key}", list(fields), root_keys, origin)
        nested = dataclass_in(hints[key])
        if nested is not None and isinstance(value, Mapping):
            _check_keys(nested, value, f"{prefix}{key}.", root_keys, origin)
        elif typing.get_origin(hints[key]) in (dict, Mapping) and isinstance(value, Mapping):
            args = typing.get_args(hints[key])
            inner = dataclass_in(args[1]) if args else None
            if inner is not None:
                for name, entry in value.items():
                    if isinstance(entry, Mapping):
                        _check_keys(inner, entry, f"{prefix}{key}.{name}.", root_keys, origin)
