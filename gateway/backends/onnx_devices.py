"""Which device's session runs the next execution of a backend with several.

The least busy device (fewest runs in flight) takes it; ties go round-robin,
so that at low load every device keeps serving (and stays warm) rather than
the first one taking everything. Runs differ in size (batches), hence least
busy rather than plain round-robin: a device still busy with a large batch is
passed over.
"""

from __future__ import annotations


class DeviceSpread:
    """Runs in flight per device. Not thread-safe: the caller holds its lock."""

    def __init__(self, devices: int) -> None:
        if devices < 1:
            raise ValueError(f"devices: {devices}, at least 1 is needed")
        self.running = [0] * devices
        self._next = 0

    def acquire(self) -> int:
        """The index of the device to run on, counted as running one more."""
        running = self.running
        count = len(running)
        best = self._next
        for step in range(1, count):
            index = (self._next + step) % count
            if running[index] < running[best]:
                best = index
        self._next = (best + 1) % count
        running[best] += 1
        return best

    def release(self, index: int) -> None:
        self.running[index] -= 1
