"""A tiny instruction synthesizer built locally in seconds, for tests and offline smoke runs.

It has the synthesizer's architecture (Mistral) and a byte-level BPE tokenizer whose BOS/EOS are the literal
`<s>` / `</s>`, like the real one. With `trained=True` (the default) it is fitted for 100 steps on
prompts followed by synthesizer-style answers, so its greedy output contains real `<QUE> … <ANS> … </END>` pairs
and multi-round chains get demonstrations; the answers are nonsense, the format is right.

Example:
    >>> from hf_ipt.testing import build_tiny_synthesizer
    >>> path = build_tiny_synthesizer("/tmp/tiny-synth")  # doctest: +SKIP
    >>> Synthesizer(model=path, engine="transformers", max_model_len=512, max_new_tokens=48)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import random
import shutil
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

from hf_ipt._deps import require

SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<unk>"]
# version of the recipe below; a directory built by another version is rebuilt
_RECIPE_VERSION = 4


def corpus_paragraphs(limit: int | None = None, min_chars: int = 200) -> list[str]:
    """Real English paragraphs from Python's own documentation (`pydoc_data.topics`), present on every machine.

    Example:
        >>> texts = corpus_paragraphs(limit=3)
        >>> len(texts), all(len(t) >= 200 for t in texts)
        (3, True)
    """
    from pydoc_data.topics import topics

    paragraphs: list[str] = []
    for key in sorted(topics):
        for block in topics[key].split("\n\n"):
            text = " ".join(line.strip() for line in block.splitlines() if line.strip())
            if len(text) >= min_chars:
                paragraphs.append(text)
                if limit is not None and len(paragraphs) >= limit:
                    return paragraphs
    return paragraphs


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


def _synthetic_pairs(text: str, rng: random.Random) -> str:
    words = [w.strip(".,;:()`'\"") for w in text.split() if len(w) > 3] or ["it"]
    pairs = []
    for _ in range(rng.randint(1, 3)):
        word = rng.choice(words)
        pairs.append(f"<QUE> What does the text say about {word}? <ANS> It says {word} is used. </END>")
    return "\n\n".join(pairs)


def build_tiny_synthesizer(
    path: str | os.PathLike,
    *,
    trained: bool = True,
    vocab_size: int = 2048,
    seed: int = 0,
    train_steps: int = 100,
) -> str:
    """Build (or reuse) a ~1M-parameter Mistral model + fast tokenizer at `path`; returns the path as a string.

    Deterministic for a given seed. Reuses an existing build with the same settings.

    Example:
        >>> from hf_ipt import Synthesizer
        >>> model = build_tiny_synthesizer("output/tiny-synthesizer")  # doctest: +SKIP
        >>> Synthesizer(model=model, engine="transformers", max_model_len=512)  # doctest: +SKIP
    """
    torch = require("torch", "building the tiny test model")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    settings = {"recipe": _RECIPE_VERSION, "trained": trained, "vocab": vocab_size, "seed": seed, "steps": train_steps}
    marker = path / "hf_ipt_tiny.json"
    if marker.exists() and json.loads(marker.read_text()) == settings:
        return str(path)
    # build beside the target and rename at the end, so concurrent builders never see a half-written model
    final_path, path = path, path.with_name(f"{path.name}.building-{os.getpid()}")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)

    texts = corpus_paragraphs(limit=400)
    rng = random.Random(seed)
    training_docs = [f"<s> <CON> {t} </CON>\n\n{_synthetic_pairs(t, rng)}</s>" for t in texts]

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(training_docs, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.model_max_length = 4096

    torch.manual_seed(seed)
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # vLLM's CPU attention supports 32, not 16
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = MistralForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.08)
    if trained:
        _fit(model, tokenizer, training_docs, train_steps, seed, torch)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    (path / marker.name).write_text(json.dumps(settings))
    if final_path.exists():
        shutil.rmtree(final_path, ignore_errors=True)
    try:
        os.rename(path, final_path)
    except OSError:  # another process finished first; its build is identical
        shutil.rmtree(path, ignore_errors=True)
    return str(final_path)


def _fit(model, tokenizer, docs: list[str], steps: int, seed: int, torch) -> None:
    """AdamW steps with a linearly decaying learning rate: enough for the model to learn the output format. 100 steps
    (about 20 s on 2 cores) write pairs for as many quickstart rows as 300 did (298 vs 297 of 321, demonstrations for
    206 vs 206): the extra steps only made the first run slow. Windows of 320 tokens cover whole training documents:
    a model fitted on short windows only never learns to attend over a long prompt and, on texts of a few hundred
    tokens, writes pairs for barely half of them."""
    generator = torch.Generator().manual_seed(seed)
    encoded = [tokenizer(d, add_special_tokens=False)["input_ids"] for d in docs]
    # train on the end of each document (nearly all of it): the part after </CON> is what the format lives in
    window = 320
    rows = [ids[-window:] for ids in encoded if len(ids) >= 16]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    batch = 16
    # a bar with rate and ETA: the build takes tens of seconds and must never look like a hang (datasets' tqdm, so the
    # CLI's --quiet silences it with every other bar)
    from datasets.utils import tqdm

    for step in tqdm(range(steps), desc="Training the tiny synthesizer", unit="step"):
        for group in optimizer.param_groups:
            group["lr"] = 3e-3 * (1 - step / steps) + 1e-4
        picks = torch.randint(len(rows), (batch,), generator=generator).tolist()
        chosen = [rows[i] for i in picks]
        width = max(len(r) for r in chosen)
        ids = torch.full((batch, width), tokenizer.pad_token_id)
        labels = torch.full((batch, width), -100)
        for b, r in enumerate(chosen):
            ids[b, : len(r)] = torch.tensor(r)
            labels[b, : len(r)] = torch.tensor(r)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


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
