"""`make gpu-check`: ONNX Runtime's GPU providers on the shipped models, against CPU.

For each model (`digits`, `embedder`) and each provider this onnxruntime build
offers (cpu, cuda, tensorrt), it builds the gateway's own onnx backend from the
model's backend in config/gateway.yaml (its tokenizer and batching included)
with `providers` narrowed to that provider, and checks which providers each of
its sessions really uses: a GPU build without a usable GPU (no driver, a
missing CUDA, cuDNN or TensorRT library) falls back to CPU with no more than a
warning. Then it times runs of each batch size, one at a time, and prints
rows/s, the median latency and the speedup over CPU: the providers' speed per
run, not the gateway's throughput under load (that is `make bench`).

    python loadtests/gpu_check.py [--seconds 3] [--batch-sizes 1,8,32]
                                  [--models digits,embedder] [--devices 0]
                                  [--io-binding]

--io-binding also runs each provider with `io_binding: true`; its answers must
match the same provider's without it. --devices 0,1 gives GPU backends a
session on each device (the runs are spread over them).

Exit code 0: every GPU provider asked for and offered was used (and IO binding
answered as the plain runs did); 1: a backend fell back to CPU, failed to load
or disagreed, named on the output; 2: bad arguments. Where no GPU provider is
offered (the CPU build of onnxruntime) it prints the CPU rows, says which GPU
providers are not offered, and exits 0. For GPUs install the `gpu` extra in
place of the CPU build: `pip uninstall -y onnxruntime && pip install -e '.[gpu]'`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402 - after the path is set, like the other scripts
import onnxruntime as ort  # noqa: E402

from gateway.backends.onnx import (  # noqa: E402
    BACKEND_TYPE,
    BackendLoadError,
    OnnxBackend,
    OnnxBackendConfig,
)
from gateway.backends.providers import PROVIDER_NAMES  # noqa: E402
from gateway.config.loader import ConfigError, LoadedConfig, load_config  # noqa: E402
from gateway.core.datatypes import NUMPY_DTYPES  # noqa: E402
from gateway.core.errors import GatewayError  # noqa: E402
from gateway.core.signature import TensorSpec  # noqa: E402

CONFIG = ROOT / "config" / "gateway.yaml"
MODELS = ("digits", "embedder")
# What each variant asks for: TensorRT with CUDA behind it for the nodes TensorRT
# does not take (as config/gateway.yaml lists them), CPU last in every case.
PROVIDERS: dict[str, list[str]] = {
    "cpu": ["cpu"],
    "cuda": ["cuda"],
    "tensorrt": ["tensorrt", "cuda"],
}
# Answers with and without IO binding come from separate sessions, which may pick
# other kernels (cuDNN's search, TensorRT's tactics): equal within this, not bitwise.
IO_BINDING_TOLERANCE = 1e-3
WARMUP_RUNS = 3  # TensorRT builds an engine on the first run of a new shape
# The embedder's texts are 24 of these words (about 26 tokens).
WORDS = ("the", "gateway", "routes", "each", "request", "to", "a", "local", "model", "or")


@dataclass
class Row:
    model: str
    variant: str
    batch: int
    runs: int
    seconds: float
    p50_ms: float
    speedup: float | None = None
    max_diff: float | None = None

    @property
    def rows_per_s(self) -> float:
        return self.batch * self.runs / self.seconds

    @property
    def req_per_s(self) -> float:
        return self.runs / self.seconds


@dataclass
class Outcome:
    rows: list[Row] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"need integers >= 0, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=3.0,
        help="measured seconds per model, provider and batch size (default %(default)s)",
    )
    parser.add_argument(
        "--batch-sizes", type=int_list, default=[1, 8, 32], help="rows per run (default 1,8,32)"
    )
    parser.add_argument(
        "--models",
        default=",".join(MODELS),
        help="comma-separated models of the config (default %(default)s)",
    )
    parser.add_argument(
        "--devices",
        type=int_list,
        default=[0],
        help="GPU device ids of the GPU backends (default 0)",
    )
    parser.add_argument(
        "--io-binding", action="store_true", help="also run each provider with io_binding: true"
    )
    parser.add_argument(
        "--config", type=Path, default=CONFIG, help="the config of the models (default %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be above 0")
    if 0 in args.batch_sizes:
        parser.error("--batch-sizes must be at least 1")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    return args


def backend_config(loaded: LoadedConfig, model: str) -> tuple[str, OnnxBackendConfig]:
    """The name and config of the onnx backend a model's route tries first."""
    models = loaded.config.models
    if model not in models:
        raise KeyError(f"no model '{model}' in the config (models: {sorted(models)})")
    name = next(iter(models[model].route.backend_names()))
    config = loaded.config.backends[name]
    if not isinstance(config, OnnxBackendConfig):
        raise KeyError(f"model '{model}' is served by backend '{name}' of type {config.type}")
    return name, config


def variant_config(
    config: OnnxBackendConfig, provider: str, devices: list[int], io_binding: bool
) -> OnnxBackendConfig:
    """The backend's config on one provider (validated again, as the loader would)."""
    gpu = provider != "cpu"
    data = config.model_dump()
    data.update(
        providers=PROVIDERS[provider],
        require_gpu=False,  # a fallback is reported here, with the backend's name
        devices=devices if gpu else [0],
        max_concurrency=max(config.max_concurrency, len(devices) if gpu else 1),
        io_binding=io_binding,
        # GPU options only where their provider is asked for.
        cuda=data.get("cuda") if "cuda" in PROVIDERS[provider] else None,
        tensorrt=data.get("tensorrt") if provider == "tensorrt" else None,
    )
    return OnnxBackendConfig.model_validate(data)


def fell_back(backend: OnnxBackend, provider: str) -> str | None:
    """Why the backend does not run on the provider it was built for, if it does not."""
    if provider == "cpu":
        return None
    wanted = PROVIDER_NAMES[provider]
    for device, session in zip(backend.config.devices, backend.sessions):
        used = session.get_providers()
        if not used or used[0] != wanted:
            return (
                f"asked for {wanted}, which this onnxruntime build offers, but the session on "
                f"device {device} runs on {used}: no usable GPU (driver, CUDA, cuDNN or "
                "TensorRT libraries?)"
            )
    return None


def make_inputs(specs: list[TensorSpec], batch: int, seed: int) -> dict[str, np.ndarray]:
    """Inputs of `batch` rows: texts for BYTES, values in 0..16 otherwise (digits' pixels)."""
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.datatype == "BYTES":
            texts = np.empty(batch, dtype=object)
            texts[:] = [
                " ".join(WORDS[(i + j) % len(WORDS)] for j in range(24)).encode()
                for i in range(batch)
            ]
            inputs[spec.name] = texts
            continue
        shape = (batch, *(d if d >= 0 else 1 for d in spec.shape[1:]))
        values = rng.uniform(0, 16, size=shape)
        inputs[spec.name] = values.astype(NUMPY_DTYPES[spec.datatype])
    return inputs


async def measure(
    backend: OnnxBackend, batch: int, seconds: float
) -> tuple[int, float, float, dict[str, np.ndarray]]:
    """Runs, one at a time, for `seconds`: (runs, elapsed s, p50 ms, the first answer)."""
    inputs_specs, output_specs = backend.io_specs()
    inputs = make_inputs(inputs_specs, batch, seed=batch)
    outputs = [s.name for s in output_specs]
    answer = await backend.infer(inputs, outputs, None)
    for _ in range(WARMUP_RUNS - 1):
        await backend.infer(inputs, outputs, None)
    latencies: list[float] = []
    started = time.perf_counter()
    while True:
        before = time.perf_counter()
        await backend.infer(inputs, outputs, None)
        latencies.append(time.perf_counter() - before)
        if time.perf_counter() - started >= seconds:
            break
    elapsed = time.perf_counter() - started
    return len(latencies), elapsed, statistics.median(latencies) * 1000, answer


def max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(
        float(np.max(np.abs(a[n].astype(np.float64) - b[n].astype(np.float64)), initial=0.0))
        for n in a
    )


async def check_model(
    loaded: LoadedConfig, model: str, variants: list[tuple[str, bool]], args: argparse.Namespace
) -> Outcome:
    outcome = Outcome()
    name, base = backend_config(loaded, model)
    if not loaded.resolve_path(base.path).is_file():
        outcome.skipped.append(f"{model}: model file {base.path} not found")
        return outcome
    baseline: dict[int, tuple[float, dict[str, np.ndarray]]] = {}  # batch -> CPU rows/s, answer
    plain: dict[tuple[str, int], dict[str, np.ndarray]] = {}  # (provider, batch) -> answer
    for provider, io_binding in variants:
        label = provider + (" +io_binding" if io_binding else "")
        config = variant_config(base, provider, args.devices, io_binding)
        try:
            backend = BACKEND_TYPE.build(name, config, loaded.resolve_path)
        except BackendLoadError as exc:
            outcome.failures.append(f"backend '{name}' ({model}, {label}): cannot load: {exc}")
            continue
        try:
            reason = fell_back(backend, provider)
            if reason is not None:
                outcome.failures.append(f"backend '{name}' ({model}, {label}): {reason}")
                continue
            for batch in args.batch_sizes:
                try:
                    runs, elapsed, p50, answer = await measure(backend, batch, args.seconds)
                except GatewayError as exc:
                    outcome.failures.append(f"backend '{name}' ({model}, {label}): {exc}")
                    break
                row = Row(model, label, batch, runs, elapsed, p50)
                if provider == "cpu" and not io_binding:
                    baseline[batch] = (row.rows_per_s, answer)
                if batch in baseline:
                    cpu_rows_per_s, cpu_answer = baseline[batch]
                    row.speedup = row.rows_per_s / cpu_rows_per_s
                    row.max_diff = max_diff(answer, cpu_answer)
                if io_binding:
                    same = plain.get((provider, batch))
                    if same is not None and max_diff(answer, same) > IO_BINDING_TOLERANCE:
                        outcome.failures.append(
                            f"backend '{name}' ({model}, {label}, batch {batch}): answers differ "
                            f"from {provider} without IO binding by {max_diff(answer, same):.3g}"
                        )
                else:
                    plain[(provider, batch)] = answer
                outcome.rows.append(row)
        finally:
            await backend.close()
    return outcome


def table(rows: list[Row]) -> str:
    header = ("model", "provider", "batch", "req/s", "rows/s", "p50 ms", "vs CPU", "max |Δ| CPU")
    lines = [header]
    for r in rows:
        lines.append(
            (
                r.model,
                r.variant,
                str(r.batch),
                f"{r.req_per_s:.1f}",
                f"{r.rows_per_s:.1f}",
                f"{r.p50_ms:.3f}",
                "-" if r.speedup is None else f"{r.speedup:.2f}x",
                "-" if r.max_diff is None else f"{r.max_diff:.2g}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths))
        )
        for line in lines
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return 2
    for model in args.models:
        try:
            backend_config(loaded, model)
        except KeyError as exc:
            print(f"gpu_check: {exc.args[0]}", file=sys.stderr)
            return 2
    available = ort.get_available_providers()
    offered = [p for p in PROVIDERS if PROVIDER_NAMES[p] in available]
    missing = [p for p in PROVIDERS if p not in offered]
    print(f"onnxruntime {ort.__version__} ({ort.get_device()}); available providers: {available}")
    if missing:
        print(
            "GPU providers not offered by this onnxruntime build: "
            + ", ".join(f"{p} ({PROVIDER_NAMES[p]})" for p in missing)
            + ("; only CPU rows follow" if offered == ["cpu"] else "")
            + " (GPUs: pip uninstall -y onnxruntime && pip install -e '.[gpu]')"
        )
    variants = [(p, False) for p in offered]
    if args.io_binding:
        variants += [(p, True) for p in offered]
    outcome = Outcome()
    for model in args.models:
        result = asyncio.run(check_model(loaded, model, variants, args))
        outcome.rows += result.rows
        outcome.failures += result.failures
        outcome.skipped += result.skipped
    print()
    print(table(outcome.rows))
    for line in outcome.skipped:
        print(f"SKIPPED {line}")
    for line in outcome.failures:
        print(f"FAIL {line}")
    return 1 if outcome.failures else 0


if __name__ == "__main__":
    sys.exit(main())
