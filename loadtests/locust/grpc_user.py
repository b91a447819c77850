"""KServe v2 infer over gRPC with tritonclient.grpc, timed as locust requests.

grpcio's blocking calls wait in C, out of gevent's sight: without
init_gevent() one call would hold up every user of the process. It has to run
before the first channel is made, hence at import, in every locust process.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Iterator

import grpc.experimental.gevent as grpc_gevent
import tritonclient.grpc as grpcclient
from locust import User, constant, tag, task
from locust.env import Environment
from tritonclient.utils import InferenceServerException

from loadtests.locust import checks, data
from loadtests.locust.entries import GRPC, entry_name
from loadtests.locust.options import Settings

grpc_gevent.init_gevent()

REQUEST_TYPE = "gRPC"
_user_numbers = itertools.count()


class GrpcCheckFailed(Exception):
    """An answer that came back but is wrong (shape, values)."""


@functools.cache
def _inputs(batch: int) -> tuple[tuple[grpcclient.InferInput, int], ...]:
    """One encoded input per batch of images, shared by the process's users
    (a call only reads it)."""
    inputs = []
    for pixels in data.pixel_batches(batch):
        tensor = grpcclient.InferInput(data.DIGITS_INPUT, list(pixels.shape), "FP32")
        tensor.set_data_from_numpy(pixels)  # raw_input_contents
        inputs.append((tensor, len(pixels)))
    return tuple(inputs)


class GrpcUser(User):
    wait_time = constant(0)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.settings = Settings.of(environment.parsed_options, environment.host)
        self.entry = entry_name(GRPC, self.settings.digits_model)
        key = self.settings.api_key
        self.metadata = {"authorization": f"Bearer {key}"} if key else None
        self.inputs: Iterator[tuple[grpcclient.InferInput, int]] = data.cycle_from(
            _inputs(self.settings.digits_batch), next(_user_numbers)
        )
        self.wanted = [grpcclient.InferRequestedOutput(data.DIGITS_OUTPUT)]
        self.client: grpcclient.InferenceServerClient | None = None

    @classmethod
    def prepare(cls, settings: Settings) -> None:
        """Load and encode the inputs (at init, before the run's clock starts)."""
        _inputs(settings.digits_batch)

    def on_start(self) -> None:
        self.client = grpcclient.InferenceServerClient(self.settings.grpc_host)

    def on_stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    @tag(GRPC)
    @task
    def infer(self) -> None:
        assert self.client is not None  # on_start made it
        tensor, rows = next(self.inputs)
        started = time.perf_counter()
        length = 0
        exception: Exception | None = None
        try:
            result = self.client.infer(
                self.settings.digits_model,
                [tensor],
                outputs=self.wanted,
                headers=self.metadata,
                client_timeout=self.settings.request_timeout_s,
            )
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            length = result.get_response().ByteSize()
            values = result.as_numpy(data.DIGITS_OUTPUT)
            reason = (
                f"answer without output {data.DIGITS_OUTPUT!r}"
                if values is None
                else checks.probabilities(values, rows)
            )
            if reason:
                exception = GrpcCheckFailed(reason)
        except InferenceServerException as error:
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            exception = error
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE,
            name=self.entry,
            response_time=elapsed_ms,
            response_length=length,
            exception=exception,
            context={},
        )
