"""Incremental Server-Sent Events parsing for vendor streams.

Shared by every vendor adapter that streams over SSE (OpenAI-compatible,
Anthropic). Follows the WHATWG event-stream rules that matter to these
vendors: lines end with CRLF, LF or CR; a blank line dispatches the event;
`data:` lines are joined with "\\n"; lines starting with `:` are comments;
`id:` and `retry:` are ignored because vendor streams are never resumed.
"""

from __future__ import annotations

import re

SseEvent = tuple[str | None, bytes]

# One line and its terminator. CRLF is tried first so it counts as one ending.
# A lone CR at the very end of a buffer may really be half of a CRLF split by
# the network; that is harmless because bytes are only consumed at blank
# lines, and a stray LF arriving next is an empty line with no data pending.
_LINE = re.compile(rb"([^\r\n]*)(?:\r\n|\r|\n)")


def parse_sse(buffer: bytes) -> tuple[list[SseEvent], bytes]:
    """Split `buffer` into complete events and the unconsumed remainder.

    Each event is `(event name or None, data)`. Events without any `data:`
    line are dropped, as the SSE spec does. The remainder is the exact tail of
    `buffer` after the last complete event; prepend it to the next bytes read.
    """
    events: list[SseEvent] = []
    consumed = 0
    name: str | None = None
    data: list[bytes] | None = None
    for match in _LINE.finditer(buffer):
        line = match.group(1)
        if not line:
            if data is not None:
                events.append((name, data[0] if len(data) == 1 else b"\n".join(data)))
            name = None
            data = None
            consumed = match.end()
            continue
        if line[0] == 0x3A:  # ":" starts a comment, used by vendors as keep-alive
            continue
        field, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            if data is None:
                data = [value]
            else:
                data.append(value)
        elif field == b"event":
            name = value.decode("utf-8", "replace") or None
    return events, buffer[consumed:]
