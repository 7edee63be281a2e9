"""The transformers engine: `model.generate`, greedy, batched with left padding (no request-level stream).

Example:
    >>> engine = TransformersEngine("path/to/synthesizer", engine_kwargs={"batch_size": 8})  # doctest: +SKIP
    >>> engine.generate([Request(prompt, ids)], max_new_tokens=400)[0].text  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hf_ipt._deps import require
from hf_ipt.engines.base import Completion, Engine, Request, cuda_available


class TransformersEngine(Engine):
    """transformers `generate`, greedy, batched with left padding; requests are sorted by length to pad less.

    `engine_kwargs`: `batch_size` (default 16), `dtype` (default the checkpoint's), `device` (default cuda if present),
    anything else goes to `from_pretrained`.

    Example:
        >>> engine = TransformersEngine("path/to/synthesizer", engine_kwargs={"batch_size": 8})  # doctest: +SKIP
        >>> engine.generate([Request(prompt, ids)], max_new_tokens=400)[0].text  # doctest: +SKIP
    """

    name = "transformers"

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
