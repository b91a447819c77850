"""A real `redis-server` on a free loopback port, for tests that need shared state.

`RedisServer` runs the binary as a subprocess with persistence off, and can be
stopped, restarted on the same port ("Redis down, then back"), paused with
SIGSTOP (a Redis that accepts connections but never answers) or kept busy for
a while (a slow Redis). It speaks just
enough RESP over a plain socket (`command`) that it needs no client library.

Fixtures (register them for the whole suite with one line in tests/conftest.py:
`from tests.redis_server import redis_server, redis_server_factory  # noqa: F401`):

* `redis_server` — one server for the session. Share it by namespacing keys
  (e.g. a unique tenant per test); never stop it.
* `redis_server_factory` — call it for a server of your own (stop, restart or
  pause it freely); every server it started is stopped after the test.

Both skip the test, saying why, when no `redis-server` binary is found
(`REDIS_SERVER` names one explicitly; `make test` installs Debian's).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testkit.gateway_process import free_port

START_TIMEOUT_S = 10.0


def redis_server_binary() -> str | None:
    """The `redis-server` to run: `$REDIS_SERVER`, else the one on PATH."""
    explicit = os.environ.get("REDIS_SERVER")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )


class RedisError(RuntimeError):
    """The server answered a `command` with an error reply."""


class RedisServer:
    """One `redis-server` process on 127.0.0.1; `url` is what clients connect to."""

    def __init__(self, binary: str, port: int | None = None) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._workdir = Path(tempfile.mkdtemp(prefix="redis-server-"))
        self.log_path = self._workdir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> RedisServer:
        """Start on `self.port` and return once it answers PING."""
        if self.running:
            return self
        argv = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self._workdir),
            "--logfile",
            str(self.log_path),
        ]
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if self.command("PING") == "PONG":
                    return self
            except OSError:
                pass
            time.sleep(0.005)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}:\n{self.logs()}")

    def stop(self) -> None:
        """Shut the server down (its data is gone: nothing is persisted)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)  # a paused server cannot handle SIGTERM
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> RedisServer:
        """Stop, then start again on the same port, empty."""
        self.stop()
        return self.start()

    def pause(self) -> None:
        """Freeze the process: the kernel still accepts connections, nothing answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        """Stop, and remove the working directory (its log included)."""
        self.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def busy(self, seconds: float) -> None:
        """Keep the server busy for `seconds` (one Lua script): slow, not down.

        Blocks the caller too: run it in a thread (`asyncio.to_thread`).
        """
        self.command("EVAL", _BUSY_LUA, 0, round(seconds * 1_000_000), timeout_s=seconds + 5)

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def command(self, *args: str | bytes | int, timeout_s: float = 2.0) -> object:
        """Send one command and return its reply (str, int, None, or a list)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout_s) as sock:
            sock.sendall(_encode(args))
            return _Reply(sock).read()

    def flushall(self) -> None:
        self.command("FLUSHALL")


_BUSY_LUA = """
local start = redis.call('TIME')
local now = start
repeat now = redis.call('TIME')
until (now[1] - start[1]) * 1000000 + (now[2] - start[2]) >= tonumber(ARGV[1])
return 1
"""


def _encode(args: tuple[str | bytes | int, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Reply:
    """A RESP2 reply read from a blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._file = sock.makefile("rb")

    def read(self) -> object:
        line = self._file.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("redis-server closed the connection")
        kind, body = line[:1], line[1:-2]
        if kind == b"+":
            return body.decode()
        if kind == b"-":
            raise RedisError(body.decode())
        if kind == b":":
            return int(body)
        if kind == b"$":
            size = int(body)
            return None if size < 0 else self._file.read(size + 2)[:-2].decode(errors="replace")
        if kind == b"*":
            count = int(body)
            return None if count < 0 else [self.read() for _ in range(count)]
        raise ConnectionError(f"unexpected reply {line!r}")


def launch(binary: str, attempts: int = 3) -> RedisServer:
    """A started server on a free port (another process may take the port first: retry)."""
    for attempt in range(attempts):
        server = RedisServer(binary)
        try:
            return server.start()
        except RuntimeError:
            server.close()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _binary_or_skip() -> str:
    binary = redis_server_binary()
    if binary is None:
        pytest.skip(
            "redis-server is not installed (`make test` installs Debian's "
            "redis-server; or set REDIS_SERVER to a binary)"
        )
    return binary


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real Redis for the session: share it, namespace your keys, never stop it."""
    server = launch(_binary_or_skip())
    yield server
    server.close()


@pytest.fixture
def redis_server_factory() -> Iterator[Callable[[], RedisServer]]:
    """Starts servers of the test's own (to stop, restart or pause); all stopped after it."""
    binary = _binary_or_skip()
    started: list[RedisServer] = []

    def start() -> RedisServer:
        server = launch(binary)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()
