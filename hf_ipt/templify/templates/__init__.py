"""The template data of templify, read once from the YAML files beside this module.

The files hold only data, meant to be read at a glance:

- `openings.yaml`: openings before the raw text, lead-ins between the text and its pairs (and, for inverted texts,
  between the pairs and the text), gaps, chain separators;
- `qa.yaml`: the per-mode layouts of the pairs (classic QA formats, inline few-shot lines, numbered lists);
- `dialog.yaml`: speakers, turns and next-turn prompts (dialog and next-turn modes);
- `options.yaml`: option starts, label symbols and formats, layouts, answers, none-of-the-above texts;
- `cot.yaml`: chain-of-thought cues and final-answer phrases.

Templates are `str.format` strings whose fields are checked here against the fields each kind allows, so a typo in
a file fails at import with the file, key and entry named. Values are substituted by `str.format`, which never
interprets the substituted text, so braces in a corpus are safe.

Example:
    >>> from hf_ipt.templify.templates import TEMPLATES
    >>> len(TEMPLATES.qa_formats) >= 60
    True
    >>> TEMPLATES.qa_formats[0].format(question="Why?", answer="Because.")
    'Question: Why?\\nAnswer: Because.'
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

TEMPLATE_FILES = ("openings.yaml", "qa.yaml", "dialog.yaml", "options.yaml", "cot.yaml")


@dataclass(frozen=True)
class NumberedFormat:
    """One numbered-questions layout: a header, then the numbered questions; a header, then the numbered answers.

    Example:
        >>> layout = NumberedFormat("Questions:", "{n}. {question}", "Answers:", "{n}. {answer}")
        >>> layout.question.format(n=1, question="Why?")
        '1. Why?'
    """

    questions_header: str
    question: str
    answers_header: str
    answer: str


@dataclass(frozen=True)
class OptionLayout:
    """Where the option start and the options go: `stem + before_start + start + after_start + opt1 + between + …`.

    Example:
        >>> layout = OptionLayout(before_start="\\n", after_start="\\n", between="\\n")
        >>> "Pick one?" + layout.before_start + "Options:" + layout.after_start + layout.between.join(["- A", "- B"])
        'Pick one?\\nOptions:\\n- A\\n- B'
    """

    before_start: str
    after_start: str
    between: str


@dataclass(frozen=True)
class Templates:
    """All template pools, as tuples of strings (or small frozen records). See the YAML files for their meaning.

    Example:
        >>> TEMPLATES.numbered_formats[0].questions_header, len(TEMPLATES.digest)
        ('Questions:', 32)
    """

    openings: tuple[str, ...]
    lead_ins: tuple[str, ...]
    inverted_lead_ins: tuple[str, ...]
    text_gaps: tuple[str, ...]
    chain_separators: tuple[str, ...]
    qa_formats: tuple[str, ...]
    pair_separators: tuple[str, ...]
    few_shot_formats: tuple[str, ...]
    few_shot_separators: tuple[str, ...]
    numbered_formats: tuple[NumberedFormat, ...]
    dialog_speakers: tuple[tuple[str, str], ...]
    dialog_turns: tuple[str, ...]
    dialog_separators: tuple[str, ...]
    next_turn_prompts: tuple[str, ...]
    option_starts: tuple[str, ...]
    option_label_symbols: tuple[tuple[str, ...], ...]
    option_label_formats: tuple[str, ...]
    option_layouts: tuple[OptionLayout, ...]
    option_answers: tuple[str, ...]
    option_answers_in_sentence: tuple[str, ...]
    none_of_the_above: tuple[str, ...]
    unanswerable_answers: frozenset[str]
    cot_cues: tuple[str, ...]
    cot_finals: tuple[str, ...]
    digest: str  # hash of the files' bytes: part of templify's cache fingerprint

    def inventory(self) -> dict[str, int]:
        """How many entries each pool holds (label sets counted as symbol lists x formats).

        Example:
            >>> TEMPLATES.inventory()["option_label_sets"]
            80
        """
        counts = {
            name: len(getattr(self, name))
            for name in self.__dataclass_fields__
            if name not in ("digest", "option_label_symbols")
        }
        counts["option_label_sets"] = len(self.option_label_symbols) * len(self.option_label_formats)
        counts["cot_styles"] = len(self.cot_cues) * len(self.cot_finals)
        return counts


def normalize_answer(answer: str) -> str:
    """The form in which answers are compared with options and with `unanswerable_answers`.

    Example:
        >>> normalize_answer("  Not enough information. ")
        'not enough information'
    """
    return answer.strip().rstrip(".!").strip().casefold()


class TemplateError(ValueError):
    """A template file is malformed; the message names the file, the key and the entry.

    Example:
        >>> load_templates()  # with "Q: {qestion}" written in qa.yaml  # doctest: +SKIP
        Traceback (most recent call last):
        TemplateError: qa.yaml: `qa_formats`[0] 'Q: {qestion}' uses fields ['qestion']; it must use ['answer', ...
    """


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def _check_template(value: Any, where: str, fields: set[str], required: set[str]) -> str:
    """`value` must be a string using only `fields` and all of `required`; `where` names it in errors."""
    if not isinstance(value, str):
        raise TemplateError(f"{where} must be a string, got {value!r}")
    try:
        used = _fields(value)
    except ValueError as err:
        raise TemplateError(f"{where} {value!r} is not a valid template: {err}") from err
    if not used <= fields or not required <= used:
        raise TemplateError(
            f"{where} {value!r} uses fields {sorted(used)}; it must use {sorted(required)}"
            + (f" and may use {sorted(fields - required)}" if fields - required else "")
            + " (write a literal brace as {{ or }})"
        )
    return value


def _strings(
    data: dict[str, Any], file: str, key: str, fields: set[str], *, required: set[str] | None = None
) -> tuple[str, ...]:
    """The list under `key`, checked: non-empty, strings only, each using only `fields` (and all of `required`)."""
    values = data.get(key)
    if not isinstance(values, list) or not values:
        raise TemplateError(f"{file}: `{key}` must be a non-empty list of strings, got {type(values).__name__}")
    required = fields if required is None else required
    return tuple(_check_template(v, f"{file}: `{key}`[{i}]", fields, required) for i, v in enumerate(values))


def _records(data: dict[str, Any], file: str, key: str, fields: dict[str, set[str]]) -> list[dict[str, str]]:
    values = data.get(key)
    if not isinstance(values, list) or not values:
        raise TemplateError(f"{file}: `{key}` must be a non-empty list of mappings")
    for index, value in enumerate(values):
        if not isinstance(value, dict) or set(value) != set(fields):
            raise TemplateError(
                f"{file}: `{key}`[{index}] must be a mapping with keys {sorted(fields)}, got {value!r}"
            )
        for name, allowed in fields.items():
            _check_template(value[name], f"{file}: `{key}`[{index}].{name}", allowed, allowed)
    return values


def load_templates() -> Templates:
    """Read and check the YAML files of this package (done once, at import, into `TEMPLATES`).

    Example:
        >>> load_templates().digest == TEMPLATES.digest
        True
    """
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    digest = hashlib.blake2b(digest_size=16)
    data: dict[str, dict[str, Any]] = {}
    for file in TEMPLATE_FILES:
        raw = resources.files(__package__).joinpath(file).read_bytes()
        digest.update(file.encode() + b"\x00" + raw + b"\x00")
        data[file] = yaml.load(raw, Loader=loader)  # noqa: S506 - a safe loader
    o, q, d, p, c = (data[file] for file in TEMPLATE_FILES)
    f_o, f_q, f_d, f_p, f_c = TEMPLATE_FILES

    numbered = _records(
        q,
        f_q,
        "numbered_formats",
        {"questions": set(), "question": {"n", "question"}, "answers": set(), "answer": {"n", "answer"}},
    )
    speakers = d.get("dialog_speakers")
    if (
        not isinstance(speakers, list)
        or not speakers
        or not all(isinstance(s, list) and len(s) == 2 and all(isinstance(x, str) and x for x in s) for s in speakers)
    ):
        raise TemplateError(f"{f_d}: `dialog_speakers` must be a non-empty list of [asker, answerer] name pairs")
    symbols = p.get("option_label_symbols")
    if not isinstance(symbols, dict) or not symbols:
        raise TemplateError(f"{f_p}: `option_label_symbols` must be a mapping of name -> list of symbols")
    for name, values in symbols.items():
        if not isinstance(values, list) or len(values) < 2 or len(set(map(str, values))) != len(values):
            raise TemplateError(f"{f_p}: `option_label_symbols.{name}` must list at least 2 distinct symbols")
    layouts = _records(p, f_p, "option_layouts", {"before_start": set(), "after_start": set(), "between": set()})
    unanswerable = _strings(p, f_p, "unanswerable_answers", set())
    none_texts = _strings(p, f_p, "none_of_the_above", set())
    option_fields = {"label", "labelled", "option"}
    option_answers = _strings(p, f_p, "option_answers", option_fields, required=set())
    option_answers_in_sentence = _strings(p, f_p, "option_answers_in_sentence", option_fields, required=set())
    answer_pools = {"option_answers": option_answers, "option_answers_in_sentence": option_answers_in_sentence}
    for key, values in answer_pools.items():
        for index, value in enumerate(values):
            if not _fields(value) & {"label", "labelled"}:
                raise TemplateError(
                    f"{f_p}: `{key}`[{index}] {value!r} must show the label ({{label}} or {{labelled}})"
                )

    return Templates(
        openings=_strings(o, f_o, "openings", {"text"}),
        lead_ins=_strings(o, f_o, "lead_ins", set()),
        inverted_lead_ins=_strings(o, f_o, "inverted_lead_ins", set()),
        text_gaps=_strings(o, f_o, "text_gaps", set()),
        chain_separators=_strings(o, f_o, "chain_separators", set()),
        qa_formats=_strings(q, f_q, "qa_formats", {"question", "answer"}),
        pair_separators=_strings(q, f_q, "pair_separators", set()),
        few_shot_formats=_strings(q, f_q, "few_shot_formats", {"question", "answer"}),
        few_shot_separators=_strings(q, f_q, "few_shot_separators", set()),
        numbered_formats=tuple(
            NumberedFormat(r["questions"], r["question"], r["answers"], r["answer"]) for r in numbered
        ),
        dialog_speakers=tuple((a, b) for a, b in speakers),
        dialog_turns=_strings(d, f_d, "dialog_turns", {"speaker", "utterance"}),
        dialog_separators=_strings(d, f_d, "dialog_separators", set()),
        next_turn_prompts=_strings(
            d, f_d, "next_turn_prompts", {"history", "speaker", "answer"}, required={"history", "answer"}
        ),
        option_starts=_strings(p, f_p, "option_starts", set()),
        option_label_symbols=tuple(tuple(str(s) for s in values) for values in symbols.values()),
        option_label_formats=_strings(p, f_p, "option_label_formats", {"label"}),
        option_layouts=tuple(OptionLayout(r["before_start"], r["after_start"], r["between"]) for r in layouts),
        option_answers=option_answers,
        option_answers_in_sentence=option_answers_in_sentence,
        none_of_the_above=none_texts,
        unanswerable_answers=frozenset(normalize_answer(text) for text in unanswerable),
        cot_cues=_strings(c, f_c, "cot_cues", {"question"}),
        cot_finals=_strings(c, f_c, "cot_finals", {"rationale", "answer"}),
        digest=digest.hexdigest(),
    )


TEMPLATES = load_templates()
