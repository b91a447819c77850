"""What the `pii` policy adds to a request, in process: its request hook on a
1 KB chat prompt without and with personal data, its answer hook restoring
placeholders, and its chunk hook on a streamed answer. Timed one call at a
time with perf_counter_ns after a warm-up; prints p50/p99 in milliseconds as
a table (or one JSON line with --json). The goal (docs: the governance page):
p50 <= 0.2 ms for the request hook on 1 KB.

    python -m loadtests.pii_bench [--iterations 20000] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.core.llm import ChatRequest, ChatResult
from gateway.core.types import RequestContext
from gateway.policies.pii import Pii, PiiConfig

PROSE = (
    "Our quarterly planning review covers the roadmap for the next two releases, "
    "the hiring plan for the platform team, and the migration of the billing "
    "service to the new cluster. Please summarise the open risks, the owners and "
    "the dates we agreed on in the last meeting, in three short bullet points. "
)
PII = (
    " Contact Ann at ann.lee@example.com or (415) 555-0132; refunds go to card "
    "4111 1111 1111 1111 and IBAN DE89 3704 0044 0532 0130 00; her SSN is "
    "536-22-1784 and she logged in from 203.0.113.42."
)


def _prompt(with_pii: bool, size: int = 1024) -> str:
    tail = PII if with_pii else ""
    body = (PROSE * (size // len(PROSE) + 2))[: size - len(tail)]
    return body + tail


def _request(text: str) -> ChatRequest:
    body = {
        "model": "chat",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": text},
        ],
        "temperature": 0,
    }
    return ChatRequest("chat", body)


def _ctx() -> RequestContext:
    return RequestContext(request_id="bench", protocol="bench", model="chat")


def _timed(call: Callable[[], Any], iterations: int) -> tuple[float, float]:
    """(p50, p99) in milliseconds of `call`, timed alone each time."""
    for _ in range(min(1000, iterations)):
        call()
    samples = []
    clock = time.perf_counter_ns
    gc.disable()  # a collection landing in one sample says nothing about the policy
    try:
        for _ in range(iterations):
            start = clock()
            call()
            samples.append(clock() - start)
    finally:
        gc.enable()
    samples.sort()
    return samples[len(samples) // 2] / 1e6, samples[int(len(samples) * 0.99)] / 1e6


def measure(iterations: int) -> dict[str, dict[str, float]]:
    mask = Pii(PiiConfig(type="pii", action="mask", restore=True))
    scan_out = Pii(PiiConfig(type="pii", action="mask", restore=True, outputs="mask"))
    clean, dirty = _request(_prompt(False)), _request(_prompt(True))
    assert len(clean.body["messages"][1]["content"]) == 1024
    assert len(dirty.body["messages"][1]["content"]) == 1024
    results: dict[str, dict[str, float]] = {}

    def row(name: str, call: Callable[[], Any]) -> None:
        p50, p99 = _timed(call, iterations)
        results[name] = {"p50_ms": round(p50, 4), "p99_ms": round(p99, 4)}

    row("request 1 KB, no PII", lambda: mask.on_request(clean, _ctx()))
    row("request 1 KB, 6 values", lambda: mask.on_request(dirty, _ctx()))

    masked_ctx = _ctx()
    masked = mask.on_request(dirty, masked_ctx)
    answer_text = masked.body["messages"][1]["content"]
    answer = ChatResult({"choices": [{"index": 0, "message": {"content": answer_text}}]}, None)
    row("answer 1 KB, restore", lambda: mask.on_response(answer, masked_ctx))
    row("answer 1 KB, restore + outputs", lambda: scan_out.on_response(answer, masked_ctx))

    words = answer_text.split(" ")
    chunks = [
        {"choices": [{"index": 0, "delta": {"content": w if i == 0 else " " + w}}]}
        for i, w in enumerate(words)
    ]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})

    def stream(policy: Pii) -> Callable[[], None]:
        def run() -> None:
            ctx = _ctx()
            policy.on_request(dirty, ctx)
            for chunk in chunks:
                policy.on_chunk(chunk, ctx)

        return run

    # Per chunk: the whole stream's time (request hook included) over its chunks.
    for name, policy in (("chunk, restore", mask), ("chunk, restore + outputs", scan_out)):
        p50, p99 = _timed(stream(policy), max(100, iterations // 50))
        results[name] = {
            "p50_ms": round(p50 / len(chunks), 4),
            "p99_ms": round(p99 / len(chunks), 4),
        }
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.pii_bench", description=__doc__)
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument("--json", action="store_true", help="one JSON line instead of a table")
    args = parser.parse_args(argv)
    results = measure(args.iterations)
    if args.json:
        print(json.dumps(results))
        return
    print(f"{'hook':34} {'p50 ms':>8} {'p99 ms':>8}")
    for name, figures in results.items():
        print(f"{name:34} {figures['p50_ms']:8.4f} {figures['p99_ms']:8.4f}")


if __name__ == "__main__":
    main()
