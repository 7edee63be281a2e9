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
`num_demonstrations`, `prompt_tokens`, `truncated`, `synth_status`, `synth_error`, `parse_drops`.

With `rounds=M > 1`, the rows of each batch form M-round chains (see `hf_ipt.chains`): a row is prompted with the
previous entries of its chain as demonstrations. Chains never cross batches, so the batch size is part of the recipe.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from hf_ipt import columns as C
from hf_ipt.chains import chain_layout
from hf_ipt.engines import ENGINES, Completion, Engine, Request, make_engine
from hf_ipt.parallel import devices_per_rank, pin_rank, rank_from_args
from hf_ipt.parsing import parse_pairs
from hf_ipt.prompts import PromptFitter, demonstration_segment, zero_shot_segment
from hf_ipt.scheduling import SCHEDULING_MODES, ChainOutlook, run_scheduled

DEFAULT_MODEL = "instruction-pretrain/instruction-synthesizer"


@dataclass
class SynthesisConfig:
    """Settings of the synthesis step; the defaults are the paper's."""

    model: str = field(
        default=DEFAULT_MODEL, metadata={"help": "Instruction synthesizer: a Hub model id or a local directory."}
    )
    revision: str | None = field(default=None, metadata={"help": "Model revision (branch, tag or commit) to load."})
    tokenizer: str | None = field(
        default=None, metadata={"help": "Tokenizer id or path; defaults to the model's own tokenizer."}
    )
    engine: str = field(
        default="vllm",
        metadata={
            "help": "Engine that runs the synthesizer: 'vllm', 'transformers', or 'server' (OpenAI-compatible "
            "servers; engine_kwargs={'endpoints': [...]}, see hf_ipt.server_engine)."
        },
    )
    rounds: int = field(
        default=1,
        metadata={
            "help": "M, the number of rounds of multi-round synthesis (1 = zero-shot). Paper: 2 from scratch, "
            "3 for continual pre-training."
        },
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the raw text."})
    max_model_len: int = field(
        default=4096, metadata={"help": "Context window: prompt tokens + max_new_tokens never exceed it."}
    )
    max_new_tokens: int = field(
        default=400, metadata={"help": "Most tokens the synthesizer writes per text (greedy)."}
    )
    batch_size: int = field(
        default=1024,
        metadata={
            "help": "Rows per map batch; with rounds > 1 the chains are formed inside each batch, so this is "
            "part of the recipe. Pass it to `Dataset.map(batch_size=...)`."
        },
    )
    scheduling: str = field(
        default="continuous",
        metadata={
            "help": "'continuous': each chain's next round is sent as soon as its previous round finished (vLLM and "
            "server engines; reuses the prefix cache, no waiting for the slowest request of a round); 'rounds': one "
            "blocking engine call per round. Same rows either way; other engines always run round by round."
        },
    )
    engine_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Extra keyword arguments for the engine (vllm.LLM, or transformers from_pretrained plus "
            "'batch_size'/'device')."
        },
    )

    def __post_init__(self) -> None:
        for name in ("model", "engine", "text_column"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"synthesis.{name} must be a non-empty string, got {value!r}")
        for name, minimum in (("rounds", 1), ("max_model_len", 2), ("max_new_tokens", 1), ("batch_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"synthesis.{name} must be an integer >= {minimum}, got {value!r}")
        if self.max_new_tokens >= self.max_model_len:
            raise ValueError(
                f"synthesis.max_new_tokens ({self.max_new_tokens}) must be smaller than synthesis.max_model_len "
                f"({self.max_model_len}), or no room is left for the prompt"
            )
        if self.engine not in ENGINES:
            raise ValueError(
                f"synthesis.engine must be 'vllm' or 'transformers', got {self.engine!r} (or 'server' for "
                "OpenAI-compatible servers; a custom engine is passed to Synthesizer(engine=...) as an Engine or a "
                "callable)"
            )
        if self.scheduling not in SCHEDULING_MODES:
            raise ValueError(f"synthesis.scheduling must be one of {SCHEDULING_MODES}, got {self.scheduling!r}")
        if not isinstance(self.engine_kwargs, dict):
            raise ValueError(f"synthesis.engine_kwargs must be a mapping, got {type(self.engine_kwargs).__name__}")


class PairList(list):
    """A plain list of pair dicts that tells Arrow its type, so a batch in which no row has pairs is still typed
    `list<struct<instruction, response>>` instead of `list<null>` (which would clash with later batches)."""

    def __arrow_array__(self, type: Any = None) -> Any:
        import pyarrow as pa

        return pa.array(list(self), type=type or PAIRS_ARROW_TYPE)


def _pairs_arrow_type() -> Any:
    import pyarrow as pa

    return pa.list_(pa.struct([(C.INSTRUCTION, pa.string()), (C.RESPONSE, pa.string())]))


PAIRS_ARROW_TYPE = _pairs_arrow_type()

_TOKENIZER_CACHE: dict[tuple, Any] = {}


def _load_tokenizer(name: str, revision: str | None) -> Any:
    key = (os.getpid(), name, revision)
    if key not in _TOKENIZER_CACHE:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"tokenizer {name!r} is not a fast tokenizer; hf-ipt needs one for offsets and speed")
        _TOKENIZER_CACHE[key] = tokenizer
    return _TOKENIZER_CACHE[key]


def _invalid_reason(text: Any) -> tuple[str, str] | None:
    """(status, detail) for a text that must not be sent to the engine, None for a good one."""
    if text is None:
        return C.STATUS_INVALID_TEXT, "text is None"
    if not isinstance(text, str):
        return C.STATUS_INVALID_TEXT, f"text is a {type(text).__name__}, not a string"
    if not text.strip():
        return C.STATUS_EMPTY_TEXT, "text is empty or only whitespace"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return C.STATUS_INVALID_TEXT, f"text is not valid Unicode (lone surrogate at character {err.start})"
    return None


class BatchJob:
    """The synthesis state of one batch: its chains, the prompts already sent, the pairs parsed.

    Drivers ask `next_request(chain)` for the next runnable entry of a chain and report results with `complete`.
    Results depend only on each chain's own history, never on the order the driver runs chains in, so round-by-round
    and continuous (chain-aware) scheduling give identical rows.
    """

    def __init__(self, texts: Sequence[Any], rounds: int, fitter: PromptFitter) -> None:
        n = len(texts)
        self.texts = list(texts)
        self.fitter = fitter
        self.layout = chain_layout(n, rounds)
        self.status = [C.STATUS_NO_PAIRS] * n
        self.error = [""] * n
        self.pairs: list[list[dict[str, str]]] = [[] for _ in range(n)]
        self.output = [""] * n
        self.drops = [dict.fromkeys(C.PARSE_DROP_REASONS, 0) for _ in range(n)]
        self.prompt_tokens = [0] * n
        self.num_demos = [0] * n
        self.truncated = [False] * n
        self.chain_of = [0] * n
        self.position = [0] * n
        for c, chain in enumerate(self.layout):
            for pos, row in enumerate(chain):
                self.chain_of[row], self.position[row] = c, pos
        self.chain_ids = self._chain_ids()
        # per chain: the entries the next entry may use as demonstrations, oldest first, as (segment, ids)
        self.linked: list[list[tuple[str, list[int]]]] = [[] for _ in self.layout]
        self.cursor = [0] * len(self.layout)
        self.sent_text: dict[int, str] = {}

        valid_rows = []
        for row, text in enumerate(self.texts):
            reason = _invalid_reason(text)
            if reason:
                self.status[row], self.error[row] = reason
            else:
                valid_rows.append(row)
        self.valid = set(valid_rows)
        zero_shot = fitter.encode([zero_shot_segment(self.texts[r]) for r in valid_rows])
        self.zero_shot_ids = dict(zip(valid_rows, zero_shot, strict=True))

    def _chain_ids(self) -> list[str]:
        digest = hashlib.blake2b(digest_size=16)
        for text in self.texts:
            digest.update(
                repr(text).encode("utf-8", "backslashreplace")
                if not isinstance(text, str)
                else text.encode("utf-8", "surrogatepass")
            )
            digest.update(b"\x00")
        batch_key = digest.hexdigest()
        return [
            hashlib.blake2b(f"{batch_key}:{c}".encode(), digest_size=8).hexdigest() for c in range(len(self.layout))
        ]

    def next_request(self, chain: int) -> tuple[int, Request] | None:
        """The next entry of `chain` to send, as (row, request); None when the chain is finished.

        Rows that cannot be sent (bad text) are passed over here and break the chain's links.
        """
        rows = self.layout[chain]
        while self.cursor[chain] < len(rows):
            row = rows[self.cursor[chain]]
            self.cursor[chain] += 1
            if row not in self.valid:
                self.linked[chain] = []
                continue
            fitted = self.fitter.fit(self.texts[row], self.zero_shot_ids[row], self.linked[chain])
            used = self.linked[chain][len(self.linked[chain]) - fitted.num_demonstrations :]
            self.linked[chain] = used if fitted.num_demonstrations else []
            self.sent_text[row] = fitted.text
            self.prompt_tokens[row] = len(fitted.token_ids)
            self.num_demos[row] = fitted.num_demonstrations
            self.truncated[row] = fitted.truncated
            return row, Request(fitted.prompt, fitted.token_ids)
        return None

    def outlook(self, chain: int) -> ChainOutlook:
        """The entries `chain` will still send after the one `next_request` returned last, and their zero-shot
        tokens (schedulers reserve KV cache room for them)."""
        later = [row for row in self.layout[chain][self.cursor[chain] :] if row in self.valid]
        return ChainOutlook(len(later), sum(len(self.zero_shot_ids[row]) for row in later))

    def complete(self, results: Sequence[tuple[int, Completion]]) -> None:
        """Record completions (for rows returned by `next_request`), parse them and extend their chains' links."""
        new_segments: list[tuple[int, str]] = []
        for row, completion in results:
            chain = self.chain_of[row]
            if completion.error is not None:
                self.status[row], self.error[row] = C.STATUS_ENGINE_ERROR, completion.error
                self.linked[chain] = []
                continue
            parsed = parse_pairs(completion.text)
            self.output[row], self.pairs[row], self.drops[row] = completion.text, parsed.pairs, parsed.drops
            if parsed.pairs:
                self.status[row] = C.STATUS_OK
                if self.cursor[chain] < len(self.layout[chain]):  # only an entry with a successor is ever shown
                    new_segments.append((row, demonstration_segment(self.sent_text[row], parsed.pairs)))
            else:
                self.linked[chain] = []
        ids = self.fitter.encode([seg for _, seg in new_segments])
        for (row, segment), segment_ids in zip(new_segments, ids, strict=True):
            self.linked[self.chain_of[row]] = self.linked[self.chain_of[row]] + [(segment, segment_ids)]

    def columns(self) -> dict[str, list]:
        n = len(self.texts)
        return {
            C.PAIRS: PairList(self.pairs),
            C.SYNTH_OUTPUT: self.output,
            C.CHAIN_ID: [self.chain_ids[self.chain_of[r]] for r in range(n)],
            C.CHAIN_POSITION: self.position,
            C.NUM_DEMONSTRATIONS: self.num_demos,
            C.PROMPT_TOKENS: self.prompt_tokens,
            C.TRUNCATED: self.truncated,
            C.SYNTH_STATUS: self.status,
            C.SYNTH_ERROR: self.error,
            C.PARSE_DROPS: self.drops,
        }


def run_round_by_round(job: BatchJob, engine: Engine, max_new_tokens: int) -> None:
    """Send every chain's next entry in one engine call, wait for all, repeat: M engine calls for M rounds."""
    pending = [req for c in range(len(job.layout)) if (req := job.next_request(c)) is not None]
    while pending:
        completions = engine.generate_safely([request for _, request in pending], max_new_tokens)
        results = [(row, completion) for (row, _), completion in zip(pending, completions, strict=True)]
        job.complete(results)
        pending = [req for row, _ in results if (req := job.next_request(job.chain_of[row])) is not None]


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
            tokenizer = _load_tokenizer(cfg.tokenizer or cfg.model, cfg.revision if not cfg.tokenizer else None)
            fitter = PromptFitter(tokenizer, cfg.max_model_len, cfg.max_new_tokens)
            self.__dict__["_fitter"], self.__dict__["_fitter_key"] = fitter, key
        return fitter

    @property
    def engine(self) -> Engine:
        cfg = self.config
        spec = self.custom_engine if self.custom_engine is not None else cfg.engine
        return make_engine(
            spec,
            model=cfg.model,
            revision=cfg.revision,
            tokenizer=cfg.tokenizer,
            max_model_len=cfg.max_model_len,
            engine_kwargs=cfg.engine_kwargs,
        )

    def check_columns(self, column_names: Sequence[str]) -> None:
        """Raise a KeyError naming the missing text column and the available ones."""
        if self.config.text_column not in column_names:
            raise KeyError(
                f"text column {self.config.text_column!r} not found; the columns are {list(column_names)}. "
                f"Pass text_column=<name> (or synth.text_column in a recipe)."
            )

    def __call__(self, batch: dict[str, list], *args: Any) -> dict[str, list]:
        """Synthesize pairs for one batch. Extra positional arguments (indices, rank from `with_indices` /
        `with_rank`) are accepted; results depend only on the batch's content. With a rank (`with_rank=True`,
        `num_proc=n`) the process is first pinned to the rank's GPUs or cores (`hf_ipt.parallel.pin_rank`)."""
        self.check_columns(list(batch))
        rank = rank_from_args(args)
        if rank is not None:
            # before the engine exists in this process: CUDA_VISIBLE_DEVICES / core binding act only then
            pin_rank(rank, devices_per_rank=devices_per_rank(self.config.engine_kwargs))
        texts = batch[self.config.text_column]
        job = BatchJob(texts, self.config.rounds, self.fitter if len(texts) else _NoFitter())
        if job.zero_shot_ids:
            run_scheduled(job, self.engine, self.config.max_new_tokens, self.config.scheduling)
        return {**batch, **job.columns()}


class _NoFitter:
    """Stands in for the fitter on an empty batch, so that mapping an empty dataset loads no tokenizer."""

    def encode(self, segments: Sequence[str]) -> list[list[int]]:
        return []


def synthesize_batch(batch: dict[str, list], *args: Any) -> dict[str, list]:
    """`Dataset.map(synthesize_batch, batched=True)` with the paper's defaults: the instruction synthesizer on vLLM,
    greedy, 400 new tokens, max_model_len 4096, zero-shot (M = 1), text column `text`.

    For other settings build a `Synthesizer(...)`.
    """
    return _DEFAULT_SYNTHESIZER(batch, *args)


_DEFAULT_SYNTHESIZER = Synthesizer()
