"""The release bundle, built once: the data of one config and the files that go with it.

A bundle holds the splits to release and, under `release_info/{config}/`, `stats.json` (provenance from the stage
reports plus the statistics of the released rows, `hf_ipt.stats`), `recipe.yaml` and the plots. Both destinations
consume the same bundle: `hf_ipt.release.hub` commits it to the Hub (then tags), `hf_ipt.release.local` writes it to
a folder. Each renders the card (`hf_ipt.release.card.render_card`) from the bundle's report and the repo metadata
it has (the Hub's card lists every config at the revision; a local folder holds one). Secrets are redacted here, so
nothing downstream sees them.

Example:
    >>> bundle = build_bundle({"train": ds}, ReleaseInfo(), config_name="m2", version="v1.0")  # doctest: +SKIP
    >>> sorted(bundle.files)  # doctest: +SKIP
    ['release_info/m2/plots/text_length.png', 'release_info/m2/stats.json']
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hf_ipt import columns as C
from hf_ipt.quality import quality_of_splits, render_quality_plots

# secrets are removed by hf_ipt.redaction, the one scrubbing place of every writer (REDACTED re-exported)
from hf_ipt.redaction import REDACTED as REDACTED
from hf_ipt.redaction import process_command, redact, scrub, secret_values
from hf_ipt.release.card import ReleaseInfo, sidecar_dir
from hf_ipt.release.plots import render_plots
from hf_ipt.release.statistics import compute_statistics
from hf_ipt.store import FileCopy, as_rows, json_bytes
from hf_ipt.version import __version__

REPORT_FORMAT = 1  # the layout of stats.json


# --------------------------------------------------------------------------------------------------- contents
def plain(value: Any) -> Any:
    """A JSON-ready copy: mappings become dicts with str keys, sequences lists, other objects their str().

    Example:
        >>> plain({1: (2, Path("x"))})
        {'1': [2, 'x']}
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    return str(value)


def config_report(
    splits: Mapping[str, Any],
    info: ReleaseInfo,
    *,
    config_name: str,
    version: str,
    hf_ipt_version: str,
    statistics: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The content of `release_info/{config}/stats.json`: provenance (from `info`) and statistics (from the rows).

    Example:
        >>> config_report({"train": ds}, ReleaseInfo(), config_name="m2", version="v1.0",
        ...               hf_ipt_version="0.1.0")["statistics"]["rows"]  # doctest: +SKIP
        40
    """
    synthesizer = plain(asdict(info.synthesizer)) if info.synthesizer is not None else None
    return {
        "format": REPORT_FORMAT,
        "config_name": config_name,
        "release_version": version,
        "hf_ipt_version": hf_ipt_version,
        "description": info.description,
        "command": info.command or process_command(),
        "provenance": {
            "synthesizer": synthesizer,
            "sources": [plain(asdict(s)) for s in info.sources],
            "mixing_report": plain(info.mixing_report),
            "templify_stats": plain(info.templify_stats),
            "synthesis_stats": plain(info.synthesis_stats),
        },
        "statistics": dict(statistics) if statistics is not None else compute_statistics(splits, info),
        "quality": plain(info.quality) if info.quality is not None else quality_of_rows(splits),
        **({"export": plain(info.export)} if info.export_files else {}),
        "files": {},
    }


def quality_of_rows(splits: Mapping[str, Any]) -> dict[str, Any] | None:
    """`hf_ipt.quality.quality_of_splits` of rows given as `datasets.Dataset`s or `ParquetRows` (mapped as datasets
    only when they carry the synthesized `pairs` the report reads: rendered texts never do)."""
    rows = {split: as_rows(data) for split, data in splits.items()}
    if not rows or not all({C.PAIRS, C.TEXT} <= set(r.column_names) for r in rows.values()):
        return None
    return quality_of_splits({split: r.dataset() for split, r in rows.items()})


def recipe_text(recipe: Any, secrets: Sequence[str] = ()) -> str | None:
    """The recipe as released: YAML of the (redacted) mapping, or a non-YAML file's text with secrets scrubbed.

    Example:
        >>> recipe_text({"release": {"token": "abc"}})
        'release:\\n  token: <redacted>\\n'
    """
    if recipe is None:
        return None
    if isinstance(recipe, Mapping):
        data: Any = recipe
    elif isinstance(recipe, (str, os.PathLike)):
        path = Path(recipe)
        if not path.is_file():
            raise FileNotFoundError(
                f"recipe {str(recipe)!r} is not a file; pass the path of the resolved recipe (YAML/JSON) or a dict"
            )
        text = path.read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            data = None
        if not isinstance(data, Mapping):
            return scrub(text, secrets)
    else:
        raise TypeError(f"recipe must be a dict or a file path, got {type(recipe).__name__}")
    return yaml.safe_dump(redact(plain(data), secrets), sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------------------------------- the bundle
@dataclass
class ReleaseBundle:
    """One config of a release, ready to write: its splits, its stats.json content and its sidecar files.

    Example:
        >>> bundle.files[f"{bundle.folder}/stats.json"] == json_bytes(bundle.report)  # doctest: +SKIP
        True
    """

    config_name: str
    splits: dict[str, Any]
    report: dict[str, Any]  # stats.json, with report["files"] naming the sidecar files
    # {path in the repo: content}, stats.json included; the export's token files are FileCopy's, never read whole
    files: dict[str, bytes | FileCopy] = field(default_factory=dict)
    command: str | None = None  # the command given (an hf-ipt command line): the one that resumes a failed push

    @property
    def folder(self) -> str:
        """`release_info/{config}`: where the sidecar files lie."""
        return sidecar_dir(self.config_name)

    def hub_configs(self) -> list[dict[str, Any]]:
        """The card's `configs` metadata for this config alone, as `push_to_hub` writes it (`data/{split}-*`)."""
        files = [{"split": split, "path": f"data/{split}-*"} for split in self.splits]
        return [{"config_name": self.config_name, "data_files": files}]

    def dataset_info(self) -> dict[str, Any]:
        """The card's `dataset_info` metadata `push_to_hub` would write (features, rows and bytes per split).

        Besides describing a local folder like the Hub repo, it keys `datasets`' cache: for a local folder whose card
        declares `configs`, `load_dataset` caches by the card's metadata and the folder's name, not by the files, so
        without it a new release into a folder of the same name would load the previous release from the cache.
        """
        return dataset_info(self.splits, self.config_name, self.report["statistics"])


def dataset_info(
    splits: Mapping[str, Any], config_name: str, statistics: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """`dataset_info` card metadata of `splits` (see `ReleaseBundle.dataset_info`): each split's rows and the bytes of
    its rows in Arrow (`compute_statistics` measured them: given its `statistics`, the rows are not read again).

    Example:
        >>> dataset_info({"train": ds}, "m2")["splits"][0]["num_examples"]  # doctest: +SKIP
        1
    """
    measured = (statistics or compute_statistics(splits, ReleaseInfo(text_column=None)))["splits"]
    entries = [
        {"name": split, "num_bytes": int(measured[split]["bytes"]), "num_examples": len(data)}
        for split, data in splits.items()
    ]
    features = as_rows(next(iter(splits.values()))).features if splits else None
    info: dict[str, Any] = {"config_name": config_name}
    if features is not None:
        info["features"] = features._to_yaml_list()
    info["splits"] = entries
    info["dataset_size"] = sum(entry["num_bytes"] for entry in entries)
    return info


def build_bundle(
    splits: Mapping[str, Any],
    info: ReleaseInfo,
    *,
    config_name: str,
    version: str,
    plots: bool = True,
    secrets: Sequence[str] = (),
) -> ReleaseBundle:
    """Compute the report of one config (from its rows and `info`), render its plots and recipe, all redacted.

    Everything that can fail on bad input happens here, before a destination writes anything.

    Example:
        >>> bundle = build_bundle({"train": ds}, info, config_name="continual-m3", version="v1.0")  # doctest: +SKIP
        >>> bundle.report["files"]["stats"]  # doctest: +SKIP
        'release_info/continual-m3/stats.json'
    """
    splits = dict(splits)
    # what the recipe holds under secret names is hidden everywhere else too (a description, the command line)
    recipe_mapping = info.recipe if isinstance(info.recipe, Mapping) else None
    secrets = [*secrets, *secret_values(recipe_mapping)]
    report = config_report(splits, info, config_name=config_name, version=version, hf_ipt_version=__version__)
    report = redact(report, secrets)
    folder = sidecar_dir(config_name)
    listed: dict[str, Any] = {"stats": f"{folder}/stats.json", "recipe": None, "plots": {}}
    files: dict[str, bytes | FileCopy] = {}
    recipe = recipe_text(info.recipe, secrets)
    if recipe is not None:
        listed["recipe"] = f"{folder}/recipe.yaml"
        files[listed["recipe"]] = recipe.encode("utf-8")
    if plots:
        with tempfile.TemporaryDirectory(prefix="hf-ipt-plots-") as workdir:
            for key, path in render_plots(report["statistics"], Path(workdir)).items():
                listed["plots"][key] = f"{folder}/plots/{path.name}"
                files[listed["plots"][key]] = path.read_bytes()
    if plots and report.get("quality"):
        listed["quality_plots"] = {}
        with tempfile.TemporaryDirectory(prefix="hf-ipt-quality-") as workdir:
            for key, path in render_quality_plots(report["quality"], Path(workdir)).items():
                listed["quality_plots"][key] = f"{folder}/plots/{path.name}"
                files[listed["quality_plots"][key]] = path.read_bytes()
    if info.export_files:  # the export's token files, copied block by block by the destination
        listed["export"] = sorted(f"{folder}/export/{relative}" for relative in info.export_files)
        files.update({f"{folder}/export/{relative}": copy for relative, copy in info.export_files.items()})
    report["files"] = listed
    files[listed["stats"]] = json_bytes(report)
    return ReleaseBundle(config_name=config_name, splits=splits, report=report, files=files, command=info.command)
