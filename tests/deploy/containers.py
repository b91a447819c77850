"""Containers of the gateway's image under podman, and plain HTTP to them.

`Container` runs one container (`podman run -d`), finds the host port that
podman published for a container port (always on 127.0.0.1), polls readiness,
and stops or kills it; `LoadGenerator` keeps several clients sending v2 infer
requests and records every outcome in one order, so that tests can say what
happened before and after a signal without reading the clock.
"""

from __future__ import annotations

import http.client
import importlib.util
import itertools
import json
import secrets
import sys
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from testkit.gateway_process import ROOT
from tests.api.http_helpers import Reply


def _build_script() -> types.ModuleType:
    """deploy/build_image.py (a script, not a package), loaded from its file."""
    path = ROOT / "deploy" / "build_image.py"
    spec = importlib.util.spec_from_file_location("deploy_build_image", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and the like look their module up
    spec.loader.exec_module(module)
    return module


build_image = _build_script()
podman = build_image.podman

DIGITS_PIXELS = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0]
DIGITS_PIXELS += [0, 4, 12, 0, 0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0]
DIGITS_PIXELS += [0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]  # the README's zero


def digits_request(pixels: list[float] | None = None) -> bytes:
    """A v2 JSON infer request for the digits signature (one 8x8 image)."""
    data = DIGITS_PIXELS if pixels is None else pixels
    body = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": data}]}
    return json.dumps(body).encode()


def config_volume(directory: Path, config: dict) -> list[str]:
    """`podman run` arguments serving `config` from `directory` (made readable by
    the image's unprivileged user) at /etc/gateway/gateway.yaml."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o644)
    return [
        "--volume",
        f"{directory}:/etc/gateway:ro",
        "--env",
        "GATEWAY_CONFIG=/etc/gateway/gateway.yaml",
    ]


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Reply:
    """One request on a fresh connection to 127.0.0.1:port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body, {"content-type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return Reply(
            response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
        )
    finally:
        conn.close()


def poll(condition: Callable[[], bool], timeout_s: float, what: str, logs=lambda: "") -> None:
    """Wait until `condition()` holds, checking every 50 ms; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except (OSError, http.client.HTTPException):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{logs()}")
        time.sleep(0.05)


@dataclass
class Container:
    """A container started with `podman run -d`; removed by `remove()`."""

    name: str
    image: str
    run_args: list[str] = field(default_factory=list)
    command: list[str] = field(default_factory=list)

    def start(self) -> Container:
        podman(
            "run",
            "--detach",
            "--name",
            self.name,
            # No systemd here to run the image's HEALTHCHECK on a timer;
            # tests run it with `podman healthcheck run`.
            "--health-interval",
            "disable",
            *self.run_args,
            self.image,
            *self.command,
        )
        return self

    def host_port(self, container_port: int) -> int:
        """The 127.0.0.1 port published for `container_port` (run with -p 127.0.0.1::PORT)."""
        out = podman("port", self.name, f"{container_port}/tcp").stdout.strip()
        return int(out.splitlines()[0].rsplit(":", 1)[1])

    def wait_ready(self, port: int, timeout_s: float = 120.0) -> None:
        poll(
            lambda: self.running() and request(port, "GET", "/v2/health/ready").status == 200,
            timeout_s,
            f"{self.name} to be ready on port {port}",
            self.logs,
        )

    def running(self) -> bool:
        state = self.inspect("{{.State.Running}}", check=False)
        if state != "true":
            if state == "false":
                raise AssertionError(f"{self.name} exited:\n{self.logs()}")
            return False
        return True

    def inspect(self, template: str, check: bool = True) -> str:
        return podman("inspect", "--format", template, self.name, check=check).stdout.strip()

    def exec(self, *argv: str) -> str:
        return podman("exec", self.name, *argv).stdout

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def signal(self, name: str) -> None:
        podman("kill", "--signal", name, self.name)

    def wait_exit(self, timeout_s: float = 120.0) -> int:
        poll(
            lambda: self.inspect("{{.State.Running}}") == "false",
            timeout_s,
            f"{self.name} to exit",
            self.logs,
        )
        return int(self.inspect("{{.State.ExitCode}}"))

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False)


@dataclass
class LoadGenerator:
    """`clients` threads sending v2 infer requests to 127.0.0.1:port, each on a
    fresh connection (as a balancer's client would), until `stop()`; every
    outcome is recorded with a sequence number shared with `mark()`."""

    port: int
    path: str = "/v2/models/digits/infer"
    headers: dict[str, str] = field(default_factory=dict)
    clients: int = 4
    order: itertools.count[int] = field(default_factory=itertools.count)
    lock: threading.Lock = field(default_factory=threading.Lock)
    outcomes: list[tuple[int, str]] = field(default_factory=list)  # (seq, "200" | error)
    marks: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _client(self) -> None:
        body = digits_request()
        while not self._stop.is_set():
            try:
                status = str(request(self.port, "POST", self.path, body, self.headers).status)
            except (OSError, http.client.HTTPException) as exc:
                status = f"error {type(exc).__name__}: {exc}"
            with self.lock:
                self.outcomes.append((next(self.order), status))

    def start(self) -> LoadGenerator:
        self._threads = [
            threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def mark(self, name: str) -> int:
        with self.lock:
            self.marks[name] = seq = next(self.order)
            return seq

    def answered(self) -> int:
        with self.lock:
            return len(self.outcomes)

    def wait_answers(self, count: int, timeout_s: float = 120.0, logs=lambda: "") -> None:
        """Wait until `count` more requests than now have been answered."""
        target = self.answered() + count
        poll(lambda: self.answered() >= target, timeout_s, f"{count} more answers", logs)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def between(self, start: str, end: str | None = None) -> list[str]:
        """Outcomes of requests answered after mark `start` (and before mark `end`)."""
        low = self.marks[start]
        high = self.marks[end] if end is not None else float("inf")
        with self.lock:
            return [status for seq, status in self.outcomes if low < seq < high]
