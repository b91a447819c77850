"""Hot reload under load, observed from outside: a real gateway process serving
digits requests without pause while its config file is rewritten and reloaded
(POST /admin/reload, and the file watch alone), a bad config is refused, and
the previous config is rolled back to. No request may fail meanwhile, and the
running config is never shown with a secret in it."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.api.http_helpers import tensor_json
from tests.conftest import DIGITS_MODEL, GatewayProcess, start_gateway

SECRET_ENV = "RELOAD_TEST_SECRET"
SECRET = "s3cr3t-org-7d1f0a"  # must never appear in what the admin endpoints show
SECRET_URL_ENV = "RELOAD_TEST_SECRET_URL"
SECRET_URL = "vendor.internal/v1?token=tok-9f8e7d6c"
KEY_ENV = "RELOAD_TEST_VENDOR_KEY"
RELOADS = 20
DIGITS_BODY = tensor_json("pixels", "FP32", [1, 64], [float(i % 17) for i in range(64)])


def config(variant: int, **server: object) -> dict:
    """Two valid configs that differ in the digits backend (queue and batching), so
    every reload builds a new backend and retires the old one under load."""
    digits = {
        "type": "onnx",
        "path": str(DIGITS_MODEL),
        "providers": ["cpu"],
        "max_concurrency": 2,
        "intra_op_threads": 1,
        "timeout_ms": 5000,
    }
    if variant % 2:
        digits |= {"max_queue": 128, "batching": {"max_batch_size": 8, "max_queue_delay_us": 500}}
    else:
        digits |= {"max_queue": 64}
    return {
        "server": {"watch_config_s": 0.1, **server},
        "backends": {
            "digits-cpu": digits,
            # Never called: here for its secret header, which GET /admin/config must not show.
            "vendor": {
                "type": "openai",
                "base_url": "http://127.0.0.1:9/v1",
                "api_key_env": KEY_ENV,
                "model": "fake-chat",
                "headers": {"x-organization": "${" + SECRET_ENV + "}"},
            },
        },
        "models": {
            "digits": {
                "version": 1,
                "signature": {
                    "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
                    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
                },
                "route": {"backends": ["digits-cpu"]},
            },
            "chat": {"kind": "chat", "route": {"backends": ["vendor"]}},
        },
    }


def render(doc: dict) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write_config(path: Path, text: str) -> str:
    """Replace the file at once (as editors and config-map updates do); its sha256."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return sha256(text)


def admin(port: int, method: str, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(method, path, b"" if method == "POST" else None)
    response = conn.getresponse()
    status, body = response.status, response.read()
    conn.close()
    return status, json.loads(body)


def running(port: int) -> dict:
    status, doc = admin(port, "GET", "/admin/config")
    assert status == 200, doc
    return doc


def wait_for(condition: Callable[[], bool], timeout_s: float = 15.0, what: str = "") -> None:
    """Poll a condition whose every check is an HTTP round trip (no sleeping)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"


class SteadyLoad:
    """Digits requests back to back from `threads` keep-alive connections; counts
    every answer and keeps what any failure said."""

    def __init__(self, port: int, threads: int = 2) -> None:
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self._stop.is_set():
            try:
                conn.request(
                    "POST",
                    "/v2/models/digits/infer",
                    DIGITS_BODY,
                    {"content-type": "application/json"},
                )
                response = conn.getresponse()
                status, body = response.status, response.read()
                failure = None if status == 200 else f"{status}: {body[:300]!r}"
            except (OSError, http.client.HTTPException) as exc:
                failure = f"{type(exc).__name__}: {exc}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            with self._lock:
                if failure is None:
                    self.ok += 1
                else:
                    self.failures.append(failure)
        conn.close()

    def served(self) -> int:
        with self._lock:
            return self.ok

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


@pytest.fixture()
def gateway(tmp_path: Path) -> Iterator[tuple[GatewayProcess, Path]]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SECRET_ENV, SECRET)
        patch.setenv(SECRET_URL_ENV, SECRET_URL)
        patch.setenv(KEY_ENV, "fake-key")
        process = start_gateway(config(0), tmp_path)
    yield process, tmp_path / "gateway.yaml"
    alive_until_the_end = process.process.poll() is None
    process.stop()
    logs = process.logs()
    assert alive_until_the_end, f"the gateway died during the test:\n{logs}"
    assert "this is a gateway bug" not in logs and "internal error" not in logs, logs


def test_reloads_under_load_lose_no_request(gateway: tuple[GatewayProcess, Path]) -> None:
    process, path = gateway
    port = process.port
    first = running(port)
    assert first["version"] == 1
    assert first["sha256"] == sha256(path.read_text())
    shas = [first["sha256"]]
    with SteadyLoad(port) as load:
        wait_for(lambda: load.served() >= 20, what="the load to start")
        version = first["version"]
        served_before = load.served()
        for i in range(1, RELOADS + 1):
            expected = write_config(path, render(config(i)))
            shas.append(expected)
            status, doc = admin(port, "POST", "/admin/reload")
            assert status == 200, doc
            # The file watch may have applied the same file a moment earlier: either
            # way the new file is running, in a later version.
            assert doc["sha256"] == expected and doc["version"] > version, (doc, version)
            version = doc["version"]
        # Requests really ran across the reloads.
        assert load.served() - served_before >= RELOADS, (load.served(), served_before)

        # The file watch alone (no POST) picks up a changed file.
        expected = write_config(path, render(config(RELOADS + 1)))
        shas.append(expected)
        wait_for(lambda: running(port)["sha256"] == expected, what="the file watch to reload")
        watched = running(port)
        assert watched["version"] > version
        version = watched["version"]

        # A bad config is refused with its reasons; the running one keeps serving.
        bad = config(RELOADS + 2)
        bad["backends"]["digits-cpu"]["max_queue"] = -1
        write_config(path, render(bad))
        status, doc = admin(port, "POST", "/admin/reload")
        assert status == 422, doc
        assert any("backends.digits-cpu.max_queue" in p for p in doc["problems"]), doc
        served = load.served()
        wait_for(lambda: load.served() >= served + 20, what="requests after the refusal")
        still = running(port)
        assert (still["version"], still["sha256"]) == (version, shas[-1])

        # Roll-back: the config before the running one.
        status, doc = admin(port, "POST", "/admin/rollback")
        assert status == 200, doc
        back = running(port)
        assert back["sha256"] == shas[-2] and back["version"] == version + 1
        served = load.served()
        wait_for(lambda: load.served() >= served + 20, what="requests after the roll-back")
    assert load.failures == [], load.failures[:5]
    assert load.ok >= 100


def test_the_running_config_is_shown_without_secrets(gateway: tuple[GatewayProcess, Path]) -> None:
    process, path = gateway
    status, body = admin(process.port, "GET", "/admin/config")
    assert status == 200
    assert "${" + SECRET_ENV + "}" in body["text"]  # the reference, as written
    assert SECRET not in json.dumps(body)
    # Also after a reload.
    write_config(path, render(config(1)))
    status, doc = admin(process.port, "POST", "/admin/reload")
    assert status == 200 and SECRET not in json.dumps(doc)
    assert SECRET not in json.dumps(admin(process.port, "GET", "/admin/config")[1])


def test_log_format_and_level_follow_a_reload(gateway: tuple[GatewayProcess, Path]) -> None:
    process, path = gateway
    write_config(path, render(config(0, log_format="json", log_level="debug")))
    status, doc = admin(process.port, "POST", "/admin/reload")
    assert status == 200, doc
    # The reload's own closing line is already written as JSON, by the new level.
    wait_for(
        lambda: any(
            line.startswith("{") and "logging now json at level debug" in line
            for line in process.logs().splitlines()
        ),
        what="a JSON log line",
    )
    line = next(line for line in process.logs().splitlines() if "logging now json" in line)
    assert json.loads(line)["message"] == "logging now json at level debug"


def test_a_refused_config_does_not_show_the_values_of_its_variables(
    gateway: tuple[GatewayProcess, Path],
) -> None:
    """The reasons for refusing a config name the YAML path and the problem; a value
    that came from `${VAR}` (here a URL with a token, missing its scheme) stays in
    the environment: it is not echoed to admin callers or into the logs."""
    process, path = gateway
    bad = config(1)
    bad["backends"]["vendor"]["base_url"] = "${" + SECRET_URL_ENV + "}"
    write_config(path, render(bad))
    status, doc = admin(process.port, "POST", "/admin/reload")
    assert status == 422, doc
    assert any("backends.vendor.base_url" in p for p in doc["problems"]), doc
    assert "tok-9f8e7d6c" not in json.dumps(doc), doc["problems"]
    assert running(process.port)["version"] == 1
