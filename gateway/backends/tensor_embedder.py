"""A local tensor backend serving `/v1/embeddings`: text in as a BYTES [-1]
tensor, FP32 [-1, dim] vectors out, through the same queue and batcher as v2
infer calls (so OpenAI-style and v2 callers share batches).

A request of more texts than the backend runs at once (`max_execution_rows`:
its batching.max_batch_size) is sent in parts of that many texts, one after
another, each queued on its own: other callers' requests run between them, and
once the deadline has passed the remaining parts are never run.
"""

from __future__ import annotations

import time

import numpy as np

from gateway.backends.base import Backend
from gateway.core.errors import BackendFailed, DeadlineExceeded, InvalidInput
from gateway.core.llm import EmbeddingResult


class TensorEmbedder:
    def __init__(
        self, backend: Backend, input_name: str, output_name: str, dimensions: int | None = None
    ) -> None:
        self.backend = backend
        self.name = backend.name
        self.input_name = input_name
        self.output_name = output_name
        self.dimensions = dimensions  # from the signature; None: any
        # Texts per call of the backend (None: all of a request's at once).
        self.part_rows: int | None = getattr(backend, "max_execution_rows", None)

    def ready(self) -> bool:
        return self.backend.ready()

    async def embed(
        self, texts: list[str], deadline: float, dimensions: int | None = None
    ) -> EmbeddingResult:
        if dimensions is not None and self.dimensions is not None and dimensions != self.dimensions:
            raise InvalidInput(
                f"dimensions: backend '{self.name}' returns {self.dimensions} "
                f"dimensions, got a request for {dimensions}"
            )
        step = self.part_rows or len(texts)
        if len(texts) <= step:
            vectors = await self._embed_part(texts, deadline)
        else:
            parts: list[np.ndarray] = []
            for start in range(0, len(texts), step):
                if deadline - time.monotonic() <= 0:
                    raise DeadlineExceeded(
                        f"backend '{self.name}' did not embed {len(texts)} texts within the "
                        f"deadline ({start} done, in parts of {step})"
                    )
                part = await self._embed_part(texts[start : start + step], deadline)
                if parts and part.shape[1] != parts[0].shape[1]:
                    raise BackendFailed(
                        f"backend '{self.name}' returned vectors of {parts[0].shape[1]} and "
                        f"{part.shape[1]} dimensions for the parts of one request"
                    )
                parts.append(part)
            vectors = np.concatenate(parts)
        # Local models have no token price: usage stays unknown rather than guessed.
        return EmbeddingResult(vectors, None)

    async def _embed_part(self, texts: list[str], deadline: float) -> np.ndarray:
        batch = np.empty(len(texts), dtype=object)
        batch[:] = [t.encode() for t in texts]
        outputs = await self.backend.infer({self.input_name: batch}, [self.output_name], deadline)
        vectors = outputs.get(self.output_name)
        if not isinstance(vectors, np.ndarray) or vectors.ndim != 2 or len(vectors) != len(texts):
            raise BackendFailed(f"backend '{self.name}' did not return one vector per text")
        return vectors.astype(np.float32, copy=False)
