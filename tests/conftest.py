"""Shared fixtures: the tiny locally built synthesizer, and environment settings for running vLLM on CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# vLLM on CPU: engine in the test process (fast start, no shutdown noise), a small KV cache that fits this machine.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `datasets`' cache of this test run only: a cache left by another run (of other code or another tiny model) must never
# answer a `load_dataset` here. Set before anything imports `datasets`, which reads it once.
if "HF_DATASETS_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="hf-ipt-tests-datasets-")
    atexit.register(shutil.rmtree, os.environ["HF_DATASETS_CACHE"], ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    """Path of the tiny trained synthesizer; built once per machine (~30 s on 2 cores) and reused."""
    from hf_ipt.testing import build_tiny_synthesizer

    cache = Path(os.environ.get("HF_IPT_TEST_CACHE", Path.home() / ".cache" / "hf-ipt-tests"))
    return build_tiny_synthesizer(cache / "tiny-synthesizer")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


@pytest.fixture(scope="session")
def mistral_tokenizer_dir(tmp_path_factory) -> str:
    """A tokenizer folder holding the instruction synthesizer's real tokenizer: Mistral-7B-v0.1's SentencePiece model
    as shipped in the `mistral-common` wheel (`tokenizer.model.v1`), converted by transformers with the legacy
    settings of Mistral-7B-v0.1's `tokenizer_config.json`; no Hub access."""
    import json
    import shutil

    mistral_common = pytest.importorskip("mistral_common")
    model = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    if not model.is_file():
        pytest.skip(f"{model} is not installed")
    folder = tmp_path_factory.mktemp("mistral-tokenizer")
    shutil.copy(model, folder / "tokenizer.model")
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "legacy": True,
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return str(folder)
