"""The card's "Training on this release" section: the token files a release carries (the export stage's, when
`export.in_release`), the tokens per source, and the lines to paste into each trainer's configuration.

Read from a config's `stats.json` alone (its `export` entry, the export stage's report, and `files.export`), like the
rest of the card, so a card rendered later from the Hub shows the same section. The lines name the files by their
path in the repository (`release_info/<config>/export/...`); the template puts the folder they were downloaded to
(or the local release folder) in front.

Example:
    >>> view = training_view({"export": report, "files": {"export": [...]}}, "continual-m3")  # doctest: +SKIP
    >>> view["folder"]  # doctest: +SKIP
    'release_info/continual-m3/export'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hf_ipt.export import paste_lines

ROOT = "{root}"  # where the lines' paths start; the card template replaces it


def training_view(report: Mapping[str, Any], folder: str) -> dict[str, Any] | None:
    """The section's content for a config's `stats.json` (`report`) whose sidecars lie in `folder`; None when the
    release carries no export files."""
    export = report.get("export")
    if not export or not (report.get("files") or {}).get("export"):
        return None
    tokenizer = export.get("tokenizer") or {}
    sources = [
        {"name": name, "rows": f"{entry['rows']:,}", "tokens": f"{entry['tokens']:,}"}
        for name, entry in (export.get("sources") or {}).items()
    ]
    return {
        "folder": f"{folder}/export",
        "tokenizer": tokenizer.get("name"),
        "tokens": f"{export.get('tokens', 0):,}",
        "rows": f"{export.get('rows', 0):,}",
        "sources": sources,
        "counts_checked": bool(export.get("counts_checked")),
        "formats": [{"name": name, "lines": text} for name, text in paste_lines(export, ROOT).items()],
    }
