"""Helpers for tests and smoke runs: a small recipe around the tiny synthesizer, a free port, a local `vllm serve`.

The tiny synthesizer itself (`build_tiny_synthesizer`, `corpus_paragraphs`) lives in `hf_ipt.tiny_model`, which
production code uses too (the quickstart builds it); it is re-exported here for tests. Production modules never import
this one.

Example:
    >>> recipe = tiny_recipe("output/tiny", "out", rows=8, batch_size=4)
    >>> recipe["synth"]["engine"]
    'transformers'
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hf_ipt.tiny_model import build_tiny_synthesizer, corpus_paragraphs

__all__ = [
    "build_tiny_synthesizer",
    "corpus_paragraphs",
    "free_port",
    "local_vllm_server",
    "read_with_megatron",
    "read_with_olmo_core",
    "tiny_recipe",
]


def tiny_recipe(
    model: str,
    output_dir: str | os.PathLike,
    *,
    rows: int,
    batch_size: int,
    shard_size: int | None = None,
    max_new_tokens: int = 32,
    engine: str = "transformers",
    release: str | None = None,
    changes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A recipe (the YAML mapping) that synthesizes `rows` bundled paragraphs with the tiny model, M = 2, fp32, no
    chunking; with `release` (a name) also templify, a 1:1 mix with the bundled general instructions and a local
    release `local/<release>` v0.1. `changes` are dotted keys set on top ({"synth.engine": "vllm"}).

    Example:
        >>> recipe = tiny_recipe("tiny", "out", rows=8, batch_size=4, changes={"synth.rounds": 3})
        >>> recipe["synth"]["rounds"], recipe["run"]["shard_size"], "mix" in recipe
        (3, 4, False)
    """
    recipe: dict[str, Any] = {
        "source": {"path": "bundled:quickstart", "max_rows": rows},
        "chunk": {"enabled": False},
        "synth": {
            "model": model,
            "engine": engine,
            "rounds": 2,
            "max_model_len": 512,
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
            "engine_kwargs": {"batch_size": batch_size, "dtype": "float32"},
        },
        "run": {"output_dir": str(output_dir), "shard_size": shard_size or batch_size},
    }
    if release is not None:
        recipe["templify"] = {"target_tokenizer": model}
        recipe["mix"] = {"weights": {"augmented": 1, "general": 1}, "tokenizer": model, "tolerance": 0.2}
        recipe["mix_sources"] = {"general": {"path": "bundled:quickstart_general", "kind": "general_instructions"}}
        recipe["release"] = {"repo_id": f"local/{release}", "version": "v0.1", "config_name": "m2"}
        recipe["release_to"] = "local"
    for dotted, value in (changes or {}).items():
        target = recipe
        *parents, leaf = dotted.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return recipe


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    Example:
        >>> 0 < free_port() < 65536
        True
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def local_vllm_server(
    model: str,
    *,
    max_model_len: int,
    extra_env: Mapping[str, str] | None = None,
    ready_timeout: float = 300.0,
) -> Iterator[str]:
    """`vllm serve` of `model` on 127.0.0.1 (fp32, eager, seed 0, like the offline engine of the tests), yielding its
    base URL once `/health` answers; stopped on exit. Raises RuntimeError, with the end of the server's log, when it
    exits or is not ready in time.

    Example:
        >>> with local_vllm_server(build_tiny_synthesizer("/tmp/tiny"), max_model_len=1024) as url:  # doctest: +SKIP
        ...     Synthesizer(model=..., engine="server", engine_kwargs={"endpoints": [url]})
    """
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", prefix="vllm-serve-", suffix=".log", delete=False)
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **(extra_env or {}),
    }
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
        "--port", str(port), "--enforce-eager", "--max-model-len", str(max_model_len), "--dtype", "float32",
        "--seed", "0",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {process.returncode}:\n{_log_tail(log.name)}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vllm serve not ready after {ready_timeout:.0f} s:\n{_log_tail(log.name)}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        log.close()
        os.unlink(log.name)


def _log_tail(path: str, chars: int = 4000) -> str:
    return Path(path).read_text(errors="replace")[-chars:]


# --- reading the export stage's files back with the trainers' own code -----------------------------------------------

OLMO_CORE_READER = Path(__file__).resolve().parent.parent / ".venv" / "olmo-core-reader"  # made by .ci/install

_READ_WITH_OLMO_CORE = """
import json, sys
job = json.loads(sys.stdin.read())
scope = {}
exec(job["lines"], scope)  # the lines the export says to paste, as pasted
dataset = scope["dataset"].build()
dataset.prepare()
from olmo_core.data.utils import iter_document_indices, load_array_slice_into_tensor
documents = [
    load_array_slice_into_tensor(path, start, end, dataset.dtype).tolist()
    for path in dataset.paths
    for start, end in iter_document_indices(path, use_array_if_local=False, dtype=dataset.dtype)
]
instances = [dataset[i]["input_ids"].tolist() for i in range(len(dataset))]
print(json.dumps({"class": type(dataset).__name__, "instances": instances, "documents": documents}))
"""


def read_with_olmo_core(lines: str, *, sequence_length: int, work_dir: str) -> dict[str, Any]:
    """Build the dataset that the export's OLMo-core lines configure, with OLMo-core itself (installed by .ci/install
    in a folder of its own, `OLMO_CORE_READER`, run in a subprocess), and read it: every fixed-length instance of
    `NumpyFSLDataset`, and every document at the boundaries of the metadata files
    (`olmo_core.data.utils.iter_document_indices`). Returns {"class", "instances", "documents"}.

    Example:
        >>> read_with_olmo_core(paste_lines(report, root)["olmo_core"], sequence_length=16, work_dir="w")
        ... # doctest: +SKIP
    """
    if not OLMO_CORE_READER.is_dir():
        raise FileNotFoundError(
            f"{OLMO_CORE_READER} is missing: run `bash .ci/install`, which installs OLMo-core there"
        )
    lines = lines.replace("sequence_length=4096", f"sequence_length={sequence_length}")
    lines = lines.replace('work_dir="/tmp/olmo-core-dataset"', f"work_dir={work_dir!r}")
    env = {**os.environ, "PYTHONPATH": str(OLMO_CORE_READER)}
    job = json.dumps({"lines": lines})
    done = subprocess.run(
        [sys.executable, "-c", _READ_WITH_OLMO_CORE], input=job, capture_output=True, text=True, env=env, timeout=600
    )
    if done.returncode != 0:
        raise RuntimeError(f"OLMo-core could not read the export:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def read_with_megatron(prefixes: list[str]) -> list[list[int]]:
    """Every document of megatron-core indexed datasets (`IndexedDataset(prefix)`, in order), each checked to be one
    sequence (`document_indices` 0, 1, 2, ...), as id lists.

    Example:
        >>> read_with_megatron(["out/export/megatron/train-00000"])  # doctest: +SKIP
        [[1, 523, ...], ...]
    """
    import warnings

    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        from megatron.core.datasets.indexed_dataset import IndexedDataset

    documents = []
    for prefix in prefixes:
        dataset = IndexedDataset(prefix)
        if not np.array_equal(dataset.document_indices, np.arange(len(dataset) + 1)):
            raise AssertionError(f"{prefix}: documents are not one sequence each: {dataset.document_indices[:10]}")
        documents.extend(dataset[i].tolist() for i in range(len(dataset)))
    return documents
