"""One validation layer for every config dataclass: a field's type is its type hint, its range is in its metadata.

A field declares its constraints next to its help text, once:

```python
rounds: int = field(default=1, metadata={"help": "M, the number of rounds.", "min": 1})
```

and the dataclass's `__post_init__` calls `check_fields(self, "synth")`, so `SynthesisConfig(rounds=0)` in Python
and `synth: {rounds: 0}` in a recipe fail with the same message, naming the key, the value received and what is
allowed. The recipe loader (`hf_ipt.config`) calls `check_value` on every value with the recipe's own key
(`synth.rounds`) before it builds the dataclass, so a recipe error names the key as written in the recipe.

Constraint keys in field metadata (on a list or dict field they apply to every item):
`min` / `max` (inclusive), `gt` / `lt` (exclusive), `finite` (no inf/nan; the default for every number field:
`"finite": False` lets one take inf), `choices` (any container, read when
checking, so a registry dict that grows stays current), `nonempty` (a string other than ""), and `hint` (the fix,
appended to the message). Whatever its range, an integer field never takes a value beyond 64 bits (what Arrow,
NumPy, JSON readers and the engines hold), so `max_model_len: 100000000000000000000000` is refused with its key.
Rules between fields stay in `__post_init__`; the two shared by several classes are
`check_token_budget` and `check_shard_size` below.

This module imports no other hf_ipt module, so every stage module can use it.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal


class ConfigError(ValueError):
    """A recipe or config value is invalid; the message names the key, the value received and how to fix it.

    Example:
        >>> from hf_ipt.synthesis import SynthesisConfig
        >>> SynthesisConfig(rounds=0)
        Traceback (most recent call last):
        ...
        hf_ipt.validation.ConfigError: synth.rounds must be an integer >= 1, got 0
    """


class ConfigTypeError(ConfigError, TypeError):
    """A config value has the wrong type; also a TypeError, as the configs raised for wrong types before.

    Example:
        >>> from hf_ipt.synthesis import SynthesisConfig
        >>> try:
        ...     SynthesisConfig(rounds="3")
        ... except TypeError as err:
        ...     print(type(err).__name__, err)
        ConfigTypeError synth.rounds must be an integer >= 1, got '3' (str)
    """


# builds a nested dataclass from a mapping: (dataclass, mapping, dotted key) -> instance; given by the recipe loader
Builder = Callable[[type, Mapping[str, Any], str], Any]


def is_union(hint: Any) -> bool:
    """Whether a type hint is `X | Y` (or `typing.Union`).

    Example:
        >>> is_union(int | None), is_union(int)
        (True, False)
    """
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def dataclass_in(hint: Any) -> type | None:
    """The dataclass a field holds (also through `X | None`), or None.

    Example:
        >>> from hf_ipt.formatting import TargetFormat
        >>> dataclass_in(TargetFormat | None).__name__
        'TargetFormat'
    """
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    if is_union(hint):
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg) and isinstance(arg, type):
                return arg
    return None


# generic origins shown by the name a recipe writer knows: a YAML list is a list, a YAML mapping a dict
_ORIGIN_NAMES = {list: "list", tuple: "list", Sequence: "list", dict: "dict", Mapping: "dict"}


def type_name(hint: Any) -> str:
    """A type hint as a recipe writer reads it: `int | null`, `list[str]`, `dict[str, Any]`, `'raw' | 'hub'`.

    Example:
        >>> type_name(int | None), type_name(Sequence[str]), type_name(Mapping[str, Any])
        ('int | null', 'list[str]', 'dict[str, Any]')
    """
    if hint is type(None):
        return "null"
    if hint is Any:
        return "Any"
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if is_union(hint):
        return " | ".join(type_name(a) for a in typing.get_args(hint))
    if origin is not None:
        name = _ORIGIN_NAMES.get(origin, getattr(origin, "__name__", str(origin)))
        args = typing.get_args(hint)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            args = args[:1]
        return f"{name}[{', '.join(type_name(a) for a in args)}]" if args else name
    if isinstance(hint, type):
        return _ORIGIN_NAMES.get(hint, hint.__name__)
    return str(hint).replace("typing.", "")


@functools.cache
def field_hints(cls: type) -> dict[str, Any]:
    """The resolved type hints of a dataclass's fields (cached: resolving them costs more than checking a value).

    Example:
        >>> from hf_ipt.formatting import TargetFormat
        >>> field_hints(TargetFormat)["bos"]
        <class 'str'>
    """
    return typing.get_type_hints(cls)


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _range(meta: Mapping[str, Any]) -> str:
    """The range part of a number's requirement: " >= 1", " between 0 and 1", " in (0, 1)"."""
    low_inclusive, high_inclusive = "min" in meta, "max" in meta
    low, high = meta.get("min", meta.get("gt")), meta.get("max", meta.get("lt"))
    if low is not None and high is not None:
        if low_inclusive and high_inclusive:
            return f" between {_number(low)} and {_number(high)}"
        return f" in {'[' if low_inclusive else '('}{_number(low)}, {_number(high)}{']' if high_inclusive else ')'}"
    if low is not None:
        return f" {'>=' if low_inclusive else '>'} {_number(low)}"
    if high is not None:
        return f" {'<=' if high_inclusive else '<'} {_number(high)}"
    return ""


def requirement(hint: Any, metadata: Mapping[str, Any] | None = None) -> str:
    """What a field accepts, in words: the part after "must be" in an error message.

    Example:
        >>> requirement(int | None, {"min": 1})
        'an integer >= 1 or null'
        >>> requirement(float, {"gt": 0, "finite": True})
        'a positive finite number'
    """
    meta = metadata or {}
    alternatives = [a for a in typing.get_args(hint) if a is not type(None)] if is_union(hint) else [hint]
    if len(alternatives) > 1:
        return type_name(hint)
    core = alternatives[0]
    if core is int or core is float:
        words = ["finite"] if meta.get("finite") else []
        words.append("integer" if core is int else "number")
        if meta.get("gt") == 0 and "max" not in meta and "lt" not in meta:
            text = "a positive " + " ".join(words)
        else:
            text = ("an " if words[0] == "integer" else "a ") + " ".join(words) + _range(meta)
    elif core is bool:
        text = "true or false"
    elif core is str and "choices" not in meta:
        text = "a non-empty string" if meta.get("nonempty") else "a string"
    elif "choices" in meta or typing.get_origin(core) is Literal:
        text = f"one of {list(meta.get('choices', typing.get_args(core)))}"
    else:
        text = type_name(core)
    return f"{text} or null" if core is not hint else text


def _fail(key: str, origin: str, hint: Any, meta: Mapping[str, Any], value: Any, wrong_type: bool) -> ConfigError:
    shown = f"{value!r} ({type(value).__name__})" if wrong_type else repr(value)
    message = f"{key}{origin} must be {requirement(hint, meta)}, got {shown}"
    choices = meta.get("choices", typing.get_args(hint) if typing.get_origin(hint) is Literal else None)
    if choices is not None and isinstance(value, str):
        close = difflib.get_close_matches(value, [str(c) for c in choices], n=1)
        message += f"; did you mean {close[0]!r}?" if close else ""
    if wrong_type and hint in (str, str | None) and isinstance(value, int | float):
        message += f"; quote it in YAML: '{value}'"
    if meta.get("hint"):
        hint_text = meta["hint"]
        message += f" {hint_text[0].upper()}{hint_text[1:]}" if message.endswith("?") else f"; {hint_text}"
    return (ConfigTypeError if wrong_type else ConfigError)(message)


INT64_MAX = 2**63 - 1  # the largest integer a field takes


def _absurd(value: int | float, hint: Any, key: str, meta: Mapping[str, Any], origin: str) -> ConfigError | None:
    """The error for a number no field can mean: beyond 64 bits for an integer, inf/nan (or an integer too large
    for a float) for a number, unless the field declares `"finite": False`."""
    if hint is int and not -INT64_MAX - 1 <= value <= INT64_MAX:
        return ConfigError(
            f"{key}{origin} must be {requirement(hint, meta)} that fits in 64 bits (at most {INT64_MAX}), got "
            f"{_big(value)}"
        )
    if hint is float:
        # an integer beyond a float's range is an overflow wherever it is used; inf/nan only where not declared
        if isinstance(value, int) and abs(value) > _FLOAT_MAX:
            return ConfigError(f"{key}{origin} must be {requirement(hint, meta)}, got {_big(value)} (beyond a float)")
        if "finite" not in meta and not math.isfinite(value):
            return ConfigError(f"{key}{origin} must be {requirement(hint, meta)} and finite, got {value!r}")
    return None


_FLOAT_MAX = int(sys.float_info.max)


_SHOWN_DIGITS = 40  # a longer integer is named by its number of digits, not echoed


def _big(value: int) -> str:
    """A huge integer as the recipe wrote it (never as a float: `10**30` is not `1e+30`), or its number of digits
    when it is too long to echo.

    Example:
        >>> _big(10**30), _big(10**400)
        ('1000000000000000000000000000000 (a 31-digit integer)', 'a 401-digit integer')
    """
    digits = len(str(abs(value)))
    return f"{value} (a {digits}-digit integer)" if digits <= _SHOWN_DIGITS else f"a {digits}-digit integer"


def _check_scalar(value: Any, hint: Any, key: str, meta: Mapping[str, Any], origin: str) -> Any:
    """Type and range of one int/float/bool/str/choice value (an integer is a number for a float field)."""
    if hint is bool:
        if not isinstance(value, bool):
            raise _fail(key, origin, hint, meta, value, True)
        return value
    if hint is int or hint is float:
        kinds = int if hint is int else int | float
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise _fail(key, origin, hint, meta, value, True)
        if (absurd := _absurd(value, hint, key, meta, origin)) is not None:
            raise absurd
        if (
            (meta.get("finite") and not math.isfinite(value))
            or ("min" in meta and not value >= meta["min"])
            or ("max" in meta and not value <= meta["max"])
            or ("gt" in meta and not value > meta["gt"])
            or ("lt" in meta and not value < meta["lt"])
        ):
            raise _fail(key, origin, hint, meta, value, False)
        return value
    if hint is str:
        if not isinstance(value, str):
            raise _fail(key, origin, hint, meta, value, True)
        if meta.get("nonempty") and not value:
            raise _fail(key, origin, hint, meta, value, False)
    if "choices" in meta and value not in meta["choices"]:
        raise _fail(key, origin, hint, meta, value, False)
    return value


def check_value(
    value: Any,
    hint: Any,
    key: str,
    metadata: Mapping[str, Any] | None = None,
    *,
    origin: str = "",
    build: Builder | None = None,
) -> Any:
    """Check one value against its field's type hint and metadata constraints; return it (converted for a recipe).

    With `build` (the recipe loader), a mapping given for a dataclass field is built with it, numbers for float fields
    become floats and lists for tuple fields become tuples. Without it (a dataclass checking itself), nested
    dataclass fields are left to their own `__post_init__`. `origin` (e.g. `" (in recipe.yaml)"`) follows the key.

    Example:
        >>> check_value(3, int, "synth.rounds", {"min": 1})
        3
        >>> check_value(0, int, "synth.rounds", {"min": 1})
        Traceback (most recent call last):
        ...
        hf_ipt.validation.ConfigError: synth.rounds must be an integer >= 1, got 0
    """
    meta = metadata or {}
    if hint is Any:
        return value
    nested = dataclass_in(hint)
    if nested is not None:
        if value is None and is_union(hint) and type(None) in typing.get_args(hint):
            return None
        if isinstance(value, nested) or build is None:
            return value
        if isinstance(value, Mapping):
            return build(nested, value, key)
        raise ConfigTypeError(
            f"{key}{origin} is a section and needs a mapping of its keys (e.g. `{key}: {{...}}` in YAML or "
            f"--{key}.FIELD VALUE), got {value!r}"
        )
    if is_union(hint):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        alternatives = [a for a in args if a is not type(None)]
        if len(alternatives) == 1:
            if alternatives[0] not in (bool, int, float, str):
                return check_value(value, alternatives[0], key, meta, origin=origin, build=build)
            try:
                value = _check_scalar(value, alternatives[0], key, meta, origin)
            except ConfigError as err:  # said again with "or null"
                raise _fail(key, origin, hint, meta, value, isinstance(err, TypeError)) from None
            return float(value) if alternatives[0] is float and build is not None else value
        for arg in alternatives:
            try:
                return check_value(value, arg, key, meta, origin=origin, build=build)
            except ConfigError:
                continue
        raise ConfigTypeError(f"{key}{origin} must be {type_name(hint)}, got {value!r} ({type(value).__name__})")
    container = typing.get_origin(hint)
    if container is Literal:
        if value not in typing.get_args(hint):
            raise _fail(key, origin, hint, meta, value, False)
        return value
    if container in (list, tuple, Sequence) or hint in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigTypeError(f"{key}{origin} must be a list ({type_name(hint)}), got {value!r}")
        args = typing.get_args(hint)
        if args and container is not tuple:
            items = [
                check_value(v, args[0], f"{key}[{i}]", meta, origin=origin, build=build) for i, v in enumerate(value)
            ]
            value = value if build is None else items
        if build is None:
            return value
        return tuple(value) if container is tuple else list(value)
    if container in (dict, Mapping) or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigTypeError(f"{key}{origin} must be a mapping ({type_name(hint)}), got {value!r}")
        args = typing.get_args(hint)
        if not args:
            return value if build is None else dict(value)
        # a section per entry (mix_sources.general.path) is a dotted key; a plain value is an item (weights['a'])
        entry = "{key}.{name}" if dataclass_in(args[1]) is not None else "{key}[{name!r}]"
        checked = {
            k: check_value(v, args[1], entry.format(key=key, name=k), meta, origin=origin, build=build)
            for k, v in value.items()
        }
        return value if build is None else checked
    if hint is float and build is not None:
        return float(_check_scalar(value, hint, key, meta, origin))
    if hint in (bool, int, float, str) or "choices" in meta:
        return _check_scalar(value, hint, key, meta, origin)
    return value  # any other type (a tokenizer object, a callable): the dataclass's __post_init__ validates it


def check_fields(config: Any, section: str) -> None:
    """Check every field of a config dataclass against its type hint and metadata; call it from `__post_init__`.

    Errors name the field as `section.field` (e.g. `synthesis.rounds`), or `field` alone when `section` is "".

    Example:
        >>> from dataclasses import dataclass, field
        >>> @dataclass
        ... class Demo:
        ...     rounds: int = field(default=1, metadata={"help": "Rounds.", "min": 1})
        ...     def __post_init__(self) -> None:
        ...         check_fields(self, "demo")
        >>> Demo(rounds=0)
        Traceback (most recent call last):
        ...
        hf_ipt.validation.ConfigError: demo.rounds must be an integer >= 1, got 0
    """
    hints = field_hints(type(config))
    for f in dataclasses.fields(config):
        if f.init:
            key = f"{section}.{f.name}" if section else f.name
            check_value(getattr(config, f.name), hints[f.name], key, f.metadata)


def check_executor(executor: str, *, gpus_per_worker: float | None, ray_address: str | None) -> None:
    """The rules between `run.executor` and the settings only one executor reads: a Ray setting given with the local
    executor would be silently ignored, so it is an error.

    Example:
        >>> check_executor("ray", gpus_per_worker=1, ray_address="auto")
        >>> check_executor("local", gpus_per_worker=1, ray_address=None)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        hf_ipt.validation.ConfigError: run.gpus_per_worker=1 is only read with run.executor: ray ...
    """
    if executor == "ray":
        return
    if gpus_per_worker is not None:
        raise ConfigError(
            f"run.gpus_per_worker={gpus_per_worker!r} is only read with run.executor: ray (got executor "
            f"{executor!r}); local workers get tensor_parallel_size × pipeline_parallel_size GPUs each (set them in "
            "synth.engine_kwargs), so remove run.gpus_per_worker or set run.executor: ray"
        )
    if ray_address is not None:
        raise ConfigError(
            f"run.ray_address={ray_address!r} is only read with run.executor: ray (got executor {executor!r}); "
            "set run.executor: ray (--run.executor ray) or remove run.ray_address"
        )


def check_workers(executor: str, num_workers: int, *, manual_index: int, manual_count: int) -> None:
    """`run.num_workers` (workers this command starts) against `--worker-index/--num-workers` (this process is one of
    several started by hand, e.g. a Slurm array): one or the other.

    Example:
        >>> check_workers("local", 4, manual_index=0, manual_count=1)
        >>> check_workers("ray", 4, manual_index=1, manual_count=2)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        hf_ipt.validation.ConfigError: --worker-index 1 / --num-workers 2 start one worker of several by hand ...
    """
    if manual_count == 1 and manual_index == 0:
        return
    if executor == "ray" or num_workers > 1:
        raise ConfigError(
            f"--worker-index {manual_index} / --num-workers {manual_count} start one worker of several by hand (a "
            f"Slurm array job), but run.executor={executor!r} with run.num_workers={num_workers} starts the workers "
            "itself; use one or the other: drop --worker-index/--num-workers, or set run.executor: local and "
            "run.num_workers: 1"
        )


def check_token_budget(max_model_len: int, max_new_tokens: int, prefix: str = "") -> None:
    """The one rule between a context window and the answer's length: the answer must leave room for a prompt.

    Example:
        >>> check_token_budget(4096, 400)
        >>> check_token_budget(400, 400, "synthesis.")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        hf_ipt.validation.ConfigError: synthesis.max_new_tokens (400) must be smaller than synthesis.max_model_len ...
    """
    if max_new_tokens >= max_model_len:
        raise ConfigError(
            f"{prefix}max_new_tokens ({max_new_tokens}) must be smaller than {prefix}max_model_len ({max_model_len}), "
            "or no room is left for the prompt"
        )


def check_shard_size(shard_size: int, batch_size: int, shard_key: str = "shard_size", batch_key: str = "") -> None:
    """The one rule between shards and batches: a shard holds whole batches, so sharding never changes a chain.

    Example:
        >>> check_shard_size(8, 4)
        >>> check_shard_size(10, 4, "run.shard_size", "synth.batch_size")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        hf_ipt.validation.ConfigError: run.shard_size (10) must be a multiple of synth.batch_size (4): ...
    """
    if shard_size % batch_size:
        lower = max(batch_size, shard_size - shard_size % batch_size)
        raise ConfigError(
            f"{shard_key} ({shard_size}) must be a multiple of {batch_key or 'the batch size'} ({batch_size}): "
            "multi-round chains are formed inside each batch, and a shard ending mid-batch would chain other rows "
            f"than an unsharded run; use {shard_key} {lower} or {lower + batch_size}"
        )


__all__ = [
    "ConfigError",
    "ConfigTypeError",
    "check_fields",
    "check_shard_size",
    "check_token_budget",
    "check_value",
    "dataclass_in",
    "field_hints",
    "is_union",
    "requirement",
    "type_name",
]


# ----------------------------------------------------------------------------------------------------------------
# Problems found before a run: the key at fault, what was found, the fix
# ----------------------------------------------------------------------------------------------------------------


class PreflightError(ValueError):
    """The recipe cannot run: every problem the preflight found, one per line, each with its fix.

    Example:
        >>> print(PreflightError([Problem("source.path", "no such file 'x.jsonl'", "fix the path")]))
        the recipe cannot run, 1 problem found before any model was loaded:
          - source.path: no such file 'x.jsonl'; fix the path
    """

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        count = f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}"
        lines = [f"the recipe cannot run, {count} found before any model was loaded:"]
        lines += [f"  - {problem}" for problem in self.problems]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Problem:
    """One thing that would make a stage fail: the recipe key at fault, what was found, and how to fix it.

    Example:
        >>> str(Problem("synth.engine_kwargs.batch_size", "vLLM has no argument 'batch_size'", "use max_num_seqs"))
        "synth.engine_kwargs.batch_size: vLLM has no argument 'batch_size'; use max_num_seqs"
    """

    key: str
    found: str
    fix: str
    warning: bool = False  # worth knowing before the run, but it does not stop it (`hf-ipt check` exits 0)

    def __str__(self) -> str:
        return f"{self.key}: {self.found}; {self.fix}"
