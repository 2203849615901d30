"""Micro-batching engines for embeddings and rerank (see ``engine``).

``model``: the protocols an embedding or rerank model implements for its engine; ``engine``: the
batching loop; ``passes``: how a batch is cut into forward passes; ``embedding``, ``rerank``: what a
job of each kind is made of.
"""

from workers.engines.pooling.embedding import EmbeddingEngine
from workers.engines.pooling.engine import PoolingEngine, usage_of
from workers.engines.pooling.model import Embedder, Reranker
from workers.engines.pooling.passes import plan_passes, spread_passes
from workers.engines.pooling.rerank import RerankEngine

__all__ = [
    "Embedder",
    "EmbeddingEngine",
    "PoolingEngine",
    "RerankEngine",
    "Reranker",
    "plan_passes",
    "spread_passes",
    "usage_of",
]
