"""Write a release bundle to a folder (local path or fsspec URL), laid out like the Hub repo would be.

`README.md` (the card, whose `configs` metadata lets `load_dataset(folder)` read it), `data/` (Parquet) and
`release_info/{config}/` (stats.json, recipe.yaml, plots). The data and its commit marker are written last, so an
interrupted release is never mistaken for a finished one. The marker records every file's size and SHA-256, so a
release damaged afterwards is noticed (`hf_ipt.store.stage_damage`) and written again. A version never changes: a
folder holding this version with other content is replaced only when forced (`check_local_version`).

Example:
    >>> bundle = build_bundle({"train": ds}, info, config_name="m2", version="v0.1")  # doctest: +SKIP
    >>> write_to_folder(bundle, "output/run/release", repo_id="me/x", version="v0.1", identity={...})  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import datasets

from hf_ipt.release.bundle import ReleaseBundle
from hf_ipt.release.card import RELEASE_INFO_DIR, CardOptions, render_card
from hf_ipt.store import (
    Store,
    checksum,
    clear_stage,
    config_diff,
    config_to_dict,
    fingerprint,
    read_stage_marker,
    save_stage,
    write_file,
)
from hf_ipt.validation import ConfigError

logger = logging.getLogger(__name__)


class VersionConflictError(ConfigError):
    """A local release folder already holds this version with other content; versions never change.

    Example:
        >>> check_local_version("output/run/release", identity, "v0.1")  # doctest: +SKIP
        Traceback (most recent call last):
        VersionConflictError: output/run/release already holds version v0.1 of local/x, made from other data ...
    """


def check_local_version(
    output: str,
    identity: Mapping[str, Any],
    version: str,
    *,
    force: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Refuse to replace a local release of `version` committed in `output` from another `identity` (other data,
    release or card settings): like a Hub version, a released version never changes. Passes when the folder holds
    no release, the same one (a re-run reuses or repairs it), another version (replaced, with a warning), or with
    `force` (`--overwrite`, i.e. `run.overwrite`).

    Example:
        >>> check_local_version("memory://doc-release/none", {"data": "x"}, "v0.1")
    """
    marker = read_stage_marker(output, storage_options)
    if marker is None or marker.get("fingerprint") == fingerprint(identity):
        return
    config = marker.get("config") or {}
    old_version = (config.get("release") or {}).get("version")
    if config.get("release_to") != "local" or old_version != version:
        if old_version is not None:
            logger.warning(
                "%s holds the record of version %s (release_to %s); replacing it with version %s",
                output,
                old_version,
                config.get("release_to"),
                version,
            )
        return
    if force:
        logger.warning("overwrite: replacing version %s in %s with other content", version, output)
        return
    # the data is named by its stage (its own settings changed upstream); release and card settings by their keys
    changed = [
        "data (the released stage's output: other templify/mix settings or synthesis)" if key == "data" else key
        for key in config_diff(config, config_to_dict(identity))
    ]
    raise VersionConflictError(
        f"{output} already holds version {version} of {(config.get('release') or {}).get('repo_id')}, made with "
        f"other {', '.join(changed) or 'settings'}; a released version never changes. Set release.version to a new "
        f"version (e.g. --release.version {_next_version(version)}) and run.output_dir to another folder to keep "
        "both, or pass --overwrite (run.overwrite) to replace it"
    )


def _next_version(version: str) -> str:
    head, _, last = version.rpartition(".")
    return f"{head}.{int(last) + 1}" if last.isdigit() and head else f"{version}.1"


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
    written = {}  # checked with the data on every later run (`hf_ipt.store.stage_damage`)
    for path, content in bundle.files.items():
        write_file(output, path, content, storage_options=storage_options)
        written[path] = checksum(content)
    text = render_card(
        {bundle.config_name: bundle.report},
        repo_id=repo_id,
        version=version,
        hub_configs=bundle.hub_configs(),
        dataset_info=bundle.dataset_info(),
        options=card,
        local_path=output,
    )
    card_bytes = str(text).encode("utf-8")
    write_file(output, "README.md", card_bytes, storage_options=storage_options)
    written["README.md"] = checksum(card_bytes)
    save_stage(
        datasets.DatasetDict(bundle.splits),
        output,
        config=identity,
        storage_options=storage_options,
        extra={"files": bundle.report["files"]},
        checksums=written,
    )
    return bundle.report
