"""Typed placeholders for masked values, and putting the values back.

A masked value becomes `[KIND_N]` (`[EMAIL_1]`, `[CREDIT_CARD_2]`): numbered
per kind within one request, the same value always getting the same
placeholder, so the model still sees which mentions are the same person.
Numbering is a function of the request's text alone, so two requests that
differ only in their values mask to the same text (and share a cache entry):
each caller's own map then puts its own values back.

The map (placeholder -> value) lives in the request's context only: never
cached, recorded or logged. Placeholders already written in the request (a
caller pasting masked text) are never handed out again, so restoring cannot
turn the caller's literal `[EMAIL_1]` into someone's address.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from gateway.policies.pii_detectors import Span

PLACEHOLDER = re.compile(r"\[[A-Z][A-Z0-9_]*_[0-9]+\]")


class Masking:
    """One request's placeholders: handed out by `mask`, put back by `restore`."""

    __slots__ = ("_by_value", "_counters", "_taken", "longest", "values")

    def __init__(self, texts: Iterable[str] = ()) -> None:
        self.values: dict[str, str] = {}  # placeholder -> the value it stands for (restorable)
        self._by_value: dict[tuple[str, str], str] = {}
        self._counters: dict[str, int] = {}
        self._taken: set[str] = set()
        self.longest = 0  # the longest restorable placeholder: what a stream may hold back
        for text in texts:
            if "[" in text:
                self._taken.update(PLACEHOLDER.findall(text))

    def placeholder(self, kind: str, value: str, restorable: bool) -> str:
        key = (kind, value)
        found = self._by_value.get(key)
        if found is not None:
            return found
        label = kind.upper()
        n = self._counters.get(label, 0)
        while True:
            n += 1
            found = f"[{label}_{n}]"
            if found not in self._taken:
                break
        self._counters[label] = n
        self._by_value[key] = found
        if restorable:
            self.values[found] = value
            self.longest = max(self.longest, len(found))
        return found

    def mask(self, text: str, spans: Sequence[Span], restorable: bool = True) -> str:
        """`text` with each span (sorted, not overlapping) replaced by its placeholder."""
        parts = []
        at = 0
        for span in spans:
            parts.append(text[at : span.start])
            parts.append(self.placeholder(span.kind, text[span.start : span.end], restorable))
            at = span.end
        parts.append(text[at:])
        return "".join(parts)

    def restore(self, text: str) -> str:
        """`text` with this request's restorable placeholders replaced by their values."""
        values = self.values
        if not values or "[" not in text:
            return text
        return PLACEHOLDER.sub(lambda m: values.get(m.group(), m.group()), text)


class StreamRestorer:
    """Restores placeholders in a text that arrives in pieces.

    A piece ending in what may be the start of a placeholder of this request
    (`[EMA`) keeps that tail back until the next piece (or `flush`) says; any
    other text goes out at once. Since a placeholder holds no `[` but its
    first, only the tail after the last `[` can still be growing into one: the
    concatenation of what `feed` and `flush` return is exactly
    `masking.restore(whole text)`, however the text was cut.
    """

    __slots__ = ("_held", "_masking")

    def __init__(self, masking: Masking) -> None:
        self._masking = masking
        self._held = ""

    def feed(self, piece: str) -> str:
        text = self._held + piece if self._held else piece
        at = text.rfind("[")
        if at >= 0 and len(text) - at < self._masking.longest:
            tail = text[at:]
            if any(len(p) > len(tail) and p.startswith(tail) for p in self._masking.values):
                self._held = tail
                return self._masking.restore(text[:at])
        self._held = ""
        return self._masking.restore(text)

    def flush(self) -> str:
        held, self._held = self._held, ""
        return self._masking.restore(held)
