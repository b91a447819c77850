"""A stand-in OTLP/HTTP collector for tests: a real HTTP/1.1 server (keep-alive,
as exporters expect) on a loopback port, on a thread of its own so that it
outlives the event loops of the code under test."""

from __future__ import annotations

import http.server
import threading
from typing import Any


class ThreadedCollector:
    """Answers every post 200 and keeps (path, headers, body) of each; use it as
    a context manager, or `close()` it."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.changed = threading.Condition()
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()
                with collector.changed:
                    collector.received.append(
                        (self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    collector.changed.notify_all()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port: int = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def bodies(self) -> list[bytes]:
        return [body for _, _, body in self.received]

    def wait_for(self, posts: int, timeout_s: float = 30.0) -> bool:
        """Whether `posts` posts arrived within `timeout_s`."""
        with self.changed:
            return self.changed.wait_for(lambda: len(self.received) >= posts, timeout_s)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> ThreadedCollector:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
