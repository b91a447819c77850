"""The OpenAI surface: chat (whole and streamed) and embeddings, on sentences.txt.

A streamed chat is one entry for the whole stream, plus two of its own: the
time to the first token (request sent to first chunk with content) and the
gaps between chunks with content, one sample per gap.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from locust import tag, task
from locust.contrib.fasthttp import FAILURE_EXCEPTIONS, ResponseContextManager
from locust.env import Environment

from loadtests.locust import checks, data
from loadtests.locust.entries import (
    CHAT,
    CHAT_STREAM,
    EMBEDDINGS,
    INTER_CHUNK,
    TTFT,
    entry_name,
)
from loadtests.locust.http_base import GatewayHttpUser, answer_failure
from loadtests.locust.options import Settings

CHAT_PATH = "/v1/chat/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
JSON_HEADERS = {"Content-Type": "application/json"}
STREAM_TYPE = "stream"  # locust's "Type" column of the TTFT and gap entries


class EmbeddingsUser(GatewayHttpUser):
    @classmethod
    def prepare(cls, settings: Settings) -> None:
        data.sentence_batches(settings.embeddings_batch)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        model = self.settings.embeddings_model
        self.entry = entry_name(EMBEDDINGS, model)
        bodies = tuple(
            (json.dumps({"model": model, "input": list(texts)}).encode(), len(texts))
            for texts in data.sentence_batches(self.settings.embeddings_batch)
        )
        self.bodies: Iterator[tuple[bytes, int]] = data.cycle_from(bodies, self.number)

    @tag(EMBEDDINGS)
    @task
    def embed(self) -> None:
        body, count = next(self.bodies)
        with self.client.post(
            EMBEDDINGS_PATH,
            data=body,
            headers=self.headers(JSON_HEADERS),
            name=self.entry,
            catch_response=True,
        ) as response:
            reason = answer_failure(response) or checks.embeddings(
                response.content, count, self.settings.embedding_dim
            )
            if reason:
                response.failure(reason)


class _ChatUser(GatewayHttpUser):
    abstract = True
    stream = False

    @classmethod
    def prepare(cls, settings: Settings) -> None:
        data.sentence_batches(1)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        model = self.settings.chat_model
        self.model = model
        self.entry = entry_name(CHAT_STREAM if self.stream else CHAT, model)
        extra = {"stream": True} if self.stream else {}
        bodies = tuple(
            json.dumps(
                {
                    "model": model,
                    "messages": [{"role": "user", "content": text}],
                    "max_tokens": self.settings.chat_max_tokens,
                    **extra,
                }
            ).encode()
            for (text,) in data.sentence_batches(1)
        )
        self.bodies: Iterator[bytes] = data.cycle_from(bodies, self.number)


class ChatUser(_ChatUser):
    @tag(CHAT)
    @task
    def chat(self) -> None:
        with self.client.post(
            CHAT_PATH,
            data=next(self.bodies),
            headers=self.headers(JSON_HEADERS),
            name=self.entry,
            catch_response=True,
        ) as response:
            reason = answer_failure(response) or checks.chat(response.content)
            if reason:
                response.failure(reason)


class ChatStreamUser(_ChatUser):
    stream = True

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.ttft_entry = entry_name(TTFT, self.model)
        self.gap_entry = entry_name(INTER_CHUNK, self.model)

    @tag(CHAT, CHAT_STREAM)
    @task
    def chat_stream(self) -> None:
        # No compression: a compressed stream could not be read chunk by chunk.
        headers = self.headers({**JSON_HEADERS, "Accept-Encoding": "identity"})
        started = time.perf_counter()
        with self.client.post(
            CHAT_PATH,
            data=next(self.bodies),
            headers=headers,
            name=self.entry,
            stream=True,
            catch_response=True,
        ) as response:
            try:
                reason = answer_failure(response) or self._read(response, started)
            except FAILURE_EXCEPTIONS as error:  # the connection broke or timed out midway
                reason = f"stream broke: {error!r}"
            # The entry times the whole stream: locust's own time stops at the headers.
            response.request_meta["response_time"] = (time.perf_counter() - started) * 1000.0
            if reason:
                response.failure(reason)

    def _read(self, response: ResponseContextManager, started: float) -> str | None:
        """Reads the stream as it arrives, recording TTFT and inter-chunk gaps;
        the reason it is wrong, or None."""
        # The socket-level response's readline hands each line over as soon as it
        # has arrived; FastResponse.iter_content waits to fill whole blocks, which
        # would move the first token to when a kilobyte has come.
        stream = response._response
        if stream is None:
            return "stream without a body"
        lines = checks.SseLines()
        received, last, done = 0, None, False
        while not done:
            line = stream.readline(b"\n")
            if not line:
                break
            now = time.perf_counter()
            received += len(line)
            for payload in lines.feed(line):
                if payload == "[DONE]":
                    done = True
                    break
                reason, content = checks.chat_chunk(payload)
                if reason:
                    return reason
                if not content:
                    continue
                if last is None:
                    self._record(self.ttft_entry, now - started)
                else:
                    self._record(self.gap_entry, now - last)
                last = now
        if done:
            received += len(stream.read())  # to the end, so the connection goes back to the pool
        response.request_meta["response_length"] = received
        if not done:
            return "stream ended without [DONE]"
        if last is None:
            return "stream without content"
        return None

    def _record(self, entry: str, seconds: float) -> None:
        self.environment.events.request.fire(
            request_type=STREAM_TYPE,
            name=entry,
            response_time=seconds * 1000.0,
            response_length=0,
            exception=None,
            context={},
        )
