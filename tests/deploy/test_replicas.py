"""Many replicas as one: three gateway containers and one Redis container on a
podman network, behind HAProxy (Debian's, on the host) with health checks on
/v2/health/ready.

* the response cache is shared: an answer computed on one replica is a hit on
  the others (through Redis);
* a tenant's rate limit holds across replicas: `burst` N and one request a
  minute admit exactly N of a quick run of requests, wherever they land;
* every replica's /metrics is scraped (each through its own published port);
* under steady load through the balancer, SIGTERM to one replica loses no
  request (its readiness fails at once, HAProxy takes it out during the
  drain), and SIGKILL to another loses at most the requests in flight on it:
  HAProxy retries inference (`retry-on` + `option redispatch`), which is safe
  because inference is idempotent (same input, same answer, no side effect).

Every address the tests reach is 127.0.0.1 (published ports); the replicas
reach Redis by its container name on their own network.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testkit.gateway_process import free_port
from tests.deploy.containers import (
    Container,
    LoadGenerator,
    build_image,
    config_volume,
    digits_request,
    poll,
    request,
    unique,
)

pytestmark = pytest.mark.timeout(900)

REPLICAS = 3
LIMITED_BURST = 12  # the limited tenant's burst: admitted at once, then one a minute
ADMIN_KEY, LOAD_KEY, LIMITED_KEY, SIGNING_KEY = "admin-key", "load-key", "limited-key", "sign"

HAPROXY_CFG = """\
global
    maxconn 512
    log stderr format raw local0 info

defaults
    mode http
    log global
    option httplog
    option dontlog-normal
    timeout connect 500ms
    timeout client 30s
    timeout server 30s
    timeout check 1s
    # A failed attempt is tried again (up to 3 times), on another replica.
    retries 3
    option redispatch 1

frontend gateway
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    # In rotation only while ready: a replica that is stopping answers 503 at once.
    option httpchk GET /v2/health/ready
    http-check expect status 200
    default-server inter 100ms fall 1 rise 2
    # Layer-7 retries: a connection refused or reset, an empty answer, or a 503
    # (a replica shedding or past its grace) is tried on another replica.
    retry-on conn-failure empty-response junk-response response-timeout 503
    # A retry re-sends the request from HAProxy's buffer: wait for the whole
    # body before choosing a replica, so that the body is still there to re-send.
    option http-buffer-request
    # Only inference is retried: it is idempotent (the same input gives the same
    # answer and changes nothing), so a request a dead replica may have run is
    # safe to run again. Everything else (admin calls, chat, which is billed and
    # sampled) is never sent twice.
    acl infer path_reg ^/v2/models/[^/]+(/versions/[^/]+)?/infer$
    http-request disable-l7-retry if !infer
    http-response set-header x-served-by %[srv_name]
{servers}
"""


def gateway_config(redis_host: str) -> dict:
    digits_backend = {
        "type": "onnx",
        "path": "models/digits/1/model.onnx",
        "providers": ["cpu"],
        "max_concurrency": 1,
        "intra_op_threads": 1,
        "timeout_ms": 10000,
    }
    signature = {
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
    }
    return {
        "server": {
            "grpc_port": 0,
            "admin_key_env": "GATEWAY_ADMIN_KEY",
            "shutdown": {"drain_s": 2.0, "grace_s": 10.0},
        },
        "redis": {"url": f"redis://{redis_host}:6379/0", "timeout_ms": 200},
        "cache": {"signing_key_env": "CACHE_SIGNING_KEY"},
        "tenants": [
            {"name": "load", "key_env": "LOAD_KEY"},
            {
                "name": "limited",
                "key_env": "LIMITED_KEY",
                "rate_limit": {"requests_per_minute": 1, "burst": LIMITED_BURST},
            },
        ],
        "backends": {"digits-cpu": digits_backend},
        "models": {
            "digits": {"version": 1, "signature": signature, "route": {"backends": ["digits-cpu"]}},
            "digits-cached": {
                "version": 1,
                "signature": signature,
                "route": {"backends": ["digits-cpu"]},
                "cache": {"ttl_s": 600},
            },
        },
    }


@dataclass
class Fleet:
    replicas: list[Container]
    ports: list[int]  # each replica's published HTTP port
    balancer_port: int
    haproxy: subprocess.Popen[bytes]
    haproxy_log: Path  # HAProxy's log of failed requests (option dontlog-normal)

    def logs(self) -> str:
        return "\n".join(f"--- {c.name}\n{c.logs()[-3000:]}" for c in self.replicas)


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def fleet(gateway_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy).exists():
        pytest.skip("haproxy is not installed (`make test` installs Debian's: `make haproxy`)")
    workdir = tmp_path_factory.mktemp("fleet")
    network = unique("gw-net")
    build_image.podman("network", "create", network)
    redis = Container(unique("gw-redis"), build_image.REDIS_IMAGE, ["--network", network])
    replicas = [
        Container(
            unique(f"gw-replica{i}"),
            gateway_image,
            [
                "--network",
                network,
                "--read-only",
                "-p",
                "127.0.0.1::8000",
                *config_volume(workdir / "config", gateway_config(redis.name)),
                *("--env", f"GATEWAY_ADMIN_KEY={ADMIN_KEY}"),
                *("--env", f"LOAD_KEY={LOAD_KEY}"),
                *("--env", f"LIMITED_KEY={LIMITED_KEY}"),
                *("--env", f"CACHE_SIGNING_KEY={SIGNING_KEY}"),
            ],
        )
        for i in range(1, REPLICAS + 1)
    ]
    process: subprocess.Popen[bytes] | None = None
    try:
        redis.start()
        for replica in replicas:
            replica.start()
        ports = [replica.host_port(8000) for replica in replicas]
        for replica, port in zip(replicas, ports):
            replica.wait_ready(port)
        balancer_port = free_port()
        servers = "\n".join(
            f"    server {c.name} 127.0.0.1:{port} check" for c, port in zip(replicas, ports)
        )
        cfg = workdir / "haproxy.cfg"
        cfg.write_text(HAPROXY_CFG.format(port=balancer_port, servers=servers))
        check = subprocess.run([haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        process = subprocess.Popen(
            [haproxy, "-db", "-f", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=(workdir / "haproxy.log").open("wb"),
        )
        poll(
            lambda: request(balancer_port, "GET", "/v2/health/ready").status == 200,
            30,
            "HAProxy to listen",
        )
        yield Fleet(replicas, ports, balancer_port, process, workdir / "haproxy.log")
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=10)
        for container in [*replicas, redis]:
            container.remove()
        build_image.podman("network", "rm", "--force", network, check=False)


def test_the_cache_is_shared_across_replicas(fleet: Fleet) -> None:
    body = digits_request([float(i % 17) for i in range(64)])
    path = "/v2/models/digits-cached/infer"
    first = request(fleet.ports[0], "POST", path, body, auth(LOAD_KEY))
    assert first.status == 200, first.body
    assert first.headers["x-gateway-cache"] == "miss"
    for port in fleet.ports[1:]:
        other = request(port, "POST", path, body, auth(LOAD_KEY))
        assert other.status == 200, other.body
        assert other.headers["x-gateway-cache"] == "hit", "computed once, served by every replica"
        assert other.json()["outputs"] == first.json()["outputs"]


def test_a_tenant_rate_limit_holds_across_replicas(fleet: Fleet) -> None:
    sent = 3 * LIMITED_BURST
    replies = [
        request(
            fleet.balancer_port,
            "POST",
            "/v2/models/digits/infer",
            digits_request(),
            auth(LIMITED_KEY),
        )
        for _ in range(sent)
    ]
    statuses = [reply.status for reply in replies]
    assert statuses.count(200) == LIMITED_BURST, statuses
    assert statuses.count(429) == sent - LIMITED_BURST, statuses
    # Round robin: every replica admitted some and refused some.
    served_by = {reply.headers["x-served-by"] for reply in replies if reply.status == 200}
    refused_by = {reply.headers["x-served-by"] for reply in replies if reply.status == 429}
    assert len(served_by) == REPLICAS and len(refused_by) == REPLICAS
    assert all("retry-after" in reply.headers for reply in replies if reply.status == 429)


def scrape(port: int) -> dict[str, float]:
    """gateway_requests_total{model="digits",code=...} of one replica, summed by code."""
    text = request(port, "GET", "/metrics").body.decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("gateway_requests_total{") and 'model="digits"' in line:
            code = line.split('code="', 1)[1].split('"', 1)[0]
            counts[code] = counts.get(code, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def test_every_replica_is_scraped(fleet: Fleet) -> None:
    before = [scrape(port) for port in fleet.ports]
    sent = 30
    for _ in range(sent):
        reply = request(
            fleet.balancer_port, "POST", "/v2/models/digits/infer", digits_request(), auth(LOAD_KEY)
        )
        assert reply.status == 200
    after = [scrape(port) for port in fleet.ports]
    served = [a.get("200", 0.0) - b.get("200", 0.0) for a, b in zip(after, before)]
    print(f"\nrequests per replica (from each one's /metrics): {served}")
    assert sum(served) == sent
    assert all(count > 0 for count in served)


def test_failover_sigterm_then_sigkill(fleet: Fleet) -> None:
    """Runs last in this module: it stops two of the three replicas."""
    clients = 4
    load = LoadGenerator(fleet.balancer_port, headers=auth(LOAD_KEY), clients=clients).start()
    terminated, killed = fleet.replicas[0], fleet.replicas[1]
    try:
        load.wait_answers(200, logs=fleet.logs)
        load.mark("sigterm")
        terminated.signal("TERM")
        assert terminated.wait_exit() == 0, terminated.logs()
        load.wait_answers(200, logs=fleet.logs)
        load.mark("sigkill")
        killed.signal("KILL")
        killed.wait_exit()
        load.wait_answers(200, logs=fleet.logs)
        load.mark("end")
    finally:
        load.stop()
    during_sigterm = load.between("sigterm", "sigkill")
    during_sigkill = load.between("sigkill", "end")
    failed_term = [s for s in during_sigterm if s != "200"]
    failed_kill = [s for s in during_sigkill if s != "200"]
    log = fleet.haproxy_log.read_text().splitlines()
    retried = [line for line in log if "/+" in line.rsplit('"', 2)[0].split()[-2]]
    print(
        f"\nfailover: {len(load.outcomes)} requests through HAProxy; SIGTERM phase "
        f"{len(during_sigterm)} requests, {len(failed_term)} failed; SIGKILL phase "
        f"{len(during_sigkill)} requests, {len(failed_kill)} failed; "
        f"{len(retried)} retried on another replica by HAProxy"
    )
    print(*[line for line in log if " 502 " in line or " 503 " in line], sep="\n")
    assert failed_term == [], failed_term[:5]
    # At most the requests in flight on the killed replica (one per client at
    # most); HAProxy retries them elsewhere, so usually none.
    assert len(failed_kill) <= clients, failed_kill[:5]
    assert "stopping: not ready" in terminated.logs()
