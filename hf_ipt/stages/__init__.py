"""The stages of a run, in pipeline order: each one module on the contract of `hf_ipt.stages.base`.

`STAGES` is the one place they are listed; the CLI's commands, the preflight, `hf_ipt.pipeline.run` and `hf-ipt status`
all go through it. Adding a stage is one module (a `Stage` subclass) and one entry here.

From Python, each stage is built from its settings and run on a run folder; run in this order on one `RunConfig`,
they make what `hf-ipt run` makes:

    run = RunConfig(output_dir="output/run", shard_size=60)
    SynthesizeStage(source, synth, chunk=chunk).run(run)
    TemplifyStage(templify_config).run(run)
    MixStage(mix_config, mix_sources).run(run)
    ExportStage(export_config, mix_config.tokenizer).run(run)      # when export.formats names any
    ReleaseStage(release_config, to="local", card=card).run(run)
"""

from hf_ipt.stages.base import CommandOptions, Stage, StageContext, StageOutput, StageSummary, run_stage
from hf_ipt.stages.export import ExportStage
from hf_ipt.stages.mix import MixStage
from hf_ipt.stages.release import ReleaseStage, release_info
from hf_ipt.stages.synthesize import SynthesizeStage
from hf_ipt.stages.templify import TemplifyStage

STAGES: tuple[type[Stage], ...] = (SynthesizeStage, TemplifyStage, MixStage, ExportStage, ReleaseStage)

__all__ = [
    "STAGES",
    "CommandOptions",
    "ExportStage",
    "MixStage",
    "ReleaseStage",
    "Stage",
    "StageContext",
    "StageOutput",
    "StageSummary",
    "SynthesizeStage",
    "TemplifyStage",
    "release_info",
    "run_stage",
]
