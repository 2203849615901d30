"""What the pooling engines need from their models: the protocols they are written against.

Implemented by sentence-transformers models (``workers.backends.embedding``, ``workers.backends.rerank``)
and by the fakes of the tests; the engines import neither.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np


class Embedder(Protocol):
    """An embedding model: unit-length vectors, one forward pass per :meth:`embed` call."""

    @property
    def dimension(self) -> int:
        """Length of each embedding vector."""
        ...

    @property
    def vocab_size(self) -> int:
        """Token ids of inputs given as ids must be below this."""
        ...

    def count_tokens(self, inputs: list[str | list[int]]) -> list[int]:
        """Tokens each input uses after truncation; raises :class:`InvalidRequest` naming an input
        the tokenizer cannot take (``input.<i>``)."""
        ...

    def embed(self, inputs: list[str | list[int]]) -> np.ndarray:
        """Embed texts or token-id lists in one forward pass: float32 ``[n, dim]``, rows L2-normalised."""
        ...


class Reranker(Protocol):
    """A cross-encoder: one relevance logit per (query, document) pair; its score is :func:`sigmoid`."""

    def count_pair_tokens(self, pairs: list[tuple[str, str]]) -> list[int]:
        """Tokens each pair uses after truncation; raises :class:`InvalidRequest` naming a text the
        tokenizer cannot take (``query`` or ``documents.<i>``)."""
        ...

    def logits_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        """The relevance logit of each pair (TEI's ``raw_scores``), in one forward pass."""
        ...


def sigmoid(x: float) -> float:
    """The logistic function, without overflow for large ``|x|``: a rerank score from its logit."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)
