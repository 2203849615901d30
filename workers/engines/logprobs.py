"""Logprobs as the wire carries them: token strings and bytes looked up once per token id."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from shared.jobs import TokenLogprob, TopLogprob
from workers.engines.sampling import RowLogprobs


class TokenTexts:
    """Token strings and bytes for logprob entries, cached by id (engine thread only).

    ``token`` is the token's bytes decoded on their own (half a character shows as U+FFFD);
    ``bytes`` keeps the exact bytes so that a client can put split characters back together.
    """

    def __init__(self, token_bytes: Callable[[Sequence[int]], list[bytes]]) -> None:
        self._token_bytes = token_bytes
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def _lookup(self, ids: Sequence[int]) -> None:
        missing = list(dict.fromkeys(i for i in ids if i not in self._cache))
        if missing:
            for token_id, raw in zip(missing, self._token_bytes(missing), strict=True):
                self._cache[token_id] = (raw.decode("utf-8", errors="replace"), list(raw))

    def _top(self, token_id: int, logprob: float) -> TopLogprob:
        text, raw = self._cache[token_id]
        return TopLogprob(id=token_id, token=text, bytes=raw, logprob=logprob)

    def entry(self, token_id: int, row: RowLogprobs | None) -> TokenLogprob:
        """The entry of a chosen token; ``row`` None gives a logprob of None (a prompt's first token)."""
        top = row.top if row is not None else []
        self._lookup([token_id, *(i for i, _ in top)])
        text, raw = self._cache[token_id]
        return TokenLogprob(
            id=token_id,
            token=text,
            bytes=raw,
            logprob=row.logprob if row is not None else None,
            top=[self._top(i, value) for i, value in top],
        )

    def prompt(self, ids: Sequence[int], rows: Sequence[RowLogprobs]) -> list[TokenLogprob]:
        """Entries of a prompt's tokens: the first has no logprob, ``rows`` score the others."""
        if not ids:
            return []
        return [self.entry(ids[0], None), *(self.entry(i, row) for i, row in zip(ids[1:], rows, strict=True))]
