"""Deprecated: dataset cards moved to `hf_ipt.release.card`, their statistics to `hf_ipt.stats` and the release
report to `hf_ipt.release.bundle` (this module re-exports their public names)."""

import warnings

from hf_ipt.release.bundle import REPORT_FORMAT, config_report
from hf_ipt.release.card import (
    DEFAULT_SYNTHESIZER,
    DEFAULT_TEMPLATE,
    PROJECT_URL,
    RELEASE_INFO_DIR,
    SOURCE_KINDS,
    CardOptions,
    IptDatasetCard,
    ReleaseInfo,
    SourceInfo,
    SynthesizerInfo,
    combine_licenses,
    render_card,
    replace_sections,
    sidecar_dir,
    size_category,
    template_path,
)
from hf_ipt.stats import compute_statistics, log2_bucket

warnings.warn(
    "hf_ipt.cards is deprecated: import from hf_ipt.release.card (cards), hf_ipt.stats (compute_statistics) or "
    "hf_ipt.release.bundle (config_report)",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "DEFAULT_SYNTHESIZER",
    "DEFAULT_TEMPLATE",
    "PROJECT_URL",
    "RELEASE_INFO_DIR",
    "REPORT_FORMAT",
    "SOURCE_KINDS",
    "CardOptions",
    "IptDatasetCard",
    "ReleaseInfo",
    "SourceInfo",
    "SynthesizerInfo",
    "combine_licenses",
    "compute_statistics",
    "config_report",
    "log2_bucket",
    "render_card",
    "replace_sections",
    "sidecar_dir",
    "size_category",
    "template_path",
]
