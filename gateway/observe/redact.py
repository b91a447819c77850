"""Secrets never leave: one function that blanks credentials out of text.

`redact(text)` replaces, with `[redacted]`:

* bearer tokens (`Bearer <token>`) and `sk-`-shaped keys (OpenAI, Anthropic);
* the value of a credential header or parameter written in the text
  (`authorization: ...`, `x-api-key: ...`, `"api-key": "..."`, `api_key=...`);
* the configured vendor keys themselves (`api_key_env`), once a backend has
  read them (`remember_secret`): the gateway holds them anyway, to send them;
* tenant and admin keys, which the gateway holds only as sha256 digests
  (`remember_digest`): a word of the text whose digest is one of them.

It runs where text from outside may carry a credential into an answer or a
log: every vendor error path (gateway/backends/vendors/) and every log record
(the filter that gateway/observe/logs.py installs). Never on a successful
request's path.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterable

REDACTED = "[redacted]"

# A credential's value runs to the next blank or quote (over-redacting a trailing
# `,` or `}` costs nothing; leaving the tail of a key would).
_VALUE = r"[^\s\"'`]+"
# Key-shaped text; the header names are matched with what separates them from
# their value, so `authorization: Bearer abc` keeps `authorization: `.
_SHAPES = (
    r"(?P<header>\b(?:proxy-)?authorization|\b(?:x-)?api[-_]?key)"
    r"(?P<separator>[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token)\s+)?)" + _VALUE,
    r"(?P<scheme>\bbearer\s+)" + _VALUE,
    r"\bsk-[A-Za-z0-9_\-]{6,}",
)
# Known secrets shorter than this are not looked for literally (they would blank
# ordinary words); the shapes above still apply to them.
_MIN_LITERAL = 6
# The words of a text that may be a tenant or admin key: runs between blanks,
# quotes and brackets, and what follows a `:` or `=` in them.
_WORD = re.compile(r"[^\s\"'`<>()\[\]{},;]+")
_AFTER = re.compile(r"[:=]")

_lock = threading.Lock()
_literals: set[str] = set()
_digests: set[bytes] = set()
_lengths: frozenset[int] = frozenset()


def _compile(literals: Iterable[str]) -> re.Pattern[str]:
    known = sorted(literals, key=len, reverse=True)  # the longest first: one may contain another
    alternatives = [*_SHAPES, *(re.escape(secret) for secret in known)]
    return re.compile("|".join(alternatives), re.IGNORECASE)


_pattern = _compile(())


def remember_secret(secret: str | None) -> None:
    """A secret the gateway holds as it is (a vendor key): redacted wherever it appears."""
    global _pattern
    if not secret or len(secret) < _MIN_LITERAL or secret in _literals:
        return
    with _lock:
        _literals.add(secret)
        _pattern = _compile(_literals)


def remember_digest(digest: bytes, length: int) -> None:
    """A key the gateway holds only as its sha256 digest (tenant and admin keys), and
    its length: a word of that length whose digest matches is redacted."""
    global _lengths
    with _lock:
        _digests.add(digest)
        _lengths = _lengths | {length}


def _substitute(match: re.Match[str]) -> str:
    header = match.group("header")
    if header is not None:
        return header + match.group("separator") + REDACTED
    scheme = match.group("scheme")
    return REDACTED if scheme is None else scheme + REDACTED


def redact(text: str) -> str:
    """`text` with every credential it holds replaced by `[redacted]`."""
    text = _pattern.sub(_substitute, text)
    if _digests:
        text = _WORD.sub(_hashed_words, text)
    return text


def _hashed_words(match: re.Match[str]) -> str:
    word = match.group()
    if _is_known(word):
        return REDACTED
    if ":" not in word and "=" not in word:
        return word
    parts = _AFTER.split(word, maxsplit=1)
    if len(parts) == 2 and _is_known(parts[1]):
        return word[: len(word) - len(parts[1])] + REDACTED
    return word


def _is_known(word: str) -> bool:
    return (
        len(word) in _lengths
        and hashlib.sha256(word.encode("utf-8", "surrogatepass")).digest() in _digests
    )
