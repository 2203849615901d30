"""Cross-encoder relevance on ONNX Runtime or OpenVINO, from a cached export of the checkpoint.

Implements :class:`workers.engines.pooling.model.Reranker` with the torch backend's semantics
(``workers.backends.rerank``): the CrossEncoder's tokenizer on (query, document) pairs, truncated
``longest_first`` to :attr:`max_tokens`, and the raw logit, to which the engine applies the sigmoid.
"""

from __future__ import annotations

import logging
from pathlib import Path

from shared.catalog import ModelSpec
from workers.backends.device import token_limit
from workers.backends.inputs import tokenize_or_blame
from workers.backends.onnx_graphs import build_rerank
from workers.backends.onnx_runtime import Graph, load_export, pad
from workers.engines.pooling.model import sigmoid

logger = logging.getLogger(__name__)


class ExportedReranker:
    """A loaded exported one-logit cross-encoder; each pair is truncated to :attr:`max_tokens`."""

    def __init__(self, graph: Graph, tokenizer, inputs: list[str], max_tokens: int) -> None:
        self.graph = graph
        self.tokenizer = tokenizer
        self.inputs = inputs
        self.max_tokens = max_tokens
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @classmethod
    def load(cls, spec: ModelSpec, export_root: Path | None = None) -> ExportedReranker:
        """Load ``spec.source``'s export for ``spec.backend``, exporting it first if missing or stale."""
        from transformers import AutoTokenizer

        path, manifest, graph = load_export(spec, build_rerank, export_root)
        tokenizer = AutoTokenizer.from_pretrained(path)
        max_tokens = token_limit(manifest["max_seq_length"], spec)
        logger.info(
            "loaded rerank model %s on %s from %s: max %s tokens", spec.name, spec.backend, path, max_tokens
        )
        reranker = cls(graph, tokenizer, list(manifest["inputs"]), max_tokens)
        # Settles the tokenizer's truncation state now: the engine's streams then encode at once.
        reranker.count_tokens("warm", ["up"])
        return reranker

    def count_tokens(self, query: str, documents: list[str]) -> list[int]:
        """Tokens each (query, document) pair uses after truncation, special tokens included."""
        return self.count_pair_tokens([(query, doc) for doc in documents])

    def count_pair_tokens(self, pairs: list[tuple[str, str]]) -> list[int]:
        """Tokens each pair uses after truncation; raises :class:`InvalidRequest` naming a text the
        tokenizer cannot take (``query`` or ``documents.<i>``)."""
        return [len(ids) for ids, _ in self._encode(pairs)]

    def score(self, query: str, documents: list[str]) -> list[float]:
        """Relevance of each document to ``query`` in [0, 1] (sigmoid of the logit), in document order."""
        return [sigmoid(x) for x in self.logits_pairs([(query, doc) for doc in documents])]

    def logits_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        """The model's raw relevance logit of each pair, in one graph run."""
        if not pairs:
            return []
        encoded = self._encode(pairs)
        ids, types = [row for row, _ in encoded], [segments for _, segments in encoded]
        logits = self.graph(pad(ids, self._pad, self.inputs, types))
        return [float(x) for x in logits.reshape(-1)]

    def _encode(self, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """Each pair's token ids and segment ids (query 0, document 1), truncated ``longest_first``."""
        if not pairs:
            return []

        def tokenize(batch: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
            queries, documents = zip(*batch, strict=True)
            encoded = self.tokenizer(
                list(queries),
                list(documents),
                truncation="longest_first",
                max_length=self.max_tokens,
                return_token_type_ids=True,
            )
            return list(zip(encoded["input_ids"], encoded["token_type_ids"], strict=True))

        def texts(i: int) -> list[tuple[str, str]]:
            return [("query", pairs[i][0]), (f"documents.{i}", pairs[i][1])]

        return tokenize_or_blame(tokenize, pairs, texts, lambda i: f"documents.{i}")
