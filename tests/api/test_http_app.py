from typing import Any, cast

import httpx
import pytest
from starlette.testclient import TestClient

from gateway.api.http_app import create_http_app, infer_path_params


@pytest.mark.parametrize(
    "path, params",
    [
        ("/v2/models/digits/infer", {"model": "digits"}),
        ("/v2/models/digits/versions/3/infer", {"model": "digits", "version": "3"}),
        ("/v2/models//infer", None),
        ("/v2/models/digits/versions//infer", None),
        ("/v2/models/digits/ready", None),
        ("/v2/models/a/b/infer", None),
        ("/v1/models/digits/infer", None),
    ],
)
def test_only_infer_paths_take_the_fast_path(path, params) -> None:
    assert infer_path_params(path) == params


# -- wrong methods and unknown paths: one answer, in the surface's error shape ------------------


@pytest.fixture(scope="module")
def client() -> TestClient:
    # No route below reaches the service: a stand-in is enough (and no lifespan runs).
    app = create_http_app(cast(Any, object()), max_request_bytes=1 << 20)
    return TestClient(app, raise_server_exceptions=False)


def _openai_error(response: httpx.Response) -> dict[str, object]:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", None, None)
    return cast(dict[str, object], error)


@pytest.mark.parametrize("path", ["/v2/models/digits/infer", "/v2/models/digits/versions/1/infer"])
def test_a_wrong_method_on_infer_is_405_with_allow_and_the_gateway_headers(
    client: TestClient, path: str
) -> None:
    response = client.get(path, headers={"x-request-id": "r-405"})
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.headers["x-request-id"] == "r-405"
    assert response.json() == {"error": f"method GET not allowed on {path}: use POST"}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings"])
def test_a_wrong_method_on_an_openai_post_route_is_405_in_openai_shape(
    client: TestClient, path: str
) -> None:
    response = client.get(path)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert "x-request-id" in response.headers
    assert _openai_error(response)["message"] == f"method GET not allowed on {path}: use POST"


def test_a_bad_timeout_header_is_refused_before_the_method(client: TestClient) -> None:
    response = client.get("/v2/models/digits/infer", headers={"x-request-timeout-ms": "soon"})
    assert response.status_code == 400
    assert "x-request-timeout-ms" in response.json()["error"]


def test_a_wrong_method_on_a_framework_route_is_the_same_405(client: TestClient) -> None:
    response = client.post("/v2/health/live")
    assert response.status_code == 405
    allow = response.headers["allow"]
    assert "GET" in allow
    assert response.json() == {"error": f"method POST not allowed on /v2/health/live: use {allow}"}
    response = client.post("/v1/models")
    assert response.status_code == 405
    assert _openai_error(response)["message"] == (
        f"method POST not allowed on /v1/models: use {response.headers['allow']}"
    )


def test_an_unknown_path_is_404_in_the_surfaces_shape(client: TestClient) -> None:
    response = client.get("/v2/nowhere")
    assert response.status_code == 404
    assert response.json() == {"error": "no route for /v2/nowhere"}
    response = client.post("/v1/completions")
    assert response.status_code == 404
    assert _openai_error(response)["message"] == "no route for /v1/completions"
