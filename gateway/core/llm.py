"""Protocol-free types for chat and embeddings: the contract between the
OpenAI-compatible transport, the pipeline and the vendor backends.

A chat request travels as the OpenAI chat-completions body (a plain dict):
that shape is the lingua franca every vendor backend translates from, and
keeping it avoids a second object model on the hot path. Backends receive it
already checked (`model` is the gateway model's name; they substitute their
own vendor model).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_openai(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(slots=True)
class ChatRequest:
    model: str  # the gateway model's name (the body's `model`)
    body: dict[str, Any]  # the caller's OpenAI chat body
    stream: bool = False
    include_usage: bool = False  # the caller asked for a usage chunk at the end of a stream


@dataclass(slots=True)
class ChatResult:
    """A whole completion in OpenAI's `chat.completion` shape (`model` not yet set)."""

    body: dict[str, Any]
    usage: Usage | None
    tries: int = 1  # HTTP tries the backend made (retries included)


class ChatStream(Protocol):
    """Chunks in OpenAI's `chat.completion.chunk` shape, as the vendor sends them.

    Iterating raises `BackendFailed` if the vendor stream breaks; `usage` is
    known once iteration ended (counted from the stream if the vendor sent none).
    A stream holds a backend slot until it is exhausted or `aclose`d.
    """

    @property
    def usage(self) -> Usage | None: ...  # read-only here: PrefetchedStream's is a property

    tries: int

    def __aiter__(self) -> AsyncGenerator[dict[str, Any], None]: ...

    async def aclose(self) -> None: ...


class PrefetchedStream:
    """A stream whose first chunk has already arrived (so the backend is known
    to be answering); iterating yields that chunk, then the rest."""

    def __init__(
        self,
        stream: ChatStream,
        chunks: AsyncIterator[dict[str, Any]],
        first: dict[str, Any] | None,
    ) -> None:
        self._stream = stream
        self._chunks = chunks
        self._first = first
        self.tries = stream.tries

    @classmethod
    async def start(cls, stream: ChatStream) -> PrefetchedStream:
        chunks = stream.__aiter__()
        try:
            first = await chunks.__anext__()
        except StopAsyncIteration:
            first = None
        except BaseException:
            await stream.aclose()
            raise
        return cls(stream, chunks, first)

    @property
    def usage(self) -> Usage | None:
        return self._stream.usage

    async def __aiter__(self) -> AsyncGenerator[dict[str, Any], None]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        async for chunk in self._chunks:
            yield chunk

    async def aclose(self) -> None:
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()
        await self._stream.aclose()


class EndingStream:
    """A stream that runs `on_end` once, when it ends, breaks or is closed,
    with each chunk through `transform` when there is one, and the chunks
    `finish` returns after the last one when the stream ran to its end (not
    when the caller closed it or it failed). Admission releases a stream's
    slot with it; the pipeline applies policies and counts tokens."""

    def __init__(
        self,
        stream: ChatStream,
        on_end: Callable[[], None],
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        finish: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self._stream = stream
        self._on_end: Callable[[], None] | None = on_end
        self._transform = transform
        self._finish = finish
        self.tries = stream.tries

    @property
    def usage(self) -> Usage | None:
        return self._stream.usage

    async def __aiter__(self) -> AsyncGenerator[dict[str, Any], None]:
        transform = self._transform
        try:
            async for chunk in self._stream:
                yield chunk if transform is None else transform(chunk)
            # Only reached when the stream was exhausted: a caller closing it
            # early or a failure leaves the loop by an exception instead.
            if self._finish is not None:
                for chunk in self._finish():
                    yield chunk
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        on_end, self._on_end = self._on_end, None
        try:
            await self._stream.aclose()
        finally:
            if on_end is not None:
                on_end()


@dataclass(slots=True)
class EmbeddingRequest:
    model: str  # the gateway model's name
    texts: list[str]
    dimensions: int | None = None  # vectors of this size, when the caller asks for it


@dataclass(slots=True)
class EmbeddingResult:
    vectors: np.ndarray  # FP32 [n, dim], one row per input text
    usage: Usage | None
    tries: int = 1


@runtime_checkable
class ChatBackend(Protocol):
    name: str

    async def chat(self, request: ChatRequest, deadline: float) -> ChatResult: ...

    async def chat_stream(self, request: ChatRequest, deadline: float) -> ChatStream:
        """Returns once the vendor accepted the request (status and headers in):
        failures up to that point raise, so the caller can still fall back."""
        ...


@runtime_checkable
class EmbeddingBackend(Protocol):
    name: str

    async def embed(
        self, texts: list[str], deadline: float, dimensions: int | None = None
    ) -> EmbeddingResult:
        """`dimensions`: the caller wants vectors of that size (a model that cannot
        give them raises InvalidInput before doing any work)."""
        ...


@dataclass(frozen=True, slots=True)
class Price:
    """A backend's prices, from its `cost` config."""

    usd_per_request: float = 0.0
    usd_per_1k_input_tokens: float = 0.0
    usd_per_1k_output_tokens: float = 0.0

    def of(self, usage: Usage | None) -> float:
        cost = self.usd_per_request
        if usage is not None:
            cost += (
                usage.prompt_tokens * self.usd_per_1k_input_tokens
                + usage.completion_tokens * self.usd_per_1k_output_tokens
            ) / 1000.0
        return cost
