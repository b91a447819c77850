"""The threaded gRPC engine's stream reader: bounded read-ahead, and no thread
left behind when the servicer stops reading."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from gateway.api.grpc_threads import RequestStream


@pytest.mark.timeout(30)
def test_a_reader_waiting_for_room_ends_when_the_stream_is_closed() -> None:
    produced: list[int] = []
    released = threading.Event()

    def requests() -> Iterator[int]:
        for n in range(100):
            produced.append(n)
            yield n
        released.set()  # never reached: the reader stops at the window

    async def scenario() -> list[int]:
        stream = RequestStream(requests(), asyncio.get_running_loop(), window=4)
        taken = [await anext(stream) for _ in range(2)]
        # Two taken, four more read ahead; the reader now holds the seventh,
        # waiting for room that a servicer which stopped reading never makes.
        deadline = asyncio.get_running_loop().time() + 10
        while len(produced) < 7:
            assert asyncio.get_running_loop().time() < deadline, produced
            await asyncio.sleep(0)  # yields to the loop: the reader's puts land
        stream.close()
        await asyncio.get_running_loop().run_in_executor(None, stream.reader.join, 10)
        assert not stream.reader.is_alive()
        return taken

    assert asyncio.run(scenario()) == [0, 1]
    assert len(produced) == 7 and not released.is_set()


def test_a_finished_client_stream_ends_the_async_iteration() -> None:
    async def scenario() -> list[int]:
        stream = RequestStream(iter(range(10)), asyncio.get_running_loop(), window=3)
        return [n async for n in stream]

    assert asyncio.run(scenario()) == list(range(10))
