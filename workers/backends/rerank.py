"""Query-document relevance with a sentence-transformers CrossEncoder, for the rerank endpoint.

Implements :class:`workers.engines.pooling.model.Reranker`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from shared.catalog import ModelSpec
from workers.backends.device import resolve_device, resolve_dtype, token_limit
from workers.backends.inputs import tokenize_or_blame
from workers.engines.pooling.model import sigmoid

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

logger = logging.getLogger(__name__)


class Reranker:
    """A loaded one-logit cross-encoder; each (query, document) pair is truncated to :attr:`max_tokens`.

    Scores are the sigmoid of the logit, applied here rather than read from the checkpoint (which may
    save Identity), so they are always in [0, 1].
    """

    def __init__(self, model: CrossEncoder, max_tokens: int) -> None:
        self.model = model
        self.max_tokens = max_tokens
        self.model.max_seq_length = max_tokens

    @classmethod
    def load(cls, spec: ModelSpec) -> Reranker:
        """Load ``spec.source`` (a local folder or a Hugging Face id); it must have one output label."""
        from sentence_transformers import CrossEncoder

        device = resolve_device(spec.device)
        dtype = resolve_dtype(spec.dtype, device)
        model = CrossEncoder(spec.source, device=device, model_kwargs={"dtype": dtype})
        if model.num_labels != 1:
            raise ValueError(f"{spec.source}: a reranker needs one output label, not {model.num_labels}")
        model.eval()
        max_tokens = token_limit(model.max_seq_length, spec)
        logger.info("loaded rerank model %s on %s (%s): max %s tokens", spec.name, device, dtype, max_tokens)
        return cls(model, max_tokens)

    def count_tokens(self, query: str, documents: list[str]) -> list[int]:
        """Tokens each (query, document) pair uses after truncation, special tokens included."""
        return self.count_pair_tokens([(query, doc) for doc in documents])

    def count_pair_tokens(self, pairs: list[tuple[str, str]]) -> list[int]:
        """Like :meth:`count_tokens` for pairs that may have different queries.

        Raises :class:`InvalidRequest` for a text the tokenizer cannot take (``query`` or
        ``documents.<i>``).
        """
        if not pairs:
            return []

        def tokenize(batch: list[tuple[str, str]]) -> list[list[int]]:
            queries, documents = zip(*batch, strict=True)
            return self.model.tokenizer(
                list(queries), list(documents), truncation="longest_first", max_length=self.max_tokens
            )["input_ids"]

        def texts(i: int) -> list[tuple[str, str]]:
            return [("query", pairs[i][0]), (f"documents.{i}", pairs[i][1])]

        encoded = tokenize_or_blame(tokenize, pairs, texts, lambda i: f"documents.{i}")
        return [len(ids) for ids in encoded]

    def score(self, query: str, documents: list[str]) -> list[float]:
        """Relevance of each document to ``query`` in [0, 1] (sigmoid of the logit), in document order."""
        return self.score_pairs([(query, doc) for doc in documents])

    def score_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Like :meth:`score` for pairs that may have different queries, in one forward pass."""
        return [sigmoid(x) for x in self.logits_pairs(pairs)]

    def logits_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        """The model's raw relevance logit of each pair (TEI's ``raw_scores``), in one forward pass."""
        if not pairs:
            return []
        with torch.inference_mode():
            scores = self.model.predict(
                list(pairs),
                batch_size=len(pairs),
                show_progress_bar=False,
                activation_fn=torch.nn.Identity(),
                convert_to_numpy=True,
            )
        return [float(s) for s in scores.reshape(-1)]
