"""hf-ipt: Instruction Pre-Training as a Hugging Face `datasets`-native tool.

Raw text -> prompts -> engine -> parsed pairs -> templates -> token-ratio mixing -> Hub release. Each step is a batched
map function over Arrow batches.

Example:
    >>> from datasets import Dataset
    >>> from hf_ipt import Synthesizer
    >>> synth = Synthesizer(model="instruction-pretrain/instruction-synthesizer", rounds=3)  # doctest: +SKIP
    >>> Dataset.from_dict({"text": texts}).map(synth, batched=True, batch_size=1024)  # doctest: +SKIP
"""

from hf_ipt.chunking import ChunkConfig, Chunker
from hf_ipt.engines import CallableEngine, Completion, Engine, Request, TransformersEngine, VLLMEngine, make_engine
from hf_ipt.formatting import TargetFormat
from hf_ipt.parsing import parse_pairs
from hf_ipt.synthesize import SynthesisConfig, Synthesizer, synthesize_batch

__version__ = "0.1.0"

__all__ = [
    "CallableEngine",
    "ChunkConfig",
    "Chunker",
    "Completion",
    "Engine",
    "Request",
    "SynthesisConfig",
    "Synthesizer",
    "TargetFormat",
    "TransformersEngine",
    "VLLMEngine",
    "__version__",
    "make_engine",
    "parse_pairs",
    "synthesize_batch",
]
