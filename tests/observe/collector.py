"""A stand-in OTLP/HTTP collector for tests: a real HTTP/1.1 server (keep-alive,
as exporters expect) on a loopback port, on a thread of its own so that it
outlives the event loops of the code under test, and so that it can hold a
post while the code under test goes on."""

from __future__ import annotations

import gzip
import http.server
import ssl
import threading
from collections.abc import Iterable
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

HANG_UP = None  # a scripted answer: close the connection without answering


class ThreadedCollector:
    """Keeps (path, headers, body) of each post, then answers it: as `answers`
    script, one per post (a status, or HANG_UP), then 200. With `held`, each
    post waits for `release()` before it is answered (it is kept, and waiters
    told, first). Use it as a context manager, or `close()` it."""

    def __init__(
        self,
        answers: Iterable[int | None] = (),
        *,
        held: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.changed = threading.Condition()
        self.answers = list(answers)
        self._released = threading.Event()
        if not held:
            self._released.set()
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with collector.changed:
                    collector.received.append(
                        (self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    answer = collector.answers.pop(0) if collector.answers else 200
                    collector.changed.notify_all()
                collector._released.wait()
                if answer is HANG_UP:
                    self.close_connection = True
                    return
                self.send_response(answer)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port: int = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def bodies(self) -> list[bytes]:
        return [body for _, _, body in self.received]

    def requests(self) -> list[ExportTraceServiceRequest]:
        """Each post decoded (and decompressed when it says gzip)."""
        return [
            ExportTraceServiceRequest.FromString(
                gzip.decompress(body) if headers.get("content-encoding") == "gzip" else body
            )
            for _, headers, body in self.received
        ]

    def spans(self) -> list[Any]:
        """Every span posted, in order."""
        return [
            span
            for request in self.requests()
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]

    def wait_for(self, posts: int, timeout_s: float = 30.0) -> bool:
        """Whether `posts` posts arrived within `timeout_s`."""
        with self.changed:
            return self.changed.wait_for(lambda: len(self.received) >= posts, timeout_s)

    def release(self) -> None:
        """Answer the held posts, and from now on every post at once."""
        self._released.set()

    def close(self) -> None:
        """Stop listening (a collector that is down); held posts are answered."""
        self.server.shutdown()
        self.server.server_close()
        self.release()

    def __enter__(self) -> ThreadedCollector:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
