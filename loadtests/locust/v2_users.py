"""KServe v2 infer over HTTP: JSON tensors and binary tensors, on the digits model."""

from __future__ import annotations

from collections.abc import Iterator

from locust import tag, task
from locust.contrib.fasthttp import ResponseContextManager
from locust.env import Environment

from loadtests.locust import checks, data
from loadtests.locust.entries import V2_BINARY, V2_JSON, entry_name
from loadtests.locust.http_base import GatewayHttpUser, answer_failure
from loadtests.locust.options import Settings


class _V2User(GatewayHttpUser):
    abstract = True
    binary = False

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        model = self.settings.digits_model
        self.path = f"/v2/models/{model}/infer"
        self.entry = entry_name(V2_BINARY if self.binary else V2_JSON, model)
        requests = data.v2_requests(self.binary, self.settings.digits_batch)
        self.requests: Iterator[data.TensorRequest] = data.cycle_from(requests, self.number)

    @classmethod
    def prepare(cls, settings: Settings) -> None:
        data.v2_requests(cls.binary, settings.digits_batch)

    def infer(self) -> None:
        request = next(self.requests)
        with self.client.post(
            self.path,
            data=request.body,
            headers=self.headers(request.headers),
            name=self.entry,
            catch_response=True,
        ) as response:
            reason = answer_failure(response) or self.check(response, request.rows)
            if reason:
                response.failure(reason)

    def check(self, response: ResponseContextManager, rows: int) -> str | None:
        raise NotImplementedError


class V2JsonUser(_V2User):
    """JSON tensors: the request and the answer carry the numbers as JSON."""

    @tag(V2_JSON)
    @task
    def infer_json(self) -> None:
        self.infer()

    def check(self, response: ResponseContextManager, rows: int) -> str | None:
        return checks.v2_json(response.content, data.DIGITS_OUTPUT, rows)


class V2BinaryUser(_V2User):
    """The binary tensor extension: raw FP32 after a JSON header, both ways."""

    binary = True

    @tag(V2_BINARY)
    @task
    def infer_binary(self) -> None:
        self.infer()

    def check(self, response: ResponseContextManager, rows: int) -> str | None:
        value = response.headers.get(data.BINARY_HEADER) if response.headers else None
        header_length = value[0] if isinstance(value, list) else value  # a repeated header: a list
        return checks.v2_binary(response.content, header_length, data.DIGITS_OUTPUT, rows)
