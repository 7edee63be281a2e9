"""Synthesis: the instruction synthesizer writes instruction-response pairs about each raw text, as a `Dataset.map`.

Example:
    >>> from datasets import Dataset
    >>> from hf_ipt import Synthesizer
    >>> ds = Dataset.from_dict({"text": ["A text about cats.", "A text about dogs."]})
    >>> synth = Synthesizer(model="instruction-pretrain/instruction-synthesizer", rounds=1)  # doctest: +SKIP
    >>> ds = ds.map(synth, batched=True, batch_size=synth.config.batch_size)  # doctest: +SKIP
    >>> ds[0]["pairs"]  # doctest: +SKIP
    [{'instruction': '...', 'response': '...'}]

Columns read: the text column (`text` by default). Columns written (all input columns are kept, one row out per row
in): see `hf_ipt.columns.SYNTH_COLUMNS` — `pairs`, `synth_output`, `chain_id`, `chain_position`,
`num_demonstrations`, `prompt_tokens`, `truncated`, `synth_status`, `synth_error`, `parse_drops`, `special_strings`.
An input column with one of these names (other than the text column) is refused with a ValueError: rename it first.

With `rounds=M > 1`, the rows of each block of `batch_size` rows form M-round chains (see `hf_ipt.synthesis.chains`):
a row is prompted with the previous entries of its chain as demonstrations (`hf_ipt.synthesis.job.BatchJob` holds
that state). Chains never cross blocks, so the batch size is part of the recipe. A map batch holding several blocks is
cut into them, so any map `batch_size` that is a multiple of `batch_size` gives `hf-ipt run`'s chains; the default,
1000 rows, is `Dataset.map`'s own default, so `ds.map(synth, batched=True)` gives them too. With `with_indices=True`
a map batch that starts inside a block (another map batch size) is refused instead of chaining other rows.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from hf_ipt.columns import SYNTH_COLUMNS, check_input_columns
from hf_ipt.engines import ENGINES, Engine, devices_of, make_engine
from hf_ipt.markers import DEFAULT_MODEL
from hf_ipt.placement import pin_rank, rank_from_args
from hf_ipt.synthesis.job import BatchJob
from hf_ipt.synthesis.prompts import PromptFitter
from hf_ipt.synthesis.scheduling import SCHEDULING_MODES, run_scheduled
from hf_ipt.synthesis.speculative import (
    SpeculativeConfig,
    as_speculative_config,
    check_speculative_engine,
    speculative_config,
)
from hf_ipt.tokenization import load_fast_tokenizer
from hf_ipt.validation import check_fields, check_token_budget

# the rows of one map batch when `Dataset.map` is given no batch_size (its signature's default; a test keeps the two
# equal): synthesis forms its chains in blocks of this many rows unless told otherwise
MAP_BATCH_SIZE = 1000


@dataclass
class SynthesisConfig:
    """Settings of the synthesis step; the defaults are the paper's.

    Example:
        >>> config = SynthesisConfig(rounds=3, max_model_len=2048)
        >>> config.model, config.engine, config.max_new_tokens
        ('instruction-pretrain/instruction-synthesizer', 'vllm', 400)
    """

    model: str = field(
        default=DEFAULT_MODEL,
        metadata={"help": "Instruction synthesizer: a Hub model id or a local directory.", "nonempty": True},
    )
    revision: str | None = field(default=None, metadata={"help": "Model revision (branch, tag or commit) to load."})
    tokenizer: str | None = field(
        default=None, metadata={"help": "Tokenizer id or path; defaults to the model's own tokenizer."}
    )
    engine: str = field(
        default="vllm",
        metadata={
            "help": "Engine that runs the synthesizer: 'vllm', 'transformers', or 'server' (OpenAI-compatible "
            "servers; engine_kwargs={'endpoints': [...]}, see hf_ipt.engines.server).",
            "choices": ENGINES,
            "hint": "a custom engine is passed to Synthesizer(engine=...) as an Engine or a callable",
        },
    )
    rounds: int = field(
        default=1,
        metadata={
            "help": "M, the number of rounds of multi-round synthesis (1 = zero-shot). Paper: 2 from scratch, "
            "3 for continual pre-training.",
            "min": 1,
        },
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the raw text.", "nonempty": True})
    max_model_len: int = field(
        default=4096, metadata={"help": "Context window: prompt tokens + max_new_tokens never exceed it.", "min": 2}
    )
    max_new_tokens: int = field(
        default=400, metadata={"help": "Most tokens the synthesizer writes per text (greedy).", "min": 1}
    )
    batch_size: int = field(
        default=MAP_BATCH_SIZE,
        metadata={
            "help": "Rows of one block of chains: with rounds > 1 the chains are formed inside each block of this "
            "many rows, so this is part of the recipe. The default is Dataset.map's own batch size (1000), so "
            "`ds.map(synth, batched=True)` forms the blocks hf-ipt run forms; map with a multiple of it otherwise.",
            "min": 1,
        },
    )
    scheduling: str = field(
        default="continuous",
        metadata={
            "help": "'continuous': each chain's next round is sent as soon as its previous round finished (vLLM and "
            "server engines; reuses the prefix cache, no waiting for the slowest request of a round); 'rounds': one "
            "blocking engine call per round. Same rows either way; other engines always run round by round.",
            "choices": SCHEDULING_MODES,
        },
    )
    engine_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Extra keyword arguments for the engine (vllm.LLM, or transformers from_pretrained plus "
            "'batch_size'/'device')."
        },
    )
    speculative: SpeculativeConfig | None = field(
        default=None,
        metadata={
            "help": "Prompt-lookup speculative decoding on the vllm engine, e.g. {method: ngram, "
            "num_speculative_tokens: 4, prompt_lookup_max: 4, prompt_lookup_min: 2}; same rows (greedy), fewer "
            "engine steps. Off (null) by default until a GPU figure exists (docs/scaling.md). For the server "
            "engine set it on the server: vllm serve --speculative-config '{...}'."
        },
    )

    def __post_init__(self) -> None:
        self.speculative = as_speculative_config(self.speculative)
        check_fields(self, "synth")
        check_speculative_engine(self.speculative, self.engine, self.engine_kwargs)
        check_token_budget(self.max_model_len, self.max_new_tokens, "synth.")


class Synthesizer:
    """The synthesis map function: `dataset.map(Synthesizer(...), batched=True, batch_size=...)`.

    Example:
        >>> synth = Synthesizer(model="path/to/synthesizer", engine="transformers", rounds=3)  # doctest: +SKIP
        >>> out = synth({"text": ["First text.", "Second text.", "Third text."]})  # doctest: +SKIP
        >>> out["chain_position"]  # doctest: +SKIP
        [0, 1, 2]

    `engine` may also be an `Engine` instance or a callable `list[str] -> list[str]` (prompt strings to completions).
    Tokenizer and engine are created lazily, once per process, on the first batch — never when the Synthesizer is
    built, so a parent process that forks `map` workers holds no engine. The instance pickles and hashes by its
    settings only, so `datasets` caching works across runs.
    """

    def __init__(
        self,
        config: SynthesisConfig | None = None,
        *,
        engine: str | Engine | Callable[[list[str]], Sequence[str]] | None = None,
        **overrides: Any,
    ) -> None:
        if config is None:
            config = SynthesisConfig(**overrides)
        elif overrides:
            config = SynthesisConfig(**{**asdict(config), **overrides})
        if isinstance(engine, str):
            config = SynthesisConfig(**{**asdict(config), "engine": engine})
            engine = None
        if engine is not None and config.speculative is not None:
            raise ValueError(
                "synth.speculative applies to the engine hf-ipt starts (synth.engine: vllm), not to an engine object "
                "or callable passed in: start that engine with vLLM's speculative_config yourself, or remove "
                "speculative"
            )
        self.config = config
        self.custom_engine = engine

    def __getstate__(self) -> dict[str, Any]:
        # only the settings: the engine, tokenizer and fitter are per-process caches rebuilt on demand
        return {"config": self.config, "custom_engine": self.custom_engine}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"Synthesizer({self.config!r})"

    @property
    def fitter(self) -> PromptFitter:
        key = (os.getpid(), "fitter")
        fitter = self.__dict__.get("_fitter")
        if fitter is None or self.__dict__.get("_fitter_key") != key:
            cfg = self.config
            tokenizer = load_fast_tokenizer(cfg.tokenizer or cfg.model, cfg.revision if not cfg.tokenizer else None)
            fitter = PromptFitter(tokenizer, cfg.max_model_len, cfg.max_new_tokens)
            self.__dict__["_fitter"], self.__dict__["_fitter_key"] = fitter, key
        return fitter

    @property
    def engine(self) -> Engine:
        cfg = self.config
        spec = self.custom_engine if self.custom_engine is not None else cfg.engine
        engine = make_engine(
            spec,
            model=cfg.model,
            revision=cfg.revision,
            tokenizer=cfg.tokenizer,
            max_model_len=cfg.max_model_len,
            engine_kwargs=cfg.engine_kwargs
            if cfg.speculative is None
            else {**cfg.engine_kwargs, "speculative_config": speculative_config(cfg.speculative)},
        )
        self.__dict__["_engine"] = (os.getpid(), engine)  # for `counters`, which must never start one
        return engine

    def check_columns(self, column_names: Sequence[str]) -> None:
        """Raise a KeyError naming the missing text column and the available ones, or a ValueError naming input
        columns that synthesis would overwrite (`hf_ipt.columns.SYNTH_COLUMNS`, e.g. `pairs`) and how to rename them.
        """
        if self.config.text_column not in column_names:
            raise KeyError(
                f"text column {self.config.text_column!r} not found; the columns are {list(column_names)}. "
                f"Pass text_column=<name> (or synth.text_column in a recipe)."
            )
        check_input_columns(column_names, SYNTH_COLUMNS, step="synthesis", reads=[self.config.text_column])

    def __call__(self, batch: dict[str, list], *args: Any) -> dict[str, list]:
        """Synthesize pairs for one batch. Extra positional arguments (indices, rank from `with_indices` /
        `with_rank`) are accepted; results depend only on the batch's content. With a rank (`with_rank=True`,
        `num_proc=n`) the process is first pinned to the rank's GPUs or cores (`hf_ipt.placement.pin_rank`)."""
        self.check_columns(list(batch))
        rank = rank_from_args(args)
        if rank is not None:
            # before the engine exists in this process: CUDA_VISIBLE_DEVICES / core binding act only then
            # an Engine object says what it occupies; a plain callable is read as the configured engine would be
            spec = self.custom_engine if isinstance(self.custom_engine, Engine) else self.config.engine
            pin_rank(rank, devices_per_rank=devices_of(spec, self.config.engine_kwargs))
        texts = list(batch[self.config.text_column])
        self.check_blocks(args[0] if args and isinstance(args[0], list) else None)
        size = self.config.batch_size
        blocks = []
        for start in range(0, max(len(texts), 1), size):  # one block of chains at a time, as hf-ipt run maps them
            job = BatchJob(texts[start : start + size], self.config.rounds, self.fitter if texts else _NoFitter())
            if job.zero_shot_ids:
                run_scheduled(job, self.engine, self.config.max_new_tokens, self.config.scheduling)
            blocks.append(job.columns())
        # each column keeps the type of the blocks' columns (the pairs' list type tells Arrow its type)
        columns = {name: type(first)(v for block in blocks for v in block[name]) for name, first in blocks[0].items()}
        return {**batch, **columns}

    def check_blocks(self, indices: Sequence[int] | None) -> None:
        """With the map's row indices (`with_indices=True`): refuse a batch that starts inside a block of
        `batch_size` rows, whose chains would differ from `hf-ipt run`'s (the map's batch size is not a multiple of
        `batch_size`). Without indices the cut cannot be seen: map with a multiple of `batch_size`.

        Example:
            >>> Synthesizer(batch_size=4, rounds=2).check_blocks([6, 7])
            Traceback (most recent call last):
            ...
            ValueError: this map batch starts at row 6, inside a block of chains (rows 4-7 with synth batch_size=4): \
its chains would differ from hf-ipt run's. Map with batch_size=4 (or a multiple of it)
        """
        size = self.config.batch_size
        if self.config.rounds > 1 and indices and indices[0] % size:
            first = indices[0] - indices[0] % size
            raise ValueError(
                f"this map batch starts at row {indices[0]}, inside a block of chains (rows {first}-"
                f"{first + size - 1} with synth batch_size={size}): its chains would differ from hf-ipt run's. Map "
                f"with batch_size={size} (or a multiple of it)"
            )

    def counters(self) -> dict[str, int] | None:
        """What this process's engine has counted since it started (speculative decoding's drafts and accepted
        tokens), None before it exists or when it counts nothing; the sharded runner records each shard's share.

        Example:
            >>> Synthesizer(engine=lambda prompts: prompts).counters() is None
            True
        """
        pid, engine = self.__dict__.get("_engine", (None, None))
        if pid != os.getpid():
            return None
        return engine.counters()


class _NoFitter:
    """Stands in for the fitter on an empty batch, so that mapping an empty dataset loads no tokenizer."""

    def encode(self, segments: Sequence[str]) -> list[list[int]]:
        return []

    encode_segments = encode


def synthesize_batch(batch: dict[str, list], *args: Any) -> dict[str, list]:
    """`Dataset.map(synthesize_batch, batched=True)` with the paper's defaults: the instruction synthesizer on vLLM,
    greedy, 400 new tokens, max_model_len 4096, zero-shot (M = 1), text column `text`.

    For other settings build a `Synthesizer(...)`. Reads `text`; writes the input columns plus
    `hf_ipt.columns.SYNTH_COLUMNS` (`pairs`, `synth_status`, ..., see the module docstring).

    Example:
        >>> ds = Dataset.from_dict({"text": ["A text about cats."]})  # doctest: +SKIP
        >>> ds = ds.map(synthesize_batch, batched=True)  # doctest: +SKIP
        >>> ds[0]["synth_status"], ds[0]["pairs"][0]["instruction"]  # doctest: +SKIP
        ('ok', 'What do cats ...?')
    """
    return _DEFAULT_SYNTHESIZER(batch, *args)


_DEFAULT_SYNTHESIZER = Synthesizer()
