"""Secrets never written anywhere: the one scrubbing function every writer calls (card, stats.json, recipe.yaml,
the recorded command line, log lines and error messages).

A secret is recognised three ways, and each writer applies all three:
- by name: the value of a mapping key such as `token`, `secret`, `key`, `password`, `credentials`, and every value
  under a `storage_options` key (fsspec credentials come under many names: `key`/`secret`, `account_key`,
  `sas_token`, `client_secret`, a credentials dict...);
- by shape: Hub tokens (`hf_...`), credentials in URLs (`s3://KEY:SECRET@bucket`, `https://user:pass@host`), and
  the value of a command-line flag naming a secret, in either spelling (`--release.token X`, `--release.token=X`,
  `--run.storage_options '{"secret": ...}'`);
- by value: every secret string known to the process (`HF_TOKEN`, the saved Hub login, and whatever a recipe
  holds under a secret name, registered with `register_secrets`) is replaced wherever it appears, even inside a
  description or an error message.

Example:
    >>> scrub_command(["push", "r.yaml", "--release.token=abc123", "--run.storage_options", '{"secret": "s"}'])
    'hf-ipt push r.yaml --release.token=<redacted> --run.storage_options <redacted>'
    >>> scrub("read s3://AKIA:wJalr@bucket/x and https://me:pw@host/y")
    'read s3://<redacted>@bucket/x and https://<redacted>@host/y'
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

REDACTED = "<redacted>"
# key names whose values are secrets, matched at the end of a key (`release.token`, `hub_token`, `aws_secret_key`);
# a bare `key` is a secret only inside storage_options, where every value is hidden
_SECRET_WORDS = (
    r"token|secret|password|passwd|(?:api|access|secret|private|account)[_\-]?key|authorization|credentials?|"
    r"connection[_\-]?string"
)
_SECRET_KEY_RE = re.compile(rf"(^|[_\-.])(hf_?)?({_SECRET_WORDS})$", re.IGNORECASE)
# keys whose whole value (usually a mapping of credentials) is never written
_SECRET_CONTAINER_RE = re.compile(r"(^|[_\-.])(storage_options|credentials?)$", re.IGNORECASE)
_HF_TOKEN_RE = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")
_URL_CREDENTIALS_RE = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.\-]*://)[^/\s@'\"`]+@")
# `--some.key value` / `--some.key=value` in a command written as text (argv lists go through scrub_command)
_SECRET_FLAG_RE = re.compile(
    rf"(--(?:[\w.\-]*[.\-_])?(?:{_SECRET_WORDS}|storage_options))(=|\s+)(\"[^\"]*\"|'[^']*'|\{{[^}}]*\}}|[^\s`'\"]+)",
    re.IGNORECASE,
)
_KNOWN: set[str] = set()
_LOCK = threading.Lock()
# shorter strings would redact ordinary words (a `key: "a"` is not worth breaking every "a" in a card)
_MIN_SECRET_LENGTH = 4


def is_secret_key(key: Any) -> bool:
    """Whether the value of a mapping key or a flag named `key` is a secret (or holds secrets).

    Example:
        >>> [is_secret_key(k) for k in ("release.token", "hub_token", "tokenizer", "storage_options", "max_tokens")]
        [True, True, False, True, False]
    """
    text = str(key).lstrip("-")
    return bool(_SECRET_KEY_RE.search(text) or _SECRET_CONTAINER_RE.search(text))


def secret_values(value: Any) -> list[str]:
    """Every string held under a secret name anywhere in `value` (a recipe mapping, a dataclass dict, ...).

    Example:
        >>> secret_values({"release": {"token": "abc1"}, "run": {"storage_options": {"key": "AK12", "anon": False}}})
        ['abc1', 'AK12']
    """
    found: list[str] = []

    def leaves(item: Any) -> Iterable[str]:
        if isinstance(item, Mapping):
            for sub in item.values():
                yield from leaves(sub)
        elif isinstance(item, (list, tuple, set, frozenset)):
            for sub in item:
                yield from leaves(sub)
        elif isinstance(item, str):
            yield item

    def walk(item: Any) -> None:
        if isinstance(item, Mapping):
            for key, sub in item.items():
                if is_secret_key(key):
                    found.extend(leaves(sub))
                else:
                    walk(sub)
        elif isinstance(item, (list, tuple)):
            for sub in item:
                walk(sub)

    walk(value)
    return [s for s in dict.fromkeys(found) if len(s) >= _MIN_SECRET_LENGTH]


def register_secrets(values: Iterable[Any]) -> None:
    """Remember secret strings for every later `scrub` of this process (e.g. the recipe's token and credentials).

    Example:
        >>> register_secrets(["s3cr3t-value"]); scrub("uses s3cr3t-value")
        'uses <redacted>'
    """
    with _LOCK:
        _KNOWN.update(str(v) for v in values if isinstance(v, str) and len(v) >= _MIN_SECRET_LENGTH)


def known_secrets() -> list[str]:
    """The secrets every scrub removes: registered ones, `HF_TOKEN`/`HUGGING_FACE_HUB_TOKEN`, the saved Hub login.

    Example:
        >>> "hf_x" in known_secrets()  # doctest: +SKIP
        False
    """
    found = [os.environ.get(name) for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")]
    try:
        from huggingface_hub import get_token

        found.append(get_token())
    except Exception:  # no login, unreadable token file, huggingface_hub not importable: nothing more to hide
        pass
    with _LOCK:
        found += sorted(_KNOWN)
    # longest first: a secret that contains another one is replaced whole
    return sorted({s for s in found if s and len(s) >= _MIN_SECRET_LENGTH}, key=len, reverse=True)


def scrub(text: str, secrets: Sequence[str] = ()) -> str:
    """`text` with secrets removed: the given and known secret strings, Hub tokens, URL credentials, secret flags.

    Example:
        >>> scrub("hf-ipt push r.yaml --token abc")
        'hf-ipt push r.yaml --token <redacted>'
        >>> scrub("--run.storage_options={'key': 'A', 'secret': 'B'} --release.token='x y'")
        '--run.storage_options=<redacted> --release.token=<redacted>'
    """
    if not isinstance(text, str) or not text:
        return text
    for secret in sorted({s for s in [*secrets, *known_secrets()] if s}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = _SECRET_FLAG_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _URL_CREDENTIALS_RE.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    return _HF_TOKEN_RE.sub(REDACTED, text)


def redact(value: Any, secrets: Sequence[str] = ()) -> Any:
    """Copy of `value` with secrets removed: values of secret-named keys (all of a `storage_options` mapping's
    values, its keys kept), then `scrub` on every string.

    Example:
        >>> redact({"hub_token": "abc", "tokenizer": "gpt2", "note": "uses xyz1"}, ["xyz1"])
        {'hub_token': '<redacted>', 'tokenizer': 'gpt2', 'note': 'uses <redacted>'}
        >>> redact({"storage_options": {"key": "AK", "endpoint_url": "http://u:p@minio"}})
        {'storage_options': {'key': '<redacted>', 'endpoint_url': '<redacted>'}}
    """
    secrets = [*secrets, *secret_values(value)]
    return _redact(value, secrets)


def without_secrets(value: Any) -> Any:
    """`value` as an identity, a manifest or a fingerprint records it: every secret-named key left out (`api_key`,
    `token`, a `storage_options` mapping, ... at any depth), and `redact` on the rest (a credential inside a URL). A
    credential never decides what an output is, so rotating one never blocks resuming or reusing it.

    Example:
        >>> without_secrets({"engine_kwargs": {"api_key": "sk-1", "extra_body": {"auth_token": "t0k3n", "n": 1}}})
        {'engine_kwargs': {'extra_body': {'n': 1}}}
        >>> without_secrets({"path": "s3://AKIA:pw12@bucket/x"})
        {'path': 's3://<redacted>@bucket/x'}
    """

    def drop(item: Any) -> Any:
        if isinstance(item, Mapping):
            return {key: drop(sub) for key, sub in item.items() if not is_secret_key(key)}
        if isinstance(item, (list, tuple)):
            return [drop(sub) for sub in item]
        return item

    return redact(drop(value), secret_values(value))


def _redact(value: Any, secrets: Sequence[str], hide_all: bool = False) -> Any:
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if _SECRET_CONTAINER_RE.search(str(key)) and isinstance(item, (Mapping, list, tuple)):
                out[key] = _redact(item, secrets, hide_all=True)
            elif (hide_all or is_secret_key(key)) and not isinstance(item, (Mapping, list, tuple)):
                out[key] = REDACTED if item not in ("", None, {}, []) else item
            else:
                out[key] = _redact(item, secrets, hide_all)
        return out
    if isinstance(value, (list, tuple)):
        return [_redact(item, secrets, hide_all) for item in value]
    if hide_all and value not in ("", None):
        return REDACTED
    if isinstance(value, str):
        return scrub(value, secrets)
    return value


def scrub_command(
    argv: str | Sequence[str] | None, secrets: Sequence[str] = (), *, program: str = "hf-ipt"
) -> str | None:
    """The command line as recorded (card, stats.json): `program` and its arguments, with the value after a secret
    flag (`--release.token X`, `--release.token=X`, `--run.storage_options '{...}'`) and every secret string
    replaced. A string is scrubbed as text.

    Example:
        >>> scrub_command(["run", "r.yaml", "--release.token", "abc", "--synth.rounds", "2"])
        'hf-ipt run r.yaml --release.token <redacted> --synth.rounds 2'
    """
    if argv is None:
        return None
    if isinstance(argv, str):
        return scrub(argv, secrets)
    args = [str(a) for a in argv]
    if not args:
        return None
    out: list[str] = []
    hide_next = False
    for arg in args:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        if arg.startswith("--"):
            flag, eq, _ = arg.partition("=")
            if is_secret_key(flag):
                if eq:
                    out.append(f"{flag}={REDACTED}")
                else:
                    out.append(flag)
                    hide_next = True
                continue
        out.append(scrub(arg, secrets))
    return scrub(f"{program} " + " ".join(a if a == REDACTED or "=" + REDACTED in a else shlex.quote(a) for a in out))


def process_command() -> str | None:
    """This Python process's command line, scrubbed like `scrub_command`: what a release made from Python (a
    script composing the stages, `save_release`, `push_release`) records when no hf-ipt command is given.

    Example:
        >>> process_command().startswith("python ")
        True
    """
    return scrub_command(sys.argv, program="python")


class ScrubFilter(logging.Filter):
    """Logging filter that scrubs each record's message (args merged in) before any handler formats it.

    Example:
        >>> logging.getLogger("hf_ipt").addFilter(ScrubFilter())  # doctest: +SKIP
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let logging report it as it does
            return True
        cleaned = scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install_log_scrubbing(*loggers: logging.Logger | str) -> None:
    """Add a `ScrubFilter` to each handler of the given loggers (default: `hf_ipt` and the root logger), once.

    Filters on handlers see the records of child loggers too (filters on loggers do not), so a secret logged by
    `hf_ipt.release.hub` is scrubbed by the handler of `hf_ipt` that prints it.

    Example:
        >>> install_log_scrubbing()  # doctest: +SKIP
    """
    for item in loggers or (logging.getLogger("hf_ipt"), logging.getLogger()):
        logger = logging.getLogger(item) if isinstance(item, str) else item
        for handler in logger.handlers:
            if not any(isinstance(f, ScrubFilter) for f in handler.filters):
                handler.addFilter(ScrubFilter())
