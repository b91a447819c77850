"""Checks the GPU image on a machine with an NVIDIA GPU (it cannot run where the
suite runs: no GPU, no registry). Builds `--target gpu`, serves the default
config with `require_gpu: true` on every ONNX backend (so a fallback to CPU
fails the start instead of passing quietly), and checks: the container gets
ready, the onnx sessions run on CUDA (or TensorRT), the README's digits request
answers class 0, an embeddings call answers 384 floats, and SIGTERM exits 0.

    python3 deploy/check_gpu_image.py [--engine docker|podman] [--skip-build]

Standard library only: run it with the machine's python3. docker needs the
NVIDIA Container Toolkit (`--gpus all`); podman its CDI spec
(`--device nvidia.com/gpu=all`). docs/deploy.md#the-gpu-image.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "inference-gateway:gpu-check"
DIGIT_ZERO = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4,
              12, 0, 0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10,
              12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]  # fmt: skip


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    print("+", " ".join(argv), flush=True)
    return subprocess.run(argv, check=check, text=True, capture_output=True)


def post(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer: dict[str, object] = json.load(response)
        return answer


def gpu_config() -> str:
    """The default config with require_gpu on each onnx backend (text edit: the
    checker needs no YAML library)."""
    text = (ROOT / "config/gateway.yaml").read_text()
    marker = "    providers: [tensorrt, cuda, cpu]"
    assert text.count(marker) >= 1, "config/gateway.yaml changed: update this checker"
    return text.replace(marker, marker + "\n    require_gpu: true")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("docker", "podman"), default="docker")
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--port", type=int, default=18000)
    args = parser.parse_args()
    engine = args.engine
    if not args.skip_build:
        run(engine, "build", "--target", "gpu", "-t", IMAGE, str(ROOT))
    gpus = ["--gpus", "all"] if engine == "docker" else ["--device", "nvidia.com/gpu=all"]
    with tempfile.TemporaryDirectory() as config_dir:
        (Path(config_dir) / "gateway.yaml").write_text(gpu_config())
        name = f"gateway-gpu-check-{int(time.time())}"
        run(
            engine, "run", "-d", "--name", name, *gpus, "--read-only", "--tmpfs", "/tmp",
            "-p", f"127.0.0.1:{args.port}:8000",
            "-v", f"{config_dir}:/etc/gateway:ro",
            "-e", "GATEWAY_CONFIG=/etc/gateway/gateway.yaml",
            IMAGE,
        )  # fmt: skip
        base = f"http://127.0.0.1:{args.port}"
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=5) as r:
                        if r.status == 200:
                            break
                except (urllib.error.URLError, ConnectionError):
                    pass
                state = run(engine, "inspect", "-f", "{{.State.Running}}", name).stdout.strip()
                if state != "true" or time.monotonic() > deadline:
                    print(run(engine, "logs", name, check=False).stderr)
                    print("FAIL: the container did not get ready (no usable GPU?)")
                    return 1
                time.sleep(1)
            logs = run(engine, "logs", name).stderr
            if "CUDAExecutionProvider" not in logs and "TensorrtExecutionProvider" not in logs:
                print(logs)
                print("FAIL: no onnx session runs on CUDA or TensorRT")
                return 1
            digits = post(
                f"{base}/v2/models/digits/infer",
                {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64],
                             "data": DIGIT_ZERO}]},
            )  # fmt: skip
            probabilities = digits["outputs"][0]["data"]  # type: ignore[index]
            best = max(range(10), key=lambda i: probabilities[i])
            embedded = post(f"{base}/v1/embeddings", {"model": "embeddings", "input": ["hello"]})
            width = len(embedded["data"][0]["embedding"])  # type: ignore[index]
            run(engine, "stop", "-t", "30", name)
            code = run(engine, "inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip()
        finally:
            run(engine, "rm", "-f", name, check=False)
    print(f"digits: class {best}; embeddings: {width} floats; exit code after SIGTERM: {code}")
    ok = best == 0 and width == 384 and code == "0"
    print("OK: the GPU image serves on the GPU" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
