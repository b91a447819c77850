"""What the harness reads from a running server besides its answers: the
gateway's histograms (GET /metrics) and a process's resident memory."""

from __future__ import annotations

import http.client
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

BATCH_SIZE = "gateway_batch_size"  # rows per execution
QUEUE_DURATION = "gateway_queue_duration_seconds"  # time admitted requests waited in the queue


@dataclass(frozen=True)
class HistogramTotals:
    """A histogram's cumulative sum and count for one backend, at one scrape."""

    total: float
    count: float

    def mean_since(self, before: HistogramTotals, scale: float = 1.0) -> float | None:
        """Mean of the observations made between two scrapes (None: there were none)."""
        count = self.count - before.count
        return round((self.total - before.total) / count * scale, 3) if count else None


def _metrics_text(port: int) -> str:
    # http.client, not urllib: urllib would honour proxy variables, even for loopback.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def counter_total(port: int, metric: str, **labels: str) -> float:
    """A counter's value summed over the samples with these labels."""
    total = 0.0
    for family in text_string_to_metric_families(_metrics_text(port)):
        if family.name != metric:
            continue
        for sample in family.samples:
            if sample.name == f"{metric}_total" and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                total += sample.value
    return total


def scrape_histogram(
    port: int, metric: str, backend: str | None = None, **labels: str
) -> HistogramTotals:
    """A histogram's totals over the samples with these labels (`backend` among them)."""
    if backend is not None:
        labels["backend"] = backend
    total = count = 0.0
    for family in text_string_to_metric_families(_metrics_text(port)):
        if family.name != metric:
            continue
        for sample in family.samples:
            if any(sample.labels.get(k) != v for k, v in labels.items()):
                continue
            if sample.name.endswith("_sum"):
                total += sample.value
            elif sample.name.endswith("_count"):
                count += sample.value
    return HistogramTotals(total, count)


def rss_mib(pid: int) -> float:
    """Resident set size (VmRSS) of a live process, in MiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024.0, 1)  # the kernel reports kB
    raise RuntimeError(f"no VmRSS for pid {pid}")
