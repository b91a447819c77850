"""The gateway's ASGI app and fake vendors in the test's own process and event
loop, for tests that must see what the gateway records in memory (spans, log
records): the real app, real backends and real HTTP to the vendors, minus the
uvicorn socket in front of the gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import yaml
from aiohttp import web

from gateway.app import Runtime, build_runtime, create_app
from gateway.config.loader import parse_config
from testkit.fake_vendor import FakeVendorConfig, build_app
from tests.conftest import DIGITS_MODEL

VENDOR_KEY_ENV = "OBSERVE_TEST_VENDOR_KEY"
VENDOR_KEY = "sk-vendor-secret-0123456789"

PIXELS = [float(i % 16) for i in range(64)]
DIGITS_BODY = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": PIXELS}]}


@dataclass
class Vendor:
    """A fake vendor on a loopback port; `received` holds each request's headers."""

    url: str
    received: list[dict[str, str]] = field(default_factory=list)


@asynccontextmanager
async def fake_vendor(**knobs: Any) -> AsyncIterator[Vendor]:
    app = build_app(FakeVendorConfig(api_key=VENDOR_KEY, **knobs))
    vendor = Vendor("")

    async def record(request: web.Request, response: web.StreamResponse) -> None:
        if request.path.startswith("/v1/"):
            vendor.received.append({k.lower(): v for k, v in request.headers.items()})

    app.on_response_prepare.append(record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    vendor.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        yield vendor
    finally:
        await runner.cleanup()


def vendor_backend(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "openai",
        "base_url": url,
        "api_key_env": VENDOR_KEY_ENV,
        "model": "fake-model",
        "timeout_ms": 5000,
        "circuit_breaker": {"enabled": False},
        **extra,
    }


def digits_backend(batching: bool = True) -> dict[str, Any]:
    backend: dict[str, Any] = {
        "type": "onnx",
        "path": str(DIGITS_MODEL),
        "providers": ["cpu"],
        "max_concurrency": 1,
        "intra_op_threads": 1,
        "timeout_ms": 5000,
    }
    if batching:
        backend["batching"] = {"max_batch_size": 8, "max_queue_delay_us": 0}
    return backend


def digits_model(**extra: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "signature": {
            "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
        },
        "route": {"backends": ["digits-cpu"]},
        **extra,
    }


@dataclass
class InProcessGateway:
    runtime: Runtime
    client: httpx.AsyncClient


@asynccontextmanager
async def gateway(config: dict[str, Any]) -> AsyncIterator[InProcessGateway]:
    """The app of `config`; on exit its runtime is closed (audit records flushed)."""
    runtime = build_runtime(parse_config(yaml.safe_dump(config)))
    transport = httpx.ASGITransport(app=create_app(runtime))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield InProcessGateway(runtime, client)
    finally:
        await runtime.close()
