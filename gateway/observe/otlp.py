"""OTLP protobuf encoding of the gateway's spans, straight from their records
(span_record.py): an ExportTraceServiceRequest per batch.

The SDK's OTLP exporter builds protobuf objects span by span (about 30 us a
span on the reference machine, in the process that serves requests); writing
the wire format directly costs under a microsecond for the common span.
`encode_request` is checked against the SDK's encoder in
tests/observe/test_tracing.py. Sending is otlp_export.py.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.observe.span_record import BOUNDED, COST, KIND_SERVER, REQUEST_ID, describe_request

if TYPE_CHECKING:
    from collections.abc import Callable

    # A kept struct's pack with the fixed parts it writes around the ids and
    # times (_request_packer), and for a child span also its attribute pairs.
    _RequestPacker = tuple[Callable[..., bytes], bytes, bytes, bytes]
    _ChildPacker = tuple[
        Callable[..., bytes], bytes, bytes, bytes, tuple[tuple[str, Any], ...] | None
    ]

_T = TypeVar("_T")

# Span.flags: whether the parent is remote is known (0x100), and it is (0x200).
_FLAGS_HAS_IS_REMOTE = 0x100
_FLAGS_IS_REMOTE = 0x200


# -- protobuf wire format ----------------------------------------------------------
# Tags are written pre-encoded: field number << 3 | wire type (2: length-delimited).
# Ids are bytes already (span_record.py), written as they are.

_SMALL = [bytes((i,)) for i in range(0x80)]
_MASK64 = (1 << 64) - 1
# Kind (field 6, varint), start and end times (fields 7 and 8, fixed64).
_KIND_TIMES = struct.Struct("<BBBQBQ")
# A span link (Span field 13): trace id, span id and flags (local context), as
# the SDK's encoder writes it.
_LINK = struct.Struct("<4s16s2s8s5s")
_LINK_HEAD = b"\x6a\x21\x0a\x10"
_LINK_FLAGS = b"\x35" + struct.pack("<I", _FLAGS_HAS_IS_REMOTE)
_SERVER_KIND = bytes((0x30, KIND_SERVER, 0x39))
# Status unset (field 15, empty), flags (field 16, fixed32).
_TAIL = {
    remote: b"\x7a\x00\x85\x01"
    + struct.pack("<I", _FLAGS_HAS_IS_REMOTE | (_FLAGS_IS_REMOTE if remote else 0))
    for remote in (False, True)
}


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _SMALL[value]
    if value < 0:
        value &= _MASK64  # int64 as two's complement, ten bytes
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _size(size: int) -> bytes:
    """A length as a varint: one byte or two for nearly every span and field."""
    if size < 0x80:
        return _SMALL[size]
    if size < 0x4000:
        return bytes(((size & 0x7F) | 0x80, size >> 7))
    return _varint(size)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes, message) after its tag."""
    return tag + _size(len(payload)) + payload


def _any_value(value: Any) -> bytes:
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(b"\x0a", value.encode())
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + struct.pack("<d", value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(v)) for v in value))
    return _field(b"\x0a", str(value).encode())


def _key_value(key: str, value: Any) -> bytes:
    return _field(b"\x0a", key.encode()) + _field(b"\x12", _any_value(value))


# Encodings kept for reuse, bounded so that values unique to a request could
# only fill it once (request ids and costs are never kept):
#   (key, value, type)               -> one attribute (field 9)
#   (name,)                          -> a span name (field 5)
#   (RequestSummary's bounded part)  -> a request span's name and bounded attributes
_cache: dict[tuple[Any, ...], Any] = {}
_CACHE_SIZE = 4096


def _keep(key: tuple[Any, ...], value: _T) -> _T:
    if len(_cache) < _CACHE_SIZE:
        _cache[key] = value
    return value


def _attribute(key: str, value: Any) -> bytes:
    kind = type(value)
    if kind is float or kind is list or kind is tuple:
        return _field(b"\x4a", _key_value(key, value))
    cache_key = (key, value, kind)
    encoded: bytes | None = _cache.get(cache_key)
    if encoded is None:
        encoded = _keep(cache_key, _field(b"\x4a", _key_value(key, value)))
    return encoded


def _name(name: str) -> bytes:
    encoded: bytes | None = _cache.get((name,))
    if encoded is None:
        encoded = _keep((name,), _field(b"\x2a", name.encode()))
    return encoded


def _attributes(attributes: Any) -> bytes:
    """Attributes as a dict or as (key, value) pairs."""
    if not attributes:
        return b""
    items = attributes.items() if type(attributes) is not tuple else attributes
    return b"".join([_attribute(k, v) for k, v in items])


def _request_bounded(summary: tuple[Any, ...]) -> bytes:
    """A request span's name and the attributes of bounded variety
    (span_record.describe_request): encoded once per combination."""
    key = summary[:BOUNDED]
    described: bytes | None = _cache.get(key)
    if described is None:
        name, attributes = describe_request(summary)
        described = _keep(
            key,
            _name(name)
            + b"".join(
                [_attribute(k, v) for k, v in attributes.items() if k != REQUEST_ID and k != COST]
            ),
        )
    return described


def _request_described(summary: tuple[Any, ...]) -> bytes:
    """A request span's name and attributes: the bounded ones, then the request
    id and the cost, afresh."""
    described = _request_bounded(summary)
    request_id, cost = summary[BOUNDED], summary[BOUNDED + 1]
    if type(request_id) is str:
        described += _request_id_attribute(request_id)
    else:
        described += _attribute(REQUEST_ID, request_id)
    if cost is not None:
        described += _attribute(COST, cost)
    return described


def _request_packer(
    summary: tuple[Any, ...], id_size: int, parent: bool, remote: bool
) -> _RequestPacker:
    """The common request span (no tracestate, error or cost) is of a fixed
    layout per bounded summary, request id length and parent: one struct packs
    the whole field from the ids, the request id and the times."""
    key = (summary[:BOUNDED], id_size, parent, remote)
    packer: _RequestPacker | None = _cache.get(key)
    if packer is None:
        request_id = _request_id_attribute("x" * id_size)
        middle = _request_bounded(summary) + request_id[:-id_size]
        tail = _TAIL[remote]
        parent_layout = "2s8s" if parent else ""
        # ids 2+16, 2+8 (+ 2+8); the middle, the id; kind 3, start 8; end 1+8; the tail
        size = 28 + (10 if parent else 0) + len(middle) + id_size + 20 + len(tail)
        head = b"\x12" + _size(size) + b"\x0a\x10"
        layout = struct.Struct(
            f"<{len(head)}s16s2s8s{parent_layout}{len(middle)}s{id_size}s3sQBQ{len(tail)}s"
        )
        packer = _keep(key, (layout.pack, head, middle, tail))
    return packer


_REQUEST_ID_KEY = _field(b"\x0a", REQUEST_ID.encode())


def _request_id_attribute(value: str) -> bytes:
    """`_attribute("gateway.request_id", value)`, unrolled: it is the one
    attribute encoded afresh for every request."""
    text = value.encode()
    size = len(text)
    any_value = b"\x0a" + (_SMALL[size] if size < 0x80 else _varint(size)) + text
    size = len(any_value)
    pair = _REQUEST_ID_KEY + b"\x12" + (_SMALL[size] if size < 0x80 else _varint(size)) + any_value
    size = len(pair)
    return b"\x4a" + (_SMALL[size] if size < 0x80 else _varint(size)) + pair


# Child span packers by (name, id of the attributes, kind): the attribute pairs
# of common spans are shared objects (spans.Bounded), so their identity is
# a cheaper key than their value. Each entry keeps its pairs alive, so an id
# in use here is never another object's; `is` checks it is this one.
_packers: dict[tuple[str, int, int], _ChildPacker] = {}


def _child_packer(name: str, pairs: tuple[tuple[str, Any], ...] | None, kind: int) -> _ChildPacker:
    """The common child span (validate, attempt, queue wait, cache lookup: a
    parent, bounded attributes, no error, tracestate or links) is of a fixed
    layout per (name, attributes, kind): one struct packs the whole field, its
    tag, length, name and attributes included, from the ids and times."""
    middle = _name(name) + _attributes(pairs) + bytes((0x30, kind, 0x39))
    tail = _TAIL[False]
    # ids 2+16, 2+8, 2+8; the middle; start 8; end 1+8; the tail
    size = 38 + len(middle) + 17 + len(tail)
    head = b"\x12" + _size(size) + b"\x0a\x10"
    layout = struct.Struct(f"<{len(head)}s16s2s8s2s8s{len(middle)}sQBQ{len(tail)}s")
    packer: _ChildPacker = (layout.pack, head, middle, tail, pairs)
    if len(_packers) < _CACHE_SIZE:
        _packers[(name, id(pairs), kind)] = packer
    return packer


def encode_span(record: tuple[Any, ...]) -> bytes:
    """One `Span` message, as a field of ScopeSpans (tag and length first), from
    a finished span's record (span_record.py)."""
    (
        name,
        trace_id,
        span_id,
        parent_id,
        remote_parent,
        kind,
        start_ns,
        end_ns,
        attributes,
        error,
        trace_state,
        links,
    ) = record
    if (
        parent_id is not None
        and name is not None
        and error is None
        and not trace_state
        and links is None
        and (attributes is None or type(attributes) is tuple)
    ):
        packer = _packers.get((name, id(attributes), kind))
        if packer is None or packer[4] is not attributes:
            packer = _child_packer(name, attributes, kind)
        pack, head, middle, tail, _ = packer
        return pack(
            head,
            trace_id,
            b"\x12\x08",
            span_id,
            b"\x22\x08",
            parent_id,
            middle,
            start_ns,
            0x41,
            end_ns,
            tail,
        )
    if (
        name is None
        and error is None
        and not trace_state
        and attributes[BOUNDED + 1] is None
        and type(attributes[BOUNDED]) is str
        and attributes[BOUNDED].isascii()
    ):
        request_id = attributes[BOUNDED].encode()
        pack, head, middle, tail = _request_packer(
            attributes, len(request_id), parent_id is not None, remote_parent
        )
        if parent_id is None:
            return pack(
                head,
                trace_id,
                b"\x12\x08",
                span_id,
                middle,
                request_id,
                _SERVER_KIND,
                start_ns,
                0x41,
                end_ns,
                tail,
            )
        return pack(
            head,
            trace_id,
            b"\x12\x08",
            span_id,
            b"\x22\x08",
            parent_id,
            middle,
            request_id,
            _SERVER_KIND,
            start_ns,
            0x41,
            end_ns,
            tail,
        )
    parts = [b"\x0a\x10", trace_id, b"\x12\x08", span_id]
    if trace_state:
        parts.append(_field(b"\x1a", trace_state.encode()))
    if parent_id is not None:
        parts += (b"\x22\x08", parent_id)
    if name is None:  # a request's span: its summary
        parts.append(_request_described(attributes))
    else:
        parts.append(_name(name))
        parts.append(_attributes(attributes))
    parts.append(_KIND_TIMES.pack(0x30, kind, 0x39, start_ns, 0x41, end_ns))
    if links:
        pack = _LINK.pack
        parts += [pack(_LINK_HEAD, t, b"\x12\x08", s, _LINK_FLAGS) for t, s in links]
    if error is None:
        parts.append(_TAIL[remote_parent])
    else:
        parts.append(_field(b"\x7a", _field(b"\x12", error.encode()) + b"\x18\x02"))
        parts.append(_TAIL[remote_parent][2:])
    return _field(b"\x12", b"".join(parts))


class Encoder:
    """ExportTraceServiceRequests of one resource and instrumentation scope."""

    def __init__(
        self, resource: Mapping[str, Any], scope_name: str, scope_version: str | None
    ) -> None:
        scope = _field(b"\x0a", scope_name.encode())
        if scope_version:
            scope += _field(b"\x12", scope_version.encode())
        self._resource = _field(
            b"\x0a", b"".join(_field(b"\x0a", _key_value(k, v)) for k, v in resource.items())
        )
        self._scope = _field(b"\x0a", scope)

    def encode(self, records: Iterable[tuple[Any, ...]]) -> bytes:
        return self.wrap([encode_span(r) for r in records])

    def wrap(self, spans: list[bytes]) -> bytes:
        """The request around spans encoded already (`encode_span`), in pieces:
        the whole is copied once (a batch is tens of kilobytes)."""
        scope_spans = len(self._scope) + sum(map(len, spans))
        inner = _size(scope_spans)
        resource_spans = len(self._resource) + 1 + len(inner) + scope_spans
        return b"".join(
            [b"\x0a", _size(resource_spans), self._resource, b"\x12", inner, self._scope, *spans]
        )


def encode_request(
    records: Iterable[tuple[Any, ...]],
    resource: Mapping[str, Any],
    scope_name: str,
    scope_version: str | None,
) -> bytes:
    return Encoder(resource, scope_name, scope_version).encode(records)
