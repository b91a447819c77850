"""A stand-in OpenTelemetry collector for benchmarks: accepts OTLP/HTTP trace
exports on loopback (`POST /v1/traces`), counts them and throws them away, so a
benchmark with tracing on pays the gateway's real export cost and nothing else.

    python -m loadtests.otlp_sink --port 4318
    GET /stats -> {"exports": n, "bytes": n}
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web

from testkit.aio_serving import serve_until_signalled

READY_LINE = "otlp sink ready"


def build_app() -> web.Application:
    stats = {"exports": 0, "bytes": 0}

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        stats["exports"] += 1
        stats["bytes"] += len(body)
        # An empty ExportTraceServiceResponse: everything accepted.
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def show(request: web.Request) -> web.Response:
        return web.json_response(stats)

    app = web.Application(client_max_size=64 << 20)
    app.add_routes([web.post("/v1/traces", traces), web.get("/stats", show)])
    return app


async def serve(host: str, port: int) -> None:
    await serve_until_signalled(build_app(), host, port, READY_LINE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
