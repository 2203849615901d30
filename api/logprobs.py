"""OpenAI's two logprobs shapes, built from the worker's per-token entries.

Chat: ``{"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}], "refusal"}``.
Completions (legacy): ``{tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}``,
where ``top_logprobs`` also holds the chosen token (so up to ``logprobs + 1`` entries, as OpenAI
says) and ``text_offset`` is where each token's text starts in the choice's text.
"""

from __future__ import annotations

from typing import Any

from shared.jobs import TokenLogprob


def chat(entries: list[TokenLogprob] | None) -> dict[str, Any] | None:
    """A chat choice's (or chunk's) ``logprobs``; None when none were asked for."""
    if entries is None:
        return None
    return {
        "content": [
            {
                "token": e.token,
                "logprob": e.logprob,
                "bytes": e.bytes,
                "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": t.bytes} for t in e.top],
            }
            for e in entries
        ],
        "refusal": None,
    }


def completion(entries: list[TokenLogprob] | None, offset: int = 0) -> tuple[dict[str, Any] | None, int]:
    """A completion choice's (or chunk's) ``logprobs``, its tokens' text starting at ``offset``.

    Also returns the offset after them, where a stream's next chunk starts.
    """
    if entries is None:
        return None, offset
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []
    for e in entries:
        tokens.append(e.token)
        token_logprobs.append(e.logprob)
        if e.logprob is None:  # an echoed prompt's first token: nothing before it to predict it
            top_logprobs.append(None)
        else:
            top = {t.token: t.logprob for t in e.top if t.logprob is not None}
            top.setdefault(e.token, e.logprob)
            top_logprobs.append(top)
        text_offset.append(offset)
        offset += len(e.token)
    body = {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": text_offset,
    }
    return body, offset
