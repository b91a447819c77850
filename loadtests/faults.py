"""What a two-vendor chat chain does when its primary fails, measured.

One gateway serves a chat model per fault, each routed [primary on fake
vendor A, secondary on fake vendor B] with its own circuit breaker, so one
scenario's breaker state never leaks into the next. For each fault injected
into A, N requests go through the chain from `--concurrency` callers:

    none      A healthy
    500       A answers every call with HTTP 500
    timeout   A never answers; the primary gives up at its timeout_ms
    refused   A is stopped before the run (connection refused)
    killed    A is SIGKILLed once a third of the requests are answered
    429       A rate-limits every call

and the table gives the success rate, p50/p99 latency, the share answered by
B, the calls that still reached A and the breaker state at the end.

Then the added latency of one fallback hop: requests to a chain whose primary
fails fast (A answers 500, no breaker, so every request takes the hop),
interleaved with requests to a model routed straight to B; hop minus direct
at p50 and p99, from the same run.

    python loadtests/faults.py [--requests 200] [--concurrency 8]

Results go to loadtests/results/faults-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import numpy as np

from loadtests import report
from testkit.fake_vendor import (
    control_fake_vendor,
    fake_vendor_stats,
    reset_fake_vendor,
    start_fake_vendor,
)
from testkit.gateway_process import ROOT, GatewayProcess, start_gateway

RESULTS = ROOT / "loadtests" / "results"
KEY_ENV = "FAULTS_VENDOR_KEY"
FAULTS = ("none", "500", "timeout", "refused", "killed", "429")
PRIMARY_TIMEOUT_MS = 300
REQUEST_TIMEOUT_MS = 10_000
BREAKER = {
    "consecutive_failures": 5,
    "error_rate": 0.5,
    "window_s": 10,
    "min_requests": 20,
    "cooldown_ms": 1000,
}
CHAT = "/v1/chat/completions"


# -- the setup ---------------------------------------------------------------------------


def vendor_backend(url: str, **extra: object) -> dict[str, Any]:
    return {
        "type": "openai",
        "base_url": f"http://{url}/v1",
        "api_key_env": KEY_ENV,
        "model": "fake-chat",
        "retries": {"max": 0},
        "max_concurrency": 64,
        **extra,
    }


def gateway_config(a: str, b: str) -> dict[str, Any]:
    backends: dict[str, Any] = {
        "b": vendor_backend(b, circuit_breaker={"enabled": False}),
        # Fails fast on every call and never opens: every request takes the hop.
        "a-hop": vendor_backend(
            a, timeout_ms=PRIMARY_TIMEOUT_MS, circuit_breaker={"enabled": False}
        ),
    }
    models: dict[str, Any] = {
        "direct-b": {"kind": "chat", "route": {"backends": ["b"]}},
        "hop": {"kind": "chat", "route": {"backends": ["a-hop", "b"]}},
    }
    for fault in FAULTS:
        backends[f"a-{fault}"] = vendor_backend(
            a, timeout_ms=PRIMARY_TIMEOUT_MS, circuit_breaker=BREAKER
        )
        models[f"chain-{fault}"] = {"kind": "chat", "route": {"backends": [f"a-{fault}", "b"]}}
    return {"server": {"watch_config_s": 0}, "backends": backends, "models": models}


class VendorA:
    """Fake vendor A, which the scenarios stop, kill and bring back on its port."""

    def __init__(self) -> None:
        self.process = start_fake_vendor()
        self.url = self.process.url

    @property
    def alive(self) -> bool:
        return self.process.process.poll() is None

    def healthy(self) -> None:
        if not self.alive:
            self.process = start_fake_vendor(port=self.process.port)
        reset_fake_vendor(self.url)

    def kill(self) -> None:
        self.process.process.kill()
        self.process.process.wait()

    def calls(self) -> int | None:
        return (
            fake_vendor_stats(self.url)["routes"].get(CHAT, {}).get("received", 0)
            if self.alive
            else None
        )


# -- the load ----------------------------------------------------------------------------


@dataclass
class Outcome:
    model: str
    status: int
    backend: str | None
    latency_s: float


@dataclass
class Run:
    outcomes: list[Outcome] = field(default_factory=list)
    duration_s: float = 0.0


async def send(session: aiohttp.ClientSession, base: str, model: str, i: int) -> Outcome:
    body = {"model": model, "messages": [{"role": "user", "content": f"request {i}"}]}
    started = time.perf_counter()
    try:
        async with session.post(
            base + CHAT, json=body, headers={"x-request-timeout-ms": str(REQUEST_TIMEOUT_MS)}
        ) as r:
            await r.read()
            status, backend = r.status, r.headers.get("x-gateway-backend")
    except (aiohttp.ClientError, TimeoutError):
        status, backend = 0, None
    return Outcome(model, status, backend, time.perf_counter() - started)


async def closed_loop(
    gateway: GatewayProcess,
    models: list[str],
    requests: int,
    concurrency: int,
    on_answer: Any = None,
) -> Run:
    """`requests` requests from `concurrency` callers, cycling through `models`."""
    run = Run()
    counter = iter(range(requests))
    base = f"http://{gateway.url}"
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_MS / 1000 + 5)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def caller() -> None:
            for i in counter:
                outcome = await send(session, base, models[i % len(models)], i)
                run.outcomes.append(outcome)
                if on_answer is not None:
                    on_answer(len(run.outcomes))

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        run.duration_s = time.perf_counter() - started
    return run


def ms(latencies_s: list[float]) -> tuple[float, float]:
    if not latencies_s:
        return float("nan"), float("nan")
    p50, p99 = np.percentile(np.asarray(latencies_s) * 1000.0, [50, 99])
    return round(float(p50), 3), round(float(p99), 3)


def breaker_state(gateway: GatewayProcess, backend: str) -> str:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{gateway.url}/admin/config", timeout=10) as response:
        return json.loads(response.read())["backends"][backend]["state"]


# -- the scenarios ------------------------------------------------------------------------


def run_fault(
    fault: str, gateway: GatewayProcess, a: VendorA, requests: int, concurrency: int
) -> dict[str, Any]:
    a.healthy()
    on_answer = None
    if fault in ("500", "timeout", "429"):
        control_fake_vendor(a.url, error_rate=1.0, error_kind=fault)
    elif fault == "refused":
        a.process.stop()
    elif fault == "killed":
        kill_after = requests // 3

        def on_answer(answered: int) -> None:
            if answered == kill_after and a.alive:
                a.kill()

    run = asyncio.run(closed_loop(gateway, [f"chain-{fault}"], requests, concurrency, on_answer))
    a_calls = a.calls()
    ok = [o for o in run.outcomes if o.status == 200]
    p50, p99 = ms([o.latency_s for o in run.outcomes])
    statuses: dict[str, int] = {}
    for o in run.outcomes:
        statuses[str(o.status)] = statuses.get(str(o.status), 0) + 1
    return {
        "fault": fault,
        "requests": len(run.outcomes),
        "success_rate": len(ok) / len(run.outcomes),
        "p50_ms": p50,
        "p99_ms": p99,
        "share_secondary": sum(o.backend == "b" for o in ok) / len(ok) if ok else 0.0,
        "primary_calls": a_calls,  # None: A was not running at the end to ask
        "breaker_end": breaker_state(gateway, f"a-{fault}"),
        "statuses": statuses,
        "duration_s": round(run.duration_s, 3),
    }


def run_hop(gateway: GatewayProcess, a: VendorA, requests: int, concurrency: int) -> dict[str, Any]:
    a.healthy()
    control_fake_vendor(a.url, error_rate=1.0, error_kind="500")
    # Warm both paths' connections first, then interleave the two models.
    asyncio.run(closed_loop(gateway, ["hop", "direct-b"], 4 * concurrency, concurrency))
    run = asyncio.run(closed_loop(gateway, ["hop", "direct-b"], 2 * requests, concurrency))
    hop = [o for o in run.outcomes if o.model == "hop"]
    direct = [o for o in run.outcomes if o.model == "direct-b"]
    assert all(o.status == 200 and o.backend == "b" for o in hop + direct), {
        (o.model, o.status, o.backend) for o in hop + direct
    }
    hop_p50, hop_p99 = ms([o.latency_s for o in hop])
    direct_p50, direct_p99 = ms([o.latency_s for o in direct])
    return {
        "requests_each": len(hop),
        "hop_p50_ms": hop_p50,
        "hop_p99_ms": hop_p99,
        "direct_p50_ms": direct_p50,
        "direct_p99_ms": direct_p99,
        "added_p50_ms": round(hop_p50 - direct_p50, 3),
        "added_p99_ms": round(hop_p99 - direct_p99, 3),
    }


def print_report(faults: list[dict[str, Any]], hop: dict[str, Any]) -> None:
    rows = [
        [
            f["fault"],
            f"{f['success_rate']:.1%}",
            f["p50_ms"],
            f["p99_ms"],
            f"{f['share_secondary']:.1%}",
            f["primary_calls"],
            f["breaker_end"],
        ]
        for f in faults
    ]
    print(
        report.table(
            [
                "fault on A",
                "success",
                "p50 ms",
                "p99 ms",
                "answered by B",
                "calls to A",
                "breaker at end",
            ],
            rows,
        )
    )
    print()
    print(
        report.table(
            ["fallback hop", "p50 ms", "p99 ms"],
            [
                ["A fails fast (500) -> B", hop["hop_p50_ms"], hop["hop_p99_ms"]],
                ["straight to B", hop["direct_p50_ms"], hop["direct_p99_ms"]],
                ["added by the hop", hop["added_p50_ms"], hop["added_p99_ms"]],
            ],
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200, help="per fault (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=8, help="callers (default %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    os.environ[KEY_ENV] = "fake-key"  # the fake vendors' key, for the gateway to send
    a = VendorA()
    b = start_fake_vendor()
    gateway = None
    try:
        with tempfile.TemporaryDirectory(prefix="faults-") as workdir:
            gateway = start_gateway(gateway_config(a.url, b.url), Path(workdir))
            faults = []
            for fault in FAULTS:
                faults.append(run_fault(fault, gateway, a, args.requests, args.concurrency))
                print(f"# {fault}: done", file=sys.stderr, flush=True)
            hop = run_hop(gateway, a, args.requests, args.concurrency)
    finally:
        if gateway is not None:
            gateway.stop()
        b.stop()
        a.process.stop()

    result = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {
            "requests": args.requests,
            "concurrency": args.concurrency,
            "primary_timeout_ms": PRIMARY_TIMEOUT_MS,
            "breaker": BREAKER,
        },
        "faults": faults,
        "fallback_hop": hop,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"faults-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print_report(faults, hop)
    print(f"# results: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
