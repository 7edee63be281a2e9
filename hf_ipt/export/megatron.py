"""The `megatron` format: megatron-core's indexed dataset, written with megatron-core's own builder.

Each part is a `.bin` (the ids) + `.idx` (sequence lengths, byte offsets, document indices) pair made by
`megatron.core.datasets.indexed_dataset.IndexedDatasetBuilder`, one document of one sequence per released row, in
release order (`add_document(ids, [len(ids)])`, what Megatron's `tools/preprocess_data.py` does without sentence
splitting), with the dtype megatron-core picks for the vocabulary (`DType.optimal_dtype`: uint16 below 65,500 ids,
else int32). `IndexedDataset(prefix)` reads it back; Megatron trains on it with `--data-path PREFIX ...`. The builder
keeps one length per document in memory until its part is finished: `export.tokens_per_file` bounds that too.
Files: `megatron/{split}-{part:05d}.bin` and `.idx`.

Example:
    >>> MegatronWriter.lines({"prefixes": {"train": ["megatron/train-00000"]}}, {"name": "gpt2"}, "out/export")
    '--data-path out/export/megatron/train-00000 \\\\\\n--tokenizer-type HuggingFaceTokenizer --tokenizer-model gpt2'
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, ClassVar

import numpy as np

from hf_ipt._deps import require
from hf_ipt.export.base import FormatWriter, TokenBatch


class MegatronWriter(FormatWriter):
    """Writes the `megatron` format (see the module). Report entry: `dtype` and `prefixes` by split."""

    name: ClassVar[str] = "megatron"
    packages: ClassVar[tuple[tuple[str, str], ...]] = (("megatron", "the megatron export format"),)

    @property
    def indexed(self):
        """megatron-core's indexed_dataset module (an ImportError with the pip line when it is not installed)."""
        with warnings.catch_warnings():
            # megatron.core's package warns on import that Transformer Engine / Apex are missing: training
            # kernels, which writing a dataset never uses
            warnings.simplefilter("ignore", UserWarning)
            return require("megatron.core.datasets.indexed_dataset", "the megatron export format")

    @property
    def dtype(self) -> type:
        return self.indexed.DType.optimal_dtype(self.settings.facts.vocab_size)

    def open_part(self, split: str, index: int, stack: contextlib.ExitStack) -> str:
        prefix = f"{self.name}/{split}-{index:05d}"
        self.builder = self.indexed.IndexedDatasetBuilder(self.place(f"{prefix}.bin", stack), dtype=self.dtype)
        self.idx_path = self.place(f"{prefix}.idx", stack)
        stack.callback(self.builder.data_file.close)  # an error: the builder's file is closed before it is deleted
        return prefix

    def write(self, batch: TokenBatch) -> None:
        if len(batch.ids) and int(batch.ids.max()) > np.iinfo(self.builder.dtype).max:
            raise ValueError(
                f"token id {int(batch.ids.max())} does not fit the {np.dtype(self.builder.dtype).name} megatron-core "
                f"chose for the vocabulary size {self.settings.facts.vocab_size} of {self.settings.facts.name!r}"
            )
        for index in range(len(batch)):
            document = batch.document(index)
            self.builder.add_document(document, [len(document)])

    def close_part(self) -> None:
        self.builder.finalize(self.idx_path)

    def entry(self) -> dict[str, Any]:
        prefixes = {split: list(prefixes) for split, prefixes in self.parts.items()}
        return {"dtype": np.dtype(self.dtype).name, "prefixes": prefixes}

    @staticmethod
    def lines(entry: dict[str, Any], tokenizer: dict[str, Any], root: str) -> str:
        prefixes = [f"{root}/{prefix}" for prefixes in entry["prefixes"].values() for prefix in prefixes]
        data = " \\\n    ".join(prefixes)  # several parts: one prefix a line; Megatron reads them as one dataset
        return f"--data-path {data} \\\n--tokenizer-type HuggingFaceTokenizer --tokenizer-model {tokenizer['name']}"
