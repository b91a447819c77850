"""A cache hit answers the very bytes of the answer it repeats, on both tiers.

Two gateway processes share one real redis-server and a real fake vendor; a
model of Identity graphs serves every v2 datatype. The first request computes
the answer (checked against what was sent), the second is a hit whose body
must equal the first byte for byte: from the in-process tier when it is asked
of the same process, from Redis when it is asked of the other one (which has
never seen it), for tensors (v2 JSON and binary), chat and embeddings (float
and base64). Which tier answered is read from the replicas' own metrics.

Then the codecs that turn answers into the bytes Redis holds
(routing/cache_codecs.py), in-process: values of every datatype (not just
shapes and types) survive the round trip.
"""

from __future__ import annotations

import base64
import json
import math
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gateway.core.datatypes import NUMPY_DTYPES, datatype_of
from gateway.core.llm import ChatResult, EmbeddingResult, Usage
from gateway.routing.cache_codecs import CHAT, EMBEDDINGS, TENSORS
from testkit.fake_vendor import embedding_vector, fake_vendor_stats, start_fake_vendor
from tests.api.http_helpers import Reply, post
from tests.conftest import GatewayProcess, start_gateway
from tests.metrics_reader import scrape
from tests.onnx_models import ONNX_ELEMENT, identity_model
from tests.redis_server import RedisServer

VENDOR_KEY_ENV = "CACHE_BYTES_VENDOR_KEY"
SIGNING_KEY_ENV = "CACHE_BYTES_SIGNING_KEY"
DATATYPES = sorted(ONNX_ELEMENT)
CHAT_PATH = "/v1/chat/completions"
EMBEDDINGS_PATH = "/v1/embeddings"


def config(identity: Path, vendor_url: str, redis_url: str) -> dict[str, Any]:
    def spec(side: str, dt: str) -> dict[str, Any]:
        return {"name": f"{side}_{dt}", "datatype": dt, "shape": [-1, 3]}

    cache = {"ttl_s": 600}
    return {
        # A generous Redis budget: a Redis call skipped on a busy machine would be
        # a miss where the test expects a Redis hit.
        "redis": {"url": redis_url, "timeout_ms": 2000},
        "cache": {"signing_key_env": SIGNING_KEY_ENV},
        "backends": {
            "identity": {
                "type": "onnx",
                "path": str(identity),
                "max_concurrency": 1,
                "intra_op_threads": 1,
                "timeout_ms": 10000,
            },
            "vendor": {
                "type": "openai",
                "base_url": f"http://{vendor_url}/v1",
                "api_key_env": VENDOR_KEY_ENV,
                "model": "fake",
                "timeout_ms": 10000,
                "circuit_breaker": {"enabled": False},
            },
        },
        "models": {
            "typed": {
                "signature": {
                    "inputs": [spec("in", dt) for dt in DATATYPES],
                    "outputs": [spec("out", dt) for dt in DATATYPES],
                },
                "route": {"backends": ["identity"]},
                "cache": cache,
            },
            "chat": {"kind": "chat", "route": {"backends": ["vendor"]}, "cache": cache},
            "embed": {"kind": "embeddings", "route": {"backends": ["vendor"]}, "cache": cache},
        },
    }


@dataclass
class Replicas:
    a: GatewayProcess
    b: GatewayProcess
    vendor: GatewayProcess


@pytest.fixture(scope="module")
def replicas(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replicas]:
    workdir = tmp_path_factory.mktemp("cache-bytes")
    identity = identity_model(workdir / "identity.onnx", DATATYPES)
    vendor = start_fake_vendor(api_key="vendor-key-for-cache-bytes")
    env = {VENDOR_KEY_ENV: "vendor-key-for-cache-bytes", SIGNING_KEY_ENV: "cache-bytes-secret"}
    started: list[GatewayProcess] = []
    try:
        for name in ("a", "b"):
            started.append(
                start_gateway(
                    config(identity, vendor.url, redis_server.url), workdir / name, env=env
                )
            )
        yield Replicas(started[0], started[1], vendor)
        alive = [g.process.poll() is None for g in started]
        assert all(alive), "a replica died during the tests"
        for g in started:
            assert "internal error" not in g.logs(), g.logs()
    finally:
        for g in started:
            g.stop()
        vendor.stop()


# -- requests, each with a unique input, and how to check the first answer ---------


@dataclass
class Request:
    model: str
    path: str
    body: bytes
    headers: dict[str, str]
    check: Callable[[Reply], None]  # the answer is the right one (not only a repeatable one)


def sample(datatype: str, rng: np.random.Generator, tag: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.array(
            [[tag.encode(), b"", "caf\u00e9".encode()], [b"x" * 40, b"y", tag.encode()]]
        )
    if datatype == "BOOL":
        return rng.integers(0, 2, size=(2, 3)).astype(bool)
    dtype = NUMPY_DTYPES[datatype]
    if datatype.startswith("FP"):
        return (rng.standard_normal((2, 3)) * 100).astype(dtype)
    info = np.iinfo(dtype)
    # Random values of the whole range, and the extremes of the type.
    drawn = rng.integers(info.min, info.max, size=3, dtype=dtype, endpoint=True)
    return np.array([drawn, [info.min, info.max, 1]], dtype=dtype)


def tensor_request(binary: bool) -> Request:
    tag = uuid.uuid4().hex
    rng = np.random.default_rng(int(tag, 16))
    sent = {dt: sample(dt, rng, tag) for dt in DATATYPES}
    inputs = []
    for dt, array in sent.items():
        tensor = httpclient.InferInput(f"in_{dt}", list(array.shape), dt)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput(f"out_{dt}", binary_data=binary) for dt in DATATYPES]
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs
    )
    headers = {"content-type": "application/json"}
    if json_size is not None:
        headers = {
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(json_size),
        }

    def check(reply: Reply) -> None:
        length = reply.headers.get("inference-header-content-length")
        result = httpclient.InferenceServerClient.parse_response_body(
            reply.body, header_length=None if length is None else int(length)
        )
        for dt, array in sent.items():
            got = result.as_numpy(f"out_{dt}")
            assert result.get_output(f"out_{dt}")["datatype"] == dt
            if dt == "BYTES":  # tritonclient gives JSON BYTES back as str
                got = np.array([v if isinstance(v, bytes) else v.encode() for v in got.flat])
                got = got.reshape(array.shape)
            else:
                assert got.dtype == array.dtype, dt
            np.testing.assert_array_equal(got, array, err_msg=dt)

    data = body if isinstance(body, bytes) else body.encode()
    return Request("typed", "/v2/models/typed/infer", data, headers, check)


def chat_request() -> Request:
    text = f"say {uuid.uuid4().hex} again"
    body = {
        "model": "chat",
        "messages": [{"role": "user", "content": text}],
        "temperature": 0,  # deterministic: cached
        "max_tokens": 50,
    }

    def check(reply: Reply) -> None:
        content = json.loads(reply.body)["choices"][0]["message"]["content"]
        assert content.startswith(f"echo: {text}")

    return Request("chat", CHAT_PATH, json.dumps(body).encode(), JSON_HEADERS, check)


def embeddings_request(encoding: str) -> Request:
    texts = [f"embed {uuid.uuid4().hex}", "a second, shorter text"]
    body = {"model": "embed", "input": texts, "encoding_format": encoding}

    def check(reply: Reply) -> None:
        data = json.loads(reply.body)["data"]
        for item, text in zip(data, texts, strict=True):
            raw = item["embedding"]
            if encoding == "base64":
                vector = np.frombuffer(base64.b64decode(raw), dtype="<f4")
            else:
                vector = np.array(raw, dtype=np.float32)
            np.testing.assert_array_equal(vector, embedding_vector(text, len(vector)))

    return Request("embed", EMBEDDINGS_PATH, json.dumps(body).encode(), JSON_HEADERS, check)


JSON_HEADERS = {"content-type": "application/json"}
REQUESTS: dict[str, Callable[[], Request]] = {
    "tensors_json": lambda: tensor_request(binary=False),
    "tensors_binary": lambda: tensor_request(binary=True),
    "chat": chat_request,
    "embeddings_float": lambda: embeddings_request("float"),
    "embeddings_base64": lambda: embeddings_request("base64"),
}


def send(gateway: GatewayProcess, request: Request) -> Reply:
    reply = post(gateway.port, request.path, request.body, request.headers)
    assert reply.status == 200, reply.body
    return reply


def cache_lookups(gateway: GatewayProcess, model: str) -> dict[tuple[str, str], float]:
    """{(tier, result): count} of the model's cache lookups on one replica."""
    counts: dict[tuple[str, str], float] = {}
    for (name, labels), value in scrape(gateway.port).items():
        found = dict(labels)
        if name == "gateway_cache_requests_total" and found.get("model") == model:
            counts[(found["tier"], found["result"])] = value
    return counts


def delta(after: dict[Any, float], before: dict[Any, float]) -> dict[Any, float]:
    changed = {k: v - before.get(k, 0.0) for k, v in after.items()}
    return {k: v for k, v in changed.items() if v}


def vendor_calls(replicas: Replicas) -> float:
    return fake_vendor_stats(replicas.vendor.url)["total"]


def assert_same_answer(hit: Reply, first: Reply) -> None:
    assert hit.headers["x-gateway-cache"] == "hit"
    assert hit.body == first.body  # byte for byte
    assert hit.headers.get("inference-header-content-length") == first.headers.get(
        "inference-header-content-length"
    )
    assert hit.headers.get("content-type") == first.headers.get("content-type")


@pytest.mark.parametrize("kind", list(REQUESTS))
def test_a_local_hit_answers_the_bytes_of_the_first_answer(replicas: Replicas, kind: str) -> None:
    request = REQUESTS[kind]()
    a = replicas.a
    lookups = cache_lookups(a, request.model)
    calls = vendor_calls(replicas)
    first = send(a, request)
    assert first.headers["x-gateway-cache"] == "miss"
    request.check(first)
    second = send(a, request)
    assert_same_answer(second, first)
    # The first looked in both tiers; the second was answered by this process's own.
    assert delta(cache_lookups(a, request.model), lookups) == {
        ("local", "miss"): 1,
        ("redis", "miss"): 1,
        ("local", "hit"): 1,
    }
    assert vendor_calls(replicas) - calls == (0 if kind.startswith("tensors") else 1)


@pytest.mark.parametrize("kind", list(REQUESTS))
def test_a_redis_hit_on_another_replica_answers_the_bytes_of_the_first_answer(
    replicas: Replicas, kind: str
) -> None:
    request = REQUESTS[kind]()
    a, b = replicas.a, replicas.b
    lookups_b = cache_lookups(b, request.model)
    calls = vendor_calls(replicas)
    first = send(a, request)
    assert first.headers["x-gateway-cache"] == "miss"
    request.check(first)
    from_redis = send(b, request)  # B never saw this request: only Redis has it
    assert_same_answer(from_redis, first)
    # B keeps what it read from Redis: its next answer comes from its own tier.
    from_local = send(b, request)
    assert_same_answer(from_local, first)
    assert delta(cache_lookups(b, request.model), lookups_b) == {
        ("local", "miss"): 1,
        ("redis", "hit"): 1,
        ("local", "hit"): 1,
    }
    assert vendor_calls(replicas) - calls == (0 if kind.startswith("tensors") else 1)


# -- the codecs, in-process ---------------------------------------------------------

SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


def arrays_of(datatype: str) -> st.SearchStrategy[np.ndarray]:
    if datatype == "BYTES":

        def filled(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
            size = math.prod(shape)

            def build(items: list[bytes]) -> np.ndarray:
                array = np.empty(size, dtype=object)
                array[:] = items
                return array.reshape(shape)

            return st.lists(st.binary(max_size=16), min_size=size, max_size=size).map(build)

        return SHAPES.flatmap(filled)
    return hnp.arrays(NUMPY_DTYPES[datatype], SHAPES)


def assert_same_tensor(got: np.ndarray, sent: np.ndarray) -> None:
    assert datatype_of(got) == datatype_of(sent)
    assert got.shape == sent.shape
    if datatype_of(sent) == "BYTES":
        assert [bytes(v) for v in got.reshape(-1)] == [bytes(v) for v in sent.reshape(-1)]
    else:
        # Bytes, not ==: NaN payloads, -0.0 and every bit of every value must survive.
        wire = NUMPY_DTYPES[datatype_of(sent)]
        assert np.ascontiguousarray(got, dtype=wire).tobytes() == (
            np.ascontiguousarray(sent, dtype=wire).tobytes()
        )


# Deterministic and without an example database, like the suite's other property tests.
CODEC_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize("datatype", DATATYPES)
@CODEC_SETTINGS
@given(data=st.data())
def test_tensor_values_of_every_datatype_survive_the_redis_codec(
    datatype: str, data: st.DataObject
) -> None:
    sent = data.draw(arrays_of(datatype), label="tensor")
    decoded = TENSORS.decode(TENSORS.encode({"out": sent}))
    assert list(decoded) == ["out"]
    assert_same_tensor(decoded["out"], sent)


@CODEC_SETTINGS
@given(
    outputs=st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.sampled_from(DATATYPES).flatmap(arrays_of),
        max_size=5,
    )
)
def test_several_outputs_of_mixed_datatypes_survive_the_redis_codec(
    outputs: dict[str, np.ndarray],
) -> None:
    decoded = TENSORS.decode(TENSORS.encode(outputs))
    assert list(decoded) == list(outputs)  # the order of outputs too
    for name, sent in outputs.items():
        assert_same_tensor(decoded[name], sent)


def test_views_of_a_batch_survive_the_redis_codec() -> None:
    # What a batched execution hands each request: slices, and transposed views.
    batch = np.arange(24, dtype=np.float32).reshape(6, 4) * np.float32(1.5) - 7
    for view in (batch[2:5], batch[::2], batch.T, batch[:, 1:3]):
        assert_same_tensor(TENSORS.decode(TENSORS.encode({"y": view}))["y"], view)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
USAGE = st.none() | st.builds(Usage, st.integers(0, 2**31), st.integers(0, 2**31))


@CODEC_SETTINGS
@given(body=st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=6), usage=USAGE)
def test_chat_answers_survive_the_redis_codec(body: dict[str, Any], usage: Usage | None) -> None:
    decoded = CHAT.decode(CHAT.encode(ChatResult(body, usage)))
    assert decoded.body == body
    assert decoded.usage == usage


@CODEC_SETTINGS
@given(
    vectors=hnp.arrays(
        np.dtype("<f4"), hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=6)
    ),
    usage=USAGE,
)
def test_embeddings_survive_the_redis_codec(vectors: np.ndarray, usage: Usage | None) -> None:
    decoded = EMBEDDINGS.decode(EMBEDDINGS.encode(EmbeddingResult(vectors, usage)))
    assert_same_tensor(decoded.vectors, vectors)
    assert decoded.usage == usage
