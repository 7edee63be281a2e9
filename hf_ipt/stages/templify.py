"""The templify stage: the synthesized rows, after the optional `quality.*` filters, become pre-training texts.

Reads `synthesized/` (the text column and the synthesis columns); writes `templified/` (templify's output columns,
`hf_ipt.columns.TEMPLIFY_COLUMNS`), one split per synthesized split. Its report holds, per split, templify's
statistics (`hf_ipt.templify.report`) and the quality report of the synthesized pairs (`hf_ipt.quality`, measured
before the filters, with their counts), and the BOS/EOS every text was wrapped in (the mix formats its other sources
with the same).

Example:
    >>> TemplifyStage(TemplifyConfig(seed=0)).run(RunConfig(output_dir="output/quickstart")).figures["texts"]
    ... # doctest: +SKIP
    134
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from hf_ipt.config import RecipeConfig, RunConfig
from hf_ipt.preflight import Check, tokenizer_check
from hf_ipt.quality import QualityConfig, quality_summary, report_and_filter
from hf_ipt.stages.base import NO_OPTIONS, CommandOptions, Stage, StageContext, StageOutput, StageSummary
from hf_ipt.stages.synthesize import SynthesizeStage
from hf_ipt.store import StageFolder, config_to_dict
from hf_ipt.templify import TemplifyConfig, templify
from hf_ipt.templify.report import templify_report, templify_summary


class TemplifyStage(Stage):
    """Turn the synthesized rows into pre-training texts.

    Args:
        config: templify's settings (`TemplifyConfig`). Its `text_column` need not be repeated: when left at the
            default it is the column synthesis read (as the synthesize stage recorded it).
        quality: the quality report's settings and its optional filters (`QualityConfig`), applied before templify.

    Example:
        >>> TemplifyStage(TemplifyConfig(seed=1)).identity()["templify"]["seed"]
        1
    """

    name: ClassVar[str] = "templify"
    description: ClassVar[str] = "turn synthesized rows into pre-training texts"
    folder: ClassVar[str] = "templified"
    sections: ClassVar[tuple[str, ...]] = ("templify", "quality", "run")
    reads = SynthesizeStage

    def __init__(self, config: TemplifyConfig | None = None, quality: QualityConfig | None = None) -> None:
        self.config = config if config is not None else TemplifyConfig()
        self.quality = quality if quality is not None else QualityConfig()

    @classmethod
    def from_recipe(cls, recipe: RecipeConfig, options: CommandOptions = NO_OPTIONS) -> TemplifyStage:
        """The stage of the recipe's `templify` and `quality` sections."""
        return cls(recipe.templify, recipe.quality)

    def identity(self) -> dict[str, Any]:
        identity: dict[str, Any] = {"templify": config_to_dict(self.config)}
        # the filters change the rows and the report settings the committed report; the defaults leave older
        # outputs reusable
        if config_to_dict(self.quality) != config_to_dict(QualityConfig()):
            identity["quality"] = config_to_dict(self.quality)
        return identity

    def settings(self) -> dict[str, Any]:
        return {"templify": config_to_dict(self.config), "quality": config_to_dict(self.quality)}

    def checks(self, run: RunConfig, built_later: set[str]) -> list[Check]:
        if self.config.target_tokenizer is None:
            return []
        return [tokenizer_check("templify.target_tokenizer", self.config.target_tokenizer, None, built_later)]

    def compute(self, context: StageContext) -> StageOutput:
        import datasets

        config = self.resolved(context.upstream)
        statistics, quality, templified = {}, {}, {}
        for split, synthesized in context.upstream.load().items():
            kept, quality[split] = report_and_filter(synthesized, self.quality, text_column=config.text_column)
            templified[split] = templify(kept, config)
            statistics[split] = templify_report(templified[split])
        target = config.resolve_target_format()
        report = {
            "statistics": statistics,
            "quality": {"config": config_to_dict(self.quality), "reports": quality},
            "target_format": {"bos": target.bos, "eos": target.eos},
        }
        return StageOutput(report=report, data=datasets.DatasetDict(templified))

    def resolved(self, synthesized: StageFolder | None) -> TemplifyConfig:
        """The settings with the text column synthesis read (recorded by the synthesize stage), when `text_column`
        was left at its default."""
        recorded = ((synthesized.marker() if synthesized is not None else None) or {}).get("settings") or {}
        column = (recorded.get("source") or {}).get("text_column")
        default = TemplifyConfig().text_column
        if column and self.config.text_column == default and column != default:
            return dataclasses.replace(self.config, text_column=column)
        return self.config

    def summarize(self, report: Mapping[str, Any], summary: StageSummary, output: StageFolder) -> None:
        summary.figures.update(quality_summary((report.get("quality") or {}).get("reports") or {}))
        statistics = report.get("statistics") or {}
        for split, figures in statistics.items():
            summary.figures.update(templify_summary(figures, f"{split}: " if len(statistics) > 1 else ""))
