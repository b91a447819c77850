"""A real Triton Inference Server for the triton backend's tests and benchmark.

Run by `.venv-triton/bin/python testkit/triton_server.py` (requirements/
triton-server.in: PyTriton bundles tritonserver and its Python backend, and
needs numpy<2, hence a venv of its own). It imports nothing of the gateway:
to the gateway it is a remote server, reached over the wire only.

Models:
- `digits`: models/digits/1/model.onnx on ONNX Runtime, behind Triton's dynamic
  batcher (pixels FP32 [64] -> probabilities FP32 [10], max_batch_size 64);
- `slow`: waits `seconds` (FP32 [1]) per request, answers `marker` (FP32 [1])
  back. Its batcher holds a request up to 1.5 s for three more, and requests
  may set their own timeout (`allow_timeout_override`): what a caller's
  deadline becomes in Triton;
- `history`: the markers `slow` has run, in order (FP32 [-1]), so that a test
  can tell which requests Triton really executed.

Prints READY_LINE once every model is loaded, then serves until SIGTERM or SIGINT.
The stub processes of Triton's Python backend need the interpreter's shared
library: LD_LIBRARY_PATH must hold sysconfig's LIBDIR (`triton_env()` in
testkit/triton_process.py sets it).
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, Tensor, TimeoutAction
from pytriton.triton import Triton, TritonConfig

ROOT = Path(__file__).resolve().parent.parent
READY_LINE = "triton test server ready"
DIGITS = ROOT / "models" / "digits" / "1" / "model.onnx"


def _digits(max_queue_delay_us: int) -> tuple:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(DIGITS), options, providers=["CPUExecutionProvider"])

    @batch
    def infer(pixels: np.ndarray) -> dict[str, np.ndarray]:
        (probabilities,) = session.run(["probabilities"], {"pixels": pixels})
        return {"probabilities": probabilities}

    config = ModelConfig(
        max_batch_size=64,
        batcher=DynamicBatcher(max_queue_delay_microseconds=max_queue_delay_us),
    )
    inputs = [Tensor(name="pixels", dtype=np.float32, shape=(64,))]
    outputs = [Tensor(name="probabilities", dtype=np.float32, shape=(10,))]
    return infer, inputs, outputs, config


def _slow(history: list[float]) -> tuple:
    lock = threading.Lock()

    def infer(requests: list) -> list[dict[str, np.ndarray]]:
        answers = []
        for request in requests:
            marker = np.asarray(request["marker"], np.float32).reshape(-1, 1)
            with lock:
                history.append(float(marker[0, 0]))
            time.sleep(float(np.asarray(request["seconds"]).reshape(-1)[0]))
            answers.append({"marker": marker})
        return answers

    # A request waits in the batcher's queue until 4 are there or 1.5 s passed;
    # meanwhile its own timeout (the caller's deadline) applies: REJECT drops it.
    config = ModelConfig(
        max_batch_size=4,
        batcher=DynamicBatcher(
            preferred_batch_size=[4],
            max_queue_delay_microseconds=1_500_000,
            default_queue_policy=QueuePolicy(
                timeout_action=TimeoutAction.REJECT,
                default_timeout_microseconds=60_000_000,
                allow_timeout_override=True,
            ),
        ),
    )
    inputs = [
        Tensor(name="seconds", dtype=np.float32, shape=(1,)),
        Tensor(name="marker", dtype=np.float32, shape=(1,)),
    ]
    outputs = [Tensor(name="marker", dtype=np.float32, shape=(1,))]
    return infer, inputs, outputs, config


def _history(history: list[float]) -> tuple:
    def infer(requests: list) -> list[dict[str, np.ndarray]]:
        return [{"markers": np.asarray(history, np.float32)} for _ in requests]

    config = ModelConfig(batching=False)
    inputs = [Tensor(name="ask", dtype=np.float32, shape=(1,))]
    outputs = [Tensor(name="markers", dtype=np.float32, shape=(-1,))]
    return infer, inputs, outputs, config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--max-queue-delay-us", type=int, default=0)
    parser.add_argument("--digits-instances", type=int, default=1)
    args = parser.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    history: list[float] = []
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        exit_timeout_secs=1,
        log_verbose=0,
    )
    with Triton(config=config) as triton:
        for name, (infer, inputs, outputs, model_config) in {
            "digits": _digits(args.max_queue_delay_us),
            "slow": _slow(history),
            "history": _history(history),
        }.items():
            funcs = [infer] * (args.digits_instances if name == "digits" else 1)
            triton.bind(
                model_name=name,
                infer_func=funcs if len(funcs) > 1 else infer,
                inputs=inputs,
                outputs=outputs,
                config=model_config,
                strict=True,
            )
        triton.run()
        print(READY_LINE, flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
