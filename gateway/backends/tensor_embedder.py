"""A local tensor backend serving `/v1/embeddings`: text in as a BYTES [-1]
tensor, FP32 [-1, dim] vectors out, through the same queue and batcher as v2
infer calls (so OpenAI-style and v2 callers share batches)."""

from __future__ import annotations

import numpy as np

from gateway.backends.base import Backend
from gateway.core.errors import BackendFailed, InvalidInput
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

    def ready(self) -> bool:
        return self.backend.ready()

    async def embed(
        self, texts: list[str], timeout_s: float, dimensions: int | None = None
    ) -> EmbeddingResult:
        if dimensions is not None and self.dimensions is not None and dimensions != self.dimensions:
            raise InvalidInput(
                f"dimensions: backend '{self.name}' returns {self.dimensions} "
                f"dimensions, got a request for {dimensions}"
            )
        batch = np.empty(len(texts), dtype=object)
        batch[:] = [t.encode() for t in texts]
        outputs = await self.backend.infer({self.input_name: batch}, [self.output_name], timeout_s)
        vectors = outputs.get(self.output_name)
        if not isinstance(vectors, np.ndarray) or vectors.ndim != 2 or len(vectors) != len(texts):
            raise BackendFailed(f"backend '{self.name}' did not return one vector per text")
        # Local models have no token price: usage stays unknown rather than guessed.
        return EmbeddingResult(vectors.astype(np.float32, copy=False), None)
