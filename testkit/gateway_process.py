"""Start a server subprocess on a free loopback port and wait until it listens.

`start_gateway` runs `gateway serve` exactly as users do; `start_server` runs
any command that logs a ready line once its sockets listen (the benchmark's
FastAPI floor). Shared by the test suite and the benchmark.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
READY_LINE = b"gateway ready"  # logged by gateway.server once the sockets listen


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class GatewayProcess:
    """A running server; `url` is its HTTP address (host:port)."""

    process: subprocess.Popen[bytes]
    port: int
    output: list[bytes] = field(default_factory=list)
    reader: threading.Thread | None = None  # drains the output until the process exits

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def logs(self) -> str:
        return b"".join(self.output).decode(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.reader is not None:
            self.reader.join(timeout=10)  # `output` then holds everything it wrote


def start_server(
    name: str,
    argv: list[str],
    port: int,
    ready_line: bytes,
    cpus: set[int] | None = None,
    timeout_s: float = 60.0,
    env: dict[str, str] | None = None,
    new_session: bool = False,
) -> GatewayProcess:
    """Run `argv` (from the project root) and return once it prints `ready_line`.

    `cpus` pins the server to those cores (Linux), so a load generator on the
    other cores does not compete with it. `env` adds to the inherited environment.
    `new_session` makes it lead a process group of its own, so that the children
    it starts can be killed with it (os.killpg).
    """
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        start_new_session=new_session,
    )
    if cpus:
        # Popen returns once the child has exec'd, long before the interpreter
        # starts any thread, so every thread it makes inherits this (and no
        # preexec_fn has to run in a parent that has threads of its own).
        os.sched_setaffinity(process.pid, cpus)
    server = GatewayProcess(process, port)
    ready = threading.Event()

    def drain() -> None:
        # Reads for the process's whole life so its pipe never fills up.
        assert process.stdout is not None
        for line in process.stdout:
            server.output.append(line)
            if ready_line in line:
                ready.set()
        ready.set()  # it exited: wake the waiter, which sees the exit code

    server.reader = threading.Thread(target=drain, daemon=True)
    server.reader.start()
    if not ready.wait(timeout_s) or process.poll() is not None:
        server.stop()
        raise RuntimeError(f"{name} did not start (exit {process.returncode}):\n{server.logs()}")
    return server


def start_gateway(
    config: dict,
    workdir: Path,
    *extra_args: str,
    cpus: set[int] | None = None,
    timeout_s: float = 60.0,
    env: dict[str, str] | None = None,
) -> GatewayProcess:
    """Write `config` into `workdir`, serve it, and return once it listens.

    Unless the config says otherwise, the gateway stops without a drain
    (`server.shutdown.drain_s: 0`): no balancer is taking it out of rotation,
    and the default 5 s would be paid by every gateway a test stops."""
    workdir.mkdir(parents=True, exist_ok=True)
    server = dict(config.get("server") or {})
    server.setdefault("shutdown", {"drain_s": 0})
    config = {**config, "server": server}
    config_path = workdir / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--config",
        str(config_path),
        "--host",
        "127.0.0.1",
        "--http-port",
        str(port),
        "--grpc-port",
        "0",
        *extra_args,
    ]
    return start_server("gateway", argv, port, READY_LINE, cpus=cpus, timeout_s=timeout_s, env=env)
