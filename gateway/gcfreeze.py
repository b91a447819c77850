"""Keep the cyclic garbage collector off the objects that live as long as the process.

A running gateway holds a few hundred thousand long-lived objects (modules,
config, sessions, metrics). Each full collection walks all of them: measured
on the digits benchmark (c=32, batching), HTTP p99 was ~40 ms with those
pauses and ~6 ms with the objects frozen, and throughput rose ~12%.
`gc.freeze()` moves them out of the collector's generations; requests'
short-lived garbage is collected as before.

The youngest generation is also collected less often (every 20,000 container
allocations instead of 700): a request makes a few hundred, nearly all freed
by reference counting, so the default collected several times per batch of
requests for nothing. Digits c=32 with batching: ~+8% throughput.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger("gateway.gcfreeze")

YOUNG_THRESHOLD = 20_000


def freeze_long_lived() -> None:
    """Collect what is garbage now, then freeze the rest.

    After a reload the previous runtime was frozen with everything else:
    unfreezing first lets its cycles be collected once it is gone.
    """
    started = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
    log.debug("froze %d long-lived objects in %.1f ms", gc.get_freeze_count(),
              (time.perf_counter() - started) * 1e3)
