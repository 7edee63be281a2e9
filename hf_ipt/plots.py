"""Deprecated: the card plots moved to `hf_ipt.release.plots` (this module re-exports its public names)."""

import warnings

from hf_ipt.release.plots import PLOT_FILES, histogram_bars, render_plots

warnings.warn("hf_ipt.plots is deprecated: import from hf_ipt.release.plots", DeprecationWarning, stacklevel=2)

__all__ = ["PLOT_FILES", "histogram_bars", "render_plots"]
