"""`TemplifyConfig`, the settings of the templify step, and the modes a text's pairs can be laid out in.

Example:
    >>> TemplifyConfig(seed=3).mode_weights["classic"]
    0.8
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from hf_ipt import columns as C
from hf_ipt.formatting import NO_FORMAT, TargetFormat
from hf_ipt.validation import check_fields

# --- modes: how the pairs of a text are laid out ---
CLASSIC = "classic"  # a QA format per entry ("Question: … Answer: …")
DIALOG = "dialog"  # the pairs as the turns of a conversation
NUMBERED = "numbered"  # all questions numbered, then all answers
FEW_SHOT = "few_shot"  # inline few-shot: each pair on one line, question and answer side by side
NEXT_TURN = "next_turn"  # a conversation up to the last question, then "what is the next turn?" and the answer
MODES = (CLASSIC, DIALOG, NUMBERED, FEW_SHOT, NEXT_TURN)
MULTI_PAIR_MODES = (NUMBERED, FEW_SHOT, NEXT_TURN)  # only when every entry of the text has >= 2 pairs
DEFAULT_MODE_WEIGHTS = {CLASSIC: 0.80, DIALOG: 0.05, NUMBERED: 0.05, FEW_SHOT: 0.05, NEXT_TURN: 0.05}
RAW = "raw"  # mode of a text without pairs (the raw text as is)
SKIPPED = "skipped"  # mode of a row that gives no text

# the synthesis columns templify reads besides the text column (and the optional id column)
INPUT_COLUMNS = (C.PAIRS, C.CHAIN_ID, C.CHAIN_POSITION, C.NUM_DEMONSTRATIONS)


@dataclass
class TemplifyConfig:
    """Settings of the templify step; the defaults follow the method's reference.

    Example:
        >>> TemplifyConfig(seed=3, mode_weights={"classic": 1.0}).mode_weights
        {'classic': 1.0, 'dialog': 0.0, 'numbered': 0.0, 'few_shot': 0.0, 'next_turn': 0.0}
    """

    seed: int = field(
        default=0,
        metadata={"help": "Global seed, combined with each text's key; another seed gives other template choices."},
    )
    text_column: str = field(default="text", metadata={"help": "Input column holding the raw text.", "nonempty": True})
    id_column: str | None = field(
        default=None,
        metadata={
            "help": "Optional input column with a stable id per row; when set, each text's random choices derive "
            "from these ids (plus the seed) instead of a hash of the texts, and the ids are written to `source_ids`.",
            "nonempty": True,
        },
    )
    mode_weights: dict[str, float] = field(
        default_factory=lambda: dict(DEFAULT_MODE_WEIGHTS),
        metadata={
            "help": "Relative weights of the modes classic, dialog, numbered, few_shot, next_turn (missing = 0). "
            "numbered, few_shot and next_turn need >= 2 pairs in every entry of a text; for other texts their "
            "weight goes to classic (so the defaults give classic 95 / dialog 5 there).",
            "min": 0,
            "finite": True,
        },
    )
    inversion_rate: float = field(
        default=0.05,
        metadata={"help": "Share of texts written inverted: pairs first, raw text last.", "min": 0, "max": 1},
    )
    opening_rate: float = field(
        default=0.5,
        metadata={
            "help": "Share of entries whose text gets an opening ('Article: …'); the others show it bare.",
            "min": 0,
            "max": 1,
        },
    )
    lead_in_rate: float = field(
        default=0.5,
        metadata={"help": "Share of entries with a lead-in line between the text and the pairs.", "min": 0, "max": 1},
    )
    target_tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer (name or path) of the model to be trained: its BOS/EOS strings are written around "
            "every text. Tokenize the result with add_special_tokens=False. Off by default.",
            "nonempty": True,
        },
    )
    target_format: TargetFormat = field(
        default=NO_FORMAT,
        metadata={
            "help": "Explicit BOS/EOS to write around every text (a hf_ipt.TargetFormat or {'bos': …, 'eos': …}); "
            "use either this or target_tokenizer."
        },
    )
    batch_size: int = field(
        default=1000,
        metadata={
            "help": "Input rows per map batch in templify() (rounded to whole chains; never splits a chain).",
            "min": 1,
        },
    )
    num_proc: int | None = field(
        default=None,
        metadata={
            "help": "Processes for Dataset.map in templify() (the templify stage runs its shards on run.num_workers "
            "workers instead).",
            "min": 1,
        },
    )
    drop_skipped: bool = field(
        default=False,
        metadata={
            "help": "templify() removes the rows that give no text (status empty_text / invalid_text) and logs their "
            "count; by default they are kept with text '' so every input row is accounted for."
        },
    )

    def __post_init__(self) -> None:
        check_fields(self, "templify")
        if self.id_column is not None and self.id_column in (self.text_column, *INPUT_COLUMNS):
            raise ValueError(
                f"templify.id_column {self.id_column!r} names the text column or a synthesis column; it must name a "
                "column holding one stable id per row (or be None to key on the texts)"
            )
        unknown = sorted(set(self.mode_weights) - set(MODES))
        if unknown:
            raise ValueError(f"templify.mode_weights has unknown modes {unknown}; the modes are {list(MODES)}")
        # canonical order and float values, so equal configs hash equally for the datasets cache
        self.mode_weights = {mode: float(self.mode_weights.get(mode, 0.0)) for mode in MODES}
        if sum(self.mode_weights.values()) <= 0:
            raise ValueError("templify.mode_weights are all 0; give at least one mode a positive weight")
        if isinstance(self.target_format, Mapping):
            extra = sorted(set(self.target_format) - {"bos", "eos"})
            if extra:
                raise ValueError(f"templify.target_format accepts the keys 'bos' and 'eos', got also {extra}")
            self.target_format = TargetFormat(**self.target_format)
        if not isinstance(self.target_format, TargetFormat) or not all(
            isinstance(s, str) for s in (self.target_format.bos, self.target_format.eos)
        ):
            raise ValueError(
                "templify.target_format must be a hf_ipt.TargetFormat (or {'bos': str, 'eos': str}), got "
                f"{self.target_format!r}"
            )
        if self.target_tokenizer is not None and self.target_format != NO_FORMAT:
            raise ValueError(
                "templify.target_tokenizer and templify.target_format are both set; use one: the tokenizer's "
                "BOS/EOS, or explicit strings"
            )

    def resolve_target_format(self) -> TargetFormat:
        """The BOS/EOS to write: read from `target_tokenizer` when set (loading it), else `target_format`.

        A tokenizer that cannot be loaded is a ValueError naming `templify.target_tokenizer`.

        Example:
            >>> TemplifyConfig(target_format=TargetFormat("<s>", "</s>")).resolve_target_format().bos
            '<s>'
        """
        if self.target_tokenizer is not None:
            return TargetFormat.from_tokenizer(self.target_tokenizer, key="templify.target_tokenizer")
        return self.target_format
