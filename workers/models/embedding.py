"""Sentence embeddings with sentence-transformers, for the OpenAI embeddings endpoint."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch

from shared.models import ModelSpec
from workers.models.device import resolve_device, resolve_dtype

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)


class Embedder:
    """A loaded embedding model: unit-length float32 vectors, one forward pass per :meth:`embed` call.

    Inputs longer than :attr:`max_tokens` are silently truncated (special tokens included), as OpenAI-style
    servers for local models commonly do; :meth:`count_tokens` reports the tokens actually used.
    """

    def __init__(self, model: SentenceTransformer, max_tokens: int) -> None:
        self.model = model
        self.max_tokens = max_tokens
        # The tokenizer truncates to model_max_length; keep it equal to what we promise.
        self.model.max_seq_length = max_tokens

    @classmethod
    def load(cls, spec: ModelSpec) -> Embedder:
        """Load ``spec.source`` from local files on the device and dtype the spec asks for."""
        from sentence_transformers import SentenceTransformer

        device = resolve_device(spec.device)
        dtype = resolve_dtype(spec.dtype, device)
        model = SentenceTransformer(
            spec.source, device=device, local_files_only=True, model_kwargs={"dtype": dtype}
        )
        model.eval()
        max_tokens = model.max_seq_length or spec.context_length
        if max_tokens is None:
            raise ValueError(f"{spec.source}: no max sequence length; set context_length in the models file")
        if spec.context_length is not None:
            max_tokens = min(max_tokens, spec.context_length)
        logger.info(
            "loaded embedding model %s on %s (%s): dim %s, max %s tokens",
            spec.name,
            device,
            dtype,
            model.get_embedding_dimension(),
            max_tokens,
        )
        return cls(model, max_tokens)

    @property
    def dimension(self) -> int:
        """Length of each embedding vector."""
        return int(self.model.get_embedding_dimension())

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens each input uses after truncation, special tokens included."""
        if not texts:
            return []
        encoded = self.model.tokenizer(list(texts), truncation=True, max_length=self.max_tokens)
        return [len(ids) for ids in encoded["input_ids"]]

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` in one forward pass: float32 ``[n, dim]``, each row L2-normalised."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with torch.inference_mode():
            vectors = self.model.encode(
                list(texts),
                batch_size=len(texts),
                show_progress_bar=False,
                convert_to_numpy=True,
                normalize_embeddings=True,
            )
        return np.asarray(vectors, dtype=np.float32)
