"""The quality report of a release or a run, wherever it lies: what `hf-ipt report` reads and compares.

A report is computed once, by the templify stage (`hf_ipt.quality.quality_report` over the synthesized rows), and
committed with its output; a release carries it in its stats.json. This module only finds it: in a local release
folder, a run's output folder, a Hub release at a revision, or (computed now) rows that still carry a `pairs` column.

Example:
    >>> load_report("output/quickstart/release")["pairs"]  # doctest: +SKIP
    386
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hf_ipt import columns as C
from hf_ipt.deadline import looks_local
from hf_ipt.preflight import first_line, hub_down
from hf_ipt.quality import quality_report
from hf_ipt.release.card import sidecar_dir
from hf_ipt.stages.templify import TemplifyStage
from hf_ipt.store import STAGE_MARKER_PATH, RunFolder, StageFolder

_SIDECAR_STATS = f"{sidecar_dir('{config}')}/stats.json"  # a release's stats.json, for any config
_HUB_REF = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[^\s@]+)?$")


def _pick(found: Mapping[str, Any], config: str | None, what: str, source: str) -> Any:
    if config is not None:
        if config not in found:
            raise ValueError(f"{source} has no {what} {config!r}; it has {sorted(found)}")
        return found[config]
    if len(found) != 1:
        raise ValueError(f"{source} has {len(found)} {what}s {sorted(found)}; choose one (--config NAME)")
    return next(iter(found.values()))


def _from_stats(stats: Mapping[str, Any], source: str) -> dict[str, Any]:
    quality = stats.get("quality")
    if not quality:
        raise ValueError(
            f"{source} has no quality report (its stats.json has none: it was released from rows without a `pairs` "
            "column and without a run's report); run `hf-ipt report` on its run's output folder"
        )
    return dict(quality)


def verify_files(source: str | os.PathLike) -> str:
    """Check what a report is read from against the checksums recorded when it was written, and say what was checked:
    every file of a local release folder, or of a run's `templified/` (the size and SHA-256 in its commit marker,
    `.hf_ipt/stage.json`). A damaged file (truncated, changed, missing) is a ValueError naming it and the command that
    writes it again; a folder without recorded checksums, or a Hub release, is said to be unchecked.

    Example:
        >>> verify_files("output/quickstart/release")  # doctest: +SKIP
        'checked: the 9 files of output/quickstart/release match the SHA-256 recorded when they were written'
    """
    text = str(source)
    path = Path(source)
    if not path.is_dir():
        if path.exists():
            return "not checked: a file, not a folder"
        return f"not checked: {text} is read from the Hub, where hf-ipt records no checksums of its own"
    folder = StageFolder(text)
    command = "`hf-ipt push RECIPE.yaml` (or `hf-ipt run`)"
    if folder.marker() is None and (path / TemplifyStage.folder).is_dir():
        folder, command = (
            RunFolder(text).stage(TemplifyStage.folder),
            "`hf-ipt templify RECIPE.yaml` (or `hf-ipt run`)",
        )
    marker = folder.marker()
    if marker is None:
        return (
            f"not checked: {text} holds no record of its files' checksums ({STAGE_MARKER_PATH}: a folder not written "
            "by hf-ipt, or copied without it)"
        )
    damage = folder.damage(marker)
    if damage:
        raise ValueError(
            f"{folder.describe_damage(damage)}: its figures cannot be vouched for. Write it again with {command}"
        )
    count = len(marker.get("checksums") or {})
    return f"checked: the {count} files of {folder.url} match the SHA-256 recorded when they were written"


def read_stats(path: Path) -> dict[str, Any]:
    """A release's stats.json; a ValueError naming the file when it is not a JSON object.

    Example:
        >>> read_stats(Path("output/quickstart/release/release_info/continual-m3/stats.json"))  # doctest: +SKIP
    """
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); write the release again (`hf-ipt push RECIPE.yaml`)"
        ) from None
    if not isinstance(stats, dict):
        raise ValueError(f"{path} holds a {type(stats).__name__}, not the JSON object a release's stats.json is")
    return stats


def load_report(
    source: str | os.PathLike, *, config: str | None = None, split: str | None = None, verify: bool = True
) -> dict[str, Any]:
    """The quality report of a release or run, from:

    - a local release folder (`release_info/{config}/stats.json`, key `quality`);
    - a run's `run.output_dir` (the report committed with `templified/`, one per split);
    - a dataset folder whose rows have a `pairs` column (computed now, whitespace words);
    - a Hub dataset `owner/name@revision` (its `release_info/{config}/stats.json` at that revision).

    `config` / `split` choose when there are several. Errors say what was found and how to choose. With `verify`, a
    local folder is first checked against its recorded checksums (`verify_files`): a damaged one is refused.

    Example:
        >>> load_report("output/quickstart/release")["pairs"]  # doctest: +SKIP
        612
        >>> load_report("me/ipt@v1.0", config="continual-m3")["grounding"]["rate"]  # doctest: +SKIP
        0.41
    """
    path = Path(source)
    text = str(source)
    if verify:
        verify_files(source)
    if path.is_dir():
        found = {p.parent.name: p for p in sorted(path.glob(_SIDECAR_STATS.format(config="*")))}
        if found:
            stats_path = _pick(found, config, "config", text)
            return _from_stats(read_stats(stats_path), text)
        if (path / TemplifyStage.folder).is_dir():
            templified = RunFolder(text).stage(TemplifyStage.folder)
            reports = (templified.report().get("quality") or {}).get("reports")
            if not reports:
                raise ValueError(f"{templified.url} holds no quality report; run `hf-ipt templify` first")
            return dict(_pick(reports, split, "split", text))
        import datasets

        try:
            loaded = datasets.load_from_disk(text)
        except FileNotFoundError:
            try:
                loaded = datasets.load_dataset(text)
            except Exception as err:  # any reader's failure: the folder is not something a report is made from
                raise ValueError(
                    f"{text} is neither a release folder (no release_info/*/stats.json), nor a run's output folder "
                    f"(no templified/), nor a dataset `datasets` can read ({type(err).__name__}: {err})"
                ) from err
        if isinstance(loaded, datasets.DatasetDict):
            loaded = _pick(dict(loaded), split, "split", text)
        if C.PAIRS not in loaded.column_names:
            raise ValueError(
                f"{text} is neither a release folder (no release_info/*/stats.json), nor a run's output folder (no "
                f"templified/), nor rows with a {C.PAIRS!r} column (columns: {loaded.column_names})"
            )
        return quality_report(loaded)
    if path.exists():
        raise ValueError(f"{text} is a file; give a release folder, a run's output folder or owner/name@revision")
    if "@" not in text and looks_local(text):
        raise ValueError(f"no such folder {text!r}{_near(path)}")
    if not _HUB_REF.match(text):
        raise ValueError(f"{text!r} is neither a local folder nor a Hub dataset reference like owner/name@v1.0")
    repo_id, _, revision = text.partition("@")
    return _hub_report(text, repo_id, revision or None, config)


def _near(path: Path) -> str:
    """A hint for a missing folder: the existing folders next to where it was looked for."""
    parent = path.parent if str(path.parent) not in ("", ".") else Path(".")
    if not parent.is_dir():
        return f" (nor its parent folder {str(parent)!r})"
    siblings = sorted(p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
    close = difflib.get_close_matches(path.name, siblings, n=3)
    return f" (in {str(parent)!r}: did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def _hub_report(text: str, repo_id: str, revision: str | None, config: str | None) -> dict[str, Any]:
    """The report of a Hub release at a revision; every failure of the Hub is one ValueError naming the reference."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    down = hub_down(refresh=True)
    if down:
        raise ValueError(f"{text!r} is not a local folder, and the Hub is unreachable: {down}")
    api = HfApi()
    try:
        files = api.list_repo_files(repo_id, repo_type="dataset", revision=revision)
    except RepositoryNotFoundError as err:
        raise ValueError(f"{text!r} is neither a local folder nor a dataset on the Hub (or it is private)") from err
    except RevisionNotFoundError as err:
        raise ValueError(f"the Hub dataset {repo_id!r} has no revision {revision!r}") from err
    except (HfHubHTTPError, OSError) as err:
        raise ValueError(f"the Hub could not list {text!r}: {type(err).__name__}: {first_line(err)}") from err
    pattern = re.compile("^" + re.escape(_SIDECAR_STATS).replace(re.escape("{config}"), "([^/]+)") + "$")
    found = {m.group(1): name for name in files if (m := pattern.match(name))}
    if not found:
        raise ValueError(f"Hub dataset {text} has no release_info/*/stats.json: it was not released by hf-ipt")
    name = _pick(found, config, "config", text)
    local = api.hf_hub_download(repo_id, name, repo_type="dataset", revision=revision or None)
    return _from_stats(read_stats(Path(local)), text)
