"""Releases to a folder (a local path or an fsspec URL), laid out like the Hub repo would be: `save_release`.

`README.md` (the card, whose `configs` metadata lets `load_dataset(folder)` read it), `data/` (Parquet) and
`release_info/{config}/` (stats.json, recipe.yaml, plots). The files are written first and the commit marker last
(`hf_ipt.store.StageFolder.write_output`), so an interrupted release is never mistaken for a finished one; the marker
records every file's size and SHA-256, so a release damaged afterwards is noticed and written again. A version never
changes: a folder holding this version with other content is replaced only when forced (`check_local_version`).

The release stage (`hf_ipt.stages.release`) writes its local releases with the same pieces (`release_files`).

Example:
    >>> from datasets import Dataset
    >>> result = save_release(Dataset.from_dict({"text": ["a", "b"]}), "memory://doc-release/v1", version="v0.1",
    ...                       plots=False)
    >>> result.files[:2], result.rows
    (('README.md', 'data/train-00000-of-00001.parquet'), 2)
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hf_ipt.release.bundle import ReleaseBundle, build_bundle
from hf_ipt.release.card import CardOptions, ReleaseInfo, render_card
from hf_ipt.release.hub import check_config_name, check_version
from hf_ipt.store import StageFolder, config_diff, config_to_dict, fingerprint
from hf_ipt.validation import ConfigError

logger = logging.getLogger(__name__)


class VersionConflictError(ConfigError):
    """A local release folder already holds this version with other content; versions never change.

    Example:
        >>> check_local_version(marker, identity, "v0.1", where="output/run/release")  # doctest: +SKIP
        Traceback (most recent call last):
        VersionConflictError: output/run/release already holds version v0.1 of local/x, made from other data ...
    """


@dataclass(frozen=True)
class LocalRelease:
    """What `save_release` wrote: the folder, the version, the config, every file (data and sidecars) and the rows.

    Example:
        >>> LocalRelease("out", "v0.1", "default", ("README.md",), 3).rows
        3
    """

    path: str
    version: str
    config_name: str
    files: tuple[str, ...]
    rows: int


def check_local_version(
    marker: Mapping[str, Any] | None, identity: Mapping[str, Any], version: str, *, where: str, force: bool = False
) -> None:
    """Refuse to replace a local release of `version` committed (with `marker`) from another `identity` (other data,
    release or card settings): like a Hub version, a released version never changes. Passes when the folder holds no
    release, the same one (a re-run reuses or repairs it), another version (replaced, with a warning), or with
    `force` (`--overwrite`, i.e. `run.overwrite`). `where` names the folder in messages.

    Example:
        >>> check_local_version(None, {"data": "x"}, "v0.1", where="out/release")
    """
    if marker is None or marker.get("fingerprint") == fingerprint(identity):
        return
    config = marker.get("config") or {}
    old_version = (config.get("release") or {}).get("version")
    if config.get("release_to") != "local" or old_version != version:
        if old_version is not None:
            logger.warning(
                "%s holds the record of version %s (release_to %s); replacing it with version %s",
                where,
                old_version,
                config.get("release_to"),
                version,
            )
        return
    if force:
        logger.warning("overwrite: replacing version %s in %s with other content", version, where)
        return
    # the data is named by its stage (its own settings changed upstream); release and card settings by their keys
    changed = [
        "data (the released stage's output: other templify/mix settings or synthesis)" if key == "upstream" else key
        for key in config_diff(config, config_to_dict(identity))
    ]
    raise VersionConflictError(
        f"{where} already holds version {version} of {(config.get('release') or {}).get('repo_id')}, made with "
        f"other {', '.join(changed) or 'settings'}; a released version never changes. Set release.version to a new "
        f"version (e.g. --release.version {_next_version(version)}) and run.output_dir to another folder to keep "
        "both, or pass --overwrite (run.overwrite) to replace it"
    )


def _next_version(version: str) -> str:
    head, _, last = version.rpartition(".")
    return f"{head}.{int(last) + 1}" if last.isdigit() and head else f"{version}.1"


def release_files(
    bundle: ReleaseBundle, *, repo_id: str, version: str, card: CardOptions | None, local_path: str
) -> dict[str, bytes]:
    """The files a local release writes beside its rows: the bundle's sidecars (stats.json, recipe.yaml, plots) and
    the card rendered for the folder (`README.md`, its loading snippet reading `local_path`).

    Example:
        >>> sorted(release_files(bundle, repo_id="me/x", version="v0.1", card=None, local_path="out"))
        ... # doctest: +SKIP
        ['README.md', 'release_info/m2/stats.json', ...]
    """
    text = render_card(
        {bundle.config_name: bundle.report},
        repo_id=repo_id,
        version=version,
        hub_configs=bundle.hub_configs(),
        dataset_info=bundle.dataset_info(),
        options=card,
        local_path=local_path,
    )
    return {**bundle.files, "README.md": str(text).encode("utf-8")}


def save_release(
    data: Any,
    output_dir: str | os.PathLike,
    *,
    version: str,
    repo_id: str = "local/dataset",
    config_name: str = "default",
    split: str = "train",
    info: ReleaseInfo | None = None,
    card: CardOptions | None = None,
    recipe: Mapping[str, Any] | str | os.PathLike | None = None,
    force: bool = False,
    plots: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> LocalRelease:
    """Write `data` to a folder as release `version`: the local twin of `hf_ipt.push_release` (same card, same
    stats.json, recipe and plots), loadable with `datasets.load_dataset(output_dir)`.

    Args:
        data: a `Dataset` (released as split `split`) or a `DatasetDict` (its splits): one config.
        output_dir: the folder (a local path or an fsspec URL, with `storage_options`); what it held is replaced.
        version: the version, e.g. 'v1.0'. The same version with other content is refused unless `force=True`.
        repo_id: the name the card gives the dataset ('namespace/name'; nothing is uploaded).
        config_name: the config's name in the card's metadata.
        info: `ReleaseInfo`, what the card says beyond the rows; for a run folder `hf_ipt.stages.release_info(run)`
            gives what `hf-ipt run` writes (synthesizer, sources, every stage's report, the recipe).
        card: `CardOptions` (title, summary, license, tags, template).
        recipe: the resolved recipe (dict or YAML/JSON file), uploaded redacted; `info.recipe` overrides it.
        plots: render the card's PNG plots (needs matplotlib).

    Example:
        >>> save_release(mixed, "output/my-release", version="v1.0", info=release_info(run))  # doctest: +SKIP
    """
    import datasets

    check_version(version)
    check_config_name(config_name)
    if isinstance(data, datasets.Dataset):
        data = datasets.DatasetDict({split: data})
    if not isinstance(data, datasets.DatasetDict):
        raise TypeError(f"save_release takes a Dataset or a DatasetDict (one config), got {type(data).__name__}")
    info = info if info is not None else ReleaseInfo()
    if recipe is not None and info.recipe is None:
        info = dataclasses.replace(info, recipe=recipe)
    folder = StageFolder(str(output_dir), storage_options)
    bundle = build_bundle(dict(data), info, config_name=config_name, version=version, plots=plots)
    identity = {
        # the rows and their digest name the data (not the Arrow size beside them, also in stats.json)
        "upstream": fingerprint(
            [
                {
                    split: {key: figures[key] for key in ("rows", "fingerprint")}
                    for split, figures in bundle.report["statistics"]["splits"].items()
                }
            ]
        ),
        "release": {"repo_id": repo_id, "version": version, "config_name": config_name},
        "release_to": "local",
        "card": config_to_dict(card or CardOptions()),
    }
    check_local_version(folder.marker(), identity, version, where=folder.url, force=force)
    files = release_files(bundle, repo_id=repo_id, version=version, card=card, local_path=folder.url)
    marker = folder.write_output(
        config=identity, data=data, files=files, extra={"files": bundle.report["files"]}, settings=identity
    )
    return LocalRelease(
        path=folder.url,
        version=version,
        config_name=config_name,
        files=tuple(sorted(marker.get("checksums") or {})),
        rows=sum(marker["num_rows"].values()),
    )
