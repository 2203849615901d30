"""The models implement the protocols their engines are written against (there is no type checker in CI)."""

from __future__ import annotations

import inspect

import pytest

from workers.backends import causal_lm, embedding, fake_lm, onnx_embedding, onnx_rerank, rerank
from workers.engines.generation.model import DecodeBatch, LanguageModel
from workers.engines.pooling.model import Embedder, Reranker


def members(protocol: type) -> dict[str, object]:
    """What a protocol asks for: its methods and properties (``__len__`` included)."""
    return {
        name: value
        for name, value in vars(protocol).items()
        if (not name.startswith("_") or name == "__len__")
        and (callable(value) or isinstance(value, property))
    }


@pytest.mark.parametrize(
    ("protocol", "implementation"),
    [
        (LanguageModel, causal_lm.CausalLM),
        (LanguageModel, fake_lm.FakeLM(peak=1.0)),
        (DecodeBatch, causal_lm.KVBatch),
        (DecodeBatch, fake_lm.FakeBatch),
        (Embedder, embedding.Embedder),
        (Reranker, rerank.Reranker),
        (Embedder, onnx_embedding.ExportedEmbedder),
        (Reranker, onnx_rerank.ExportedReranker),
    ],
    ids=lambda value: getattr(value, "__name__", type(value).__name__),
)
def test_models_implement_their_engines_protocol(protocol: type, implementation: object) -> None:
    cls = implementation if isinstance(implementation, type) else type(implementation)
    for name, wanted in members(protocol).items():
        assert hasattr(implementation, name), f"{cls.__name__} lacks {name}"
        if isinstance(wanted, property):
            continue  # a property or a plain attribute both do
        given = getattr(cls, name)
        assert callable(given), f"{cls.__name__}.{name} is not a method"
        assert list(inspect.signature(given).parameters) == list(inspect.signature(wanted).parameters), name
