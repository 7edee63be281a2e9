"""The tiny instruction synthesizer hf-ipt builds locally in seconds: the quickstart's model, and the tests'.

It has the synthesizer's architecture (Mistral) and a byte-level BPE tokenizer whose BOS/EOS are the literal `<s>` /
`</s>`, like the real one. With `trained=True` (the default) it is fitted for 100 steps on prompts followed by
synthesizer-style answers, so its greedy output contains real `<QUE> … <ANS> … </END>` pairs and multi-round chains get
demonstrations; the answers are nonsense, the format is right. Its training text is Python's own documentation
(`corpus_paragraphs`), present on every machine: nothing is downloaded.

A recipe with `build_tiny_model: true` builds it at `synth.model` before synthesis; from Python call
`build_tiny_synthesizer(path)` (also `hf_ipt.build_tiny_synthesizer`).

Example:
    >>> from hf_ipt.tiny_model import build_tiny_synthesizer
    >>> path = build_tiny_synthesizer("/tmp/tiny-synth")  # doctest: +SKIP
    >>> Synthesizer(model=path, engine="transformers", max_model_len=512, max_new_tokens=48)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

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
