"""The `llamafactory` format: a LLaMA-Factory `dataset_info.json` entry for the pre-training stage (`stage: pt`), and
the texts it points at, written so that LLaMA-Factory trains on exactly the released tokens.

What LLaMA-Factory adds (read in LLaMA-Factory 0.9.5, `src/llamafactory/data/processor/pretrain.py`,
`PretrainDatasetProcessor.preprocess_dataset`): every text becomes `content + eos_token` (`tokenizer.eos_token`, or
`<|end_of_text|>` with `template: llama3`), tokenized with `add_special_tokens=False`. With `packing` (its default
for `stage: pt`, `hparams/parser.py`) the texts' ids are concatenated and cut into blocks of `cutoff_len`; without
packing `tokenizer.bos_token` is also put before each text when the tokenizer has `add_bos_token`. The released texts
already end with the EOS string (and start with the BOS string) the mix counted, so the entry's column holds each
released text without its final EOS string: LLaMA-Factory's own EOS restores the text the mix counted, and with
packing its ids are exactly `tokenizer(text, add_special_tokens=False)` of every released row, back to back. Keep
`packing: true` (without it a tokenizer with `add_bos_token` gets a second BOS) and `template: empty` (a template
that replaces the EOS token would change what is appended). One thing LLaMA-Factory's packing does that no entry can
undo: with `add_bos_token` it writes the BOS id over the first id of every block.

Files: `llamafactory/dataset_info.json` and `llamafactory/{split}/{split}-{part:05d}.parquet` (column `text`).

Example:
    >>> llamafactory_text("<s> Q: a A: b</s>", "</s>")
    '<s> Q: a A: b'
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

from hf_ipt.export.base import FormatWriter, TokenBatch
from hf_ipt.store import checksum, json_bytes

DATASET_INFO = "dataset_info.json"  # LLaMA-Factory's DATA_CONFIG, read from the folder given as dataset_dir
TEXT = "text"


def llamafactory_text(text: str, eos: str) -> str:
    """A released text as the entry's column holds it: without the final EOS string LLaMA-Factory appends again."""
    return text[: len(text) - len(eos)]


class LlamaFactoryWriter(FormatWriter):
    """Writes the `llamafactory` format (see the module). Report entry: `dataset` (its name), `dataset_info` (the
    entries), `files` by split."""

    name: ClassVar[str] = "llamafactory"
    reads_texts: ClassVar[bool] = True

    def open_part(self, split: str, index: int, stack: contextlib.ExitStack) -> str:
        import pyarrow as pa
        import pyarrow.parquet as pq

        relative = f"{self.name}/{split}/{split}-{index:05d}.parquet"
        schema = pa.schema([(TEXT, pa.string())])
        self.table_writer = stack.enter_context(pq.ParquetWriter(self.place(relative, stack), schema))
        return relative

    def write(self, batch: TokenBatch) -> None:
        import pyarrow as pa

        eos = self.settings.facts.eos_token
        if not eos:
            raise ValueError(
                f"the llamafactory export needs a tokenizer with an EOS token: LLaMA-Factory appends "
                f"tokenizer.eos_token to every text, and {self.settings.facts.name!r} has none; drop llamafactory "
                "from export.formats"
            )
        for index, text in enumerate(batch.texts):
            if not text.endswith(eos):
                raise ValueError(
                    f"row {batch.first_row + index} of the release does not end with {eos!r}, the EOS LLaMA-Factory "
                    "appends to every text, so it would train on a token the mix did not count; release texts wrapped "
                    "in the target tokenizer's BOS/EOS (templify.target_tokenizer) or drop llamafactory from "
                    "export.formats"
                )
        texts = [llamafactory_text(text, eos) for text in batch.texts]
        self.table_writer.write_table(pa.table({TEXT: pa.array(texts, pa.string())}))

    def dataset_info(self) -> dict[str, Any]:
        """The dataset_info.json entries: one per split (the first under the dataset's name, others suffixed)."""
        entries = {}
        for position, split in enumerate(self.parts):
            name = self.settings.dataset_name if position == 0 else f"{self.settings.dataset_name}_{split}"
            entries[name] = {"file_name": split, "formatting": "alpaca", "columns": {"prompt": TEXT}}
        return entries

    def close(self) -> dict[str, Any]:
        self.finish_part()
        content = json_bytes(self.dataset_info())
        relative = f"{self.name}/{DATASET_INFO}"
        self.output.write_atomic(relative, content)
        self.checksums[relative] = checksum(content)
        return self.entry()

    def entry(self) -> dict[str, Any]:
        return {
            "dataset": self.settings.dataset_name,
            "dataset_info": self.dataset_info(),
            "files": {split: list(parts) for split, parts in self.parts.items()},
        }

    @staticmethod
    def lines(entry: dict[str, Any], tokenizer: dict[str, Any], root: str) -> str:
        return "\n".join(
            [
                "stage: pt",
                f"model_name_or_path: {tokenizer['name']}  # the model whose tokenizer counted the mix",
                f"dataset_dir: {root}/llamafactory",
                f"dataset: {entry['dataset']}",
                "template: empty      # keeps the tokenizer's EOS, which LLaMA-Factory appends to every text",
                "packing: true        # without packing, a tokenizer with add_bos_token gets a second BOS",
                "cutoff_len: 4096     # your model's context length",
            ]
        )
