"""Sentence embeddings on ONNX Runtime or OpenVINO, from a cached export of the checkpoint.

Implements :class:`workers.engines.pooling.model.Embedder` with the torch backend's semantics
(``workers.backends.embedding``): the tokenizer sentence-transformers uses, truncation to
:attr:`max_tokens`, the checkpoint's own pooling modules and L2-normalised float32 rows; only the
forward pass runs elsewhere. See docs/embeddings.md.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from shared.catalog import ModelSpec
from workers.backends.device import token_limit
from workers.backends.inputs import tokenize_or_blame
from workers.backends.onnx_graphs import build_embedding
from workers.backends.onnx_runtime import Graph, load_export, pad

logger = logging.getLogger(__name__)


class ExportedEmbedder:
    """A loaded exported embedding model: one graph run per :meth:`embed` call."""

    def __init__(self, graph: Graph, tokenizer, dimension: int, inputs: list[str], max_tokens: int) -> None:
        self.graph = graph
        self.tokenizer = tokenizer
        self._dimension = dimension
        self.inputs = inputs
        self.max_tokens = max_tokens
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @classmethod
    def load(cls, spec: ModelSpec, export_root: Path | None = None) -> ExportedEmbedder:
        """Load ``spec.source``'s export for ``spec.backend`` (onnx or openvino), exporting it first if
        it is missing or stale."""
        from transformers import AutoTokenizer

        path, manifest, graph = load_export(spec, build_embedding, export_root)
        tokenizer = AutoTokenizer.from_pretrained(path)
        max_tokens = token_limit(manifest["max_seq_length"], spec)
        logger.info(
            "loaded embedding model %s on %s from %s: dim %s, max %s tokens",
            spec.name,
            spec.backend,
            path,
            manifest["dimension"],
            max_tokens,
        )
        embedder = cls(graph, tokenizer, int(manifest["dimension"]), list(manifest["inputs"]), max_tokens)
        # Settles the tokenizer's truncation state now: the engine's streams then encode at once
        # without one resetting it while another reads it.
        embedder.count_tokens(["warm up"])
        return embedder

    @property
    def dimension(self) -> int:
        """Length of each embedding vector."""
        return self._dimension

    @property
    def vocab_size(self) -> int:
        """Token ids of inputs given as ids must be below this."""
        return len(self.tokenizer)

    def count_tokens(self, inputs: list[str | list[int]]) -> list[int]:
        """Tokens each input uses after truncation, special tokens included.

        Raises :class:`InvalidRequest` for an input the tokenizer cannot take (``input.<i>``).
        """
        return [len(ids) for ids in self._token_ids(inputs)]

    def embed(self, inputs: list[str | list[int]]) -> np.ndarray:
        """Embed texts or token-id lists in one graph run: float32 ``[n, dim]``, rows L2-normalised.

        Token ids are used as they are and cut to :attr:`max_tokens`, as the torch backend does.
        """
        if not inputs:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.graph(pad(self._token_ids(inputs), self._pad, self.inputs))
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def _token_ids(self, inputs: list[str | list[int]]) -> list[list[int]]:
        """Token ids of each input; raises :class:`InvalidRequest` naming an input the tokenizer refuses."""
        positions = [i for i, item in enumerate(inputs) if isinstance(item, str)]
        texts = [inputs[i] for i in positions]

        def tokenize(batch: list[str]) -> list[list[int]]:
            return self.tokenizer(batch, truncation=True, max_length=self.max_tokens)["input_ids"]

        def param(k: int) -> str:
            return f"input.{positions[k]}"

        encoded = iter(
            tokenize_or_blame(tokenize, texts, lambda k: [(param(k), texts[k])], param) if texts else []
        )
        return [list(next(encoded)) if isinstance(item, str) else item[: self.max_tokens] for item in inputs]
