"""Deprecated: synthesis moved to the package `hf_ipt.synthesis` (import `Synthesizer`, `SynthesisConfig`,
`synthesize_batch` from `hf_ipt` or `hf_ipt.synthesis`)."""

import warnings

from hf_ipt.synthesis import DEFAULT_MODEL, SynthesisConfig, Synthesizer, synthesize_batch
from hf_ipt.synthesis.job import PAIRS_ARROW_TYPE, BatchJob, PairList, run_round_by_round

warnings.warn(
    "hf_ipt.synthesize is deprecated: import from hf_ipt.synthesis (or hf_ipt) instead",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "DEFAULT_MODEL",
    "PAIRS_ARROW_TYPE",
    "BatchJob",
    "PairList",
    "SynthesisConfig",
    "Synthesizer",
    "run_round_by_round",
    "synthesize_batch",
]
