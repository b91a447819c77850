"""Spans while they are recorded, and how they become span records
(span_record.py): the span model under tracing.py's hooks.

A request's span (`Span`) gathers the rows of its finished descendants and is
handed to the recorder once, as it is answered; `expand` turns answered
requests into records in batches (trace_export.Recorder calls it). Attribute
pairs of bounded variety are made once per combination (`Bounded`), so that
the encoder can keep their encoding.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

from gateway.observe.span_record import KIND_INTERNAL, KIND_SERVER
from gateway.observe.trace_export import Recorder

# Where finished spans go while tracing is on: set by tracing.setup and shutdown.
recorder: Recorder | None = None

ids = random.Random()
os.register_at_fork(after_in_child=ids.seed)  # a forked worker draws its own ids


def new_span_id() -> bytes:
    return (ids.getrandbits(64) or 1).to_bytes(8, "big")


class Span:
    """A span being recorded: what OTLP carries and nothing more. Only sampled
    spans are recorded; a request that is not sampled keeps one unsampled span
    so that its trace id and decision still reach logs and vendors. Ids are
    bytes, as span_record.py says.

    A request's span gathers the rows of its finished descendants
    (`children`) and goes to the recorder once, as it ends: the request path
    only appends small tuples, and the recorder turns whole requests into span
    records in batches (`expand`), where the work runs with warm caches. A
    descendant that ends after its request is recorded on its own."""

    __slots__ = (
        "attributes",
        "children",
        "end_ns",
        "error",
        "kind",
        "name",
        "parent_id",
        "remote_parent",
        "request",
        "sampled",
        "span_id",
        "start_ns",
        "trace_id",
        "trace_state",
    )

    def __init__(
        self,
        name: str | None,
        trace_id: bytes,
        parent_id: bytes | None,
        trace_state: str,
        sampled: bool,
        kind: int = KIND_INTERNAL,
        attributes: Any = None,
        start_ns: int = 0,
        request: Span | None = None,
    ) -> None:
        self.name = name
        self.trace_id = trace_id
        self.span_id = (ids.getrandbits(64) or 1).to_bytes(8, "big")  # new_span_id(), inlined
        self.parent_id = parent_id
        self.remote_parent = False
        self.kind = kind
        self.start_ns = start_ns or time.time_ns()
        self.end_ns = 0
        self.attributes = attributes
        self.error: str | None = None
        self.trace_state = trace_state
        self.sampled = sampled
        self.request = request  # the request span gathering this one (None: it is one)
        self.children: list[tuple[Any, ...]] | None = None

    def set_attribute(self, key: str, value: Any) -> None:
        attributes = self.attributes
        if attributes is None:
            self.attributes = {key: value}
        else:
            if type(attributes) is tuple:  # bounded pairs: now one more value
                attributes = self.attributes = dict(attributes)
            attributes[key] = value

    def fail(self, error: Any) -> None:
        """Mark the span failed: `error` is a GatewayError or a reason word."""
        reason, message = reason_of(error)
        self.set_attribute("gateway.error.reason", reason)
        self.error = message

    def end(self, end_ns: int = 0) -> None:
        if self.sampled and not self.end_ns:
            self.end_ns = end_ns or time.time_ns()
            request = self.request
            if request is not None:
                gather(
                    request,
                    (
                        self.name,
                        self.span_id,
                        self.parent_id,
                        self.kind,
                        self.start_ns,
                        self.end_ns,
                        self.attributes,
                        self.error,
                        None,
                    ),
                )
            elif recorder is not None:  # a request span ended before it was answered: alone
                recorder.add(self.record())

    def record(self) -> tuple[Any, ...]:
        """The span as the exporters take it (span_record.py)."""
        return (
            self.name,
            self.trace_id,
            self.span_id,
            self.parent_id,
            self.remote_parent,
            self.kind,
            self.start_ns,
            self.end_ns,
            self.attributes,
            self.error,
            self.trace_state,
            None,
        )

    def traceparent(self) -> str:
        return f"00-{self.trace_id.hex()}-{self.span_id.hex()}-{'01' if self.sampled else '00'}"


def child(name: str, parent: Any, kind: int = KIND_INTERNAL, attributes: Any = None) -> Span:
    return Span(
        name,
        parent.trace_id,
        parent.span_id,
        parent.trace_state,
        parent.sampled,
        kind,
        attributes,
        request=parent.request or parent,
    )


# A descendant's row, as its request span gathers it:
#   (name, span_id or None (drawn when expanded), parent_id, kind, start_ns, end_ns,
#    attributes, error, links)


def gather(request: Span, row: tuple[Any, ...]) -> None:
    """Keep a finished descendant's row with its request span, or record it at
    once when the request has been answered already (a hedged attempt, a
    vendor call that outlived its caller)."""
    if not request.end_ns:
        children = request.children
        if children is None:
            request.children = [row]
        else:
            children.append(row)
        return
    if recorder is not None:
        recorder.add(_row_record(request, row))


def _row_record(request: Span, row: tuple[Any, ...]) -> tuple[Any, ...]:
    name, span_id, parent_id, kind, start_ns, end_ns, attributes, error, links = row
    return (
        name,
        request.trace_id,
        span_id or new_span_id(),
        parent_id,
        False,
        kind,
        start_ns,
        end_ns,
        attributes,
        error,
        request.trace_state,
        links,
    )


def expand(items: list[Any]) -> list[tuple[Any, ...]]:
    """Span records (span_record.py) of what the recorder was given: answered
    request spans, each with its descendants, and records."""
    records: list[tuple[Any, ...]] = []
    append = records.append
    draw = ids.getrandbits
    for item in items:
        if type(item) is tuple:
            append(item)
            continue
        append(
            (
                None,
                item.trace_id,
                item.span_id,
                item.parent_id,
                item.remote_parent,
                KIND_SERVER,
                item.start_ns,
                item.end_ns,
                item.attributes,
                item.error,
                item.trace_state,
                None,
            )
        )
        if item.children:  # _row_record, unrolled: this loop runs for every span
            trace_id, state = item.trace_id, item.trace_state
            for (
                name,
                span_id,
                parent_id,
                kind,
                start_ns,
                end_ns,
                attributes,
                error,
                links,
            ) in item.children:
                append(
                    (
                        name,
                        trace_id,
                        span_id or (draw(64) or 1).to_bytes(8, "big"),
                        parent_id,
                        False,
                        kind,
                        start_ns,
                        end_ns,
                        attributes,
                        error,
                        state,
                        links,
                    )
                )
    return records


def reason_of(error: Any) -> tuple[str, str]:
    """The reason word and status message of a GatewayError, an exception or a
    reason word."""
    if isinstance(error, str):
        return error, error
    reason = getattr(error, "reason", None) or type(error).__name__
    return reason, getattr(error, "message", None) or str(error) or reason


class Bounded:
    """Attribute pairs of bounded variety (a backend, an outcome), made once per
    combination of values: span_record.py lets an encoder keep the encoding of
    such a tuple, and a span waiting for export holds no pairs of its own."""

    __slots__ = ("keys", "made")

    def __init__(self, *keys: str) -> None:
        self.keys = keys
        self.made: dict[tuple[Any, ...], tuple[tuple[str, Any], ...]] = {}

    def __call__(self, *values: Any) -> tuple[tuple[str, Any], ...]:
        pairs = self.made.get(values)
        if pairs is None:
            pairs = tuple(zip(self.keys, values))
            if len(self.made) < 4096:  # new names after reloads: bounded all the same
                self.made[values] = pairs
        return pairs
