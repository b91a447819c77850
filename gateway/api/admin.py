"""Operations endpoints: Prometheus metrics (admin, SLO and reload endpoints join here)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.observe.metrics import exposition


async def metrics(request: Request) -> Response:
    body, content_type = exposition()
    return Response(body, media_type=content_type)


def admin_routes() -> list[Route]:
    return [Route("/metrics", metrics, methods=["GET"])]
