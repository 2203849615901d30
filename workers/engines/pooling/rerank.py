"""The rerank engine: (query, document) pairs of rerank jobs, pooled into shared forward passes."""

from __future__ import annotations

from shared.catalog import ModelSpec
from shared.jobs import RerankJob, RerankResult
from workers.engines.pooling.engine import PoolingEngine, usage_of
from workers.engines.pooling.model import Reranker, sigmoid


class RerankEngine(PoolingEngine):
    """Scores the documents of :class:`RerankJob` s; pairs of different queries share forward passes."""

    job_type = RerankJob
    _input_param = "documents"

    def __init__(self, reranker: Reranker, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.reranker = reranker

    def _items(self, job: RerankJob) -> list[tuple[str, str]]:
        return [(job.query, doc) for doc in job.documents]

    def _count_tokens(self, items: list[tuple[str, str]]) -> list[int]:
        return self.reranker.count_pair_tokens(items)

    def _forward(self, items: list[tuple[str, str]]) -> list[float]:
        # Logits: jobs that want raw scores and jobs that want probabilities share a pass.
        return self.reranker.logits_pairs(items)

    def _result(self, job: RerankJob, outputs: list[float], tokens: list[int]) -> RerankResult:
        scores = outputs if job.raw_scores else [sigmoid(x) for x in outputs]
        return RerankResult(scores=scores, usage=usage_of(tokens))
