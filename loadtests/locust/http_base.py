"""What every HTTP user shares: FastHttpUser (geventhttpclient: much less CPU
per request than HttpUser's requests, so more load per locust process), the
settings from the command line, timeouts, the tenant key and an offset into
the data."""

from __future__ import annotations

import itertools

from locust import FastHttpUser, constant
from locust.contrib.fasthttp import ResponseContextManager
from locust.env import Environment

from loadtests.locust import checks
from loadtests.locust.options import DEFAULT_HOST, Settings

# Each user starts at its own place in the data, so that concurrent users do not
# send the same request at the same moment (which a response cache would notice).
_user_numbers = itertools.count()


class GatewayHttpUser(FastHttpUser):
    abstract = True
    host = DEFAULT_HOST
    wait_time = constant(0)  # closed loop: each user sends its next request once answered

    def __init__(self, environment: Environment) -> None:
        # Read here, not at import: a worker gets the master's options with the
        # spawn message that creates its users.
        self.settings = Settings.of(environment.parsed_options, environment.host or self.host)
        self.network_timeout = self.settings.request_timeout_s
        self.connection_timeout = self.settings.request_timeout_s
        super().__init__(environment)
        self.number = next(_user_numbers)

    @classmethod
    def prepare(cls, settings: Settings) -> None:
        """Load and encode this class's inputs (at init, before the run's clock starts)."""

    def headers(self, extra: dict[str, str]) -> dict[str, str]:
        return {**extra, **self.settings.auth_headers()}


def answer_failure(response: ResponseContextManager) -> str | None:
    """The reason an HTTP answer is not a 200, or None. A 200's body is left
    unread: a stream is read as it arrives."""
    status = response.status_code
    if status == 200:
        return None
    content = response.content if status else None
    return checks.http_failure(status, content, getattr(response, "error", None))
