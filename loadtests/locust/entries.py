"""Names of locust's statistics entries: "<kind> <model>".

The kind says what was measured, the model which gateway model answered, so
that the verdict can hold each entry to its model's SLO. TTFT and the gaps
between streamed chunks are measurements inside a request, not requests of a
model of their own: they take the command line's thresholds only.
"""

from __future__ import annotations

V2_JSON = "v2-json"
V2_BINARY = "v2-binary"
GRPC = "grpc"
CHAT = "chat"
CHAT_STREAM = "chat-stream"
EMBEDDINGS = "embeddings"
TTFT = "ttft"
INTER_CHUNK = "inter-chunk"

NOT_PER_MODEL = frozenset({TTFT, INTER_CHUNK})


def entry_name(kind: str, model: str) -> str:
    return f"{kind} {model}"


def split_entry(name: str) -> tuple[str, str]:
    """(kind, model) of an entry name; ("", name) for a name not made by entry_name."""
    kind, sep, model = name.partition(" ")
    return (kind, model) if sep else ("", name)


def model_of(name: str) -> str | None:
    """The gateway model whose SLO applies to the entry `name`, if any."""
    kind, model = split_entry(name)
    if not kind or kind in NOT_PER_MODEL:
        return None
    return model
