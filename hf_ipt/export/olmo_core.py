"""The `olmo_core` format: token-id arrays in the layout OLMo-core's numpy datasets read.

Layout (OLMo-core `olmo_core.data.numpy_dataset`, as the Dolma toolkit writes it): each part is a raw array of token
ids with no header (`np.memmap` reads it, `np.load` does not), named `.npy` by convention, dtype the smallest unsigned
type that holds the vocabulary (OLMo-core's own rule, `NumpyDatasetConfig.get_dtype`), documents back to back in
release order; beside it a gzipped CSV (`.csv.gz`, the same name) with one `start,end` line per document, the token
offsets OLMo-core reads as the authoritative document boundaries (`olmo_core.data.utils.iter_document_indices` with
`use_array_if_local=False`, and always for remote paths) instead of inferring them from EOS ids, which a literal `</s>`
inside a text would also produce. Files: `olmo_core/{split}-{part:05d}.npy` and `.csv.gz`.

Example:
    >>> print(OlmoCoreWriter.lines({"dtype": "uint16", "files": {"train": ["olmo_core/train-00000.npy"]}},
    ...                            {"vocab_size": 2048, "eos_token_id": 2, "pad_token_id": 2, "bos_token_id": 1},
    ...                            "out/export").splitlines()[3])
        paths=["out/export/olmo_core/train-00000.npy"],
"""

from __future__ import annotations

import contextlib
import gzip
from typing import Any, ClassVar

import numpy as np

from hf_ipt.export.base import FormatWriter, TokenBatch, smallest_uint


class OlmoCoreWriter(FormatWriter):
    """Writes the `olmo_core` format (see the module). Report entry: `dtype`, `files` and `metadata` by split."""

    name: ClassVar[str] = "olmo_core"

    def open_part(self, split: str, index: int, stack: contextlib.ExitStack) -> str:
        base = f"{self.name}/{split}-{index:05d}"
        self.data = stack.enter_context(open(self.place(f"{base}.npy", stack), "wb"))
        raw = stack.enter_context(open(self.place(f"{base}.csv.gz", stack), "wb"))
        # no name and no time in the gzip header: the same rows give the same bytes (a resumed export is identical)
        self.metadata = stack.enter_context(gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0))
        return base

    @property
    def dtype(self) -> str:
        return smallest_uint(self.settings.facts.vocab_size)

    def write(self, batch: TokenBatch) -> None:
        ids = batch.ids
        if len(ids) and int(ids.max()) > np.iinfo(self.dtype).max:
            raise ValueError(
                f"token id {int(ids.max())} does not fit the {self.dtype} arrays chosen from the vocabulary size "
                f"{self.settings.facts.vocab_size} of {self.settings.facts.name!r}; the tokenizer's ids exceed its "
                "own length"
            )
        self.data.write(ids.astype(self.dtype).tobytes())
        bounds = (batch.offsets + self.part_tokens).tolist()
        lines = "".join(f"{start},{end}\n" for start, end in zip(bounds[:-1], bounds[1:], strict=True))
        self.metadata.write(lines.encode())

    def entry(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "files": {split: [f"{base}.npy" for base in bases] for split, bases in self.parts.items()},
            "metadata": {split: [f"{base}.csv.gz" for base in bases] for split, bases in self.parts.items()},
        }

    @staticmethod
    def lines(entry: dict[str, Any], tokenizer: dict[str, Any], root: str) -> str:
        paths = [f"{root}/{path}" for files in entry["files"].values() for path in files]
        shown = ",\n        ".join(f'"{path}"' for path in paths)
        bos = tokenizer.get("bos_token_id")
        return "\n".join(
            [
                "from olmo_core.data import NumpyDatasetDType, NumpyFSLDatasetConfig, TokenizerConfig",
                "",
                "dataset = NumpyFSLDatasetConfig(",
                f"    paths=[{shown}],",
                f"    dtype=NumpyDatasetDType.{entry['dtype']},",
                "    sequence_length=4096,  # your model's context length",
                "    tokenizer=TokenizerConfig(",
                f"        vocab_size={tokenizer['vocab_size']},  # round up to your embedding size if it is padded",
                f"        eos_token_id={tokenizer['eos_token_id']},",
                f"        pad_token_id={tokenizer['pad_token_id']},",
                *([f"        bos_token_id={bos},"] if bos is not None else []),
                "    ),",
                '    work_dir="/tmp/olmo-core-dataset",  # any local folder for its index caches',
                ")",
            ]
        )
