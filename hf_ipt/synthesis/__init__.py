"""Synthesis: the instruction synthesizer writes instruction-response pairs about each raw text, as a `Dataset.map`.

- `prompts`: the prompt format and `PromptFitter` (prompts that fit the context window); `parsing`: outputs to pairs.
- `chains`: how a batch's rows form multi-round chains; `chunking`: split texts too long for the context.
- `job`: `BatchJob`, one batch's synthesis state, and the round-by-round driver; `scheduling`: the continuous driver.
- `synthesizer`: `SynthesisConfig` and `Synthesizer`, the map function users call.
- `report`: what the synthesize stage counts over its rows (`synthesis_report`) and prints.

Example:
    >>> synth = Synthesizer(model="instruction-pretrain/instruction-synthesizer", rounds=2)  # doctest: +SKIP
    >>> ds = ds.map(synth, batched=True, batch_size=synth.config.batch_size)  # doctest: +SKIP
"""

from hf_ipt.markers import DEFAULT_MODEL
from hf_ipt.synthesis.chunking import ChunkConfig, Chunker, ChunkSettings
from hf_ipt.synthesis.parsing import parse_pairs
from hf_ipt.synthesis.speculative import SpeculativeConfig
from hf_ipt.synthesis.synthesizer import SynthesisConfig, Synthesizer, synthesize_batch

__all__ = [
    "DEFAULT_MODEL",
    "ChunkConfig",
    "ChunkSettings",
    "Chunker",
    "SpeculativeConfig",
    "SynthesisConfig",
    "Synthesizer",
    "parse_pairs",
    "synthesize_batch",
]
