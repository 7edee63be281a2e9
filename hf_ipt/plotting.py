"""The plotting primitives every PNG of hf-ipt is drawn with: bar charts on matplotlib's Agg canvas, saved without
metadata so the same figures always give the same bytes (a re-run of a release then uploads nothing new).

The card's plots (`hf_ipt.release.plots`) and the quality report's (`hf_ipt.quality`) both draw with these; this
module imports no other hf-ipt module but `_deps` (matplotlib is optional: `pip install 'hf-ipt[plots]'`).

Example:
    >>> histogram_bars({"edges": [0, 1, 2, 4], "counts": [3, 1, 2]})
    (['0', '1', '2-3'], [3, 1, 2])
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hf_ipt._deps import require


def new_figure():
    """A matplotlib figure on the Agg canvas (no pyplot state, no display needed), 6.4 x 3.6 inches.

    Example:
        >>> new_figure().get_size_inches().tolist()  # doctest: +SKIP
        [6.4, 3.6]
    """
    require("matplotlib", "rendering the dataset card plots")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Any, path: Path) -> Path:
    """Save a figure as a PNG with no "Software"/date metadata: the same figure always gives the same bytes.

    Example:
        >>> save_figure(new_figure(), Path("/tmp/empty.png"))  # doctest: +SKIP
        PosixPath('/tmp/empty.png')
    """
    figure.tight_layout()
    # No "Software"/date metadata: identical statistics must give identical bytes.
    figure.savefig(path, format="png", metadata={"Software": None})
    return path


def bar_chart(
    path: Path, labels: list[str], values: list[float], title: str, xlabel: str, ylabel: str, *, color: str = "#4C72B0"
) -> Path:
    """A bar chart saved as a PNG without metadata (same values, same bytes); the card's plots and the quality
    report's plots draw with it.

    Example:
        >>> bar_chart(Path("/tmp/modes.png"), ["classic", "raw"], [105, 23], "Template modes", "mode", "texts")
        ... # doctest: +SKIP
        PosixPath('/tmp/modes.png')
    """
    figure = new_figure()
    axes = figure.add_subplot(1, 1, 1)
    positions = list(range(len(labels)))
    axes.bar(positions, values, color=color)
    axes.set_xticks(positions)
    rotate = max((len(label) for label in labels), default=0) > 6 or len(labels) > 12
    axes.set_xticklabels(labels, rotation=45 if rotate else 0, ha="right" if rotate else "center", fontsize=8)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    return save_figure(figure, path)


def histogram_bars(histogram: Mapping[str, Any] | None) -> tuple[list[str], list[int]]:
    """(labels, counts) of a `hf_ipt.stats.Distribution` histogram: bin i holds edges[i] <= n < edges[i + 1].

    Example:
        >>> histogram_bars({"edges": [0, 1, 2, 4, 8], "counts": [1, 0, 2, 5]})
        (['0', '1', '2-3', '4-7'], [1, 0, 2, 5])
    """
    edges, counts = (histogram or {}).get("edges"), (histogram or {}).get("counts")
    if not edges or not counts or len(edges) != len(counts) + 1:
        return [], []
    labels = [str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}" for lo, hi in zip(edges, edges[1:], strict=False)]
    return labels, [int(c) for c in counts]
