"""The locust load tests (loadtests/locust/) run headless, as SREs run them, for
a couple of seconds each against one real gateway: the default config's models
plus a chat model on the fake vendor, and SLOs the gateway declares. Each tag
alone, weights, a shape, the SLO verdict from the command line and from the
gateway's /slo, one master with one worker; and the gRPC user's concurrency
against a stand-in gRPC server whose answers take a known time."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from gateway.api.proto import grpc_predict_v2_pb2 as pb
from gateway.api.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from testkit.fake_vendor import start_fake_vendor
from testkit.gateway_process import ROOT, GatewayProcess, free_port, start_gateway
from tests.loadtests.locust_runs import (
    LOCUSTFILE,
    RUN_TIMEOUT_S,
    SHAPES,
    locust_argv,
    locust_env,
    run_locust,
)

KEY_ENV = "LOCUST_TEST_VENDOR_KEY"
CHUNK_INTERVAL_MS = 20  # the fake vendor's pause between streamed chunks
BREACH = 3  # loadtests/locust/hooks.py: the exit code of a breached objective

TAG_ENTRIES = {
    "v2-json": ["v2-json digits"],
    "v2-binary": ["v2-binary digits"],
    "grpc": ["grpc digits"],
    "chat": ["chat chat", "chat-stream chat", "inter-chunk chat", "ttft chat"],
    "embeddings": ["embeddings embeddings"],
}


@dataclass(frozen=True)
class Target:
    gateway: GatewayProcess
    grpc_port: int

    def args(
        self, *tags: str, users: int = 2, seconds: int = 2, files: tuple[Path, ...] = (LOCUSTFILE,)
    ) -> list[str]:
        """Locust's options for a headless run of `tags` against this gateway."""
        return [
            *("-f", ",".join(map(str, files)), "--headless"),
            *("--host", f"http://{self.gateway.url}", "--grpc-host", f"127.0.0.1:{self.grpc_port}"),
            *("-u", str(users), "-r", str(users), "-t", f"{seconds}s"),
            *(["--tags", *tags] if tags else []),
        ]


def gateway_config(vendor_url: str) -> dict:
    """config/gateway.yaml (its paths resolve from the project root, where the
    gateway runs), plus a chat model on the fake vendor and SLOs: a loose one
    for digits, and an embeddings model whose latency objective no request meets."""
    config = yaml.safe_load((ROOT / "config" / "gateway.yaml").read_text())
    config["server"] = {"max_request_bytes": 16 << 20}
    config["backends"]["vendor"] = {
        "type": "openai",
        "base_url": f"http://{vendor_url}/v1",
        "api_key_env": KEY_ENV,
        "model": "fake-chat",
    }
    models = config["models"]
    models["chat"] = {"kind": "chat", "route": {"backends": ["vendor"]}}
    models["digits"]["slo"] = {"latency_ms": 10000, "latency_target": 0.99, "availability": 0.99}
    models["embeddings-strict"] = {
        **models["embeddings"],
        "slo": {"latency_ms": 0.001, "latency_target": 0.99, "availability": 0.999},
    }
    return config


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    vendor = start_fake_vendor(chunk_interval_ms=CHUNK_INTERVAL_MS)
    try:
        grpc_port = free_port()
        # start_gateway passes --grpc-port 0 first; argparse keeps the last one.
        gateway = start_gateway(
            gateway_config(vendor.url),
            tmp_path_factory.mktemp("locust-gateway"),
            "--grpc-port",
            str(grpc_port),
            env={KEY_ENV: "fake-key"},
        )
        try:
            yield Target(gateway, grpc_port)
        finally:
            alive = gateway.process.poll() is None
            gateway.stop()
        assert alive, f"the gateway died during the load tests:\n{gateway.logs()}"
    finally:
        vendor.stop()


@pytest.mark.parametrize("tag", list(TAG_ENTRIES))
def test_each_tag_runs_headless_without_failures(target: Target, tag: str, tmp_path: Path) -> None:
    html = tmp_path / "report.html"
    run = run_locust(
        [*target.args(tag), "--html", str(html)],
        tmp_path / "run",
    )
    assert run.code == 0, run.describe()
    assert sorted(run.stats) == sorted(TAG_ENTRIES[tag]), run.describe()
    for entry in TAG_ENTRIES[tag]:
        assert run.count(entry) > 0, run.describe()
        assert run.failures(entry) == 0, run.describe()
    assert html.stat().st_size > 0
    if tag in ("v2-json", "v2-binary", "grpc"):
        # digits declares an SLO: the verdict holds the entry to it.
        row = run.verdict_row(TAG_ENTRIES[tag][0])
        assert "p99<=10000ms(slo) fail<=1%(slo)" in row and row.endswith(" ok"), row


def test_a_stream_is_timed_chunk_by_chunk(target: Target, tmp_path: Path) -> None:
    run = run_locust(target.args("chat-stream", users=1), tmp_path / "run")
    assert run.code == 0, run.describe()
    # Read as it arrives, each gap is the vendor's pause; read whole, it would be 0.
    gap_p50 = int(run.stats["inter-chunk chat"]["50%"])
    assert CHUNK_INTERVAL_MS * 0.75 <= gap_p50 < CHUNK_INTERVAL_MS * 5, run.describe()
    # The first token comes after the role chunk and one pause; the whole stream
    # after a pause per chunk (8 words: the fake vendor's default reply).
    assert int(run.stats["ttft chat"]["50%"]) >= CHUNK_INTERVAL_MS * 0.75, run.describe()
    assert int(run.stats["chat-stream chat"]["50%"]) >= 7 * CHUNK_INTERVAL_MS, run.describe()


def test_a_command_line_objective_breached_fails_the_run_and_names_the_entry(
    target: Target, tmp_path: Path
) -> None:
    run = run_locust(
        [*target.args("embeddings", "v2-json"), "--slo-p99-ms", "0.001", "--slo-source", "none"],
        tmp_path / "run",
    )
    assert run.code == BREACH, run.describe()
    assert run.count("embeddings embeddings") > 0
    row = run.verdict_row("embeddings embeddings")
    assert "p99<=0.001ms" in row and "BREACH: p99 " in row and "> 0.001ms" in row, row
    assert "SLO verdict: BREACH: embeddings embeddings" in run.output, run.describe()


@pytest.mark.parametrize(("source", "code"), [("gateway", BREACH), ("none", 0)])
def test_the_verdict_holds_an_entry_to_its_models_slo_from_the_gateway(
    target: Target, source: str, code: int, tmp_path: Path
) -> None:
    run = run_locust(
        [
            *target.args("embeddings", users=1),
            *("--embeddings-model", "embeddings-strict", "--slo-source", source),
        ],
        tmp_path / "run",
    )
    assert run.code == code, run.describe()
    assert run.failures("embeddings embeddings-strict") == 0, run.describe()
    row = run.verdict_row("embeddings embeddings-strict")
    if source == "gateway":
        assert "models with an SLO: digits, embeddings-strict" in run.output, run.describe()
        assert "p99<=0.001ms(slo) fail<=0.1%(slo)" in row and "BREACH: p99 " in row, row
    else:
        assert row.endswith("no objective"), row


def test_weights_from_the_command_line_share_out_the_users(target: Target, tmp_path: Path) -> None:
    run = run_locust(
        [
            *target.args("v2-json", "v2-binary", users=4, seconds=1),
            *("--weight-v2-json", "3", "--weight-v2-binary", "1"),
        ],
        tmp_path / "run",
    )
    assert run.code == 0, run.describe()
    assert '{"V2BinaryUser": 1, "V2JsonUser": 3} (4 total users)' in run.output, run.describe()


def test_a_weight_of_zero_leaves_a_user_out(target: Target) -> None:
    run = run_locust([*target.args("grpc", users=1, seconds=1), "--weight-grpc", "0"])
    assert run.code == 1, run.describe()
    assert "no user class left to run" in run.output, run.describe()


def test_a_shape_file_drives_the_users_and_ends_the_run(target: Target, tmp_path: Path) -> None:
    # No -u/-r/-t reach a shape: it stops the run itself.
    args = [
        *("-f", f"{LOCUSTFILE},{SHAPES / 'step.py'}", "--headless", "--tags", "v2-json"),
        *("--host", f"http://{target.gateway.url}"),
    ]
    run = run_locust(
        [*args, "--step-users", "1", "--step-time", "1s", "--step-count", "2"],
        tmp_path / "run",
    )
    assert run.code == 0, run.describe()
    for users in (1, 2):
        assert f"Shape test updating to {users} users" in run.output, run.describe()
    assert "Shape test updating to 3 users" not in run.output, run.describe()
    assert "Shape test completed" in run.output, run.describe()
    assert run.count("v2-json digits") > 0


def test_one_master_and_one_worker(target: Target, tmp_path: Path) -> None:
    port = str(free_port())
    worker_log = tmp_path / "worker.log"
    # The worker has no --grpc-host (its default, port 8001, is not this gateway):
    # the master's reaches it with the spawn message, as every custom option does.
    with worker_log.open("wb") as log:
        worker = subprocess.Popen(
            locust_argv("-f", str(LOCUSTFILE), "--worker", "--master-port", port),
            cwd=ROOT,
            env=locust_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        master = run_locust(
            [
                *target.args("v2-json", "grpc"),
                *("--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", port),
                *("--expect-workers", "1", "--expect-workers-max-wait", "30"),
            ],
            tmp_path / "run",
        )
        worker_code = worker.wait(timeout=RUN_TIMEOUT_S)  # the master tells it to quit
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    worker_output = worker_log.read_text(errors="replace")
    assert master.code == 0, master.describe() + "\nworker:\n" + worker_output
    assert worker_code == 0, worker_output
    for entry in ("v2-json digits", "grpc digits"):
        assert master.count(entry) > 0 and master.failures(entry) == 0, master.describe()
    assert "SLO verdict: ok" in master.output
    assert "SLO verdict" not in worker_output  # judged once, on the master


# -- the gRPC user is concurrent -------------------------------------------------------

SERVICE_TIME_S = 0.2


class SlowDigits(pb_grpc.GRPCInferenceServiceServicer):
    """Answers like digits, each answer after SERVICE_TIME_S."""

    def ModelInfer(self, request: pb.ModelInferRequest, context: object) -> pb.ModelInferResponse:
        rows = request.inputs[0].shape[0]
        time.sleep(SERVICE_TIME_S)  # the stand-in's service time, not a synchronisation
        probabilities = np.zeros((rows, 10), dtype="<f4")
        probabilities[:, 3] = 1.0
        return pb.ModelInferResponse(
            model_name=request.model_name,
            id=request.id,
            outputs=[
                pb.ModelInferResponse.InferOutputTensor(
                    name="probabilities", datatype="FP32", shape=[rows, 10]
                )
            ],
            raw_output_contents=[probabilities.tobytes()],
        )


@pytest.fixture
def slow_grpc() -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(SlowDigits(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None)


def test_grpc_users_wait_for_answers_concurrently(slow_grpc: int, tmp_path: Path) -> None:
    users = 16
    started = time.monotonic()
    run = run_locust(
        [
            *("-f", str(LOCUSTFILE), "--headless", "--tags", "grpc", "--slo-source", "none"),
            *("--grpc-host", f"127.0.0.1:{slow_grpc}"),
            *("-u", str(users), "-r", str(users), "-t", "2s"),
        ],
        tmp_path / "run",
    )
    wall_s = time.monotonic() - started
    assert run.code == 0, run.describe()
    # Calls made one at a time (grpcio blocking gevent's hub) could not add up
    # to more service time than the process lived, start-up included.
    served_s = run.count("grpc digits") * SERVICE_TIME_S
    assert served_s > 2 * wall_s, f"{served_s:.1f} s served in {wall_s:.1f} s\n{run.describe()}"
