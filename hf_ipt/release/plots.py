"""PNG plots for dataset cards, drawn from the statistics `hf_ipt.release.statistics.compute_statistics` computes.

Drawn with `hf_ipt.plotting` (the Agg canvas, no metadata), so the same statistics always give byte-identical files.

Example:
    >>> from hf_ipt.release.plots import render_plots
    >>> stats = {"pairs": {"per_text": {"0": 2, "1": 5, "3": 1}}}
    >>> sorted(render_plots(stats, "/tmp/hf-ipt-plots"))  # doctest: +SKIP
    ['pairs_per_text']
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hf_ipt.plotting import bar_chart, histogram_bars, label_axes, new_figure, save_figure

# name -> (file name, title); also the order the card shows them in
PLOT_FILES: dict[str, tuple[str, str]] = {
    "pairs_per_text": ("pairs_per_text.png", "Instruction-response pairs per text"),
    "text_length": ("text_length.png", "Text length"),
    "template_modes": ("template_modes.png", "Template modes"),
    "source_mix": ("source_mix.png", "Share of each source"),
}


def render_plots(statistics: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Draw every plot the statistics have data for into `out_dir`; returns {plot name: file path}.

    Reads the keys `pairs.per_text` (or `pairs.histogram`), `text.tokens.histogram` (or
    `text.characters.histogram`), `template_modes.counts` and `sources.requested_ratio` / `sources.achieved_ratio`
    (drawn side by side) of a statistics dict. A plot without data is skipped, never drawn empty.

    Example:
        >>> render_plots({"template_modes": {"counts": {"classic": 3}}}, "/tmp/plots")  # doctest: +SKIP
        {'template_modes': PosixPath('/tmp/plots/template_modes.png')}
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Path] = {}

    pairs = statistics.get("pairs") or {}
    per_text = pairs.get("per_text") or {}
    binned = histogram_bars(pairs.get("histogram"))
    file_name, title = PLOT_FILES["pairs_per_text"]
    if per_text:
        exact = sorted((int(k), int(v)) for k, v in per_text.items())
        plots["pairs_per_text"] = bar_chart(
            out / file_name, [str(k) for k, _ in exact], [v for _, v in exact], title, "pairs in the text", "texts"
        )
    elif binned[0]:  # only a distribution was reported (templify_stats)
        plots["pairs_per_text"] = bar_chart(out / file_name, *binned, title, "pairs in the text", "texts")

    text = statistics.get("text") or {}
    lengths = text.get("tokens") or text.get("characters") or {}
    labels, counts = histogram_bars(lengths.get("histogram"))
    if labels:
        unit = "tokens" if text.get("tokens") else "characters"
        file_name, title = PLOT_FILES["text_length"]
        plots["text_length"] = bar_chart(out / file_name, labels, counts, f"{title} ({unit})", unit, "rows")

    modes = (statistics.get("template_modes") or {}).get("counts") or {}
    if modes:
        file_name, title = PLOT_FILES["template_modes"]
        names = sorted(modes, key=lambda name: (-int(modes[name]), name))
        # a text without pairs (`raw`) in grey, the modes that carry pairs in one colour
        plots["template_modes"] = bar_chart(
            out / file_name, names, [int(modes[n]) for n in names], title, "mode", "texts",
            colors=["#999999" if n in ("raw", "skipped") else "#4C72B0" for n in names],
        )  # fmt: skip

    sources = statistics.get("sources") or {}
    achieved = sources.get("achieved_ratio") or {}
    requested = sources.get("requested_ratio") or {}
    unit = sources.get("ratio_unit") or "tokens"
    if achieved or requested:
        file_name, title = PLOT_FILES["source_mix"]
        names = sorted(set(achieved) | set(requested))
        series = {"achieved": [100.0 * float(achieved.get(n) or 0) for n in names]}
        if requested:
            series = {"requested": [100.0 * float(requested.get(n) or 0) for n in names], **series}
        plots["source_mix"] = _grouped_bars(
            out / file_name, names, series, f"{title}: requested vs achieved (by {unit})", "source", f"% of {unit}"
        )
    return plots


def _grouped_bars(
    path: Path, labels: list[str], series: Mapping[str, list[float]], title: str, xlabel: str, ylabel: str
) -> Path:
    """Bars of several series side by side per label (e.g. requested and achieved share of each source)."""
    figure = new_figure()
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / max(len(series), 1)
    # what was asked in grey, what was achieved in colour
    colors = {"requested": "#BBBBBB", "achieved": "#4C72B0"}
    for i, (name, values) in enumerate(series.items()):
        positions = [x - 0.4 + width * (i + 0.5) for x in range(len(labels))]
        bars = axes.bar(positions, values, width=width, label=name, color=colors.get(name, "#55A868"))
        axes.bar_label(bars, labels=[f"{name} {v:.1f}%" for v in values], fontsize=7, padding=1)
    axes.margins(y=0.2)
    label_axes(axes, labels, title, xlabel, ylabel)
    return save_figure(figure, path)
