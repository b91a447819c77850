"""The OpenAPI document (`/openapi.json`, gateway/api/openapi.py) and the offline
docs pages (`/docs`, `/redoc`, gateway/api/openapi_docs.py).

In process, over the app `gateway serve` builds (gateway.app.create_app on a
real runtime): the document covers every operation in the app's route table
and nothing else, names the configured models by kind, follows a reload and
shows a tenant only its own models. Against a real gateway process (the
default config's models plus a chat model on the fake vendor): the document
is valid OpenAPI 3.1, its infer examples are answered 200, the pages name
only assets the gateway serves itself, and schemathesis (its CLI, as an
operator would run it) finds no server error and no answer that breaks the
document.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from gateway.api.http_app import InferFastPath, infer_path_params
from gateway.api.openapi import (
    INFER_PATHS,
    OPENAPI_VERSION,
    build_document,
    documented_operations,
    served_operations,
)
from gateway.api.openapi_docs import ASSETS, STATIC_PATH
from gateway.app import create_app
from gateway.config.loader import parse_config
from gateway.runtime import Runtime, build_runtime
from testkit.fake_vendor import start_fake_vendor
from tests.conftest import ROOT, GatewayProcess, start_gateway

DEFAULT_CONFIG = ROOT / "config" / "gateway.yaml"
VENDOR_KEY_ENV = "OPENAPI_TEST_VENDOR_KEY"
VENDOR_KEY = "fake-key"  # the fake vendor's default
# The admin routes that change the gateway under test: left out of the schemathesis run.
MUTATING_ADMIN = r"^/admin/(reload|rollback|backends/|models/)"


def config_with_chat(vendor_url: str, api_key_env: str | None = None) -> dict[str, Any]:
    """The default config (what `make run` serves) plus a chat model on a vendor."""
    config: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG.read_text())
    vendor: dict[str, Any] = {
        "type": "openai",
        "base_url": f"http://{vendor_url}/v1",
        "model": "fake-chat",
        "retries": {"max": 0},
        "circuit_breaker": {"enabled": False},
    }
    if api_key_env is not None:
        vendor["api_key_env"] = api_key_env
    config["backends"]["vendor"] = vendor
    config["models"]["chat"] = {"kind": "chat", "route": {"backends": ["vendor"]}}
    return config


def default_models(kind: str | None = None) -> list[str]:
    """The default config's models (of `kind`), sorted: what its document lists."""
    models: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG.read_text())["models"]
    return sorted(n for n, m in models.items() if kind is None or m.get("kind", "tensor") == kind)


def runtime_of(config: dict[str, Any]) -> Runtime:
    return build_runtime(parse_config(yaml.safe_dump(config)))


def get_json(client: TestClient, path: str, **headers: str) -> Any:
    response = client.get(path, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def served_by(app: InferFastPath) -> set[tuple[str, str]]:
    """What the app serves: FastAPI's route table and the raw-ASGI POST paths."""
    posts = [*INFER_PATHS, *(app.openai.post_routes if app.openai else ())]
    return served_operations(app.app.router.routes, posts)


def enum_of(parameter_or_schema: dict[str, Any]) -> list[str] | None:
    """The names an enum lists, sorted (the order is the config's); None without one."""
    schema = parameter_or_schema.get("schema", parameter_or_schema)
    return sorted(schema["enum"]) if "enum" in schema else None


def path_parameter(document: dict[str, Any], path: str, method: str, name: str) -> Any:
    [parameter] = [
        p for p in document["paths"][path][method]["parameters"] if p.get("name") == name
    ]
    return parameter


def body_model_enum(document: dict[str, Any], path: str) -> list[str] | None:
    schema = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    [override] = [s for s in schema["schema"]["allOf"] if "$ref" not in s]
    return enum_of(override["properties"]["model"])


# -- in process: the document and the route table --------------------------------------------


@pytest.fixture(scope="module")
def runtime() -> Iterator[Runtime]:
    # A vendor that is never called (nothing listens on port 9): chat is only named.
    built = runtime_of(config_with_chat("127.0.0.1:9"))
    yield built
    asyncio.run(built.close())


@pytest.fixture(scope="module")
def app(runtime: Runtime) -> InferFastPath:
    return create_app(runtime)


@pytest.fixture(scope="module")
def client(app: InferFastPath) -> TestClient:
    return TestClient(app)


def test_the_infer_paths_are_those_the_fast_path_serves() -> None:
    filled = [p.replace("{model}", "m").replace("{version}", "7") for p in INFER_PATHS]
    assert [infer_path_params(p) for p in filled] == [
        {"model": "m"},
        {"model": "m", "version": "7"},
    ]


def test_every_operation_the_app_serves_is_documented(app: InferFastPath) -> None:
    # When a route is added (or renamed) without its description in api/openapi_paths.py, this fails.
    served = served_by(app)
    everything = documented_operations(build_document([]))
    assert served - everything == set(), "served but not in gateway/api/openapi_paths.py"
    # The raw-ASGI paths and FastAPI's routes are both there.
    assert {("POST", INFER_PATHS[0]), ("POST", "/v1/embeddings"), ("GET", "/v2")} <= served


def test_an_undocumented_route_is_noticed() -> None:
    async def endpoint(request: Request) -> Response:
        return Response()

    routes = [
        Route("/v2/brand-new", endpoint, methods=["GET"]),
        Route("/v2", endpoint, methods=["GET"]),
        Route("/hidden", endpoint, methods=["GET"], include_in_schema=False),
    ]
    served = served_operations(routes, ["/v2/raw-new"])
    assert served - documented_operations(build_document([])) == {
        ("GET", "/v2/brand-new"),
        ("POST", "/v2/raw-new"),
    }


def test_the_served_document_holds_exactly_the_served_operations(
    app: InferFastPath, client: TestClient
) -> None:
    document = get_json(client, "/openapi.json")
    assert document["openapi"] == OPENAPI_VERSION
    assert documented_operations(document) == served_by(app)
    # The pages and their assets are not API operations.
    assert not [p for p in document["paths"] if p.startswith(("/docs", "/redoc"))]


def test_served_operations_leave_out_head_pages_and_mounts(app: InferFastPath) -> None:
    served = served_by(app)
    assert ("GET", "/openapi.json") in served
    assert not [(m, p) for m, p in served if m == "HEAD" or p.startswith(("/docs", "/redoc"))]


def test_model_parameters_name_the_configured_models_of_the_right_kind(
    client: TestClient,
) -> None:
    document = get_json(client, "/openapi.json")
    every = sorted([*default_models(), "chat"])
    assert {"chat", "digits", "embedder", "embeddings"} <= set(every)
    assert enum_of(path_parameter(document, "/v2/models/{model}", "get", "model")) == every
    tensor = default_models("tensor")
    assert {"digits", "embedder"} <= set(tensor) and "embeddings" not in tensor
    for path in INFER_PATHS:  # infer serves tensor models only
        assert enum_of(path_parameter(document, path, "post", "model")) == tensor
    assert enum_of(
        path_parameter(document, "/v2/models/{model}/versions/{version}", "get", "version")
    ) == ["1"]
    assert body_model_enum(document, "/v1/chat/completions") == ["chat"]
    assert body_model_enum(document, "/v1/embeddings") == ["embeddings"]


def test_each_tensor_model_gets_an_infer_example_from_its_signature(client: TestClient) -> None:
    document = get_json(client, "/openapi.json")
    body = document["paths"][INFER_PATHS[0]]["post"]["requestBody"]["content"]
    examples = body["application/json"]["examples"]
    assert sorted(examples) == default_models("tensor")
    [pixels] = examples["digits"]["value"]["inputs"]
    assert (pixels["name"], pixels["datatype"], pixels["shape"]) == ("pixels", "FP32", [1, 64])
    assert len(pixels["data"]) == 64
    [text] = examples["embedder"]["value"]["inputs"]
    assert (text["datatype"], text["shape"], text["data"]) == ("BYTES", [1], ["text 0"])
    assert "application/octet-stream" in body  # the binary tensor extension


def test_keys_are_optional_without_tenants_and_an_admin_key(client: TestClient) -> None:
    document = get_json(client, "/openapi.json")
    infer = document["paths"][INFER_PATHS[0]]["post"]["security"]
    assert infer == [{"tenantBearer": []}, {"tenantApiKey": []}, {}]
    admin = document["paths"]["/admin/config"]["get"]["security"]
    assert admin == [{"adminBearer": []}, {"adminApiKey": []}, {}]
    assert "security" not in document["paths"]["/v2/models/{model}"]["get"]  # public


def test_the_document_follows_a_reload() -> None:
    running = runtime_of(config_with_chat("127.0.0.1:9"))
    config = config_with_chat("127.0.0.1:9")
    config["models"]["digits-v2"] = config["models"].pop("digits")
    reloaded = runtime_of(config)
    try:
        client = TestClient(create_app(running))
        before = get_json(client, "/openapi.json")
        every = sorted([*default_models(), "chat"])
        assert enum_of(path_parameter(before, "/v2/models/{model}", "get", "model")) == every
        # What a reload does (reload.py): the running service takes the new one's contents.
        running.service.replace(reloaded.service)
        after = get_json(client, "/openapi.json")
        renamed = sorted([*(m for m in every if m != "digits"), "digits-v2"])
        assert enum_of(path_parameter(after, "/v2/models/{model}", "get", "model")) == renamed
    finally:
        asyncio.run(running.close())
        asyncio.run(reloaded.close())


ADMIN_ENV, ADMIN_KEY = "OPENAPI_TEST_ADMIN_KEY", "admin-key-0123456789"
SEARCH_ENV, SEARCH_KEY = "OPENAPI_TEST_SEARCH_KEY", "search-key-0123456789"


def test_with_tenants_a_caller_sees_only_the_models_its_key_may_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ADMIN_ENV, ADMIN_KEY)
    monkeypatch.setenv(SEARCH_ENV, SEARCH_KEY)
    config = config_with_chat("127.0.0.1:9")
    config["server"]["admin_key_env"] = ADMIN_ENV
    config["tenants"] = [{"name": "search", "key_env": SEARCH_ENV, "models": ["embeddings"]}]
    runtime = runtime_of(config)
    try:
        client = TestClient(create_app(runtime))

        def model_names(**headers: str) -> tuple[Any, Any]:
            document = get_json(client, "/openapi.json", **headers)
            metadata = path_parameter(document, "/v2/models/{model}", "get", "model")
            return enum_of(metadata), body_model_enum(document, "/v1/embeddings")

        # No key, a wrong one, the admin key: the document, but no model names.
        for headers in ({}, {"authorization": "Bearer nope"}, {"x-api-key": ADMIN_KEY}):
            assert model_names(**headers) == (None, None), headers
        assert model_names(authorization=f"Bearer {SEARCH_KEY}") == (
            ["embeddings"],
            ["embeddings"],
        )
        assert model_names(**{"x-api-key": SEARCH_KEY}) == (["embeddings"], ["embeddings"])
        document = get_json(client, "/openapi.json")
        # Keys are required now: no `{}` alternative.
        assert document["paths"][INFER_PATHS[0]]["post"]["security"] == [
            {"tenantBearer": []},
            {"tenantApiKey": []},
        ]
        assert document["paths"]["/admin/config"]["get"]["security"] == [
            {"adminBearer": []},
            {"adminApiKey": []},
        ]
    finally:
        asyncio.run(runtime.close())


def test_schemathesis_refuses_a_broken_document() -> None:
    """The validity check below can fail: an operation without responses is refused."""
    document = build_document([])
    document["paths"]["/v2"]["get"]["responses"] = "none"
    with pytest.raises(Exception, match="responses"):
        schemathesis.openapi.from_dict(document).validate()


# -- a real gateway ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    vendor = start_fake_vendor()
    try:
        config = config_with_chat(vendor.url, api_key_env=VENDOR_KEY_ENV)
        process = start_gateway(
            config, tmp_path_factory.mktemp("openapi"), env={VENDOR_KEY_ENV: VENDOR_KEY}
        )
        yield process
        alive = process.process.poll() is None
        process.stop()
        assert alive, f"the gateway died during the tests:\n{process.logs()}"
    finally:
        vendor.stop()


# Loopback only: an HTTP(S)_PROXY in the environment must not capture these calls.
_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(gateway: GatewayProcess, path: str, body: bytes | None = None) -> tuple[int, str, bytes]:
    """(status, content type, body)."""
    request = urllib.request.Request(
        f"http://{gateway.url}{path}", data=body, headers={"content-type": "application/json"}
    )
    try:
        with _LOOPBACK.open(request, timeout=30) as response:
            return response.status, response.headers["content-type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["content-type"], error.read()


def test_the_served_document_is_valid_openapi_3_1(gateway: GatewayProcess) -> None:
    status, content_type, body = fetch(gateway, "/openapi.json")
    assert (status, content_type) == (200, "application/json")
    assert b"://" not in body  # the pages render it: it names no other host either
    document = json.loads(body)
    assert document["openapi"] == "3.1.0"
    schema = schemathesis.openapi.from_dict(document)
    schema.validate()  # against the OpenAPI 3.1 schema; raises on a problem
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len(documented_operations(document))


def test_every_infer_example_is_answered(gateway: GatewayProcess) -> None:
    document = json.loads(fetch(gateway, "/openapi.json")[2])
    body = document["paths"][INFER_PATHS[0]]["post"]["requestBody"]["content"]
    examples = body["application/json"]["examples"]
    for model, example in examples.items():
        payload = json.dumps(example["value"]).encode()
        status, _, answer = fetch(gateway, f"/v2/models/{model}/infer", payload)
        assert status == 200, (model, answer)
    for path, ok in (("/v1/embeddings", "texts"), ("/v1/chat/completions", "whole")):
        content = document["paths"][path]["post"]["requestBody"]["content"]
        example = content["application/json"]["examples"][ok]["value"]
        status, _, answer = fetch(gateway, path, json.dumps(example).encode())
        assert status == 200, (path, answer)


class _Links(HTMLParser):
    """Every URL a page makes the browser load: src and href attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.urls.append(value)


CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_only_assets_the_gateway_serves(
    gateway: GatewayProcess, page: str
) -> None:
    status, content_type, body = fetch(gateway, page)
    assert (status, content_type) == (200, "text/html; charset=utf-8")
    html = body.decode()
    # Nothing from another host: no absolute or protocol-relative URL anywhere.
    assert "http://" not in html and "https://" not in html and '"//' not in html
    links = _Links()
    links.feed(html)
    assets = [url for url in links.urls if url.startswith(STATIC_PATH + "/")]
    assert links.urls and assets == links.urls, links.urls
    assert '"/openapi.json"' in html  # the document the page renders, from the gateway too
    for url in assets:
        status, content_type, content = fetch(gateway, url)
        expected = CONTENT_TYPES[Path(url).suffix]
        assert status == 200 and content_type.startswith(expected), (url, content_type)
        assert content, url
    if page == "/docs":
        bundle = fetch(gateway, f"{STATIC_PATH}/swagger-ui-bundle.js")[2]
        assert b"SwaggerUIBundle" in bundle  # the real Swagger UI, not an error page


def test_only_the_pages_assets_are_served_from_the_static_directory(
    gateway: GatewayProcess,
) -> None:
    assert sorted(ASSETS) == [
        "favicon.png",
        "redoc.standalone.js",
        "swagger-ui-bundle.js",
        "swagger-ui.css",
    ]
    for path in ("__init__.py", "../core.py", "", "missing.js"):
        status, content_type, body = fetch(gateway, f"{STATIC_PATH}/{path}")
        assert (status, content_type) == (404, "application/json"), path
        assert "error" in json.loads(body)


def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_document(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    # A deadline is a documented answer: x-request-timeout-ms is generated down to
    # 5e-324 ms, which every inference answers 504 (deadline exceeded). Every other
    # 5xx is a failure.
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        '[checks.not_a_server_error]\nexpected-statuses = ["2xx", "3xx", "4xx", "504"]\n'
    )
    checks = [
        "not_a_server_error",
        "status_code_conformance",
        "response_schema_conformance",
        "content_type_conformance",
        "response_headers_conformance",
    ]
    argv = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"http://{gateway.url}/openapi.json",
        "--checks",
        ",".join(checks),
        "--max-examples",
        "25",
        "--generation-deterministic",  # the same cases every run, as the suite's hypothesis tests
        "--exclude-path-regex",
        MUTATING_ADMIN,
        "--request-timeout",
        "20",  # a request that hangs is a failure
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path / "report"),
    ]
    started = time.monotonic()
    # From tmp_path: schemathesis and hypothesis write their caches in the working directory.
    run = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=110)
    elapsed = time.monotonic() - started
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    [report] = (tmp_path / "report").glob("junit-*.xml")
    suite = ET.parse(report).getroot()
    assert (suite.get("failures"), suite.get("errors")) == ("0", "0")
    tested = {case.get("name") for case in suite.iter("testcase")} - {"Stateful tests"}
    document = json.loads(fetch(gateway, "/openapi.json")[2])
    # Schemathesis leaves out the operation that served it the document (it read it).
    expected = {
        f"{method} {path}"
        for method, path in documented_operations(document)
        if not re.match(MUTATING_ADMIN, path) and path != "/openapi.json"
    }
    assert tested == expected
    assert {"POST /v1/chat/completions", "POST /v1/embeddings", f"POST {INFER_PATHS[0]}"} <= tested
    print(f"schemathesis: {len(tested)} operations in {elapsed:.1f}s\n{run.stdout[-600:]}")
