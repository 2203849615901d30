"""From a models-file entry to a running engine: the one place that knows every model kind."""

from __future__ import annotations

from shared.models import ModelKind, ModelSpec
from workers.engines.base import Engine, EventSink


def load_engine(spec: ModelSpec, sink: EventSink) -> Engine:
    """Load ``spec``'s model (once, in this process) and wrap it in its kind's engine."""
    if spec.kind is ModelKind.CHAT:
        from workers.engines.generation import GenerationEngine
        from workers.models.causal_lm import CausalLM

        return GenerationEngine(CausalLM.load(spec), spec, sink)
    if spec.kind is ModelKind.EMBEDDING:
        from workers.engines.pooling import EmbeddingEngine
        from workers.models.embedding import Embedder

        return EmbeddingEngine(Embedder.load(spec), spec)
    from workers.engines.pooling import RerankEngine
    from workers.models.rerank import Reranker

    return RerankEngine(Reranker.load(spec), spec)
