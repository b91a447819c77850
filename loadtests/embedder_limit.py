"""The embedder's in-process limit: tokenization + session.run, no HTTP, no gateway.

What one core can do with the same model file and tokenizer settings as the
gateway backend (truncation 256, pad to the longest text of the batch,
intra_op_num_threads=1), at several batch sizes over the benchmark's
sentences. The harness runs this module in a subprocess pinned to the
server's core, so it competes for that core exactly as the gateway would.

    python -m loadtests.embedder_limit --batch-sizes 1,8,16,32,64 --duration 10 --warmup 2 --cpus 0

The last line of stdout is the result as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from loadtests.workloads import (
    EMBEDDER_MAX_LENGTH,
    EMBEDDER_MODEL,
    EMBEDDER_TOKENIZER,
    SENTENCES,
)


def load_tokenizer(path: Path, max_length: int) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=max_length)
    padding = tokenizer.padding or {}
    # length=None: pad to the longest text of each batch, as the gateway does.
    tokenizer.enable_padding(
        pad_id=padding.get("pad_id", 0), pad_token=padding.get("pad_token", "[PAD]"), length=None
    )
    return tokenizer


def load_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def embed(session: ort.InferenceSession, tokenizer: Tokenizer, texts: list[str]) -> np.ndarray:
    encodings = tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    return session.run(None, {"input_ids": ids, "attention_mask": mask})[0]


def batches_of(size: int, sentences: list[str]) -> list[list[str]]:
    """Consecutive windows of the sentence list (wrapping), one per starting
    sentence: batches mix lengths the way interleaved callers' requests do."""
    n = len(sentences)
    return [[sentences[(i * size + j) % n] for j in range(size)] for i in range(n)]


def measure(
    session: ort.InferenceSession,
    tokenizer: Tokenizer,
    batch_size: int,
    duration_s: float,
    warmup_s: float,
) -> dict[str, Any]:
    batches = batches_of(batch_size, SENTENCES)
    clock = time.perf_counter
    runs = 0
    start = clock()
    record_from = start + warmup_s
    stop_at = record_from + duration_s
    recorded_at = None
    while True:
        now = clock()
        if now >= stop_at:
            break
        if recorded_at is None and now >= record_from:
            recorded_at, runs = now, 0
        embed(session, tokenizer, batches[runs % len(batches)])
        runs += 1
    elapsed = clock() - (recorded_at or start)
    return {
        "batch_size": batch_size,
        "runs": runs,
        "sentences": runs * batch_size,
        "elapsed_s": round(elapsed, 3),
        "sentences_per_s": round(runs * batch_size / elapsed, 1),
        "ms_per_batch": round(elapsed / runs * 1000.0, 3) if runs else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=EMBEDDER_MODEL)
    parser.add_argument("--tokenizer", type=Path, default=EMBEDDER_TOKENIZER)
    parser.add_argument("--batch-sizes", default="1,8,16,32,64")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--cpus", default="", help="pin to these cores first, e.g. 0")
    args = parser.parse_args()
    if args.cpus:
        # Before the session and the tokenizer start their threads: they inherit it.
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    session = load_session(args.model)
    tokenizer = load_tokenizer(args.tokenizer, EMBEDDER_MAX_LENGTH)
    rows = [
        measure(session, tokenizer, int(b), args.duration, args.warmup)
        for b in args.batch_sizes.split(",")
    ]
    print(json.dumps({"batch_sizes": rows}), flush=True)


if __name__ == "__main__":
    main()
