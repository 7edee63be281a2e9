"""Batched tokenization at the speed of the Rust backend, with the ids of the tokenizer's own call.

`tokenizer(texts)` in transformers wraps the Rust `tokenizers` backend and converts every encoding to Python through
`BatchEncoding`; calling the backend's `encode_batch_fast` (no offsets) directly is about 1.4x faster. Some tokenizer
wrappers pre-process text before the backend sees it, so the shortcut is taken only when the backend gives the same
ids as the tokenizer's call on probe texts (special tokens, spaces, tabs, newlines, non-ASCII).
`load_fast_tokenizer` loads a fast tokenizer once per process (synthesis and chunking share it); `load_tokenizer`
resolves the target model's tokenizer (a name, a path or an object) for templify, mixing and the statistics.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

# (pid, name, revision) -> tokenizer: one load per process, never shared with a forked child
_TOKENIZER_CACHE: dict[tuple, Any] = {}


def load_fast_tokenizer(name: str, revision: str | None = None) -> Any:
    """The fast (Rust-backed) tokenizer `name` at `revision`, loaded once per process; a ValueError for a slow one
    (prompt fitting needs offsets and batch speed).

    Example:
        >>> tokenizer = load_fast_tokenizer("instruction-pretrain/instruction-synthesizer")  # doctest: +SKIP
        >>> tokenizer is load_fast_tokenizer("instruction-pretrain/instruction-synthesizer")  # doctest: +SKIP
        True
    """
    key = (os.getpid(), name, revision)
    if key not in _TOKENIZER_CACHE:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"tokenizer {name!r} is not a fast tokenizer; hf-ipt needs one for offsets and speed")
        _TOKENIZER_CACHE[key] = tokenizer
    return _TOKENIZER_CACHE[key]


def load_tokenizer(tokenizer: Any, *, key: str = "tokenizer") -> Any:
    """A tokenizer object from an id/path (loaded with `AutoTokenizer`) or the object itself; a ValueError naming
    `key` (the setting it came from) and the fix when it cannot be loaded or is not a tokenizer.

    Example:
        >>> load_tokenizer("meta-llama/Meta-Llama-3-8B").name_or_path  # doctest: +SKIP
        'meta-llama/Meta-Llama-3-8B'
        >>> load_tokenizer(str.split)("a b")  # a callable object is returned as is
        ['a', 'b']
        >>> try:
        ...     load_tokenizer(3, key="mix.tokenizer")
        ... except ValueError as err:
        ...     print(str(err)[:60])
        mix.tokenizer must be the tokenizer of the model to be train
    """
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(tokenizer))
        except (OSError, ValueError) as err:  # transformers: "not found / not a valid repo id / no tokenizer files"
            raise ValueError(
                f"{key} {str(tokenizer)!r} could not be loaded: {err} (set it to the Hub id or local folder of the "
                "tokenizer of the model to be trained, available offline, or pass a tokenizer object)"
            ) from err
    if tokenizer is None or not callable(tokenizer):
        raise ValueError(
            f"{key} must be the tokenizer of the model to be trained: a Hub id or local folder for AutoTokenizer, or "
            f"a tokenizer object; got {type(tokenizer).__name__}"
        )
    return tokenizer


def tokenizer_name(tokenizer: Any) -> str:
    """How a tokenizer object is named in reports and cards: its `name_or_path`, else its type.

    Example:
        >>> tokenizer_name(str.split)
        'method_descriptor'
    """
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def _reset_backend(backend: Any) -> None:
    # transformers leaves the backend truncating/padding (or splitting special tokens) after a call that asked for it;
    # ids must be whole, and special-token strings special
    if getattr(backend, "encode_special_tokens", False):
        backend.encode_special_tokens = False
    if backend.truncation is not None:
        backend.no_truncation()
    if backend.padding is not None:
        backend.no_padding()


class FastEncoder:
    """`encode(texts)` == `tokenizer(texts, add_special_tokens=False)["input_ids"]`, faster where it is safe.

    Example:
        >>> encoder = FastEncoder(tokenizer)  # doctest: +SKIP
        >>> encoder.encode(["<s> <CON> Hello </CON>\\n\\n"])  # doctest: +SKIP
        [[1, 523, ...]]
    """

    def __init__(self, tokenizer: Any, uses_backend: bool | None = None) -> None:
        """`uses_backend`: a verdict of an earlier probe of the same tokenizer; None probes now."""
        self.tokenizer = tokenizer
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        if self.backend is None:
            uses_backend = False
        elif uses_backend is None:
            uses_backend = self._backend_agrees_with_tokenizer()
        self.uses_backend = uses_backend

    def _backend_agrees_with_tokenizer(self) -> bool:
        bos, eos = self.tokenizer.bos_token or "", self.tokenizer.eos_token or ""
        specials = f"{bos} {eos}".strip()
        probes = [
            "Hello world",
            "  Leading spaces,\ttabs\nand newlines.\n\n",
            f"{specials} naïve café — 東京 {specials}",
            f"{bos} <CON> x </CON>\n\n<QUE> q <ANS> a </END>{eos}{bos} <CON> y </CON>\n\n",
        ]
        _reset_backend(self.backend)
        expected = self.tokenizer(probes, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        return self._backend_ids(probes) == [list(ids) for ids in expected]

    def _backend_ids(self, texts: list[str]) -> list[list[int]]:
        _reset_backend(self.backend)
        encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        return [encoding.ids for encoding in encode(texts, add_special_tokens=False)]

    def encode(self, texts: Sequence[str], *, split_special_tokens: bool = False) -> list[list[int]]:
        """Token ids of `texts`, no special tokens added. `split_special_tokens=True` tokenizes special-token strings
        (`<s>`, `</s>`, `<unk>`) as the text they are, never as control ids: the way to encode content."""
        if not texts:
            return []
        texts = list(texts)
        if split_special_tokens:
            return self.tokenizer(
                texts, add_special_tokens=False, return_attention_mask=False, split_special_tokens=True
            )["input_ids"]
        if self.uses_backend:
            return self._backend_ids(texts)
        return self.tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]

    def lengths(self, texts: Sequence[str]) -> list[int]:
        """Token counts of `texts`, without building Python lists of ids where the backend is used."""
        if not texts:
            return []
        if self.uses_backend:
            _reset_backend(self.backend)
            encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
            return [len(encoding) for encoding in encode(list(texts), add_special_tokens=False)]
        return [len(ids) for ids in self.encode(texts)]


# A prompt in the synthesizer's format (a demonstration, then a text with doubled spaces, a tab and non-ASCII): where a
# tokenizer's normalizer or pre-tokenizer differs from the model's files, these ids differ (e.g. the `▁` after BOS).
TOKENIZER_PROBE = (
    "<s> <CON> Cats sleep a lot. </CON>\n\n<QUE> Why? <ANS> Because. </END></s>"
    "<s> <CON>  Two  spaces,\ta tab, naïve 東京. </CON>\n\n"
)


def model_tokenizer_file(model: str, revision: str | None = None) -> str | None:
    """The model's own `tokenizer.json`: in its folder, or in the local Hub cache for a Hub id (never downloaded);
    None when there is none.

    Example:
        >>> model_tokenizer_file("/no/such/folder") is None
        True
    """
    if os.path.isdir(model):
        path = os.path.join(model, "tokenizer.json")
        return path if os.path.isfile(path) else None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "tokenizer.json", revision=revision)
    except Exception:  # noqa: BLE001 - a name that is not a repo id (a served model's name): nothing to compare with
        return None
    return cached if isinstance(cached, str) and os.path.isfile(cached) else None


def tokenizer_file_mismatch(tokenizer: Any, tokenizer_file: str, probe: str = TOKENIZER_PROBE) -> str | None:
    """How `tokenizer` tokenizes `probe` differently from `tokenizer_file` (a `tokenizer.json`) run by the `tokenizers`
    library directly, both with `add_special_tokens=False`; None when they agree.

    Example:
        >>> tokenizer_file_mismatch(tokenizer, "path/to/model/tokenizer.json")  # doctest: +SKIP
        "at token 1: ['▁<', 'CON', '>'] instead of the model's ['▁▁', '<', 'CON'] (13 vs 14 tokens)"
    """
    from tokenizers import Tokenizer

    reference = Tokenizer.from_file(tokenizer_file).encode(probe, add_special_tokens=False)
    ids = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    if ids == reference.ids:
        return None
    shorter = min(len(ids), len(reference.ids))
    at = next((i for i in range(shorter) if ids[i] != reference.ids[i]), shorter)
    ours = tokenizer.convert_ids_to_tokens(ids[at : at + 3])
    theirs = reference.tokens[at : at + 3]
    return f"at token {at}: {ours} instead of the model's {theirs} ({len(ids)} vs {len(reference.ids)} tokens)"


def check_prompt_tokenizer(model: str, revision: str | None = None, tokenizer: str | None = None) -> None:
    """Refuse a synthesizer tokenizer that tokenizes prompts differently from the model's own `tokenizer.json`.

    The prompt ids are built with the tokenizer transformers loads from `tokenizer` (or `model`); a tokenizer folder
    without `config.json`, or a re-saved tokenizer, can make transformers rebuild a different pre-tokenizer (e.g.
    drop the `▁` after every BOS), and the model then sees sequences it was never trained on. Nothing is checked when
    the model has no `tokenizer.json` here (a served model's name, a slow-only tokenizer). Raises a ValueError naming
    the difference and the fix.

    Example:
        >>> check_prompt_tokenizer("path/to/synthesizer", tokenizer="path/to/tokenizer-only")  # doctest: +SKIP
        Traceback (most recent call last):
        ValueError: synth.tokenizer 'path/to/tokenizer-only' tokenizes prompts differently ...
    """
    tokenizer_file = model_tokenizer_file(model, revision)
    if tokenizer_file is None:
        return
    name = tokenizer or model
    try:
        loaded = load_fast_tokenizer(name, revision if not tokenizer else None)
    except (OSError, ValueError):  # not loadable here: the fitter reports that itself, with its own message
        return
    difference = tokenizer_file_mismatch(loaded, tokenizer_file)
    if difference is None:
        return
    key, fix = (
        ("synth.tokenizer", "unset synth.tokenizer (the model's folder is used) or point it at the model's folder")
        if tokenizer
        else ("synth.model", "load the model from a folder with its config.json beside its tokenizer.json")
    )
    raise ValueError(
        f"{key} {name!r} tokenizes prompts differently from the model's own tokenizer.json ({tokenizer_file}, run "
        f"by the tokenizers library): {difference}. The synthesizer would see token sequences it was never trained "
        f"on. Fix: {fix}; a tokenizer folder without config.json, or a re-saved tokenizer, makes transformers rebuild "
        "the tokenizer's pre-tokenizer, so copy the model's tokenizer.json, tokenizer_config.json and config.json "
        "together"
    )


def invalid_unicode_at(text: str) -> int | None:
    """The index of the first character of `text` that is not valid Unicode (a lone surrogate such as `"\\ud800"`,
    which tokenizers and Arrow refuse), None when the whole text is valid.

    Example:
        >>> invalid_unicode_at("fine"), invalid_unicode_at("bad \\ud800 one")
        (None, 4)
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return err.start
    return None
