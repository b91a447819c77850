"""Start the real Triton server of testkit/triton_server.py (PyTriton, in
.venv-triton: `make test` and `make bench` build it) and wait for its models.

Shared by the triton backend's tests and the benchmark.
"""

from __future__ import annotations

import os
import signal
import sysconfig
from dataclasses import dataclass

from testkit.gateway_process import ROOT, GatewayProcess, free_port, start_server

TRITON_PYTHON = ROOT / ".venv-triton" / "bin" / "python"
SERVER_SCRIPT = ROOT / "testkit" / "triton_server.py"


def triton_env() -> dict[str, str]:
    """Triton's Python-backend stub links against libpython: it finds the
    interpreter's shared library only through LD_LIBRARY_PATH."""
    libdir = str(sysconfig.get_config_var("LIBDIR"))
    inherited = os.environ.get("LD_LIBRARY_PATH")
    return {"LD_LIBRARY_PATH": f"{libdir}:{inherited}" if inherited else libdir}


@dataclass
class TritonProcess:
    server: GatewayProcess
    http_port: int
    grpc_port: int

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def logs(self) -> str:
        return self.server.logs()

    def kill(self) -> None:
        """Kill tritonserver and its stubs at once, as a crashed host would."""
        process = self.server.process
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if self.server.reader is not None:
            self.server.reader.join(timeout=10)

    def stop(self) -> None:
        self.server.stop()
        if self.server.process.poll() is not None:
            try:  # stubs the server left behind, if any
                os.killpg(self.server.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def start_triton(
    *, max_queue_delay_us: int = 0, digits_instances: int = 1, cpus: set[int] | None = None
) -> TritonProcess:
    if not TRITON_PYTHON.exists():
        raise RuntimeError(f"{TRITON_PYTHON} is missing: `make .venv-triton/.installed` builds it")
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    argv = [
        str(TRITON_PYTHON),
        str(SERVER_SCRIPT),
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        f"--max-queue-delay-us={max_queue_delay_us}",
        f"--digits-instances={digits_instances}",
    ]
    server = start_server(
        "triton",
        argv,
        http_port,
        b"triton test server ready",  # triton_server.READY_LINE
        cpus=cpus,
        timeout_s=120,
        env=triton_env(),
        new_session=True,
    )
    return TritonProcess(server, http_port, grpc_port)
