"""The release stage: the final data (mixed, or templified when the run has no mix) with its card, to the Hub
(commit, then tag: `hf_ipt.release.hub`) or to a local folder (`run.output_dir/release/`: `hf_ipt.release.local`).

Everything the card says beyond the rows comes from the run folder itself (`release_info`): each earlier stage
recorded its settings and committed its report with its output, so the card describes what made the data, whether
the stages ran from `hf-ipt run` or from Python. One bundle (`hf_ipt.release.bundle`) is built from the data and that
information, then written to the destination. A local version never changes unless forced.

Example:
    >>> ReleaseStage(ReleaseConfig(repo_id="local/x", version="v0.1"), to="local").run(run).output  # doctest: +SKIP
    'output/quickstart/release'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from hf_ipt.columns import MODE, STATUS_ENGINE_ERROR
from hf_ipt.config import AUGMENTED_SOURCE, RecipeConfig, RunConfig, in_field_order
from hf_ipt.deadline import within
from hf_ipt.mixing import RAW
from hf_ipt.preflight import HUB_TIMEOUT, Check, hub_down, hub_unreachable, hub_unreachable_once
from hf_ipt.release.bundle import build_bundle
from hf_ipt.release.card import CardOptions, ReleaseInfo, SourceInfo, SynthesizerInfo, template_arguments
from hf_ipt.release.hub import ReleaseConfig, list_versions, publish_release
from hf_ipt.release.local import VersionConflictError, check_local_version, release_files
from hf_ipt.stages.base import (
    NO_OPTIONS,
    CommandOptions,
    Stage,
    StageContext,
    StageOutput,
    StageSummary,
    content_fingerprint,
    finished_upstream,
    planned_changes,
    stage_identity,
)
from hf_ipt.stages.export import ExportStage
from hf_ipt.stages.mix import MixStage
from hf_ipt.stages.synthesize import SynthesizeStage, engine_errors, first_engine_errors
from hf_ipt.stages.templify import TemplifyStage
from hf_ipt.store import (
    FileCopy,
    IncompleteRunError,
    RunFolder,
    StageFolder,
    config_to_dict,
    file_damage,
    fingerprint,
)
from hf_ipt.validation import ConfigError, Problem

CARD_FILE = "README.md"  # a release's card, in the Hub's layout


class FailedRowsError(RuntimeError):
    """A run's release refused: more of its synthesized rows failed in the engine than
    `release.max_engine_error_share` allows (the CLI's exit status 4). The message names the count, the first
    errors and the command that synthesizes them again.

    Example:
        >>> ReleaseStage(ReleaseConfig(repo_id="me/x", version="v0.1"), to="local").run(run)  # doctest: +SKIP
        Traceback (most recent call last):
        FailedRowsError: 12 of 12 synthesized rows (100.0 %) failed in the engine ...
    """


class ReleaseStage(Stage):
    """Release the run's final data with its card, to the Hub or to `run.output_dir/release/`.

    Args:
        config: where and what to release (`ReleaseConfig`: repo id, version, config name, ...).
        to: "hub" (commit, then tag the version) or "local" (a folder laid out like the Hub repo, nothing uploaded).
        card: the card's settings (`CardOptions`).
        reads: the stage whose output is released: `MixStage` (the default), or `TemplifyStage` for a run without a
            mix.
        command: the command line recorded in the card (the CLI passes its own).
        export: the export stage whose committed files the release carries (`export.in_release`), under
            `release_info/<config>/export/`, with the card's "Training on this release"; None: no token files.

    Example:
        >>> ReleaseStage(ReleaseConfig(repo_id="local/x", version="v0.1"), to="local").identity()["release_to"]
        'local'
    """

    name: ClassVar[str] = "release"
    command_name: ClassVar[str] = "push"
    description: ClassVar[str] = "write the release (dataset, card, plots) to the Hub or to a local folder"
    folder: ClassVar[str] = "release"
    sections: ClassVar[tuple[str, ...]] = ("release", "release_to", "card", "quality", "export", "run")
    optional: ClassVar[bool] = False
    missing: ClassVar[str] = (
        "this recipe has no `release` section (repo_id, version, config_name); add one, or run the stages before the "
        "release only"
    )

    def __init__(
        self,
        config: ReleaseConfig,
        *,
        to: Literal["hub", "local"] = "hub",
        card: CardOptions | None = None,
        reads: type[Stage] = MixStage,
        command: str | None = None,
        export: ExportStage | None = None,
    ) -> None:
        if to not in ("hub", "local"):
            raise ValueError(f"release_to must be 'hub' or 'local', got {to!r}")
        if reads not in (MixStage, TemplifyStage):
            raise ValueError(f"a release reads the output of MixStage or TemplifyStage, got {reads!r}")
        self.config, self.to, self.card, self.reads, self.command = config, to, card or CardOptions(), reads, command
        self.export = export

    @classmethod
    def from_recipe(cls, recipe: RecipeConfig, options: CommandOptions = NO_OPTIONS) -> ReleaseStage | None:
        """The stage of the recipe's `release`, `release_to` and `card` sections; it releases the mix, or the
        templified texts when the recipe has no mix, and the export's files when `export.in_release`. None when the
        recipe has no `release` section."""
        if recipe.release is None:
            return None
        reads = MixStage if recipe.mix is not None else TemplifyStage
        export = ExportStage.from_recipe(recipe, options) if recipe.export.in_release else None
        return cls(
            recipe.release, to=recipe.release_to, card=recipe.card, reads=reads, command=options.command, export=export
        )

    def identity(self) -> dict[str, Any]:
        # neither the token nor the share of failed rows allowed changes what is released
        left_out = ("token", "max_engine_error_share")
        identity = {
            "release": {k: v for k, v in config_to_dict(self.config).items() if k not in left_out},
            "release_to": self.to,
            "card": config_to_dict(self.card),
        }
        if self.export is not None:  # the export's files follow from the released data (upstream) and these
            identity["export"] = self.export.identity()
        return identity

    def settings(self) -> dict[str, Any]:
        release = config_to_dict(self.config)
        release["token"] = "<not recorded>" if self.config.token is not None else None
        settings = {"release": release, "release_to": self.to, "card": config_to_dict(self.card)}
        if self.export is not None:
            settings.update(self.export.settings())
        return settings

    def checks(self, run: RunConfig, built_later: set[str]) -> list[Check]:
        found = [Check("release settings and card template", self.settings_problems)]
        if self.to == "hub":
            found.append(Check(f"Hub token and write access to {self.config.repo_id}", self.hub_problems))
        return found

    def chain_checks(self, earlier: Sequence[Stage], run: RunConfig) -> list[Check]:
        where = run.folder.stage(self.folder).url if self.to == "local" else f"{self.config.repo_id} on the Hub"
        return [Check(f"version {self.config.version} in {where}", lambda: self.version_problems(earlier, run))]

    def version_problems(self, earlier: Sequence[Stage], run: RunConfig) -> list[Problem]:
        """This version already released with other content, when this command would release it again: a local
        release folder holding it made from other data, settings or card (refused unless `run.overwrite`), or a
        version tag on the Hub (refused unless `release.force`). Found before the `earlier` stages of the command
        rewrite anything, from what they would change (`planned_changes`)."""
        planned = planned_changes([*earlier, self], run)
        why = planned[self.name]
        if not why:
            return []  # the release is reused as it is
        if self.to == "hub":
            return self.hub_version_problems(why)
        output = run.folder.stage(self.folder)
        marker = output.marker()
        recorded = (marker or {}).get("config") or {}
        if (recorded.get("release") or {}).get("version") != self.config.version or recorded.get(
            "release_to"
        ) != "local":
            return []  # nothing released here, or another version: replaced (with a warning when it runs)
        read = run.folder.stage(self.reads.folder).marker() or {}
        if planned.get(self.reads.name) or read.get("fingerprint") is None:
            upstream = f"<made again by this command: {why}>"  # what it releases changes first
        else:
            upstream = content_fingerprint(read)
        identity = stage_identity(self, run.folder, run.resume_ignore, upstream=upstream)
        try:
            check_local_version(marker, identity, self.config.version, where=output.url, force=run.overwrite)
        except VersionConflictError as err:
            return [Problem("release.version", str(err), f"nothing was written; this command would replace it: {why}")]
        return []

    def hub_version_problems(self, why: str) -> list[Problem]:
        """The version is a tag of the Hub repo already (and `release.force` is off), when this command would push."""
        config = self.config
        if config.force:
            return []
        try:
            tags = within(HUB_TIMEOUT, lambda: list_versions(config.repo_id, token=config.token), "listing the tags")
        except Exception:  # noqa: BLE001 - no repo yet, or no Hub: the Hub's own check reports what matters
            return []
        if config.version not in tags:
            return []
        return [
            Problem(
                "release.version",
                f"version {config.version} of {config.repo_id} already exists on the Hub (tag at "
                f"{tags[config.version]}); a released version never changes",
                f"nothing was written; this command would push it again ({why}): set release.version to a new "
                "version, or release.force to move the tag",
            )
        ]

    def settings_problems(self) -> list[Problem]:
        """`card.template` (when set) is a file or template text."""
        try:
            template_arguments(self.card.template)
        except FileNotFoundError as err:
            return [Problem("card.template", str(err), "fix the path, or leave card.template unset")]
        return []

    def hub_problems(self) -> list[Problem]:
        """A Hub token is there and valid, and it can write `release.repo_id` (the repo exists and the token may
        write it, or the namespace is the user's or one of their organisations, where it can be created). Each Hub
        call has a timeout; an unreachable Hub is a problem here, since the release needs it."""
        return hub_write_problems(self.config)

    def refuse_repair(self, output: StageFolder, damage: Mapping[str, str], run: RunConfig) -> None:
        """A local release whose card was edited by hand is not rewritten (the edits would be lost) unless
        `run.overwrite`; the error names the file and the choices."""
        if self.to == "local" and damage.get(CARD_FILE, "missing") != "missing" and not run.overwrite:
            raise ConfigError(edited_card_message(output))

    def compute(self, context: StageContext) -> StageOutput:
        self.check_engine_errors(context.folder)
        if self.to == "local" and context.previous and not context.run.overwrite:
            recorded = (context.previous.get("checksums") or {}).get(CARD_FILE)
            if recorded and file_damage(context.output, CARD_FILE, recorded) not in (None, "missing"):
                raise ConfigError(edited_card_message(context.output))
        # the Hub's push reads `datasets` objects; a local release reads the rows batch by batch, never mapped whole
        data = context.upstream.load() if self.to == "hub" else context.upstream.rows()
        info = release_info(context.run, reads=self.reads, release=self.settings(), command=self.command)
        if self.export is not None:
            report, files = self.exported(context)
            info = dataclasses.replace(info, export=report, export_files=files)
        if self.to == "hub":
            result = publish_release(data, self.config, info=info, card=self.card)
            report = {"url": result.url, "commit": result.commit, "version": result.version}
            return StageOutput(report=report, num_rows={split: len(rows) for split, rows in data.items()})
        check_local_version(
            context.previous,
            context.identity,
            self.config.version,
            where=context.output.url,
            force=context.run.overwrite,
        )
        config = self.config
        bundle = build_bundle(
            dict(data), info, config_name=config.config_name, version=config.version, plots=config.plots
        )
        files = release_files(
            bundle, repo_id=config.repo_id, version=config.version, card=self.card, local_path=context.output.url
        )
        tokens = ((bundle.report["statistics"].get("text") or {}).get("tokens") or {}).get("total")
        report = {"files": bundle.report["files"], "tokens": tokens, "plots": len(bundle.report["files"]["plots"])}
        return StageOutput(report=report, data=bundle.splits, files=files)

    def check_engine_errors(self, folder: RunFolder) -> None:
        """Refuse (`FailedRowsError`) to release a run more of whose synthesized rows failed in the engine than
        `release.max_engine_error_share` allows, naming how many, the first errors and the command that retries
        them."""
        synthesized = folder.stage(SynthesizeStage.folder)
        report = synthesized.report()
        failed, rows = engine_errors(report), int(report.get("rows") or 0)
        allowed = self.config.max_engine_error_share
        if not failed or failed <= allowed * rows:
            return
        examples = "; ".join(f"row {row}: {error[:300]}" for row, error in first_engine_errors(synthesized))
        command = self.command if (self.command or "").startswith("hf-ipt run ") else "hf-ipt run RECIPE.yaml"
        raise FailedRowsError(
            f"{failed:,} of {rows:,} synthesized rows ({100 * failed / rows:.1f} %) failed in the engine "
            f"({STATUS_ENGINE_ERROR}), more than release.max_engine_error_share={allowed:g} allows: the release was "
            f"not written. First errors: {examples}. Once the engine answers, run `{command}` again: it synthesizes "
            "only the shards holding those rows again, then releases"
        )

    def exported(self, context: StageContext) -> tuple[dict[str, Any], dict[str, FileCopy]]:
        """The committed export of the data this release releases: its report and its files (to be copied). An
        IncompleteRunError naming the command when it is missing, damaged, or made from other data or settings."""
        folder = context.folder.stage(ExportStage.folder)
        finished_upstream(folder, ExportStage)
        marker = folder.marker() or {}
        if marker.get("fingerprint") != fingerprint(
            stage_identity(self.export, context.folder, context.run.resume_ignore)
        ):
            raise IncompleteRunError(
                f"{folder.url} holds an export made from other data or settings than this release's; run `hf-ipt "
                "export` with this recipe (or `hf-ipt run`) to export the data being released"
            )
        checksums = marker.get("checksums") or {}
        return marker.get("extra") or {}, {rel: FileCopy(folder, rel, checksums[rel]) for rel in sorted(checksums)}

    def summarize(self, report: Mapping[str, Any], summary: StageSummary, output: StageFolder) -> None:
        config = self.config
        if report.get("url"):
            summary.output = report["url"]
            if not summary.reused:
                summary.figures["commit"] = report.get("commit")
        elif not summary.reused:
            if report.get("tokens"):
                summary.figures["tokens"] = report["tokens"]
            summary.figures["card"] = f"{output.url}/README.md"
            summary.figures["plots"] = report.get("plots", 0)
            summary.note = f"load it with datasets.load_dataset({output.url!r})"
        if not summary.reused:
            summary.figures["version"] = f"{config.repo_id} {config.version} ({config.config_name})"


# ----------------------------------------------------------------------------------------------------------------
# What the card says beyond the rows, from the run folder
# ----------------------------------------------------------------------------------------------------------------


def release_info(
    run: RunConfig | RunFolder,
    *,
    reads: type[Stage] = MixStage,
    release: Mapping[str, Any] | None = None,
    command: str | None = None,
) -> ReleaseInfo:
    """Everything a card says beyond the released rows, read from a run folder: the synthesizer and the sources
    (under their mix names) as the stages recorded them, each stage's committed report, the recipe those settings
    make up (with `release` settings, and the run's own when `run` is a `RunConfig`), and the `command`. Pass it as
    `info=` to `hf_ipt.push_release` / `hf_ipt.save_release` to release a run's data from Python with the card
    `hf-ipt run` writes.

    Example:
        >>> release_info(RunConfig(output_dir="output/quickstart")).synthesizer.rounds  # doctest: +SKIP
        3
    """
    folder = run if isinstance(run, RunFolder) else run.folder
    synthesized = folder.stage(SynthesizeStage.folder).marker() or {}
    templified = folder.stage(TemplifyStage.folder).marker() or {}
    mixed = (folder.stage(MixStage.folder).marker() or {}) if reads is MixStage else {}
    recorded = {
        **(synthesized.get("settings") or {}),
        **(templified.get("settings") or {}),
        **(mixed.get("settings") or {"mix": None, "mix_sources": {}}),
        **(release or {}),
    }
    if not isinstance(run, RunFolder):
        recorded["run"] = run.recorded()
    synth = recorded.get("synth") or {}
    synthesizer = SynthesizerInfo(
        model=synth.get("model", SynthesizerInfo().model),
        revision=synth.get("revision"),
        engine=synth.get("engine"),
        rounds=synth.get("rounds"),
        max_model_len=synth.get("max_model_len"),
        sampling={"temperature": 0, "max_new_tokens": synth.get("max_new_tokens")},
    )
    templify_report = templified.get("extra") or {}
    statistics = only_split(templify_report.get("statistics") or {})
    quality = only_split((templify_report.get("quality") or {}).get("reports") or {})
    mix = recorded.get("mix")
    return ReleaseInfo(
        synthesizer=synthesizer,
        sources=sources_of(recorded),
        mixing_report=mixed.get("extra") if mixed else None,
        templify_stats=statistics,
        synthesis_stats=synthesized.get("extra"),
        quality=quality,
        recipe=in_field_order(RecipeConfig, recorded),
        command=command,
        template_column=MODE,
        tokenizer=mix["tokenizer"] if mix else (recorded.get("templify") or {}).get("target_tokenizer"),
    )


def edited_card_message(output: StageFolder) -> str:
    """Why a local release with a hand-edited card is not written again, and the three ways on."""
    return (
        f"{output.url.rstrip('/')}/{CARD_FILE} was edited since the release was written (its bytes differ from "
        "the ones committed); hf-ipt does not overwrite a hand-edited card. Either keep the edits in the recipe: "
        "`card.extra_sections: {'## Title': 'markdown'}` replaces a section of that title or adds it, on every "
        f"release; or move the edited {CARD_FILE} away (the card is written again); or pass --overwrite "
        "(run.overwrite) to rewrite it and lose the edits"
    )


def sources_of(recorded: Mapping[str, Any]) -> list[SourceInfo]:
    """The datasets a run read, as the card lists them: the augmented corpus' source, then each mix source, under
    the names their rows carry in the source column. One dataset feeding two roles (from scratch: the augmented
    part and the raw part) is listed once, with both names.

    Example:
        >>> [s.mix_names for s in sources_of({"source": {"path": "me/raw"}, "mix_sources": {
        ...     "raw": {"path": "me/raw", "kind": "raw"}}})]
        [['augmented', 'raw']]
    """
    entries = [(RAW, AUGMENTED_SOURCE, recorded.get("source") or {})]
    entries += [(s.get("kind", RAW), name, s) for name, s in (recorded.get("mix_sources") or {}).items()]
    sources: dict[str, SourceInfo] = {}
    for kind, mix_name, source in entries:
        if not source.get("path"):
            continue
        sources.setdefault(
            source["path"],
            SourceInfo(
                path=source["path"],
                kind=kind,
                license=source.get("license"),
                revision=source.get("revision"),
                name=source.get("name"),
                split=source.get("split"),
            ),
        ).mix_names.append(mix_name)
    return list(sources.values())


def only_split(per_split: Mapping[str, Any]) -> Any:
    """The value of the one split of a per-split report (a run synthesizes one split); None when there is none.

    Example:
        >>> only_split({"train": {"texts": 3}})
        {'texts': 3}
    """
    values = list(per_split.values())
    return values[0] if len(values) == 1 else None


def hub_write_problems(release: ReleaseConfig) -> list[Problem]:
    """Whether the token of `release` (or the saved login) can write `release.repo_id` on the Hub, asked with a
    timeout per call (see `ReleaseStage.hub_problems`)."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    token = release.token or get_token()
    if hub_down():
        return hub_unreachable_once("release.repo_id")
    if not token:
        return [
            Problem(
                "release.token",
                "no Hub token (release.token is unset, HF_TOKEN is unset and there is no saved login)",
                "run `hf auth login`, set HF_TOKEN, or use release_to: local",
            )
        ]
    api = HfApi(token=token)
    try:
        me = within(HUB_TIMEOUT, api.whoami, "asking the Hub who the token belongs to")
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", None)
        if status == 401:
            return [Problem("release.token", "the Hub refused the token (401)", "use a valid token with write access")]
        return [hub_unreachable("release.repo_id", err)]
    except Exception as err:  # noqa: BLE001 - a network failure of any kind
        return [hub_unreachable("release.repo_id", err)]
    namespace = release.repo_id.split("/")[0]
    try:
        within(HUB_TIMEOUT, lambda: api.repo_info(release.repo_id, repo_type="dataset"), "reading the repo")
        exists = True
    except RepositoryNotFoundError:
        exists = False
    except Exception as err:  # noqa: BLE001
        return [hub_unreachable("release.repo_id", err)]
    return write_access_problems(me, release.repo_id, namespace, exists)


def write_access_problems(me: Mapping[str, Any], repo_id: str, namespace: str, exists: bool) -> list[Problem]:
    """What `whoami` says of the token's right to write (or create) `repo_id` in `namespace`."""
    user = me.get("name", "")
    orgs = {org.get("name"): org.get("roleInOrg") for org in me.get("orgs") or []}
    access = (me.get("auth") or {}).get("accessToken") or {}
    role = access.get("role")
    action = "write to" if exists else "create"
    if role == "read":
        return [
            Problem(
                "release.token",
                f"the token of {user!r} has read access only and cannot {action} {repo_id!r}",
                "use a token with write access (HF_TOKEN, `hf auth login`, or release.token)",
            )
        ]
    if namespace != user and namespace not in orgs:
        return [
            Problem(
                "release.repo_id",
                f"{user!r} cannot {action} {repo_id!r}: {namespace!r} is neither the user nor one of their "
                f"organisations ({', '.join(sorted(o for o in orgs if o)) or 'none'})",
                f"release under your own namespace, e.g. {user}/{repo_id.split('/')[1]}",
            )
        ]
    if namespace in orgs and orgs[namespace] == "read":
        return [
            Problem(
                "release.repo_id",
                f"{user!r} has read access only in the organisation {namespace!r}",
                "ask for write access there, or release under your own namespace",
            )
        ]
    if role == "fineGrained" and not _fine_grained_can_write(access, namespace, repo_id):
        return [
            Problem(
                "release.token",
                f"the fine-grained token has no write permission on {repo_id!r} or {namespace!r}",
                "give the token `repo.write` on that namespace or repo, or use another token",
            )
        ]
    return []


def _fine_grained_can_write(access: Mapping[str, Any], namespace: str, repo_id: str) -> bool:
    fine = access.get("fineGrained") or {}
    for entry in fine.get("scoped") or []:
        entity = entry.get("entity") or {}
        target = entity.get("name")
        if target in (namespace, repo_id) and "repo.write" in (entry.get("permissions") or []):
            return True
    return False
