"""The config of `type: torch` backends (backends/torch_backend.py).

A TorchScript or torch.export artifact does not name its tensors the way an
ONNX graph does, so the config declares them: the forward's arguments in
order, and its results in order (a tuple, one tensor, or a dict keyed by the
output names). Validated without torch: `gateway check` and the runtime-only
install read these configs without the extra installed.
"""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from gateway.config.schema import BackendCommon, BatchingConfig, TensorSpecConfig

ArtifactFormat = Literal["torchscript", "export"]

# What a file's suffix says it is when `format` is not set: torch.jit.save's
# and torch.export.save's customary suffixes.
FORMAT_OF_SUFFIX: dict[str, ArtifactFormat] = {".pt": "torchscript", ".pt2": "export"}

_DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?")


class TorchBackendConfig(BackendCommon):
    keys_of_other_types: ClassVar[dict[str, str]] = {
        "providers": "a torch backend runs on `device` (cpu, cuda or cuda:N)",
        "require_gpu": "a torch backend runs on `device`; a CUDA device that is not usable "
        "refuses to load, it never falls back to CPU",
        "tokenizer": "a torch backend takes tensors: tokenize before calling it, or serve the "
        "text model with an onnx backend and its tokenizer",
        "inter_op_threads": "torch has one inter-op pool per process, which no backend may size",
        "retries": "an execution that failed fails the same way again; to try elsewhere, "
        "add a fallback backend to the model's route",
    }

    type: Literal["torch"]
    path: str
    # None: from the file's suffix (FORMAT_OF_SUFFIX).
    format: ArtifactFormat | None = None
    device: str = "cpu"
    # The forward's arguments and results, in order.
    inputs: list[TensorSpecConfig] = Field(min_length=1)
    outputs: list[TensorSpecConfig] = Field(min_length=1)
    # None: cores / max_concurrency, so concurrent runs do not oversubscribe the CPU.
    intra_op_threads: int | None = Field(None, ge=1)
    max_queue_wait_ms: float | None = Field(None, ge=0)
    batching: BatchingConfig | None = None

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not _DEVICE.fullmatch(device):
            raise ValueError(f"expected cpu, cuda or cuda:N (N the GPU's index), got {device!r}")
        return device

    @model_validator(mode="after")
    def _tensors_and_format(self) -> TorchBackendConfig:
        for side, specs in (("inputs", self.inputs), ("outputs", self.outputs)):
            names = [s.name for s in specs]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{side}: duplicate names {dupes}")
            for spec in specs:
                if spec.datatype == "BYTES":
                    raise ValueError(
                        f"{side}: '{spec.name}' is BYTES, which no torch tensor holds "
                        "(a torch backend takes numeric and BOOL tensors)"
                    )
        if self.format is None and PurePath(self.path).suffix not in FORMAT_OF_SUFFIX:
            raise ValueError(
                f"format: cannot tell it from the suffix of {self.path!r} "
                f"({', '.join(f'{s}: {f}' for s, f in FORMAT_OF_SUFFIX.items())}): "
                "set format: torchscript or format: export"
            )
        return self

    def artifact_format(self) -> ArtifactFormat:
        """`format`, or what the path's suffix says."""
        return self.format or FORMAT_OF_SUFFIX[PurePath(self.path).suffix]
