"""hf-ipt: Instruction Pre-Training as a Hugging Face `datasets`-native tool.

Raw text -> prompts -> engine -> parsed pairs -> templates -> token-ratio mixing -> release. Each step is a batched map
function over Arrow batches (`Synthesizer`, `Templifier`, ...), and each stage of a run is a public object
(`SynthesizeStage`, `TemplifyStage`, `MixStage`, `ExportStage`, `ReleaseStage`): the stages `hf-ipt run` runs are
these, so a Python script composing them gets the same bytes (see recipes/quickstart.py).

Example:
    >>> from datasets import Dataset
    >>> from hf_ipt import Synthesizer
    >>> synth = Synthesizer(model="instruction-pretrain/instruction-synthesizer", rounds=3)  # doctest: +SKIP
    >>> Dataset.from_dict({"text": texts}).map(synth, batched=True)  # doctest: +SKIP
"""

from hf_ipt.config import MixSourceConfig, RecipeConfig, RunConfig, SourceConfig, load_recipe
from hf_ipt.engines import CallableEngine, Completion, Engine, Request, TransformersEngine, VLLMEngine, make_engine
from hf_ipt.export import ExportConfig
from hf_ipt.formatting import TargetFormat
from hf_ipt.mixing import (
    GeneralInstructionFormatter,
    MixConfig,
    MixReport,
    TokenCounter,
    count_tokens,
    format_general_instructions,
    mix,
    prepare_source,
)
from hf_ipt.quality import QualityConfig, QualityFigures, compare, quality_report
from hf_ipt.release.card import CardOptions, ReleaseInfo, SourceInfo, SynthesizerInfo
from hf_ipt.release.hub import ReleaseConfig, load_release, publish_release, push_release, verify_release
from hf_ipt.release.local import save_release
from hf_ipt.reports import load_report
from hf_ipt.stages import (
    ExportStage,
    MixStage,
    ReleaseStage,
    StageSummary,
    SynthesizeStage,
    TemplifyStage,
    release_info,
    run_stage,
)
from hf_ipt.store import RunFolder
from hf_ipt.synthesis import (
    ChunkConfig,
    Chunker,
    ChunkSettings,
    SpeculativeConfig,
    SynthesisConfig,
    Synthesizer,
    parse_pairs,
    synthesize_batch,
)
from hf_ipt.templify import Templifier, TemplifyConfig, templify_batch, templify_stats
from hf_ipt.tiny_model import build_tiny_synthesizer
from hf_ipt.version import __version__

# `templify` (the function) is not re-exported: it would shadow the submodule hf_ipt.templify

__all__ = [
    "CallableEngine",
    "CardOptions",
    "ChunkConfig",
    "ChunkSettings",
    "Chunker",
    "Completion",
    "Engine",
    "ExportConfig",
    "ExportStage",
    "GeneralInstructionFormatter",
    "MixConfig",
    "MixReport",
    "MixSourceConfig",
    "MixStage",
    "QualityConfig",
    "QualityFigures",
    "RecipeConfig",
    "ReleaseConfig",
    "ReleaseInfo",
    "ReleaseStage",
    "Request",
    "RunConfig",
    "RunFolder",
    "SourceConfig",
    "SourceInfo",
    "SpeculativeConfig",
    "StageSummary",
    "SynthesisConfig",
    "SynthesizeStage",
    "Synthesizer",
    "SynthesizerInfo",
    "TargetFormat",
    "Templifier",
    "TemplifyConfig",
    "TemplifyStage",
    "TokenCounter",
    "TransformersEngine",
    "VLLMEngine",
    "__version__",
    "build_tiny_synthesizer",
    "compare",
    "count_tokens",
    "format_general_instructions",
    "load_recipe",
    "load_release",
    "load_report",
    "make_engine",
    "mix",
    "parse_pairs",
    "prepare_source",
    "publish_release",
    "push_release",
    "quality_report",
    "release_info",
    "run_stage",
    "save_release",
    "synthesize_batch",
    "templify_batch",
    "templify_stats",
    "verify_release",
]
