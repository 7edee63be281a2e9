"""The synthesis state of one batch (`BatchJob`) and the round-by-round driver that runs it.

A `BatchJob` lays the batch's rows out in chains (`hf_ipt.synthesis.chains`), hands out each chain's next prompt
(fitted with its chain's previous entries as demonstrations, `hf_ipt.synthesis.prompts`), parses each completion
(`hf_ipt.synthesis.parsing`) and collects the output columns. Drivers decide only the order requests reach the engine:
`run_round_by_round` here (one blocking engine call per round), `hf_ipt.synthesis.scheduling.run_continuous` (each
chain's next entry as soon as the previous one finished). The rows are identical either way.

Example:
    >>> job = BatchJob(["Text one.", "Text two."], rounds=2, fitter=fitter)  # doctest: +SKIP
    >>> run_round_by_round(job, engine, max_new_tokens=400)  # doctest: +SKIP
    >>> job.columns()["chain_position"]  # doctest: +SKIP
    [0, 1]
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from hf_ipt import columns as C
from hf_ipt.engines import ChainOutlook, Completion, Engine, Request
from hf_ipt.synthesis.chains import chain_layout
from hf_ipt.synthesis.parsing import parse_pairs
from hf_ipt.synthesis.prompts import PromptFitter, demonstration_segment, zero_shot_segment
from hf_ipt.tokenization import invalid_unicode_at


class PairList(list):
    """A plain list of pair dicts that tells Arrow its type, so a batch in which no row has pairs is still typed
    `list<struct<instruction, response>>` instead of `list<null>` (which would clash with later batches).

    Example:
        >>> import pyarrow as pa
        >>> pa.array(PairList([[], []])).type == PAIRS_ARROW_TYPE
        True
    """

    def __arrow_array__(self, type: Any = None) -> Any:
        import pyarrow as pa

        return pa.array(list(self), type=type or PAIRS_ARROW_TYPE)


def _pairs_arrow_type() -> Any:
    import pyarrow as pa

    return pa.list_(pa.struct([(C.INSTRUCTION, pa.string()), (C.RESPONSE, pa.string())]))


PAIRS_ARROW_TYPE = _pairs_arrow_type()  # the `pairs` column's Arrow type


def _invalid_reason(text: Any) -> tuple[str, str] | None:
    """(status, detail) for a text that must not be sent to the engine, None for a good one."""
    if text is None:
        return C.STATUS_INVALID_TEXT, "text is None"
    if not isinstance(text, str):
        return C.STATUS_INVALID_TEXT, f"text is a {type(text).__name__}, not a string"
    if not text.strip():
        return C.STATUS_EMPTY_TEXT, "text is empty or only whitespace"
    at = invalid_unicode_at(text)
    if at is not None:
        return C.STATUS_INVALID_TEXT, f"text is not valid Unicode (lone surrogate at character {at})"
    return None


def _output_error(text: Any) -> str | None:
    """Why an engine's answer cannot be stored (then the row is an `engine_error`), None for a good one.

    Checked here, once for every engine (a callable, vLLM, a server answering `"\\ud800"` in JSON): a lone surrogate
    would make Arrow refuse the whole batch when it is written.
    """
    if not isinstance(text, str):
        return f"the engine returned a {type(text).__name__}, not a string"
    at = invalid_unicode_at(text)
    if at is not None:
        return (
            f"the engine's output is not valid Unicode (lone surrogate {text[at]!r} at character {at}) and cannot be "
            "stored; the row's output is left out"
        )
    return None


class BatchJob:
    """The synthesis state of one batch: its chains, the prompts already sent, the pairs parsed.

    Drivers ask `next_request(chain)` for the next runnable entry of a chain and report results with `complete`.
    Results depend only on each chain's own history, never on the order the driver runs chains in, so round-by-round
    and continuous (chain-aware) scheduling give identical rows.

    Example:
        >>> job = BatchJob(texts, rounds=2, fitter=PromptFitter(tokenizer, 4096, 400))  # doctest: +SKIP
        >>> row, request = job.next_request(0)  # doctest: +SKIP
        >>> job.complete([(row, engine.generate_safely([request], 400)[0])])  # doctest: +SKIP
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
        self.escaped = [False] * n
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
            reason = _invalid_reason(text) or self._unencodable(text)
            if reason:
                self.status[row], self.error[row] = reason
            else:
                valid_rows.append(row)
        self.valid = set(valid_rows)
        zero_shot = fitter.encode_segments([zero_shot_segment(self.texts[r]) for r in valid_rows])
        self.zero_shot_ids = dict(zip(valid_rows, zero_shot, strict=True))

    def _unencodable(self, text: str) -> tuple[str, str] | None:
        """(status, detail) for a text with a special-token string that this tokenizer cannot encode as text exactly
        (`PromptFitter.escapes_exactly` is False): sending it would turn `<s>` into a control id."""
        if self.fitter.escapes_exactly or not self.fitter.has_special_strings(text):
            return None
        found = [token for token in self.fitter.special_strings if token in text]
        return C.STATUS_INVALID_TEXT, (
            f"text holds the special-token string(s) {found}, and this tokenizer cannot encode them as plain text "
            "exactly; remove or escape them in the source text"
        )

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
            self.escaped[row] = fitted.escaped
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
            error = completion.error if completion.error is not None else _output_error(completion.text)
            if error is not None:
                self.status[row], self.error[row] = C.STATUS_ENGINE_ERROR, error
                self.linked[chain] = []
                continue
            parsed = parse_pairs(completion.text)
            self.output[row], self.pairs[row], self.drops[row] = completion.text, parsed.pairs, parsed.drops
            if parsed.pairs:
                self.status[row] = C.STATUS_OK
                if self.cursor[chain] < len(self.layout[chain]):  # only an entry with a successor is ever shown
                    segment = demonstration_segment(self.sent_text[row], parsed.pairs)
                    if self.fitter.escapes_exactly or not self.fitter.segment_has_special_strings(segment):
                        new_segments.append((row, segment))
                    else:  # its special strings could not be sent as text: the next entry runs without it
                        self.linked[chain] = []
            else:
                self.linked[chain] = []
        ids = self.fitter.encode_segments([seg for _, seg in new_segments])
        for (row, segment), segment_ids in zip(new_segments, ids, strict=True):
            self.linked[self.chain_of[row]] = self.linked[self.chain_of[row]] + [(segment, segment_ids)]

    def columns(self) -> dict[str, list]:
        """The synthesis columns of the batch (`hf_ipt.columns.SYNTH_COLUMNS`), one value per row, in row order.

        Example:
            >>> sorted(job.columns())  # doctest: +SKIP
            ['chain_id', 'chain_position', 'num_demonstrations', 'pairs', 'parse_drops', ...]
        """
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
            C.SPECIAL_STRINGS: self.escaped,
        }


def run_round_by_round(job: BatchJob, engine: Engine, max_new_tokens: int) -> None:
    """Send every chain's next entry in one engine call, wait for all, repeat: M engine calls for M rounds.

    Example:
        >>> run_round_by_round(job, make_engine("vllm", model=path), max_new_tokens=400)  # doctest: +SKIP
    """
    pending = [req for c in range(len(job.layout)) if (req := job.next_request(c)) is not None]
    while pending:
        completions = engine.generate_safely([request for _, request in pending], max_new_tokens)
        results = [(row, completion) for (row, _), completion in zip(pending, completions, strict=True)]
        job.complete(results)
        pending = [req for row, _ in results if (req := job.next_request(job.chain_of[row])) is not None]
