"""`hf-ipt estimate RECIPE`: the dry run to make before a long job. The recipe's own stages run, for real, on the
first rows of its corpus (a few synthesis batches) in a temporary folder; nothing is written to `run.output_dir`.
From that trial it measures what the whole run costs per raw token, and projects it onto the whole input.

Measured on the trial (every stage of the recipe: synthesize, templify, mix, a local release):

- raw tokens: the source texts counted with the synthesizer's tokenizer;
- P, prompt tokens per raw token (every round's prompt, demonstrations included) and G, generated tokens per raw
  token (the synthesizer's outputs, counted with its tokenizer);
- chunks per source row, pairs per chunk, texts per chunk, rows/s of synthesis here (one worker, this machine);
- bytes written per source row by each stage; tokens per row of each mix source.

Projected for the whole input (rows counted locally, or from the Hub's metadata, or `--input-rows`): prompt and
generated tokens, GPU-hours on A100 / H100 / H200 by the cost model of docs/scaling.md (2N FLOPs per token
processed, 40 % of the GPU's dense bf16 peak sustained, prefill x 0.58 under continuous scheduling: an estimate, not
a measurement), the output size, and whether each mix source holds enough tokens for its ratio (else which share of
the augmented texts, the GPU-hours' product, the mix would leave out).

Example:
    >>> report = estimate(load_recipe("recipes/quickstart.yaml"))  # doctest: +SKIP
    >>> print("\\n".join(report.lines()))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_ipt.config import AUGMENTED_SOURCE, BUNDLED_PREFIX, MixSourceConfig, RecipeConfig, SourceConfig
from hf_ipt.deadline import looks_local
from hf_ipt.engines import Engine, engine_class
from hf_ipt.language import ENGLISH, MOSTLY_ENGLISH, detect_languages, language_name
from hf_ipt.markers import DEFAULT_MODEL
from hf_ipt.pipeline import run as run_stages
from hf_ipt.preflight import first_line, hub_down
from hf_ipt.stages import STAGES, MixStage, SynthesizeStage, TemplifyStage
from hf_ipt.stages.base import duration

DEFAULT_BATCHES = 2  # synthesis batches the trial runs (--rows overrides)
MIX_SAMPLE_ROWS = 200  # rows of each mix source read to count its tokens per row
# the cost model of docs/scaling.md
UTILIZATION = 0.4  # share of the dense bf16 peak a large continuous batch sustains
GPU_PEAK_FLOPS = {"A100": 312e12, "H100": 989e12, "H200": 989e12}  # dense bf16 (H100/H200 SXM); H200: more memory
CONTINUOUS_PREFILL = 0.58  # prefill computed under chain-aware continuous scheduling (measured, docs/scaling.md)
PAPER_SYNTHESIZER_PARAMETERS = 7.24e9  # instruction-pretrain/instruction-synthesizer (Mistral-7B shape)


@dataclass
class Estimate:
    """What `estimate` measured on the trial and projected for the whole input; `lines()` is what the command prints.

    Example:
        >>> Estimate(sample_rows=60).sample_rows
        60
    """

    sample_rows: int
    input_rows: int | None = None
    input_rows_origin: str = ""
    raw_tokens: int = 0
    chunks: int = 0
    pairs: int = 0
    texts: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    synthesis_seconds: float = 0.0
    trial_seconds: float = 0.0
    stage_bytes: dict[str, int] = field(default_factory=dict)
    parameters: float | None = None
    model: str = ""
    continuous: bool = False
    augmented_tokens: int | None = None  # tokens of the templified texts (mix tokenizer), for the mix projection
    mix: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> weight, tokens/row, rows, origin
    weights: dict[str, float] = field(default_factory=dict)
    languages: dict[str, int] = field(default_factory=dict)

    # --- per raw token / row ------------------------------------------------------------------------------------
    @property
    def prompt_ratio(self) -> float:
        """P: prompt tokens per raw token."""
        return self.prompt_tokens / self.raw_tokens if self.raw_tokens else math.nan

    @property
    def generated_ratio(self) -> float:
        """G: generated tokens per raw token."""
        return self.generated_tokens / self.raw_tokens if self.raw_tokens else math.nan

    @property
    def whole_raw_tokens(self) -> float | None:
        """Raw tokens of the whole input, projected from the trial's tokens per row."""
        if self.input_rows is None or not self.sample_rows:
            return None
        return self.raw_tokens / self.sample_rows * self.input_rows

    def gpu_hours(self, gpu: str, parameters: float | None = None) -> float | None:
        """GPU-hours of the whole synthesis on `gpu` by the cost model (None without an input size or a model
        size)."""
        raw = self.whole_raw_tokens
        parameters = parameters if parameters is not None else self.parameters
        if raw is None or parameters is None:
            return None
        processed = (CONTINUOUS_PREFILL if self.continuous else 1.0) * self.prompt_ratio + self.generated_ratio
        return 2 * parameters * processed * raw / (GPU_PEAK_FLOPS[gpu] * UTILIZATION) / 3600

    def mix_lines(self) -> list[str]:
        """Whether each mix source holds enough tokens for its ratio against the projected augmented texts."""
        if not self.weights or self.augmented_tokens is None or self.input_rows is None:
            return []
        total_weight = sum(self.weights.values())
        augmented = self.augmented_tokens / self.sample_rows * self.input_rows
        available = {AUGMENTED_SOURCE: augmented}
        lines = []
        for name, entry in self.mix.items():
            if entry.get("rows") is None:
                lines.append(f"{name}: its size is unknown ({entry['origin']}); cannot tell whether it is enough")
                continue
            available[name] = entry["tokens_per_row"] * entry["rows"]
        if len(available) != len(self.weights):
            return lines
        share = {name: weight / total_weight for name, weight in self.weights.items()}
        fill = min(available[name] / share[name] for name in available)  # the largest mix at the ratio
        for name, entry in self.mix.items():
            need = share[name] / share[AUGMENTED_SOURCE] * augmented
            verdict = "enough" if available[name] >= need else "NOT ENOUGH"
            lines.append(
                f"{name}: needs ~{_tokens(need)} tokens at {self.weights[AUGMENTED_SOURCE]:g}:{self.weights[name]:g} "
                f"with the augmented texts, has ~{_tokens(available[name])} ({_int(entry['rows'])} rows x "
                f"{entry['tokens_per_row']:.0f} tokens, {entry['origin']}): {verdict}"
            )
        used = fill * share[AUGMENTED_SOURCE] / augmented if augmented else 1.0
        if used < 0.999:
            lines.append(
                f"the mix would leave out ~{100 * (1 - used):.0f}% of the augmented tokens you pay GPU-hours for: add "
                "data to the short source(s), or lower their weight"
            )
        return lines

    def lines(self) -> list[str]:
        """The report as printed by `hf-ipt estimate`."""
        out = [
            f"trial: the recipe's stages on its first {self.sample_rows:,} rows, in {duration(self.trial_seconds)} "
            "(a temporary folder; nothing written to run.output_dir)",
            f"  raw tokens {self.raw_tokens:,} ({self.raw_tokens / max(self.sample_rows, 1):,.0f} per row), "
            f"chunks {self.chunks:,}, pairs {self.pairs:,} ({self.pairs / max(self.chunks, 1):.2f} per chunk), "
            f"texts {self.texts:,}",
            f"  prompt tokens per raw token P = {self.prompt_ratio:.2f}, generated tokens per raw token "
            f"G = {self.generated_ratio:.2f}",
            f"  synthesis here: {self.chunks / self.synthesis_seconds if self.synthesis_seconds else 0:,.1f} "
            f"chunks/s, {self.raw_tokens / self.synthesis_seconds if self.synthesis_seconds else 0:,.0f} raw "
            "tokens/s (one worker on this machine, engine start included)",
        ]
        if self.languages:
            total = sum(self.languages.values())
            english = self.languages.get(ENGLISH, 0) / total if total else 1.0
            shown = ", ".join(f"{language_name(k)} {v:,}" for k, v in list(self.languages.items())[:4])
            out.append(f"  languages of the trial's texts: {shown}")
            if english < MOSTLY_ENGLISH:
                out.append(
                    f"  WARNING: {100 * (1 - english):.0f}% of the texts are not English; the synthesizer is "
                    "English-trained and will write English pairs about them"
                )
        out.append("")
        if self.input_rows is None:
            out.append(f"whole input: size unknown ({self.input_rows_origin}); pass --input-rows N to project")
            return out
        raw = self.whole_raw_tokens or 0.0
        out += [
            f"whole input: {self.input_rows:,} rows ({self.input_rows_origin}), ~{_tokens(raw)} raw tokens",
            f"  prompt tokens ~{_tokens(raw * self.prompt_ratio)}, "
            f"generated tokens ~{_tokens(raw * self.generated_ratio)}",
        ]
        at_rate = self.input_rows / self.sample_rows * self.synthesis_seconds if self.sample_rows else 0.0
        out.append(f"  synthesis at this machine's trial rate, one worker: {duration(at_rate)}")
        out.append(
            "GPU-hours (an estimate, not a measurement; docs/scaling.md: 2N FLOPs per token processed, "
            f"{UTILIZATION:.0%} of the dense bf16 peak sustained, prefill x {CONTINUOUS_PREFILL} under continuous "
            "scheduling, attention left out):"
        )
        sizes = [(f"{self.model} ({_params(self.parameters)} parameters)", self.parameters)]
        if self.model != DEFAULT_MODEL:
            sizes.append((f"the paper's synthesizer {DEFAULT_MODEL} ({_params(PAPER_SYNTHESIZER_PARAMETERS)})",
                          PAPER_SYNTHESIZER_PARAMETERS))  # fmt: skip
        scheduling = "continuous scheduling" if self.continuous else "round by round (every prompt token computed)"
        for label, parameters in sizes:
            if parameters is None:
                out.append(f"  {label}: model size unknown")
                continue
            hours = ", ".join(f"{gpu} {_hours(self.gpu_hours(gpu, parameters))}" for gpu in GPU_PEAK_FLOPS)
            out.append(f"  {label}, {scheduling}: {hours}")
        if self.stage_bytes:
            scale = self.input_rows / self.sample_rows
            parts = ", ".join(f"{name} {_size(size * scale)}" for name, size in self.stage_bytes.items())
            total = sum(self.stage_bytes.values()) * scale
            out.append(f"output size ~{_size(total)} ({parts}; scaled by rows)")
        mix = self.mix_lines()
        if mix:
            out.append("mix sources:")
            out += [f"  {line}" for line in mix]
        return out


def estimate(
    recipe: RecipeConfig, *, rows: int | None = None, input_rows: int | None = None, workdir: str | None = None
) -> Estimate:
    """Run the recipe's stages on its first `rows` rows (default: two synthesis batches) in a temporary folder and
    project the whole run (see the module docstring). `input_rows` replaces the count of the whole input.

    Example:
        >>> estimate(load_recipe("recipes/quickstart.yaml"), rows=30).chunks  # doctest: +SKIP
        32
    """
    sample = rows or DEFAULT_BATCHES * recipe.synth.batch_size
    if recipe.source.max_rows is not None:
        sample = min(sample, recipe.source.max_rows)
    with tempfile.TemporaryDirectory(prefix="hf-ipt-estimate-", dir=workdir) as folder:
        trial = trial_recipe(recipe, Path(folder), sample)
        started = time.perf_counter()
        run_stages(trial, command="hf-ipt estimate")
        seconds = time.perf_counter() - started
        result = measure(trial, sample)
        result.trial_seconds = seconds
    result.model = recipe.synth.model
    result.parameters = model_parameters(recipe.synth.model, recipe.synth.revision)
    if input_rows is not None:
        result.input_rows, result.input_rows_origin = input_rows, "given with --input-rows"
    else:
        result.input_rows, result.input_rows_origin = source_rows(recipe.source)
    for name, source in recipe.mix_sources.items():
        counted, origin = source_rows(source)
        result.mix.setdefault(name, {})
        result.mix[name].update(rows=counted, origin=origin)
    return result


def trial_recipe(recipe: RecipeConfig, folder: Path, sample: int) -> RecipeConfig:
    """The recipe as the trial runs it: the first `sample` source rows (a Hub corpus streamed into a local Parquet
    file, so nothing else is downloaded), `MIX_SAMPLE_ROWS` of each mix source, outputs in `folder`, one local
    worker, a local release without plots (never a push)."""
    source = sampled(recipe.source, sample, folder / "source.parquet")
    mix_sources = {
        name: sampled(entry, max(MIX_SAMPLE_ROWS, sample), folder / f"mix-{name}.parquet")
        for name, entry in recipe.mix_sources.items()
    }
    run = dataclasses.replace(
        recipe.run, output_dir=str(folder / "run"), executor="local", num_workers=1, overwrite=False,
        storage_options={}, resume_ignore=[],
    )  # fmt: skip
    release = dataclasses.replace(recipe.release, plots=False) if recipe.release is not None else None
    return dataclasses.replace(
        recipe, source=source, mix_sources=mix_sources, run=run, release=release, release_to="local"
    )


def sampled(source: SourceConfig, rows: int, path: Path) -> SourceConfig:
    """`source` limited to its first `rows` rows: `max_rows` for a local one (read locally anyway), else its
    first rows streamed from the Hub into the Parquet file `path`."""
    limit = min(rows, source.max_rows) if source.max_rows is not None else rows
    if is_local_source(source):
        return dataclasses.replace(source, max_rows=limit)
    import datasets

    arguments = source.load_arguments()
    arguments["split"] = source.output_split
    streamed = datasets.load_dataset(**arguments, streaming=True)
    taken = list(streamed.take(limit))
    datasets.Dataset.from_list(taken, features=streamed.features).to_parquet(str(path))
    kind = {"kind": source.kind} if isinstance(source, MixSourceConfig) else {}
    return dataclasses.replace(
        source, path="parquet", data_files=str(path), name=None, revision=None, split="train", max_rows=None, **kind
    )


def is_local_source(source: SourceConfig) -> bool:
    """Whether a source is read from this machine (bundled, a local folder or file, a loader with local files)."""
    if source.path.startswith(BUNDLED_PREFIX) or looks_local(source.path):
        return True
    files = source.data_files
    if files is None:
        return False
    return all("://" not in f for f in ([files] if isinstance(files, str) else files))


def source_rows(source: SourceConfig) -> tuple[int | None, str]:
    """The rows a run reads from `source`, and where the count comes from: counted here (a local source), or the
    Hub's metadata of the split; (None, why) when it cannot be known without reading the whole corpus."""
    if is_local_source(source):
        return len(source.load_rows()), "counted here"
    down = hub_down(refresh=True)
    if down:
        return None, f"the Hub is unreachable: {down}"
    try:
        import datasets

        builder = datasets.load_dataset_builder(source.path, source.name, revision=source.revision)
        splits = builder.info.splits or {}
        count = splits[source.output_split].num_examples if source.output_split in splits else None
    except Exception as err:  # noqa: BLE001 - no metadata: say so
        return None, f"no split sizes in the Hub's metadata ({type(err).__name__}: {first_line(err)})"
    if not count:
        return None, "no split sizes in the Hub's metadata"
    if source.max_rows is not None:
        count = min(count, source.max_rows)
    return int(count), "the Hub's metadata of the split"


def measure(trial: RecipeConfig, sample: int) -> Estimate:
    """The trial's figures, read from its stage folders (the committed reports and shards)."""
    from hf_ipt.execution.runner import finished_shards, iter_shard_tables
    from hf_ipt.tokenization import FastEncoder, load_tokenizer

    folder = trial.run.folder
    synthesized = folder.stage(SynthesizeStage.folder)
    report = synthesized.report()
    synth = trial.synth
    encoder = FastEncoder(load_tokenizer(synth.tokenizer or synth.model, key="synth.model"))
    texts = [t for t in trial.source.load_rows()[trial.source.text_column] if isinstance(t, str)]
    result = Estimate(sample_rows=len(texts) or sample)
    result.raw_tokens = sum(encoder.lengths(texts))
    result.languages = dict(_counted(detect_languages(texts)))
    result.chunks, result.pairs = report.get("rows", 0), report.get("pairs", 0)
    result.prompt_tokens = report.get("prompt_tokens", 0)
    for table in iter_shard_tables(synthesized, columns=["synth_output"]):
        outputs = [o or "" for o in table["synth_output"].to_pylist()]
        result.generated_tokens += sum(encoder.lengths(outputs))
    _, _, markers = finished_shards(synthesized)
    result.synthesis_seconds = sum(float(m.get("seconds") or 0) for m in markers)
    # chain-aware continuous scheduling (and its prefix-cache saving) needs an engine with request-level submission
    streams = engine_class(synth.engine).open_stream is not Engine.open_stream
    result.continuous = streams and synth.scheduling == "continuous" and synth.rounds > 1
    templify = folder.stage(TemplifyStage.folder).report()
    result.texts = sum(int(s.get("texts", 0)) for s in (templify.get("statistics") or {}).values())
    for stage in STAGES:  # every stage the recipe runs, the export's token files included
        size = _folder_bytes(folder.stage(stage.folder))
        if size:
            result.stage_bytes[stage.folder] = size
    mixed = folder.stage(MixStage.folder).report()
    if trial.mix is not None and mixed:
        sources = mixed.get("sources") or {}
        result.weights = {name: float(w) for name, w in trial.mix.weights.items()}
        result.augmented_tokens = int((sources.get(AUGMENTED_SOURCE) or {}).get("tokens_available") or 0)
        for name in trial.mix_sources:
            entry = sources.get(name) or {}
            rows = entry.get("rows_eligible") or entry.get("rows_total") or 0
            result.mix[name] = {"tokens_per_row": (entry.get("tokens_available") or 0) / rows if rows else 0.0}
    return result


def model_parameters(model: str, revision: str | None = None) -> float | None:
    """The synthesizer's parameter count, from its configuration alone (the model built on PyTorch's meta device:
    no weights read or allocated); the paper's synthesizer's when `model` is its id and the config cannot be read;
    None otherwise."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        offline = not looks_local(model) and hub_down() is not None
        config = AutoConfig.from_pretrained(model, revision=revision, local_files_only=offline)
        with torch.device("meta"):
            built = AutoModelForCausalLM.from_config(config)
        return float(sum(p.numel() for p in built.parameters()))
    except Exception:  # noqa: BLE001 - no config here: the known size, or unknown
        return PAPER_SYNTHESIZER_PARAMETERS if model == DEFAULT_MODEL else None


def _folder_bytes(store: Any) -> int:
    if not store.is_local or not os.path.isdir(store.root):
        return 0
    return sum(p.stat().st_size for p in Path(store.root).rglob("*") if p.is_file() and ".hf_ipt" not in p.parts)


def _counted(codes: list[str]) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for code in codes:
        counts[code] = counts.get(code, 0) + 1
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _tokens(value: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:,.2f}{unit}"
    return f"{value:,.0f}"


def _int(value: Any) -> str:
    return f"{int(value):,}" if isinstance(value, int | float) else "?"


def _params(value: float | None) -> str:
    return "unknown" if value is None else _tokens(value)


def _hours(value: float | None) -> str:
    if value is None:
        return "?"
    if value >= 0.1:
        return f"{value:,.1f} h"
    return f"{value * 3600:,.1f} s" if value * 3600 >= 0.1 else "< 0.1 s"


def _size(value: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:,.1f} {unit}"
    return f"{value:,.0f} B"
