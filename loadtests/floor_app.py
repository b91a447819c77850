"""The FastAPI floor: the cheapest FastAPI service that answers the infer path.

One POST route on the gateway's digits infer path that reads the body and
answers a fixed small JSON, served like the gateway (uvicorn on uvloop +
httptools, access log off). Whatever the gateway costs above this is its own
work; it cannot be faster than FastAPI routing a request it never looks at,
unless it skips FastAPI on that path.

    python -m loadtests.floor_app --port 8123
"""

from __future__ import annotations

import argparse
import asyncio

import uvicorn
from fastapi import FastAPI, Request, Response

READY_LINE = "floor ready"  # printed once the socket listens: the harness waits for it
PATH = "/v2/models/digits/infer"
# Encoded once: serialising a dict per request would measure orjson/json, not the floor.
ANSWER = b'{"model_name":"digits","model_version":"1","outputs":[]}'

app = FastAPI()


@app.post(PATH)
async def infer(request: Request) -> Response:
    await request.body()
    return Response(content=ANSWER, media_type="application/json")


class _Server(uvicorn.Server):
    """Prints READY_LINE once the socket listens, like `gateway serve`."""

    async def startup(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        await super().startup(sockets)
        if self.started:
            print(f"{READY_LINE} on http://{self.config.host}:{self.config.port}", flush=True)


def serve(host: str, port: int) -> None:
    import uvloop

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http="httptools",
        loop="none",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=30,
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_Server(config).serve())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    serve(args.host, args.port)


if __name__ == "__main__":
    main()
