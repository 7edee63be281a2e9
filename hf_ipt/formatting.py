"""Wrapping pre-training texts with the BOS/EOS strings of the model that will be trained on them.

Shared by templify (instruction-augmented texts) and mixing (general instructions), so both halves of a mix are
formatted the same way. Texts wrapped here must be tokenized with `add_special_tokens=False`, or the model gets a
second BOS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hf_ipt.tokenization import load_tokenizer


@dataclass(frozen=True)
class TargetFormat:
    """The BOS/EOS strings written around each text; empty strings mean "leave the text as it is".

    Example:
        >>> TargetFormat("<|begin_of_text|>", "<|end_of_text|>").wrap("Hello")
        '<|begin_of_text|>Hello<|end_of_text|>'
    """

    bos: str = field(default="", metadata={"help": "Written before each text, e.g. '<|begin_of_text|>'."})
    eos: str = field(default="", metadata={"help": "Written after each text, e.g. '<|end_of_text|>'."})

    def wrap(self, text: str) -> str:
        return f"{self.bos}{text}{self.eos}"

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, *, key: str = "tokenizer") -> TargetFormat:
        """Read BOS/EOS from a tokenizer object or a tokenizer name/path (loaded with `AutoTokenizer`).

        Raises a ValueError naming `key` (the setting the tokenizer came from) when it cannot be loaded, and naming the
        tokenizer when it defines neither a BOS nor an EOS token.
        """
        tokenizer = load_tokenizer(tokenizer, key=key)
        bos = tokenizer.bos_token or ""
        eos = tokenizer.eos_token or ""
        if not bos and not eos:
            name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
            raise ValueError(
                f"tokenizer {name!r} defines no bos_token and no eos_token, so there is nothing to wrap texts with; "
                "pass TargetFormat(bos=..., eos=...) explicitly instead"
            )
        return cls(bos=bos, eos=eos)


NO_FORMAT = TargetFormat()
