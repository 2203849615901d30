"""Sentence embeddings with sentence-transformers, for the OpenAI embeddings endpoint.

Implements :class:`workers.engines.pooling.model.Embedder`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch

from shared.catalog import ModelSpec
from workers.backends.device import resolve_device, resolve_dtype, token_limit
from workers.backends.inputs import tokenize_or_blame

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
        """Load ``spec.source`` (a local folder or a Hugging Face id) on the spec's device and dtype."""
        from sentence_transformers import SentenceTransformer

        device = resolve_device(spec.device)
        dtype = resolve_dtype(spec.dtype, device)
        model = SentenceTransformer(spec.source, device=device, model_kwargs={"dtype": dtype})
        model.eval()
        max_tokens = token_limit(model.max_seq_length, spec)
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

    @property
    def vocab_size(self) -> int:
        """Token ids of inputs given as ids must be below this."""
        return len(self.model.tokenizer)

    def count_tokens(self, inputs: list[str | list[int]]) -> list[int]:
        """Tokens each input uses after truncation, special tokens included.

        Raises :class:`InvalidRequest` for an input the tokenizer cannot take (``input.<i>``).
        """
        return [len(ids) for ids in self._token_ids(inputs)]

    def embed(self, inputs: list[str | list[int]]) -> np.ndarray:
        """Embed texts or token-id lists in one forward pass: float32 ``[n, dim]``, rows L2-normalised.

        Token ids are used as they are (the client's ids, special tokens included or not) and cut
        to :attr:`max_tokens`.
        """
        if not inputs:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if all(isinstance(item, str) for item in inputs):
            with torch.inference_mode():
                vectors = self.model.encode(
                    list(inputs),
                    batch_size=len(inputs),
                    show_progress_bar=False,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                )
            return np.asarray(vectors, dtype=np.float32)
        return self._embed_ids(self._token_ids(inputs))

    def _token_ids(self, inputs: list[str | list[int]]) -> list[list[int]]:
        """Token ids of each input; raises :class:`InvalidRequest` naming an input the tokenizer refuses."""
        positions = [i for i, item in enumerate(inputs) if isinstance(item, str)]
        texts = [inputs[i] for i in positions]

        def tokenize(batch: list[str]) -> list[list[int]]:
            return self.model.tokenizer(batch, truncation=True, max_length=self.max_tokens)["input_ids"]

        def param(k: int) -> str:
            return f"input.{positions[k]}"

        encoded = iter(
            tokenize_or_blame(tokenize, texts, lambda k: [(param(k), texts[k])], param) if texts else []
        )
        return [list(next(encoded)) if isinstance(item, str) else item[: self.max_tokens] for item in inputs]

    def _embed_ids(self, ids: list[list[int]]) -> np.ndarray:
        """The model's forward pass on right-padded token ids (what ``encode`` runs after tokenizing)."""
        tokenizer = self.model.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        width = max(len(row) for row in ids)
        input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in ids], dtype=torch.long)
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids], dtype=torch.long)
        features = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in tokenizer.model_input_names:
            features["token_type_ids"] = torch.zeros_like(input_ids)
        device = self.model.device
        with torch.inference_mode():
            out = self.model({name: t.to(device) for name, t in features.items()})
            vectors = torch.nn.functional.normalize(out["sentence_embedding"].float(), dim=-1)
        return vectors.cpu().numpy().astype(np.float32)
