"""OTLP/HTTP (protobuf) export of the gateway's spans, encoded straight from
its lean span records.

The SDK's OTLP exporter builds protobuf objects span by span (about 30 us a
span on the reference machine, in the process that serves requests); writing
the wire format directly costs a few microseconds. Configured by the standard
variables, read as the Python SDK reads them: `OTEL_EXPORTER_OTLP_[TRACES_]`
`ENDPOINT`, `HEADERS`, `TIMEOUT` (seconds), `COMPRESSION` (gzip|none),
`CERTIFICATE`, `CLIENT_CERTIFICATE`, `CLIENT_KEY`; `PROTOCOL` must be
http/protobuf. `encode_request` is checked against the SDK's encoder in
tests/observe/test_tracing.py.
"""

from __future__ import annotations

import gzip
import http.client
import logging
import os
import ssl
import struct
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

log = logging.getLogger("gateway.observe.otlp")

DEFAULT_ENDPOINT = "http://localhost:4318"
_RETRYABLE = frozenset({429, 502, 503, 504})
_TRIES = 3

# SpanKind and StatusCode numbers of opentelemetry/proto/trace/v1/trace.proto.
KIND_INTERNAL, KIND_SERVER, KIND_CLIENT = 1, 2, 3
# Span.flags: whether the parent is remote is known (0x100), and it is (0x200).
_FLAGS_HAS_IS_REMOTE = 0x100
_FLAGS_IS_REMOTE = 0x200


# -- protobuf wire format ----------------------------------------------------------
# Tags are written pre-encoded: field number << 3 | wire type (2: length-delimited).

_SMALL = [bytes((i,)) for i in range(0x80)]
_MASK64 = (1 << 64) - 1
# Trace id (field 1, 16 bytes) and span id (field 2, 8 bytes); parent span id (field 4).
_IDS = struct.Struct(">2sQQ2sQ")
_PARENT = struct.Struct(">2sQ")
_IDS_PARENT = struct.Struct(">2sQQ2sQ2sQ")
# A span link (Span field 13): trace id, span id and flags (local context), as
# the SDK's encoder writes it.
_LINK = struct.Struct(">4sQQ2sQ")
_LINK_FLAGS = b"\x35" + struct.pack("<I", _FLAGS_HAS_IS_REMOTE)
# Kind (field 6, varint), start and end times (fields 7 and 8, fixed64).
_KIND_TIMES = struct.Struct("<BBBQBQ")
# Status unset (field 15, empty), flags (field 16, fixed32).
_TAIL = {remote: b"\x7a\x00\x85\x01" + struct.pack(
    "<I", _FLAGS_HAS_IS_REMOTE | (_FLAGS_IS_REMOTE if remote else 0)) for remote in (False, True)}


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


# Span attributes (field 9) and names (field 5) are mostly the same few (model,
# backend, protocol, status...): each encoded once. Bounded, so that values
# unique to a request would only fill it once; request ids are never kept.
_cache: dict[tuple[Any, ...], bytes] = {}
_CACHE_SIZE = 4096
_UNCACHED = frozenset({"gateway.request_id"})


def _attribute(key: str, value: Any) -> bytes:
    kind = type(value)
    if kind is float or key in _UNCACHED:
        return _field(b"\x4a", _key_value(key, value))
    cache_key = (key, value, kind)
    encoded = _cache.get(cache_key)
    if encoded is None:
        encoded = _field(b"\x4a", _key_value(key, value))
        if len(_cache) < _CACHE_SIZE:
            _cache[cache_key] = encoded
    return encoded


def _name(name: str) -> bytes:
    encoded = _cache.get((name,))
    if encoded is None:
        encoded = _field(b"\x2a", name.encode())
        if len(_cache) < _CACHE_SIZE:
            _cache[(name,)] = encoded
    return encoded


def _described(name: str, items: Mapping[str, Any] | None) -> bytes:
    """The name and attribute fields of a span whose attributes are all of
    bounded variety (a child span's: backend, outcome, cache result...)."""
    key = (name, *items.items()) if items else (name, None)
    try:
        encoded = _cache.get(key)
    except TypeError:  # an unhashable value
        return _name(name) + b"".join([_attribute(k, v) for k, v in items.items()])  # type: ignore[union-attr]
    if encoded is None:
        encoded = _name(name) + b"".join([_attribute(k, v) for k, v in (items or {}).items()])
        if len(_cache) < _CACHE_SIZE:
            _cache[key] = encoded
    return encoded


_REQUEST_ID = "gateway.request_id"


def _server_attributes(attributes: Mapping[str, Any]) -> bytes:
    """A request span's attributes: all but the request id are of bounded variety
    (protocol, status, cache result, model, backend...), so they are encoded once
    per combination, in their order, around the request id."""
    bounded = getattr(attributes, "bounded", None)  # tracing.RequestAttributes
    if bounded is not None:
        key: tuple[Any, ...] = (_REQUEST_ID, bounded)
    else:
        key = tuple(item if item[0] != _REQUEST_ID else (_REQUEST_ID,)
                    for item in attributes.items())
    try:
        halves = _cache.get(key)
    except TypeError:  # an unhashable value
        return b"".join([_attribute(k, v) for k, v in attributes.items()])
    if halves is None:
        encoded = [_attribute(k, v) if k != _REQUEST_ID else None for k, v in attributes.items()]
        cut = encoded.index(None) if None in encoded else len(encoded)
        halves = (b"".join(encoded[:cut]), b"".join(e for e in encoded[cut + 1:] if e))
        if len(_cache) < _CACHE_SIZE:
            _cache[key] = halves  # type: ignore[assignment]
    request_id = attributes.get(_REQUEST_ID)
    if request_id is None:
        return halves[0] + halves[1]
    return halves[0] + _request_id_attribute(request_id) + halves[1]


_REQUEST_ID_KEY = _field(b"\x0a", _REQUEST_ID.encode())


def _request_id_attribute(value: Any) -> bytes:
    """`_attribute("gateway.request_id", value)`, unrolled: it is the one
    attribute encoded afresh for every request."""
    if type(value) is not str:
        return _attribute(_REQUEST_ID, value)
    text = value.encode()
    size = len(text)
    any_value = b"\x0a" + (_SMALL[size] if size < 0x80 else _varint(size)) + text
    size = len(any_value)
    pair = _REQUEST_ID_KEY + b"\x12" + (_SMALL[size] if size < 0x80 else _varint(size)) + any_value
    size = len(pair)
    return b"\x4a" + (_SMALL[size] if size < 0x80 else _varint(size)) + pair


def encode_span(record: tuple[Any, ...]) -> bytes:
    """One `Span` message, as a field of ScopeSpans (tag and length first), from
    a finished span's record (see tracing.Span.record)."""
    (name, trace_id, span_id, parent_id, remote_parent, kind, start_ns, end_ns, attributes,
     error, trace_state, links) = record
    if parent_id and not trace_state and error is None and kind != KIND_SERVER and not links:
        # The common child span (validate, attempt, queue wait, batch execution):
        # ids and parent in one pack, name and attributes from the cache.
        body = b"".join((
            _IDS_PARENT.pack(b"\x0a\x10", trace_id >> 64, trace_id & _MASK64, b"\x12\x08",
                             span_id, b"\x22\x08", parent_id),
            _described(name, attributes),
            _KIND_TIMES.pack(0x30, kind, 0x39, start_ns, 0x41, end_ns),
            _TAIL[remote_parent]))
        return b"\x12" + _size(len(body)) + body
    parts = [_IDS.pack(b"\x0a\x10", trace_id >> 64, trace_id & _MASK64, b"\x12\x08", span_id)]
    if trace_state:
        parts.append(_field(b"\x1a", trace_state.encode()))
    if parent_id:
        parts.append(_PARENT.pack(b"\x22\x08", parent_id))
    if kind == KIND_SERVER:  # a request's span: request id, status, timings...
        parts.append(_name(name))
        if attributes:
            parts.append(_server_attributes(attributes))
    else:
        parts.append(_described(name, attributes))
    parts.append(_KIND_TIMES.pack(0x30, kind, 0x39, start_ns, 0x41, end_ns))
    if links:
        parts += [_LINK.pack(b"\x6a\x21\x0a\x10", t >> 64, t & _MASK64, b"\x12\x08", s)
                  + _LINK_FLAGS for t, s in links]
    if error is None:
        parts.append(_TAIL[remote_parent])
    else:
        parts.append(_field(b"\x7a", _field(b"\x12", error.encode()) + b"\x18\x02"))
        parts.append(_TAIL[remote_parent][2:])
    return _field(b"\x12", b"".join(parts))


class Encoder:
    """ExportTraceServiceRequests of one resource and instrumentation scope."""

    def __init__(self, resource: Mapping[str, Any], scope_name: str,
                 scope_version: str | None) -> None:
        scope = _field(b"\x0a", scope_name.encode())
        if scope_version:
            scope += _field(b"\x12", scope_version.encode())
        self._resource = _field(b"\x0a", b"".join(
            _field(b"\x0a", _key_value(k, v)) for k, v in resource.items()))
        self._scope = _field(b"\x0a", scope)

    def encode(self, records: Iterable[tuple[Any, ...]]) -> bytes:
        scope_spans = self._scope + b"".join([encode_span(r) for r in records])
        return _field(b"\x0a", self._resource + _field(b"\x12", scope_spans))


def encode_request(records: Iterable[tuple[Any, ...]], resource: Mapping[str, Any],
                   scope_name: str, scope_version: str | None) -> bytes:
    return Encoder(resource, scope_name, scope_version).encode(records)


# -- the exporter --------------------------------------------------------------------


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or \
        os.environ.get(f"OTEL_EXPORTER_OTLP_{name}") or default


def _headers(text: str) -> dict[str, str]:
    headers = {}
    for pair in text.split(","):
        name, sep, value = pair.partition("=")
        if sep and name.strip():
            headers[urllib.parse.unquote(name.strip()).lower()] = \
                urllib.parse.unquote(value.strip())
    return headers


class OtlpHttpExporter:
    """Posts encoded span batches (`Encoder.encode`) to an OTLP/HTTP collector,
    retrying transient failures (connection errors, 429, 502-504) within its
    timeout. Blocking: it runs on the tracer's sender thread."""

    def __init__(self) -> None:
        protocol = _env("PROTOCOL", "http/protobuf")
        if protocol != "http/protobuf":
            raise RuntimeError(f"OTEL_EXPORTER_OTLP_PROTOCOL: only http/protobuf is supported, "
                               f"got {protocol!r}")
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        if not endpoint:
            base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or DEFAULT_ENDPOINT
            endpoint = base.rstrip("/") + "/v1/traces"
        url = urllib.parse.urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise RuntimeError(f"OTLP endpoint: expected an http(s) URL, got {endpoint!r}")
        self.endpoint = endpoint
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port or (443 if self._https else 80)
        self._path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self._timeout = float(_env("TIMEOUT", "10") or 10)
        self._gzip = (_env("COMPRESSION", "none") or "none").lower() == "gzip"
        self._headers = {"content-type": "application/x-protobuf",
                         **_headers(_env("HEADERS", "") or "")}
        if self._gzip:
            self._headers["content-encoding"] = "gzip"
        self._ssl: ssl.SSLContext | None = None
        if self._https:
            self._ssl = ssl.create_default_context(cafile=_env("CERTIFICATE"))
            certificate = _env("CLIENT_CERTIFICATE")
            if certificate:
                self._ssl.load_cert_chain(certificate, _env("CLIENT_KEY"))
        self._connection: http.client.HTTPConnection | None = None
        self._failing = False

    def send(self, body: bytes) -> bool:
        """Post one ExportTraceServiceRequest; False when it could not be delivered."""
        if self._gzip:
            body = gzip.compress(body)
        deadline = time.monotonic() + self._timeout
        for attempt in range(_TRIES):
            status = self._post(body, max(0.1, deadline - time.monotonic()))
            if status is not None and 200 <= status < 300:
                if self._failing:
                    self._failing = False
                    log.info("OTLP export to %s works again", self.endpoint)
                return True
            if status is not None and status not in _RETRYABLE:
                break
            pause = 0.5 * 2 ** attempt
            if attempt + 1 == _TRIES or time.monotonic() + pause >= deadline:
                break
            time.sleep(pause)  # the exporter's own thread: no request waits
        if not self._failing:  # once per outage, not once per batch
            self._failing = True
            log.warning("OTLP export to %s failed (status %s): its spans are dropped "
                        "(said once, until an export succeeds)", self.endpoint, status)
        return False

    def _post(self, body: bytes, timeout: float) -> int | None:
        try:
            if self._connection is None:
                if self._https:
                    self._connection = http.client.HTTPSConnection(
                        self._host, self._port, timeout=timeout, context=self._ssl)
                else:
                    self._connection = http.client.HTTPConnection(self._host, self._port,
                                                                  timeout=timeout)
            if self._connection.sock is not None:  # kept alive: this post's own timeout
                self._connection.sock.settimeout(timeout)
            self._connection.request("POST", self._path, body, self._headers)
            response = self._connection.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException):
            self.close()
            return None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
