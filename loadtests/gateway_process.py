"""Start a `gateway serve` subprocess on a free loopback port and wait until it listens.

Shared by the test suite and the benchmark so both run the gateway exactly as
users do.
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
    """A running gateway; `url` is its HTTP address (host:port)."""

    process: subprocess.Popen[bytes]
    port: int
    output: list[bytes] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

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


def start_gateway(config: dict, workdir: Path, *extra_args: str, cpus: set[int] | None = None,
                  timeout_s: float = 60.0) -> GatewayProcess:
    """Write `config` into `workdir`, serve it, and return once it listens.

    `cpus` pins the server to those cores (Linux), so a load generator on the
    other cores does not compete with it.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config_path),
         "--host", "127.0.0.1", "--http-port", str(port), "--grpc-port", "0", *extra_args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=pin,
    )
    gateway = GatewayProcess(process, port)
    ready = threading.Event()

    def drain() -> None:
        # Reads for the process's whole life so its pipe never fills up.
        assert process.stdout is not None
        for line in process.stdout:
            gateway.output.append(line)
            if READY_LINE in line:
                ready.set()
        ready.set()  # it exited: wake the waiter, which sees the exit code

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(timeout_s) or process.poll() is not None:
        gateway.stop()
        raise RuntimeError(f"gateway did not start (exit {process.returncode}):\n{gateway.logs()}")
    return gateway
