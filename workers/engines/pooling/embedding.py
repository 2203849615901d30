"""The embedding engine: the inputs of embedding jobs, pooled into shared forward passes."""

from __future__ import annotations

import numpy as np

from shared.catalog import ModelSpec
from shared.errors import InvalidRequest
from shared.jobs import EmbedJob, EmbedResult
from workers.engines.pooling.engine import PoolingEngine, usage_of
from workers.engines.pooling.model import Embedder


class EmbeddingEngine(PoolingEngine):
    """Embeds the inputs of :class:`EmbedJob` s, pooling concurrent jobs into shared forward passes."""

    job_type = EmbedJob

    def __init__(self, embedder: Embedder, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.embedder = embedder

    def _items(self, job: EmbedJob) -> list[str | list[int]]:
        return job.inputs

    def _validate(self, job: EmbedJob) -> None:
        if job.dimensions is not None:
            dimension = self.embedder.dimension
            if not 1 <= job.dimensions <= dimension:
                raise InvalidRequest(
                    f"dimensions must be between 1 and {dimension}, this model's embedding size",
                    param="dimensions",
                )
        for i, item in enumerate(job.inputs):
            if isinstance(item, list):
                vocab = self.embedder.vocab_size
                if not all(0 <= token < vocab for token in item):
                    raise InvalidRequest(
                        f"input {i} has a token id outside the vocabulary of {vocab}", param=f"input.{i}"
                    )

    def _count_tokens(self, items: list[str | list[int]]) -> list[int]:
        return self.embedder.count_tokens(items)

    def _forward(self, items: list[str | list[int]]) -> list[np.ndarray]:
        return list(self.embedder.embed(items))

    def _result(self, job: EmbedJob, outputs: list[np.ndarray], tokens: list[int]) -> EmbedResult:
        vectors = np.stack(outputs)
        if job.dimensions is not None and job.dimensions < vectors.shape[1]:
            # Matryoshka-style: keep the leading dimensions and make each vector unit length again.
            vectors = vectors[:, : job.dimensions]
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return EmbedResult(
            embeddings=vectors.astype(np.float32).tolist(), usage=usage_of(tokens), input_tokens=tokens
        )
