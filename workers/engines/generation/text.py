"""A choice's text as its tokens arrive: incremental detokenization and stop strings."""

from __future__ import annotations

from collections.abc import Callable, Sequence


class Detokenizer:
    """Incremental detokenization over a short window of recent ids (vLLM's prefix/read offsets).

    Decoding only the window keeps each step O(window); decoding a few earlier ids along with the new
    ones and keeping the difference keeps tokenizers that strip a leading space right.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], context: Sequence[int]) -> None:
        self._decode = decode
        self._ids = list(context)
        self._prefix = 0  # window start: ids decoded for context only
        self._read = len(self._ids)  # ids before this are already emitted

    def add(self, token: int) -> str:
        """Text that ``token`` completes; empty while it may end in a cut multi-byte character."""
        self._ids.append(token)
        return self._advance(final=False)

    def flush(self) -> str:
        """Whatever is held back, at the end of a choice."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        if len(new_text) <= len(prefix_text) or (new_text.endswith("\ufffd") and not final):
            return ""
        del self._ids[: self._read]  # the window moves on: what was new becomes its context
        self._prefix, self._read = 0, len(self._ids)
        return new_text[len(prefix_text) :]


class StopMatcher:
    """Cuts a choice's text before the first stop string, across token boundaries.

    Holds back the longest suffix that could start a stop string, so no part of one is ever emitted.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Text safe to emit now, and whether a stop string ended the choice."""
        if not self._stops:
            return text, False
        pending = self._pending + text
        found = [i for i in (pending.find(s) for s in self._stops) if i >= 0]
        if found:
            self._pending = ""
            return pending[: min(found)], True
        hold = max(self._partial(pending, s) for s in self._stops)
        cut = len(pending) - hold
        self._pending = pending[cut:]
        return pending[:cut], False

    def flush(self) -> str:
        """Held-back text: the choice ended without completing a stop string."""
        text, self._pending = self._pending, ""
        return text

    @staticmethod
    def _partial(text: str, stop: str) -> int:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                return k
        return 0
