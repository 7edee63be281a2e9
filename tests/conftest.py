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
