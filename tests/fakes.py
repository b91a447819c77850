"""Small in-process stand-ins the unit tests share: real objects keeping the
gateway's protocols (never mocks of gateway code)."""

from __future__ import annotations


class ManualClock:
    """A monotonic clock that moves only when the test says (`clock=` arguments)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class LocalBackend:
    """The housekeeping half of the backend protocol (backends/base.py) for a
    test backend, whose own class writes `infer`, `chat` or `embed`."""

    name = "local"

    def io_specs(self) -> None:
        return None

    def ready(self) -> bool:
        return True

    def busy(self) -> bool:
        return False

    async def close(self) -> None:
        return None
