"""Export: the released rows as the token files pre-training frameworks read, exactly the tokens the mix counted.

The last step of the method is training: the released texts, tokenized with `add_special_tokens=False` (their
BOS/EOS are in the text). The export does that tokenization once, with the mix's tokenizer, and writes it in each
format a recipe asks for (`export.formats`), under `run.output_dir/export/<format>/`:

- `olmo_core` (`hf_ipt.export.olmo_core`): token-id arrays + document offsets, for OLMo-core's numpy datasets;
- `megatron` (`hf_ipt.export.megatron`): megatron-core's indexed dataset (`.bin` + `.idx`), by its own builder;
- `llamafactory` (`hf_ipt.export.llamafactory`): a `dataset_info.json` entry for LLaMA-Factory's pre-training stage
  and the texts it points at, so that LLaMA-Factory's own EOS is not trained on twice.

Each format also gives the lines a user pastes into the trainer's configuration (`FORMATS[name].lines`). The stage
that runs it is `hf_ipt.stages.export.ExportStage`.

Example:
    >>> ExportConfig(formats=["olmo_core", "megatron"]).formats
    ['olmo_core', 'megatron']
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from hf_ipt.export.base import ExportSettings, FormatWriter, TokenBatch, TokenizerFacts, smallest_uint
from hf_ipt.export.llamafactory import LlamaFactoryWriter
from hf_ipt.export.megatron import MegatronWriter
from hf_ipt.export.olmo_core import OlmoCoreWriter
from hf_ipt.export.tokens import PieceBuilder, TokenCountMismatch, TokenPiece, split_batches, token_batches
from hf_ipt.validation import ConfigError, check_fields

ExportFormat = Literal["olmo_core", "megatron", "llamafactory"]
FORMATS: dict[str, type[FormatWriter]] = {
    writer.name: writer for writer in (OlmoCoreWriter, MegatronWriter, LlamaFactoryWriter)
}


@dataclass
class ExportConfig:
    """The export stage's settings (recipe section `export:`). Empty `formats`: no export.

    Example:
        >>> ExportConfig(formats=["megatron"], in_release=True).in_release
        True
    """

    formats: list[ExportFormat] = field(
        default_factory=list,
        metadata={
            "help": "Token files to write under run.output_dir/export/<format>/, from the released rows tokenized "
            "with the mix's tokenizer: `olmo_core` (OLMo-core numpy arrays), `megatron` (megatron-core .bin/.idx; "
            "pip install 'hf-ipt[export]'), `llamafactory` (a dataset_info.json entry for LLaMA-Factory's "
            "pre-training stage). Empty: no export."
        },
    )
    in_release: bool = field(
        default=False,
        metadata={
            "help": "Also release the export's files (under release_info/<config>/export/ of the release), so a Hub "
            "push uploads them with the data and the card's 'Training on this release' shows the lines to paste."
        },
    )
    batch_size: int = field(
        default=1000, metadata={"help": "Rows tokenized at a time (memory stays flat as the corpus grows).", "min": 1}
    )
    tokens_per_file: int = field(
        default=1_000_000_000,
        metadata={
            "help": "A file (OLMo-core array, Megatron .bin/.idx pair, LLaMA-Factory Parquet) is closed after the "
            "document that brings it to this many tokens; a document is never split across files.",
            "min": 1,
        },
    )

    def __post_init__(self) -> None:
        check_fields(self, "export")
        repeated = sorted({name for name in self.formats if self.formats.count(name) > 1})
        if repeated:
            raise ConfigError(f"export.formats lists {repeated} more than once; name each format once")
        if self.in_release and not self.formats:
            raise ConfigError(
                "export.in_release is true but export.formats is empty, so there is nothing to release; name the "
                "formats (e.g. --export.formats '[olmo_core, megatron]') or leave export.in_release false"
            )

    def identity(self) -> dict[str, object]:
        """The settings the export's files depend on (`in_release` changes none of their bytes; `batch_size` sets
        the Parquet row groups of the llamafactory texts)."""
        return {
            "formats": sorted(self.formats),
            "tokens_per_file": self.tokens_per_file,
            "batch_size": self.batch_size,
        }


def paste_lines(report: Mapping[str, Any], root: str) -> dict[str, str]:
    """What a user pastes to train on an export whose files lie under `root`, by format, from the export's report
    (the export stage's, or a release's stats.json `export`).

    Example:
        >>> report = {"tokenizer": {"name": "gpt2"}, "formats": {"megatron": {"prefixes": {"train": ["megatron/a"]}}}}
        >>> paste_lines(report, "out/export")["megatron"].splitlines()[0]
        '--data-path out/export/megatron/a \\\\'
    """
    tokenizer = report.get("tokenizer") or {}
    return {
        name: FORMATS[name].lines(entry, tokenizer, root)
        for name, entry in (report.get("formats") or {}).items()
        if name in FORMATS
    }


__all__ = [
    "FORMATS",
    "ExportConfig",
    "ExportFormat",
    "ExportSettings",
    "FormatWriter",
    "LlamaFactoryWriter",
    "MegatronWriter",
    "OlmoCoreWriter",
    "PieceBuilder",
    "TokenBatch",
    "TokenCountMismatch",
    "TokenPiece",
    "TokenizerFacts",
    "paste_lines",
    "smallest_uint",
    "split_batches",
    "token_batches",
]
