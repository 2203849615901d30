"""What the generation engine needs from a causal language model: the protocols it is written against.

Implemented by a Hugging Face model (``workers.backends.causal_lm``) and by a deterministic fake
(``workers.backends.fake_lm``); the engine imports neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from shared.jobs import ChatMessage
from shared.tools import Tool
from workers.constraints.vocabulary import Vocabulary
from workers.tools import ToolFormat


class DecodeBatch(Protocol):
    """The KV caches of sequences decoded together; row ``i`` is the engine's ``i``-th running sequence."""

    def __len__(self) -> int: ...

    @property
    def joinable(self) -> bool:
        """Whether :meth:`join` may add rows while this batch has rows of its own."""
        ...

    @property
    def multi_token(self) -> bool:
        """Whether :meth:`step` may feed a row more than one token."""
        ...

    def step(self, tokens: Sequence[Sequence[int]]) -> torch.Tensor:
        """Feed each row its tokens (one, or several where :attr:`multi_token`); returns each row's
        next-token logits after its last token, ``[rows, vocab]``."""
        ...

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only ``rows``, in that order; a repeated row gets its own copy of the cache."""
        ...

    def join(self, other: DecodeBatch) -> None:
        """Append the rows of ``other`` (a batch from the same model) after this batch's rows."""
        ...


class LanguageModel(Protocol):
    """What the engine needs from a causal language model and its tokenizer."""

    @property
    def context_length(self) -> int:
        """Most tokens (prompt plus completion) one sequence may hold."""
        ...

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Tokens that end a choice with finish reason ``stop``."""
        ...

    @property
    def vocab_size(self) -> int:
        """Token ids are ``0 .. vocab_size - 1``; the logits have this many columns."""
        ...

    @property
    def tool_format(self) -> ToolFormat | None:
        """The format the model writes tool calls in; None: its chat template cannot render tools."""
        ...

    def chat_prompt(self, messages: Sequence[ChatMessage], tools: Sequence[Tool] | None = None) -> list[int]:
        """Token ids of the rendered chat (offering ``tools``), ready for the assistant's turn; raises
        :class:`InvalidRequest`."""
        ...

    def completion_prompt(self, text: str) -> list[int]:
        """Token ids of a plain-text prompt."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` without special tokens; a cut multi-byte character comes out as U+FFFD."""
        ...

    def token_bytes(self, ids: Sequence[int]) -> list[bytes]:
        """The bytes each token stands for, for logprobs (a special token: its literal text)."""
        ...

    def vocabulary(self) -> Vocabulary:
        """Every token's bytes, which are special and which end a choice: what grammars are built on."""
        ...

    def prompt_logits(self, ids: Sequence[int]) -> torch.Tensor:
        """Logits ``[len(ids) - 1, vocab]`` of a prompt: row ``t`` predicts ``ids[t + 1]`` (for echo)."""
        ...

    def prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, DecodeBatch]:
        """Run the prompts; returns each one's next-token logits ``[prompts, vocab]`` and their batch."""
        ...
