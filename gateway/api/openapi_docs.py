"""The interactive API pages: Swagger UI at `/docs`, ReDoc at `/redoc`, both
over `/openapi.json` (api/openapi.py).

They work offline: gateways often run where no CDN is reachable, and a page
that pulls scripts from one would also let that CDN run code next to the
gateway's origin. The scripts, stylesheet and icon come from the
fastapi-offline package's static/ directory (a runtime dependency), served
by the gateway under `/docs/static/`; the pages name no other host. Only
the files the pages use are served from that directory.
"""

from __future__ import annotations

import html
import importlib.resources
import os
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from gateway.api.openapi import OPENAPI_PATH

DOCS_PATH = "/docs"
REDOC_PATH = "/redoc"
STATIC_PATH = "/docs/static"
# The files the pages use, with the content type each is served with (not
# guessed from the platform's MIME table, which differs across systems).
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
_TITLE = "inference-gateway API"


def static_directory() -> Path:
    """fastapi-offline's static/ directory (Swagger UI 5 and ReDoc)."""
    directory = importlib.resources.files("fastapi_offline") / "static"
    if not isinstance(directory, Path):  # an installed package is a directory of files
        raise RuntimeError(f"fastapi_offline is not installed as files: {directory}")
    return directory


class _Assets(StaticFiles):
    """StaticFiles (ETag, Last-Modified, 304) limited to ASSETS, with their content types."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        if path not in ASSETS:
            raise HTTPException(status_code=404)
        return await super().get_response(path, scope)

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["content-type"] = ASSETS[os.path.basename(full_path)]
        # The files change only with the fastapi-offline package: an hour, then revalidated.
        response.headers["cache-control"] = "public, max-age=3600"
        return response


def swagger_ui_html(root: str = "") -> str:
    """The Swagger UI page; `root` is the ASGI root_path (a proxy's prefix)."""
    static = html.escape(root + STATIC_PATH, quote=True)
    spec = html.escape(root + OPENAPI_PATH, quote=True)
    # validatorUrl: null, or Swagger UI shows a badge fetched from swagger.io.
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_TITLE}</title>
<link rel="icon" type="image/png" href="{static}/favicon.png">
<link rel="stylesheet" href="{static}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{static}/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{
  url: "{spec}",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  layout: "BaseLayout",
}});
</script>
</body>
</html>
"""


def redoc_html(root: str = "") -> str:
    """The ReDoc page (no web fonts: ReDoc falls back to the system's)."""
    static = html.escape(root + STATIC_PATH, quote=True)
    spec = html.escape(root + OPENAPI_PATH, quote=True)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_TITLE}</title>
<link rel="icon" type="image/png" href="{static}/favicon.png">
<style>body {{ margin: 0; padding: 0; }}</style>
</head>
<body>
<redoc spec-url="{spec}"></redoc>
<script src="{static}/redoc.standalone.js"></script>
</body>
</html>
"""


async def _swagger_ui(request: Request) -> Response:
    return HTMLResponse(swagger_ui_html(request.scope.get("root_path", "")))


async def _redoc(request: Request) -> Response:
    return HTMLResponse(redoc_html(request.scope.get("root_path", "")))


def docs_routes() -> list[BaseRoute]:
    """The pages and their assets. Not API operations: left out of /openapi.json."""
    return [
        Route(DOCS_PATH, _swagger_ui, methods=["GET"], include_in_schema=False),
        Route(REDOC_PATH, _redoc, methods=["GET"], include_in_schema=False),
        Mount(STATIC_PATH, app=_Assets(directory=static_directory()), name="docs-static"),
    ]
