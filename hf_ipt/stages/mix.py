"""The mix stage: the templified texts mixed with the recipe's other corpora by token ratio.

Reads `templified/` and each mix source; every other source is first formatted like the templified texts, with the
BOS/EOS templify wrapped them in (`hf_ipt.mixing.prepare_source`), so both halves of the mix look alike and the ratio
is counted on equal wrappings. Writes `mixed/` (the mix's columns: `text`, `num_tokens`, `source`, `source_index`) and
commits the mix report (`hf_ipt.mixing.MixReport`).

Example:
    >>> stage = MixStage(MixConfig(weights={"augmented": 1, "general": 1}, tokenizer="output/tiny"),
    ...                  {"general": MixSourceConfig(path="bundled:quickstart_general", kind="general_instructions")})
    >>> stage.run(RunConfig(output_dir="output/quickstart")).figures["achieved ratio"]  # doctest: +SKIP
    'augmented 1, general 1'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from hf_ipt.config import AUGMENTED_SOURCE, MixSourceConfig, RecipeConfig, RunConfig, check_mix_sources
from hf_ipt.formatting import TargetFormat
from hf_ipt.mixing import GENERAL_INSTRUCTIONS, MixConfig, mix, prepare_source
from hf_ipt.preflight import Check, check_source, tokenizer_check
from hf_ipt.stages.base import NO_OPTIONS, CommandOptions, Stage, StageContext, StageOutput, StageSummary
from hf_ipt.stages.templify import TemplifyStage
from hf_ipt.store import StageFolder, config_to_dict
from hf_ipt.validation import ConfigError, Problem


class MixStage(Stage):
    """Mix the templified texts (source `augmented`) with other corpora by token ratio.

    Args:
        config: the mix's settings (`MixConfig`: weights by source name, the target tokenizer, tolerance, seed).
        sources: the other corpora by their names in `config.weights` (`MixSourceConfig`: a dataset and its kind,
            `general_instructions` or `raw`).

    Example:
        >>> MixStage(MixConfig(weights={"augmented": 1, "web": 3}, tokenizer="gpt2"),
        ...          {"web": MixSourceConfig(path="allenai/c4", name="en")}).identity()["mix"]["weights"]
        {'augmented': 1, 'web': 3}
    """

    name: ClassVar[str] = "mix"
    description: ClassVar[str] = "mix the templified texts with other corpora by token ratio"
    folder: ClassVar[str] = "mixed"
    sections: ClassVar[tuple[str, ...]] = ("mix", "mix_sources", "templify", "run")
    missing: ClassVar[str] = "this recipe has no `mix` section; add one (see recipes/README.md) or skip `hf-ipt mix`"
    reads = TemplifyStage

    def __init__(self, config: MixConfig, sources: Mapping[str, MixSourceConfig]) -> None:
        check_mix_sources(config, sources)
        self.config = config
        self.sources = dict(sources)

    @classmethod
    def from_recipe(cls, recipe: RecipeConfig, options: CommandOptions = NO_OPTIONS) -> MixStage | None:
        """The stage of the recipe's `mix` and `mix_sources` sections; None when it has no `mix` section."""
        return None if recipe.mix is None else cls(recipe.mix, recipe.mix_sources)

    def identity(self) -> dict[str, Any]:
        return {"mix": config_to_dict(self.config), "mix_sources": config_to_dict(self.sources)}

    def checks(self, run: RunConfig, built_later: set[str]) -> list[Check]:
        found = [
            Check(f"mix source {name!r} ({source.path})", lambda name=name: self.source_problems(name))
            for name, source in self.sources.items()
        ]
        if isinstance(self.config.tokenizer, str):
            found.append(tokenizer_check("mix.tokenizer", self.config.tokenizer, None, built_later))
        return found

    def source_problems(self, name: str) -> list[Problem]:
        """Mix source `name` is readable and has the columns its kind reads (question/response for general
        instructions, the text column for raw corpora)."""
        source = self.sources[name]
        key = f"mix_sources.{name}"
        if source.kind == GENERAL_INSTRUCTIONS:
            columns = {
                f"{key}.question_column": source.question_column,
                f"{key}.response_column": source.response_column,
            }
        elif name in self.config.text_columns:
            columns = {f"mix.text_columns.{name}": self.config.text_columns[name]}
        else:
            columns = {f"{key}.text_column": source.text_column}
        return check_source(source, key, columns)

    def compute(self, context: StageContext) -> StageOutput:
        import datasets

        templified = context.upstream.load()
        if len(templified) != 1:
            raise ConfigError(
                f"the mix reads one split of templified texts, {context.upstream.url} holds {sorted(templified)}"
            )
        ((split, augmented),) = templified.items()
        target = target_format_of(context.upstream)
        sources = {AUGMENTED_SOURCE: augmented}
        text_columns = dict(self.config.text_columns)
        for name, source in self.sources.items():
            general = source.kind == GENERAL_INSTRUCTIONS
            column = text_columns.setdefault(name, self.config.text_column if general else source.text_column)
            sources[name] = prepare_source(
                source.load(),
                kind=source.kind,
                text_column=column,
                target_format=target,
                question_column=source.question_column if general else None,
                response_column=source.response_column if general else None,
                name=name,
            )
        mixed, report = mix(sources, dataclasses.replace(self.config, text_columns=text_columns))
        data = datasets.DatasetDict({split: mixed.flatten_indices()})
        return StageOutput(report=report.to_dict(), data=data)

    def summarize(self, report: Mapping[str, Any], summary: StageSummary, output: StageFolder) -> None:
        if not report:
            return
        summary.figures["tokens"] = report.get("total_tokens")
        summary.figures["tokens by source"] = ", ".join(
            f"{name} {entry['tokens_selected']:,}" for name, entry in report.get("sources", {}).items()
        )
        summary.figures["achieved ratio"] = ", ".join(
            f"{name} {value:.4g}" for name, value in report.get("achieved_ratio", {}).items()
        )


def target_format_of(templified: StageFolder) -> TargetFormat:
    """The BOS/EOS templify wrapped its texts in, as its stage recorded them.

    Example:
        >>> target_format_of(RunFolder("output/quickstart").stage("templified")).bos  # doctest: +SKIP
        '<s>'
    """
    recorded = templified.report().get("target_format") or {}
    return TargetFormat(recorded.get("bos", ""), recorded.get("eos", ""))
