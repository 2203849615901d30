"""From a models-file entry to a running engine: the one place that knows every model kind."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from pathlib import Path

from shared.catalog import ModelBackend, ModelKind, ModelSpec
from workers.engines.base import Engine, EventSink

logger = logging.getLogger(__name__)

#: What the worker calls to make each served model's engine: :func:`load_engine` unless a test or
#: benchmark passes its own to :func:`workers.main.main` (falling back to this one for the rest).
EngineLoader = Callable[[ModelSpec, EventSink], Engine]


def load_engine(spec: ModelSpec, sink: EventSink) -> Engine:
    """Load ``spec``'s model (once, in this process) and wrap it in its kind's engine."""
    if spec.kind is ModelKind.CHAT:
        from workers.backends.causal_lm import CausalLM
        from workers.engines.generation import GenerationEngine

        return GenerationEngine(CausalLM.load(spec), spec, sink)
    from workers.engines.pooling import EmbeddingEngine, RerankEngine

    backend = pooling_backend(spec)
    if backend is not ModelBackend.TORCH:
        from workers.backends.onnx_embedding import ExportedEmbedder
        from workers.backends.onnx_graphs import UnsupportedCheckpoint
        from workers.backends.onnx_rerank import ExportedReranker
        from workers.backends.onnx_runtime import cpu_plan

        exported = cpu_plan(spec.model_copy(update={"backend": backend}))
        try:
            if spec.kind is ModelKind.EMBEDDING:
                return EmbeddingEngine(ExportedEmbedder.load(exported), exported)
            return RerankEngine(ExportedReranker.load(exported), exported)
        except UnsupportedCheckpoint as exc:
            if spec.backend is not ModelBackend.AUTO:
                raise
            logger.warning("model %s: %s; serving it on torch", spec.name, exc)
    if spec.kind is ModelKind.EMBEDDING:
        from workers.backends.embedding import Embedder

        return EmbeddingEngine(Embedder.load(spec), spec)
    from workers.backends.rerank import Reranker

    return RerankEngine(Reranker.load(spec), spec)


def pooling_backend(spec: ModelSpec) -> ModelBackend:
    """The backend an embedding or rerank model runs on: the models file's, or for ``auto`` ONNX
    Runtime on the CPU (the fastest measured there, bench/RESULTS.md) and torch on an accelerator."""
    if spec.backend is not ModelBackend.AUTO:
        return spec.backend
    from workers.backends.device import resolve_device

    if resolve_device(spec.device) != "cpu":
        return ModelBackend.TORCH
    if importlib.util.find_spec("onnxruntime") is None:  # an install without it: still serves
        logger.info("model %s: onnxruntime is not installed; serving it on torch", spec.name)
        return ModelBackend.TORCH
    return ModelBackend.ONNX


def checkpoint_time(source: str) -> int | None:
    """When ``spec.source``'s checkpoint was written: its config's modification time (a local folder,
    or a hub id's cached copy); None when there is no such file."""
    config = Path(source) / "config.json"
    if not config.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, "config.json")
        except Exception:  # not a hub id
            return None
        if not isinstance(cached, str):
            return None
        config = Path(cached)
    return int(os.path.getmtime(config))
