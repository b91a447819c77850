"""How much of a streamed answer may go out before the `pii` policy's output
scan (policies/pii.py, `outputs:`): text is held back only while a value of a
detected kind could still be growing at its end.
"""

from __future__ import annotations

import re

from gateway.policies.pii_detectors import Scanner, Span

# Built-in values that may hold whitespace (cards, IBANs, phones, spaced SSNs)
# are at most 42 characters: text further back than this from the end of what
# arrived cannot be part of a value still growing.
WINDOW = 48
# A "word" this long without whitespace is no value being typed: let most of it go.
_LONGEST_WORD = 512
_DIGIT = re.compile(r"[0-9]")


class OutputWindow:
    """A streamed answer's text, released as soon as no value of a detected
    kind can still be growing at the end of what was released.

    A value without whitespace (email, IP address, a compact card number) ends
    at a whitespace; one with whitespace holds a digit near its start and is
    at most `WINDOW` characters. So text goes out up to the last whitespace,
    or, while a digit is among the last `WINDOW` characters (or the policy
    has custom patterns), up to the last whitespace before them; never in the
    middle of a value found in what is held.
    """

    __slots__ = ("_always_window", "_pending", "_scanner")

    def __init__(self, scanner: Scanner, always_window: bool = False) -> None:
        self._scanner = scanner
        self._always_window = always_window
        self._pending = ""

    def feed(self, piece: str) -> tuple[str, list[Span]]:
        pending = self._pending + piece
        cut = _cut(pending, self._always_window)
        if cut == 0:
            self._pending = pending
            return "", []
        spans = self._scanner.scan(pending)
        for span in reversed(spans):
            if span.start < cut < span.end:
                cut = span.start
        self._pending = pending[cut:]
        return pending[:cut], [s for s in spans if s.end <= cut]

    def flush(self) -> tuple[str, list[Span]]:
        pending, self._pending = self._pending, ""
        return pending, self._scanner.scan(pending) if pending else []


def _last_space(text: str, end: int) -> int:
    return max(text.rfind(" ", 0, end), text.rfind("\n", 0, end), text.rfind("\t", 0, end))


def _cut(pending: str, always_window: bool) -> int:
    """How much of `pending` may go out (see OutputWindow)."""
    size = len(pending)
    space = _last_space(pending, size)
    if space < 0:
        return size - _LONGEST_WORD // 2 if size > _LONGEST_WORD else 0
    cut = space + 1
    window_start = size - WINDOW
    if cut > window_start and (
        always_window or _DIGIT.search(pending, max(0, window_start), cut) is not None
    ):
        cut = _last_space(pending, max(0, window_start) + 1) + 1
    return cut
