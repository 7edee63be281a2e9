"""The plotting primitives every PNG of hf-ipt is drawn with: bar charts on matplotlib's Agg canvas, saved without
metadata so the same figures always give the same bytes (a re-run of a release then uploads nothing new).

The card's plots (`hf_ipt.release.plots`) and the quality report's (`hf_ipt.quality`) both draw with these; this
module imports no other hf-ipt module but `_deps` (matplotlib is optional: `pip install 'hf-ipt[plots]'`).

Example:
    >>> histogram_bars({"edges": [0, 1, 2, 4], "counts": [3, 0, 2]})
    (['0', '2-3'], [3, 2])
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hf_ipt._deps import require


def new_figure(width: float = 5.0, height: float = 2.6):
    """A matplotlib figure on the Agg canvas (no pyplot state, no display needed), small enough to sit in a card.

    Example:
        >>> new_figure().get_size_inches().tolist()  # doctest: +SKIP
        [5.0, 2.6]
    """
    require("matplotlib", "rendering the dataset card plots")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
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
    path: Path,
    labels: list[str],
    values: list[float],
    title: str,
    xlabel: str,
    ylabel: str,
    *,
    color: str = "#4C72B0",
    colors: list[str] | None = None,
    counts: bool = True,
) -> Path:
    """A bar chart saved as a PNG without metadata (same values, same bytes): each bar labelled with its value, a
    count axis with whole numbers only (`counts`), one colour per bar when `colors` say what it means.

    Example:
        >>> bar_chart(Path("/tmp/modes.png"), ["classic", "raw"], [105, 23], "Template modes", "mode", "texts")
        ... # doctest: +SKIP
        PosixPath('/tmp/modes.png')
    """
    from matplotlib.ticker import MaxNLocator

    figure = new_figure()
    axes = figure.add_subplot(1, 1, 1)
    positions = list(range(len(labels)))
    bars = axes.bar(positions, values, color=colors or color)
    shown = [f"{int(v):,}" if counts else f"{v:.1f}" for v in values]
    axes.bar_label(bars, labels=shown, fontsize=7, padding=1)
    axes.margins(y=0.18)  # room for the labels above the tallest bar
    if counts:
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    label_axes(axes, labels, title, xlabel, ylabel)
    return save_figure(figure, path)


def label_axes(axes: Any, labels: list[str], title: str, xlabel: str, ylabel: str) -> None:
    """One bar group per label on the x axis (turned when long), the title and axis names, small type, no frame on
    the top and right: what every plot of hf-ipt looks like.

    Example:
        >>> label_axes(new_figure().add_subplot(1, 1, 1), ["a"], "title", "x", "y")  # doctest: +SKIP
    """
    axes.set_xticks(list(range(len(labels))))
    rotate = max((len(label) for label in labels), default=0) > 10 or len(labels) > 8
    axes.set_xticklabels(labels, rotation=30 if rotate else 0, ha="right" if rotate else "center", fontsize=8)
    axes.tick_params(axis="y", labelsize=8)
    axes.set_title(title, fontsize=10)
    axes.set_xlabel(xlabel, fontsize=8)
    axes.set_ylabel(ylabel, fontsize=8)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)


def histogram_bars(histogram: Mapping[str, Any] | None) -> tuple[list[str], list[int]]:
    """(labels, counts) of a `hf_ipt.stats.Distribution` histogram, its empty bins left out: bin i holds
    edges[i] <= n < edges[i + 1].

    Example:
        >>> histogram_bars({"edges": [0, 1, 2, 4, 8], "counts": [1, 0, 2, 5]})
        (['0', '2-3', '4-7'], [1, 2, 5])
    """
    edges, counts = (histogram or {}).get("edges"), (histogram or {}).get("counts")
    if not edges or not counts or len(edges) != len(counts) + 1:
        return [], []
    bins = [
        (str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}", int(count))
        for lo, hi, count in zip(edges, edges[1:], counts, strict=False)
        if count
    ]
    return [label for label, _ in bins], [count for _, count in bins]
