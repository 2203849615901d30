"""What a grammar library needs to know of a model's tokenizer, whatever the tokenizer's kind."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Vocabulary:
    """Token ``i`` stands for ``tokens[i]``; ``len(tokens)`` is the logits' width."""

    #: The bytes each token decodes to (a special token: its literal text).
    tokens: Sequence[bytes]
    #: Special tokens (control tokens, never plain text inside a grammar's strings).
    special: frozenset[int]
    #: Tokens that end a choice: a grammar allows them once it is complete.
    eos: frozenset[int]
    #: Tokenizes plain text (no special tokens added).
    encode: Callable[[str], list[int]]

    def special_id(self, text: str) -> int | None:
        """The special token whose text is ``text``, if there is one."""
        data = text.encode()
        return next((i for i in sorted(self.special) if self.tokens[i] == data), None)
