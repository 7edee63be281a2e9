"""Write a release bundle to a folder (local path or fsspec URL), laid out like the Hub repo would be.

`README.md` (the card, whose `configs` metadata lets `load_dataset(folder)` read it), `data/` (Parquet) and
`release_info/{config}/` (stats.json, recipe.yaml, plots). The data and its commit marker are written last, so an
interrupted release is never mistaken for a finished one.

Example:
    >>> bundle = build_bundle({"train": ds}, info, config_name="m2", version="v0.1")  # doctest: +SKIP
    >>> write_to_folder(bundle, "output/run/release", repo_id="me/x", version="v0.1", identity={...})  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datasets

from hf_ipt.release.bundle import ReleaseBundle
from hf_ipt.release.card import RELEASE_INFO_DIR, CardOptions, render_card
from hf_ipt.store import Store, clear_stage, save_stage, write_file


def clear_release(output: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Remove a previous release record (its marker first), so a release never shows another one's files.

    Example:
        >>> clear_release("output/run/release")  # doctest: +SKIP
    """
    clear_stage(output, storage_options=storage_options)
    store = Store(output, storage_options)
    store.remove("README.md")
    store.remove(RELEASE_INFO_DIR)


def write_to_folder(
    bundle: ReleaseBundle,
    output: str,
    *,
    repo_id: str,
    version: str,
    identity: Mapping[str, Any],
    card: CardOptions | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `bundle` to `output` (replacing what was there): sidecar files, card, then data and commit marker.

    `identity` is the configuration the stage marker fingerprints (so a re-run with the same one is skipped).
    Returns the config report (stats.json content).

    Example:
        >>> report = write_to_folder(bundle, "out", repo_id="me/x", version="v0.1", identity={})  # doctest: +SKIP
        >>> report["files"]["stats"]  # doctest: +SKIP
        'release_info/m2/stats.json'
    """
    clear_release(output, storage_options)
    for path, content in bundle.files.items():
        write_file(output, path, content, storage_options=storage_options)
    text = render_card(
        {bundle.config_name: bundle.report},
        repo_id=repo_id,
        version=version,
        hub_configs=bundle.hub_configs(),
        dataset_info=bundle.dataset_info(),
        options=card,
        local_path=output,
    )
    write_file(output, "README.md", str(text).encode("utf-8"), storage_options=storage_options)
    save_stage(
        datasets.DatasetDict(bundle.splits),
        output,
        config=identity,
        storage_options=storage_options,
        extra={"files": bundle.report["files"]},
    )
    return bundle.report
