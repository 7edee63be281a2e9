"""The dataset card of a release: what it says beyond the rows (`ReleaseInfo`), and its rendering.

The card only reads statistics: each config's `stats.json` (built by `hf_ipt.release.bundle.config_report` from the
stage reports and the released rows, see `hf_ipt.stats`) is rendered by `render_card` with the card template
(`dataset_cards/hf_ipt_dataset_card.md`). Facts derived from the recipe carry the recipe's names: the synthesizer's
`model` and `rounds` (`synth.model`, `synth.rounds`), a source's `path` and `name` (subset) like `source.path` and
`source.name`.

Example:
    >>> info = ReleaseInfo(synthesizer=SynthesizerInfo(rounds=2), sources=[SourceInfo("wikitext", license="mit")])
    >>> print(render_card({"default": None}, repo_id="me/x", version="v1.0"))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.resources
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData

from hf_ipt import columns as C
from hf_ipt.markers import DEFAULT_MODEL
from hf_ipt.mixing import RAW
from hf_ipt.mixing import SOURCE_KINDS as MIX_SOURCE_KINDS
from hf_ipt.quality import card_view as quality_card_view
from hf_ipt.quality import warnings_of as quality_warnings
from hf_ipt.redaction import scrub
from hf_ipt.release.plots import PLOT_FILES
from hf_ipt.release.training import training_view
from hf_ipt.validation import check_fields

DEFAULT_TEMPLATE = "hf_ipt_dataset_card.md"
RELEASE_INFO_DIR = "release_info"
SOURCE_KINDS = (*MIX_SOURCE_KINDS, "other")  # how a source fed the release: a mix source kind, or other
# The license ids the Hub accepts in a card's `license` field (https://huggingface.co/docs/hub/repositories-licenses);
# the Hub refuses a card commit with any other id, so a card maps other licenses to `other` + `license_name`.
# tests/hub_server.py refuses what the Hub refuses with this same list.
HUB_LICENSE_IDS = frozenset(
    """
    apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
    afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0
    cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0
    cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0
    cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0
    gfdl gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl
    apple-amlr mpl-2.0 odc-by odbl openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr
    deepfloyd-if-license fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2 llama3.3 llama4 gemma
    unknown other
    """.split()
)
# where `license_link` points for a license that is not a Hub id when card.license_link is not set: the card's own
# "Licenses" section, which names every source's license
DEFAULT_LICENSE_LINK = "README.md#licenses"
_LANGUAGE_RE = re.compile(r"^([a-z]{2,3}(-[A-Za-z0-9]{2,8})*|code|multilingual)$")  # what the Hub validates
_HF_SIZE_CATEGORIES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
    (10_000_000_000, "1B<n<10B"),
    (100_000_000_000, "10B<n<100B"),
    (1_000_000_000_000, "100B<n<1T"),
)


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class SynthesizerInfo:
    """How the instruction-response pairs were synthesized.

    Example:
        >>> SynthesizerInfo(engine="vllm", rounds=3, sampling={"temperature": 0}).model
        'instruction-pretrain/instruction-synthesizer'
    """

    model: str = field(default=DEFAULT_MODEL, metadata=_help("Hub id or path of the synthesizer (synth.model)."))
    revision: str | None = field(default=None, metadata=_help("Commit or tag of the synthesizer model used."))
    engine: str | None = field(default=None, metadata=_help("Inference engine, e.g. 'vllm' or 'transformers'."))
    rounds: int | None = field(
        default=None, metadata={"help": "M: the number of synthesis rounds (synth.rounds).", "min": 1}
    )
    max_model_len: int | None = field(
        default=None, metadata={"help": "Context length the prompts were fitted into.", "min": 1}
    )
    sampling: dict[str, Any] = field(
        default_factory=dict, metadata=_help("Sampling parameters, e.g. {'temperature': 0, 'max_new_tokens': 400}.")
    )

    def __post_init__(self) -> None:
        check_fields(self, "SynthesizerInfo")
        if not self.model.strip():
            raise ValueError(f"SynthesizerInfo.model must be a non-empty string, got {self.model!r}")
        self.sampling = dict(self.sampling)


@dataclass
class SourceInfo:
    """One dataset the release was built from.

    Example:
        >>> SourceInfo("Open-Orca/OpenOrca", kind="general_instructions", license="mit").kind
        'general_instructions'
    """

    path: str = field(metadata=_help("Hub id (e.g. 'Open-Orca/OpenOrca') or local path of the source (source.path)."))
    kind: str = field(
        default=RAW,
        metadata={"help": f"Role of the source in the mix, one of {SOURCE_KINDS}.", "choices": SOURCE_KINDS},
    )
    license: str | None = field(
        default=None, metadata=_help("License identifier of the source (Hub ids, e.g. 'mit'); None when unknown.")
    )
    revision: str | None = field(default=None, metadata=_help("Commit or tag of the source dataset that was read."))
    fingerprint: str | None = field(default=None, metadata=_help("`datasets` fingerprint of the source as read."))
    name: str | None = field(default=None, metadata=_help("Config (subset) of the source (source.name), if any."))
    split: str | None = field(default=None, metadata=_help("Split of the source dataset that was read."))
    mix_names: list[str] = field(
        default_factory=list,
        metadata=_help(
            "Values of the source column on this source's rows: its names in mix.weights (e.g. 'augmented', "
            "'general'); the card counts those rows for this source."
        ),
    )

    def __post_init__(self) -> None:
        self.mix_names = [self.mix_names] if isinstance(self.mix_names, str) else list(self.mix_names)
        check_fields(self, f"SourceInfo({self.path!r})")
        if not self.path.strip():
            raise ValueError(f"SourceInfo.path must be a non-empty string, got {self.path!r}")
        if self.license is not None and not self.license.strip():
            raise ValueError(
                f"SourceInfo.license for {self.path!r} must be a license id or None (unknown), got {self.license!r}"
            )

    @classmethod
    def from_dataset(cls, dataset: Any, path: str, **kwargs: Any) -> SourceInfo:
        """Describe a loaded `datasets.Dataset`, taking its fingerprint (and split, when it has one).

        Example:
            >>> SourceInfo.from_dataset(Dataset.from_dict({"text": ["a"]}), "me/raw").path  # doctest: +SKIP
            'me/raw'
        """
        kwargs.setdefault("fingerprint", getattr(dataset, "_fingerprint", None))
        split = getattr(dataset, "split", None)
        kwargs.setdefault("split", str(split) if split is not None else None)
        return cls(path=path, **kwargs)


@dataclass
class ReleaseInfo:
    """Everything the card says about one config beyond what hf-ipt computes from its rows.

    Example:
        >>> info = ReleaseInfo(
        ...     synthesizer=SynthesizerInfo(revision="0a1b2c3", rounds=3, max_model_len=4096),
        ...     sources=[SourceInfo("me/raw-corpus", license="odc-by"),
        ...              SourceInfo("Open-Orca/OpenOrca", kind="general_instructions", license="mit")],
        ...     mixing_report={"requested_ratio": {"augmented": 1, "general": 1}},
        ... )
        >>> combine_licenses(info.sources)
        ['odc-by', 'mit']
    """

    synthesizer: SynthesizerInfo | None = field(default=None, metadata=_help("How the pairs were synthesized."))
    sources: list[SourceInfo] = field(default_factory=list, metadata=_help("Source datasets of this config."))
    mixing_report: Mapping[str, Any] | None = field(
        default=None, metadata=_help("Report of the mixing step (requested/achieved ratio, rows/tokens per source).")
    )
    templify_stats: Mapping[str, Any] | None = field(
        default=None, metadata=_help("Statistics of the templify step (modes, families, pairs per text).")
    )
    synthesis_stats: Mapping[str, Any] | None = field(
        default=None, metadata=_help("Synthesis statistics, for data that no longer carries the synthesis columns.")
    )
    quality: Mapping[str, Any] | None = field(
        default=None,
        metadata=_help("Quality report of the synthesized pairs (hf_ipt.quality.quality_report): the card's Quality."),
    )
    recipe: Mapping[str, Any] | str | os.PathLike | None = field(
        default=None, metadata=_help("Resolved recipe: a dict, or the path of a YAML/JSON file. Uploaded redacted.")
    )
    command: str | None = field(default=None, metadata=_help("Exact command line that reproduces the config."))
    description: str | None = field(default=None, metadata=_help("A paragraph about this config for the card."))
    text_column: str | None = field(
        default=C.TEXT, metadata=_help("Column holding the pre-training text; None when the data has none.")
    )
    source_column: str | None = field(
        default=C.SOURCE, metadata=_help("Column naming the source of each row; used when present.")
    )
    template_column: str | None = field(
        default=C.MODE, metadata=_help("Column naming the template mode of each row (templify's); used when present.")
    )
    pairs_count_column: str | None = field(
        default=C.NUM_PAIRS, metadata=_help("Column with the number of pairs of each text (templify's); when present.")
    )
    token_count_column: str | None = field(
        default=C.NUM_TOKENS, metadata=_help("Column with the token count of each text (mixing's); when present.")
    )
    tokenizer: Any = field(
        default=None,
        metadata=_help("Tokenizer (name, path or object) to count tokens of the text column; None counts characters."),
    )
    export: Mapping[str, Any] | None = field(
        default=None, metadata=_help("Report of the export stage whose files this config carries (see export_files).")
    )
    export_files: Mapping[str, Any] = field(
        default_factory=dict,
        metadata=_help(
            "Token files released with this config, {path under release_info/<config>/export/: hf_ipt.store.FileCopy}"
            ", copied block by block."
        ),
    )

    def __post_init__(self) -> None:
        self.sources = list(self.sources)
        for name in ("mixing_report", "templify_stats", "synthesis_stats"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Mapping) and callable(getattr(value, "to_dict", None)):
                setattr(self, name, value.to_dict())  # e.g. hf_ipt.mixing.MixReport
        check_fields(self, "ReleaseInfo")
        if self.synthesizer is not None and not isinstance(self.synthesizer, SynthesizerInfo):
            raise TypeError(
                f"ReleaseInfo.synthesizer must be a SynthesizerInfo, got {type(self.synthesizer).__name__}"
            )
        for source in self.sources:
            if not isinstance(source, SourceInfo):
                raise TypeError(f"ReleaseInfo.sources must hold SourceInfo objects, got {type(source).__name__}")
        names = [s.path for s in self.sources]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"ReleaseInfo.sources lists these sources twice: {duplicates}")
        if not (self.tokenizer is None or isinstance(self.tokenizer, (str, os.PathLike)) or callable(self.tokenizer)):
            raise TypeError(
                f"ReleaseInfo.tokenizer must be a tokenizer name, a path or a tokenizer object, got "
                f"{type(self.tokenizer).__name__}"
            )


@dataclass
class CardOptions:
    """Card-wide settings: metadata the data cannot tell, and overrides of the default template.

    Example:
        >>> CardOptions(pretty_name="IPT corpus", extra_sections={"Contact": "Open a discussion."}).language
        ('en',)
    """

    pretty_name: str | None = field(default=None, metadata=_help("Title of the card; defaults to the repo name."))
    summary: str | None = field(default=None, metadata=_help("One paragraph shown under the title."))
    language: Sequence[str] = field(default=("en",), metadata=_help("ISO 639 codes of the text's languages."))
    task_categories: Sequence[str] = field(
        default=("text-generation",), metadata=_help("Hub task categories of the dataset.")
    )
    tags: Sequence[str] = field(
        default=("instruction-pretraining", "synthetic", "hf-ipt"), metadata=_help("Hub tags of the dataset.")
    )
    license: str | Sequence[str] | None = field(
        default=None,
        metadata=_help("Explicit license(s), replacing the combination of the sources' licenses. You vouch for it."),
    )
    license_link: str | None = field(
        default=None,
        metadata=_help(
            "URL (or repo file) of the license text, for a license that is not a Hub license id (the card then "
            "says `license: other` with `license_name`); defaults to the card's Licenses section."
        ),
    )
    template: str | os.PathLike | None = field(
        default=None, metadata=_help("Path of a Jinja card template, or the template text itself.")
    )
    extra_sections: Mapping[str, str] = field(
        default_factory=dict,
        metadata=_help("{'## title': markdown}: replaces the section with that title, or is appended at the end."),
    )

    def __post_init__(self) -> None:
        check_fields(self, "card")
        self.language, self.task_categories, self.tags = (
            tuple(self.language),
            tuple(self.task_categories),
            tuple(self.tags),
        )
        if not all(isinstance(k, str) for k in self.extra_sections):
            raise TypeError("card.extra_sections must map section titles (str) to markdown (str)")
        self.extra_sections = dict(self.extra_sections)
        # the Hub refuses a card whose metadata it cannot validate: refuse here, before any upload
        bad = [code for code in self.language if not isinstance(code, str) or not _LANGUAGE_RE.match(code)]
        if bad:
            raise ValueError(
                f"card.language must hold ISO 639 codes such as 'en' or 'fr' (or 'code', 'multilingual'), got {bad}"
            )
        for key in ("license", "license_link"):
            value = getattr(self, key)
            values = [value] if isinstance(value, str) or value is None else list(value)
            if any(not isinstance(v, str) or not v.strip() for v in values if v is not None):
                raise ValueError(
                    f"card.{key} must be a non-empty string (or a list of them for license), got {value!r}"
                )


# --------------------------------------------------------------------------------------------------- templates
def template_path(name: str = DEFAULT_TEMPLATE) -> Path:
    """Path of a card template shipped with hf-ipt: inside the installed package, or in a source checkout.

    The wheel carries the top-level `dataset_cards/` folder as `hf_ipt/dataset_cards/`; an editable install or a
    source checkout has it beside the `hf_ipt` package.

    Example:
        >>> template_path().name
        'hf_ipt_dataset_card.md'
    """
    packaged = importlib.resources.files("hf_ipt").joinpath("dataset_cards", name)
    if packaged.is_file():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parents[2] / "dataset_cards" / name
    if checkout.is_file():
        return checkout
    raise FileNotFoundError(
        f"card template {name!r} is neither in the installed package (hf_ipt/dataset_cards/) nor in a source "
        f"checkout ({checkout.parent}); reinstall hf-ipt or pass CardOptions(template=...)"
    )


_find_template = template_path


def _default_template_or_none() -> str | None:
    try:
        return str(_find_template())
    except FileNotFoundError:
        return None


class IptDatasetCard(DatasetCard):
    """`DatasetCard` whose default template is hf-ipt's release card (`dataset_cards/hf_ipt_dataset_card.md`).

    Example:
        >>> card = IptDatasetCard.from_template(DatasetCardData(license="mit"), repo_id="me/x", version="v1.0",
        ...                                     configs=[], license_rows=[])  # doctest: +SKIP
    """

    # distilabel-style class attribute; resolved again (with a clear error) each time a card is rendered
    default_template_path = _default_template_or_none()

    @classmethod
    def from_template(  # type: ignore[override]
        cls,
        card_data: DatasetCardData,
        template_path: str | None = None,
        template_str: str | None = None,
        **template_kwargs: Any,
    ) -> IptDatasetCard:
        if template_path is None and template_str is None:
            template_path = str(_find_template())
        return super().from_template(
            card_data, template_path=template_path, template_str=template_str, **template_kwargs
        )


# --------------------------------------------------------------------------------------------------- statistics
def size_category(rows: int) -> str:
    """The Hub's `size_categories` value for a number of rows.

    Example:
        >>> size_category(999), size_category(1000), size_category(2_500_000)
        ('n<1K', '1K<n<10K', '1M<n<10M')
    """
    for bound, label in _HF_SIZE_CATEGORIES:
        if rows < bound:
            return label
    return "n>1T"


def sidecar_dir(config_name: str) -> str:
    """Folder of the repo holding a config's stats.json, recipe.yaml and plots.

    Example:
        >>> sidecar_dir("augmented")
        'release_info/augmented'
    """
    return f"{RELEASE_INFO_DIR}/{config_name}"


def combine_licenses(sources: Sequence[Mapping[str, Any] | SourceInfo]) -> list[str]:
    """Licenses of the sources, each once, in order of appearance; "unknown" when a source has none.

    Nothing is invented: a source without a license makes the combination include "unknown".

    Example:
        >>> combine_licenses([SourceInfo("a", license="odc-by"), SourceInfo("b", license="mit"), SourceInfo("c")])
        ['odc-by', 'mit', 'unknown']
    """
    licenses: list[str] = []
    for source in sources:
        value = source.license if isinstance(source, SourceInfo) else source.get("license")
        value = value or "unknown"
        if value not in licenses:
            licenses.append(value)
    return licenses


def license_metadata(licenses: Sequence[str], link: str | None = None) -> dict[str, Any]:
    """The card's license fields for `licenses`: Hub license ids as they are; any other id becomes `other`, named in
    `license_name` and linked by `license_link` (the Hub refuses a card with an unknown id, so a push would land its
    data and then fail on the card).

    Example:
        >>> license_metadata(["odc-by"])
        {'license': 'odc-by'}
        >>> license_metadata(["odc-by", "psf-2.0"])
        {'license': ['odc-by', 'other'], 'license_name': 'psf-2.0', 'license_link': 'README.md#licenses'}
    """
    known = [lic for lic in dict.fromkeys(licenses) if lic.lower() in HUB_LICENSE_IDS]
    others = [lic for lic in dict.fromkeys(licenses) if lic.lower() not in HUB_LICENSE_IDS]
    chosen = [lic.lower() for lic in known] + (["other"] if others and "other" not in known else [])
    if not chosen:
        return {}
    found: dict[str, Any] = {"license": chosen[0] if len(chosen) == 1 else chosen}
    if others:
        found["license_name"] = ", ".join(others)
        found["license_link"] = link or DEFAULT_LICENSE_LINK
    return found


def is_hub_dataset_id(path: str) -> bool:
    """Whether a source path names a Hub dataset (`source_datasets` takes only those): not a local file or folder,
    not a URL, not hf-ipt's `bundled:` data.

    Example:
        >>> [is_hub_dataset_id(p) for p in ("allenai/c4", "wikitext", "bundled:quickstart", "/data/x.jsonl", "a.csv")]
        [True, True, False, False, False]
    """
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(path, str) or ":" in path or path.startswith((".", "/", "~")) or os.path.exists(path):
        return False
    if re.search(r"\.(jsonl?|csv|tsv|parquet|arrow|txt|gz|zst)$", path, re.IGNORECASE):
        return False
    try:
        validate_repo_id(path)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------------------- rendering
def source_id(source: Mapping[str, Any]) -> tuple[str, str | None]:
    """(path, subset) of a source as stats.json records it ({"path", "name"}: the recipe's names).

    Example:
        >>> source_id({"path": "allenai/c4", "name": "en"})
        ('allenai/c4', 'en')
    """
    return source["path"], source.get("name")


def _sum_entries(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-key sums of number entries ({} for none); a key missing from one entry is None (unknown)."""
    if not entries:
        return {}
    keys = set().union(*entries)
    return {
        key: sum(e[key] for e in entries) if all(isinstance(e.get(key), (int, float)) for e in entries) else None
        for key in keys
    }


def _fmt_int(value: Any) -> str:
    return f"{int(value):,}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "—"


def _fmt_share(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else "—"


def _fmt_number(value: Any, digits: int = 2) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return "—"
    return f"{value:,.{digits}f}"


def _code(value: Any) -> str:
    return f"`{value}`" if value not in (None, "") else "—"


def _config_view(name: str, report: Mapping[str, Any] | None, is_default: bool, splits: Mapping[str, int] | None):
    view: dict[str, Any] = {
        "name": name,
        "variable": re.sub(r"\W", "_", name).strip("_") or "dataset",
        "is_default": is_default,
        "has_report": report is not None,
        "release_version": None,
    }
    if view["variable"][0].isdigit():
        view["variable"] = "config_" + view["variable"]
    if report is None:
        view["splits_text"] = ", ".join(f"{s} ({_fmt_int(n)})" for s, n in (splits or {}).items()) or "—"
        view["rows_text"] = _fmt_int(sum((splits or {}).values())) if splits else "—"
        return view
    stats = report.get("statistics") or {}
    provenance = report.get("provenance") or {}
    split_rows = {s: v.get("rows") for s, v in (stats.get("splits") or {}).items()}
    view.update(
        release_version=report.get("release_version"),
        hf_ipt_version=report.get("hf_ipt_version") or "unknown",
        description=report.get("description"),
        command=report.get("command"),
        splits_text=", ".join(f"{s} ({_fmt_int(n)})" for s, n in split_rows.items()),
        rows_text=_fmt_int(stats.get("rows")),
        recipe_path=(report.get("files") or {}).get("recipe"),
        stats_path=f"{sidecar_dir(name)}/stats.json",
    )

    synth = provenance.get("synthesizer")
    if synth:
        # stats.json of releases before the recipe's names were used say model_id / num_rounds
        model = synth.get("model", synth.get("model_id"))
        rows = [("Model", _code(model)), ("Model revision", _code(synth.get("revision")))]
        if synth.get("engine"):
            rows.append(("Engine", synth["engine"]))
        rows.append(("Rounds (M)", _fmt_int(synth.get("rounds", synth.get("num_rounds")))))
        rows.append(("max_model_len", _fmt_int(synth.get("max_model_len"))))
        for key, value in sorted((synth.get("sampling") or {}).items()):
            rows.append((f"Sampling: {key}", _code(value)))
        view["synthesizer"] = rows

    source_stats = stats.get("sources") or {}
    unit = source_stats.get("ratio_unit")
    per_source = source_stats.get("per_source") or {}
    reported = source_stats.get("reported") or {}
    view["size_unit_title"] = "Tokens" if unit in (None, "tokens") else "Characters"
    # the source column names a row's source by its mix name ('augmented', 'general'); a described source
    # claims the rows of its mix names (or of its path, for data not made by the mix)
    listed = {n for s in provenance.get("sources") or [] for n in (s.get("mix_names") or [source_id(s)[0]])}
    view["sources"] = []
    for source in provenance.get("sources") or []:
        path, subset = source_id(source)
        names = source.get("mix_names") or [path]
        counted = _sum_entries([per_source[n] for n in names if n in per_source])
        from_report = _sum_entries([reported[n] for n in names if n in reported])
        size_key = "tokens" if unit in (None, "tokens") else "characters"
        size = counted.get(size_key)
        size_text = _fmt_int(size)
        if size is None and from_report.get("tokens") is not None and size_key == "tokens":
            size_text = f"{_fmt_int(from_report['tokens'])} (reported)"
        rows_text = (
            _fmt_int(counted.get("rows"))
            if counted
            else (f"{_fmt_int(from_report['rows'])} (reported)" if from_report.get("rows") is not None else "—")
        )
        view["sources"].append(
            {
                "name": _code(path)
                + (f" / {subset}" if subset else "")
                + (f" ({source['split']})" if source.get("split") else "")
                # the name the mix ratio table and the rows' source column use
                + (" as " + ", ".join(_code(n) for n in source["mix_names"]) if source.get("mix_names") else ""),
                "kind": source.get("kind") or "—",
                "revision": _code(source.get("revision")),
                "fingerprint": _code(source.get("fingerprint")),
                "license": source.get("license") or "unknown",
                "rows": rows_text,
                "size": size_text,
            }
        )
    for name in sorted(set(per_source) - listed):
        counted = per_source[name]
        view["sources"].append(
            {
                "name": _code(name) + " (not described)",
                "kind": "—",
                "revision": "—",
                "fingerprint": "—",
                "license": "unknown",
                "rows": _fmt_int(counted.get("rows")),
                "size": _fmt_int(counted.get("tokens" if unit == "tokens" else "characters")),
            }
        )

    requested = source_stats.get("requested_ratio") or {}
    achieved = source_stats.get("achieved_ratio") or {}
    if requested or achieved:
        view["mix_unit"] = unit or "tokens"
        if source_stats.get("achieved_origin") == "mixing report":
            view["mix_unit"] += " (achieved shares as reported by the mixing step)"
        view["mix"] = [
            {
                "source": _code(name),
                "requested": _fmt_share(requested.get(name)),
                "achieved": _fmt_share(achieved.get(name)),
            }
            for name in sorted(set(requested) | set(achieved))
        ]

    text = stats.get("text")
    if text:
        lines = []
        for key, label in (("characters", "characters"), ("tokens", "tokens")):
            lengths = text.get(key)
            count = (lengths or {}).get("count")
            if count:
                tokenizer = ""
                if key == "tokens" and lengths.get("tokenizer"):
                    counted_by = f", counted by {lengths['counted_by']}" if lengths.get("counted_by") else ""
                    tokenizer = f" (tokenizer `{lengths['tokenizer']}`{counted_by})"
                lines.append(
                    f"{label.capitalize()}{tokenizer}: {_fmt_int(lengths['total'])} in total over "
                    f"{_fmt_int(count)} rows; mean {_fmt_number(lengths['mean'], 1)}, "
                    f"min {_fmt_int(lengths['min'])}, max {_fmt_int(lengths['max'])} per row."
                )
        if text.get("null_texts"):
            lines.append(f"Rows whose `{text['column']}` is not a string: {_fmt_int(text['null_texts'])}.")
        view["text"] = lines

    pairs = stats.get("pairs")
    if pairs:
        origin = "" if pairs.get("origin") == "data" else f" (as reported by the {pairs['origin']})"
        view["pairs"] = [
            f"Pairs{origin}: {_fmt_int(pairs['total'])} over {_fmt_int(pairs['texts'])} texts, "
            f"{_fmt_number(pairs['mean'])} per text on average."
        ]
        if pairs.get("texts_without_pairs") is not None:
            view["pairs"].append(f"Texts without any pair: {_fmt_int(pairs['texts_without_pairs'])}.")
        if pairs.get("per_text"):
            view["pairs"].append(
                "Texts by number of pairs: "
                + ", ".join(f"{n}: {_fmt_int(c)}" for n, c in pairs["per_text"].items())
                + "."
            )

    synthesis = stats.get("synthesis")
    if synthesis:
        view["statuses"] = [(_code(k), _fmt_int(v)) for k, v in (synthesis.get("status_counts") or {}).items()]
        if synthesis.get("special_strings") is not None:
            view["special_strings"] = _fmt_int(synthesis["special_strings"])
        if synthesis.get("parse_drops") is not None:
            rates = synthesis.get("drop_rates") or {}
            view["parse_drops"] = [
                {"reason": _code(reason), "count": _fmt_int(count), "rate": _fmt_share(rates.get(reason))}
                for reason, count in synthesis["parse_drops"].items()
            ] + [
                {
                    "reason": "all reasons",
                    "count": _fmt_int(sum(synthesis["parse_drops"].values())),
                    "rate": _fmt_share(synthesis.get("total_drop_rate")),
                }
            ]
            view["pieces_text"] = _fmt_int(synthesis.get("pieces"))
        view["speculative"] = (synthesis.get("speculative") or {}).get("line")  # shown only when it was on

    modes = stats.get("template_modes")
    if modes and modes.get("counts"):
        view["template_modes"] = [(_code(k), _fmt_int(v)) for k, v in modes["counts"].items()]
        if modes.get("origin") == "data":
            view["template_modes_origin"] = "Counted from the rows of this config."
        else:
            view["template_modes_origin"] = "As reported by the templify step."
        if modes.get("families"):
            view["template_families"] = [(_code(k), _fmt_int(v)) for k, v in modes["families"].items()]

    view["quality"] = quality_card_view(report.get("quality"), (report.get("files") or {}).get("quality_plots"))
    view["warnings"] = quality_warnings(report.get("quality"))
    view["counts"] = _counts(report)
    view["left_out"] = _left_out(provenance.get("mixing_report"))
    view["structure"] = _structure(stats)
    view["training"] = training_view(report, sidecar_dir(view["name"]))

    plots = (report.get("files") or {}).get("plots") or {}
    view["plots"] = [
        {"title": PLOT_FILES[key][1] if key in PLOT_FILES else key, "path": path} for key, path in plots.items()
    ]
    return view


def _counts(report: Mapping[str, Any]) -> list[str]:
    """The card's vocabulary, each word with its count in this config: chunks (what the synthesizer read), pairs,
    texts (what templify wrote) and rows (what was released), the words every section uses."""
    stats = report.get("statistics") or {}
    provenance = report.get("provenance") or {}
    synthesis = provenance.get("synthesis_stats") or {}
    templify = provenance.get("templify_stats") or {}
    quality = report.get("quality") or {}
    chunks = synthesis.get("rows", quality.get("rows"))
    pairs = synthesis.get("pairs", quality.get("pairs"))
    found = []
    if chunks is not None:
        found.append(
            f"**chunks** ({_fmt_int(chunks)}): the pieces of the source texts the synthesizer read, one per source "
            "row, or several when a long text was cut to fit the synthesizer's context"
        )
    if pairs is not None:
        found.append(f"**pairs** ({_fmt_int(pairs)}): the question-answer pairs the synthesizer wrote about them")
    if templify.get("texts") is not None:
        found.append(
            f"**texts** ({_fmt_int(templify['texts'])}): the pre-training texts made from them, each a chain of "
            "chunks with their pairs"
        )
    if stats.get("rows") is not None:
        found.append(f"**rows** ({_fmt_int(stats['rows'])}): the rows of this config")
    return found


def _left_out(mixing: Mapping[str, Any] | None) -> list[str]:
    """What the mix did not take of each source, and which source bounds the mix (used whole): the rows a reader
    would otherwise not know exist."""
    lines = []
    for name, entry in ((mixing or {}).get("sources") or {}).items():
        unit = "texts" if name == "augmented" else "rows"
        total, selected = entry.get("rows_total"), entry.get("rows_selected")
        excluded = entry.get("rows_excluded") or {}
        tokens_left = (entry.get("tokens_available") or 0) - (entry.get("tokens_selected") or 0)
        if entry.get("used_whole") and not excluded:
            lines.append(f"`{name}`: all {_fmt_int(total)} {unit} taken; it bounds the mix at the requested ratio.")
            continue
        text = f"`{name}`: {_fmt_int(selected)} of its {_fmt_int(total)} {unit} taken"
        if entry.get("rows_unused"):
            text += (
                f"; {_fmt_int(entry['rows_unused'])} {unit} ({_fmt_int(tokens_left)} tokens) left out to keep the "
                "requested ratio"
            )
        if excluded:
            text += "; excluded: " + ", ".join(f"{_fmt_int(n)} ({reason})" for reason, n in excluded.items())
        lines.append(text + ".")
    return lines


def _structure(stats: Mapping[str, Any]) -> dict[str, Any] | None:
    """Every released column with its type and what it holds, and one example row (as stats.json keeps it)."""
    columns = stats.get("columns") or []
    if not columns:
        return None
    rows = [
        (_code(c["name"]), _code(c["dtype"]), C.DESCRIPTIONS.get(c["name"], "a column of the source, kept as it was"))
        for c in columns
    ]
    example = stats.get("example") or {}
    values = example.get("row") or {}
    # multi-line strings (the text) as blocks of their own, every other value in a table, as JSON writes it
    texts = [(name, value) for name, value in values.items() if isinstance(value, str) and "\n" in value]
    table = [
        (_code(name), "see below" if (name, value) in texts else _code(json.dumps(value, ensure_ascii=False)))
        for name, value in values.items()
    ]
    return {"columns": rows, "example": table or None, "example_texts": texts, "example_where": example}


def _hub_config_splits(dataset_info: Any) -> dict[str, dict[str, int]]:
    """{config: {split: rows}} from the `dataset_info` metadata that `push_to_hub` maintains."""
    entries = dataset_info if isinstance(dataset_info, list) else [dataset_info] if dataset_info else []
    found = {}
    for entry in entries:
        if isinstance(entry, Mapping):
            splits = {
                s.get("name"): s.get("num_examples") for s in entry.get("splits") or [] if isinstance(s, Mapping)
            }
            found[entry.get("config_name", "default")] = {k: v for k, v in splits.items() if isinstance(v, int)}
    return found


def replace_sections(markdown: str, sections: Mapping[str, str]) -> str:
    """Replace the body of each `## Title` section named in `sections`; append the ones the document lacks.

    Example:
        >>> replace_sections("# T\\n\\n## A\\n\\nold\\n\\n## B\\n\\nkeep\\n", {"A": "new", "C": "added"})
        '# T\\n\\n## A\\n\\nnew\\n\\n## B\\n\\nkeep\\n\\n## C\\n\\nadded\\n'
    """
    pending = {title.lstrip("#").strip(): body for title, body in sections.items()}
    lines = markdown.splitlines()
    out: list[str] = []
    skipping = False
    in_fence = False
    for line in lines:
        if line.startswith("```"):
            in_fence = not in_fence
        heading = not in_fence and line.startswith("## ")
        if heading:
            title = line[3:].strip()
            if skipping:
                skipping = False
            if title in pending:
                out += [line, "", pending.pop(title).strip(), ""]
                skipping = True
                continue
        if not skipping:
            out.append(line)
    text = "\n".join(out).rstrip() + "\n"
    for title, body in pending.items():
        text += f"\n## {title}\n\n{body.strip()}\n"
    return text


def template_arguments(template: str | os.PathLike | None) -> dict[str, str]:
    """How `render_card` reads a `CardOptions.template`: {} (hf-ipt's template), {"template_path": ...} for a file,
    or {"template_str": ...} for template text (it has Jinja markup). A path that is not a file is a
    FileNotFoundError, so a preflight can call this before any stage runs.

    Example:
        >>> template_arguments("Card of {{ repo_id }}")
        {'template_str': 'Card of {{ repo_id }}'}
        >>> template_arguments(None)
        {}
    """
    if template is None:
        return {}
    if isinstance(template, os.PathLike) or (
        isinstance(template, str) and "{{" not in template and "{%" not in template
    ):
        path = Path(template)
        if not path.is_file():
            raise FileNotFoundError(
                f"card.template {str(template)!r} is not a file and has no Jinja markup; pass the path "
                "of a template file or the template text"
            )
        return {"template_path": str(path)}
    return {"template_str": template}


def render_card(
    reports: Mapping[str, Mapping[str, Any] | None],
    *,
    repo_id: str,
    version: str,
    hub_configs: Sequence[Mapping[str, Any]] | None = None,
    dataset_info: Any = None,
    options: CardOptions | None = None,
    local_path: str | None = None,
    more_sections: Mapping[str, str] | None = None,
) -> IptDatasetCard:
    """Render the card of a revision from the reports of its configs ({config: stats.json content or None}).

    `hub_configs` and `dataset_info` are the `configs` / `dataset_info` metadata `push_to_hub` wrote; they are kept
    verbatim so `load_dataset` finds every config's files. `local_path`: the folder of a local release, which the
    card's loading snippet then reads (`load_dataset(folder, config)`) instead of the Hub repo at the version tag.
    `more_sections` ({title: markdown}): sections a stage adds, rendered before "Licenses" (`card.extra_sections`
    still replaces or appends after them).
    The metadata is valid for the Hub whatever the destination (`license_metadata`, `is_hub_dataset_id`), so a
    local release and its later push carry the same card.

    Example:
        >>> card = render_card({"augmented": None}, repo_id="me/ipt", version="v1.0.0")
        >>> card.data.pretty_name, "`v1.0.0`" in str(card)
        ('ipt', True)
    """
    options = options or CardOptions()
    hub_configs = [dict(c) for c in hub_configs or []]
    names = [c["config_name"] for c in hub_configs if "config_name" in c]
    names += [n for n in reports if n not in names]
    defaults = {c["config_name"] for c in hub_configs if c.get("default")}
    hub_splits = _hub_config_splits(dataset_info)
    views = [_config_view(n, reports.get(n), n in defaults, hub_splits.get(n)) for n in names]

    sources = [s for n in names if reports.get(n) for s in (reports[n].get("provenance") or {}).get("sources") or []]
    license_rows = []
    for source in sources:
        row = (_code(source_id(source)[0]), source.get("license") or "unknown")
        if row not in license_rows:
            license_rows.append(row)
    if options.license is not None:
        licenses = [options.license] if isinstance(options.license, str) else list(options.license)
    else:
        licenses = combine_licenses(sources)
    rows_per_config = [
        (reports[n].get("statistics") or {}).get("rows") if reports.get(n) else sum(hub_splits.get(n, {}).values())
        for n in names
    ]
    source_names = [n for n in dict.fromkeys(source_id(s)[0] for s in sources) if is_hub_dataset_id(n)]
    license_fields = license_metadata(licenses, options.license_link)

    card_data = DatasetCardData(
        language=list(options.language) or None,
        license=license_fields.pop("license", None),
        size_categories=sorted({size_category(r) for r in rows_per_config if isinstance(r, int)}) or None,
        source_datasets=source_names or None,
        task_categories=list(options.task_categories) or None,
        pretty_name=options.pretty_name or repo_id.split("/")[-1],
        tags=list(options.tags) or None,
        configs=hub_configs or None,
        dataset_info=dataset_info or None,
        **license_fields,
    )
    context = {
        "title": options.pretty_name or repo_id.split("/")[-1],
        "summary": options.summary,
        "repo_id": repo_id,
        "version": version,
        "configs": views,
        "license_rows": license_rows,
        "license_name": card_data.to_dict().get("license_name"),
        "hf_ipt_version": next((v["hf_ipt_version"] for v in views if v.get("hf_ipt_version")), None),
        "more_sections": list((more_sections or {}).items()),
        "local_path": local_path,
    }
    card = IptDatasetCard.from_template(card_data, **template_arguments(options.template), **context)
    text = str(card)
    if options.extra_sections:
        text = replace_sections(text, options.extra_sections)
    # sections that render empty leave runs of blank lines behind; no secret reaches a card, whoever writes it
    # (outside code blocks: an example row's text is shown as it is)
    parts = re.split(r"(^```.*?^```$)", text, flags=re.S | re.M)
    text = "".join(part if i % 2 else re.sub(r"\n{3,}", "\n\n", part) for i, part in enumerate(parts))
    return IptDatasetCard(scrub(text))
