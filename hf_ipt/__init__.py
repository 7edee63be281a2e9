"""hf-ipt: Instruction Pre-Training as a Hugging Face `datasets`-native tool.

Raw text -> prompts -> engine -> parsed pairs -> templates -> token-ratio mixing -> Hub release. Each step is a batched
map function over Arrow batches.

Example:
    >>> from datasets import Dataset
    >>> from hf_ipt import Synthesizer
    >>> synth = Synthesizer(model="instruction-pretrain/instruction-synthesizer", rounds=3)  # doctest: +SKIP
    >>> Dataset.from_dict({"text": texts}).map(synth, batched=True, batch_size=1024)  # doctest: +SKIP
"""

from hf_ipt.engines import CallableEngine, Completion, Engine, Request, TransformersEngine, VLLMEngine, make_engine
from hf_ipt.formatting import TargetFormat
from hf_ipt.mixing import (
    GeneralInstructionFormatter,
    MixConfig,
    MixReport,
    TokenCounter,
    count_tokens,
    format_general_instructions,
    mix,
    mix_by_token_ratio,
    mix_by_token_weights,
    mix_with_general_instructions,
    mix_with_raw_corpus,
    prepare_source,
)
from hf_ipt.quality import QualityConfig, QualityFigures, compare, quality_report
from hf_ipt.release.hub import ReleaseConfig, load_release, publish_release, push_release, verify_release
from hf_ipt.stats import templify_stats
from hf_ipt.synthesis import (
    ChunkConfig,
    Chunker,
    SpeculativeConfig,
    SynthesisConfig,
    Synthesizer,
    parse_pairs,
    synthesize_batch,
)
from hf_ipt.templify import Templifier, TemplifyConfig, templify_batch

# `templify` (the function) is not re-exported: it would shadow the submodule hf_ipt.templify
__version__ = "0.1.0"

__all__ = [
    "GeneralInstructionFormatter",
    "MixConfig",
    "MixReport",
    "ReleaseConfig",
    "Templifier",
    "TemplifyConfig",
    "TokenCounter",
    "count_tokens",
    "format_general_instructions",
    "load_release",
    "mix",
    "mix_by_token_ratio",
    "mix_by_token_weights",
    "mix_with_general_instructions",
    "mix_with_raw_corpus",
    "prepare_source",
    "QualityConfig",
    "QualityFigures",
    "compare",
    "quality_report",
    "SpeculativeConfig",
    "publish_release",
    "push_release",
    "templify_batch",
    "templify_stats",
    "verify_release",
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
