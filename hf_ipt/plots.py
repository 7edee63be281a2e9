"""PNG plots for dataset cards, drawn from the statistics that `hf_ipt.cards.compute_statistics` computes.

Plots are rendered with matplotlib's Agg canvas on `Figure` objects (no pyplot global state, safe in threads and
without a display) and saved without a timestamp, so the same statistics always give byte-identical files: a re-run
of a release then uploads nothing new.

Example:
    >>> from hf_ipt.plots import render_plots
    >>> stats = {"pairs": {"per_text": {"0": 2, "1": 5, "3": 1}}}
    >>> sorted(render_plots(stats, "/tmp/hf-ipt-plots"))  # doctest: +SKIP
    ['pairs_per_text']
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hf_ipt._deps import require

# name -> (file name, title); also the order the card shows them in
PLOT_FILES: dict[str, tuple[str, str]] = {
    "pairs_per_text": ("pairs_per_text.png", "Instruction-response pairs per text"),
    "text_length": ("text_length.png", "Text length"),
    "template_modes": ("template_modes.png", "Template modes"),
    "source_mix": ("source_mix.png", "Share of each source"),
}


def _figure():
    require("matplotlib", "rendering the dataset card plots")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    # No "Software"/date metadata: identical statistics must give identical bytes.
    figure.savefig(path, format="png", metadata={"Software": None})
    return path


def _bar(path: Path, labels: list[str], values: list[float], title: str, xlabel: str, ylabel: str) -> Path:
    figure = _figure()
    axes = figure.add_subplot(1, 1, 1)
    positions = list(range(len(labels)))
    axes.bar(positions, values, color="#4C72B0")
    axes.set_xticks(positions)
    rotate = max((len(label) for label in labels), default=0) > 6 or len(labels) > 12
    axes.set_xticklabels(labels, rotation=45 if rotate else 0, ha="right" if rotate else "center", fontsize=8)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    return _save(figure, path)


def log2_bucket_label(bucket: int) -> str:
    """Label of a power-of-two length bucket: bucket b holds lengths in [2**(b-1), 2**b) and bucket 0 holds 0."""
    if bucket == 0:
        return "0"
    low, high = 2 ** (bucket - 1), 2**bucket - 1
    return str(low) if low == high else f"{low}-{high}"


def render_plots(statistics: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Draw every plot the statistics have data for into `out_dir`; returns {plot name: file path}.

    Reads the keys `pairs.per_text` (or `pairs.histogram`), `text.tokens.histogram` (or
    `text.characters.histogram`), `template_modes.counts` and `sources.per_source` of a statistics dict. A plot
    without data is skipped, never drawn empty.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Path] = {}

    pairs = statistics.get("pairs") or {}
    per_text = pairs.get("per_text") or {}
    edges, counts = (pairs.get("histogram") or {}).get("edges"), (pairs.get("histogram") or {}).get("counts")
    file_name, title = PLOT_FILES["pairs_per_text"]
    if per_text:
        exact = sorted((int(k), int(v)) for k, v in per_text.items())
        plots["pairs_per_text"] = _bar(
            out / file_name, [str(k) for k, _ in exact], [v for _, v in exact], title, "pairs in the text", "texts"
        )
    elif edges and counts and len(edges) == len(counts) + 1:
        # a binned distribution (templify_stats): bin i holds edges[i] <= n < edges[i + 1]
        labels = [str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}" for lo, hi in zip(edges, edges[1:], strict=False)]
        plots["pairs_per_text"] = _bar(out / file_name, labels, list(counts), title, "pairs in the text", "texts")

    text = statistics.get("text") or {}
    lengths = text.get("tokens") or text.get("characters") or {}
    histogram = lengths.get("histogram") or {}
    if histogram:
        unit = "tokens" if text.get("tokens") else "characters"
        buckets = sorted((int(k), int(v)) for k, v in histogram.items())
        file_name, title = PLOT_FILES["text_length"]
        plots["text_length"] = _bar(
            out / file_name,
            [log2_bucket_label(b) for b, _ in buckets],
            [v for _, v in buckets],
            f"{title} ({unit})",
            unit,
            "texts",
        )

    modes = (statistics.get("template_modes") or {}).get("counts") or {}
    if modes:
        file_name, title = PLOT_FILES["template_modes"]
        names = sorted(modes, key=lambda name: (-int(modes[name]), name))
        plots["template_modes"] = _bar(out / file_name, names, [int(modes[n]) for n in names], title, "mode", "texts")

    sources = statistics.get("sources") or {}
    per_source = sources.get("per_source") or {}
    unit = sources.get("ratio_unit")
    if per_source and unit:
        file_name, title = PLOT_FILES["source_mix"]
        names = sorted(per_source)
        total = sum(float(per_source[n].get(unit) or 0) for n in names) or 1.0
        plots["source_mix"] = _bar(
            out / file_name,
            names,
            [100.0 * float(per_source[n].get(unit) or 0) / total for n in names],
            f"{title} (by {unit})",
            "source",
            f"% of {unit}",
        )
    return plots
