"""Per-client request and token rate limits, counted in Redis so every API process shares them.

Fixed one-minute windows: cheap (one round trip per request) and good enough to stop one client
from starving the others. A request is counted as it is admitted (:meth:`RateLimiter.admit`); its
tokens when its job's result reaches it, by the limiter as dispatcher middleware (one more round
trip, only when a token limit is set), before the client sees the result: its next request is
judged with them.
"""

from __future__ import annotations

import hashlib
import time

from flask import request
from redis import Redis

from api.middleware import DispatchMiddleware, Outcome, RequestContext
from shared import keys
from shared.errors import ModelyardError, RateLimited
from shared.jobs import AnyJob


def subject_of_request() -> str:
    """The client to count against: its API key, or its address when there are no keys (hashed)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    who = (
        f"key:{token.strip()}"
        if scheme.lower() == "bearer" and token.strip()
        else f"ip:{request.remote_addr}"
    )
    return hashlib.sha256(who.encode()).hexdigest()[:20]


class RateLimiter(DispatchMiddleware):
    """Checks a request against the per-minute limits and charges its tokens; no limits configured
    means no Redis calls."""

    def __init__(self, redis: Redis, rpm: int | None, tpm: int | None) -> None:
        self._redis = redis
        self.rpm = rpm
        self.tpm = tpm

    @property
    def enabled(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    def admit(self, subject: str) -> None:
        """Count one request; raise 429 with Retry-After (the window's end) when over a limit."""
        if not self.enabled:
            return
        now = time.time()
        requests_key = keys.rate_key(subject, "requests", now)
        pipe = self._redis.pipeline(transaction=False)
        pipe.incr(requests_key)
        pipe.expire(requests_key, 2 * keys.RATE_WINDOW_S)
        pipe.get(keys.rate_key(subject, "tokens", now))
        made, _, tokens = pipe.execute()
        retry_after = max(1, int(keys.RATE_WINDOW_S - now % keys.RATE_WINDOW_S))
        if self.rpm is not None and made > self.rpm:
            raise RateLimited(f"rate limit: {self.rpm} requests per minute", retry_after=retry_after)
        if self.tpm is not None and int(tokens or 0) >= self.tpm:
            raise RateLimited(
                f"rate limit: {self.tpm} tokens per minute", code="tokens_exceeded", retry_after=retry_after
            )

    def after_result(self, job: AnyJob, context: RequestContext, outcome: Outcome) -> None:
        """Charge the tokens of a request's result to its client's window."""
        if self.tpm is None or context.rate_subject is None or isinstance(outcome, ModelyardError):
            return
        tokens = keys.rate_key(context.rate_subject, "tokens", time.time())
        pipe = self._redis.pipeline(transaction=False)
        pipe.incrby(tokens, outcome.usage.total_tokens)
        pipe.expire(tokens, 2 * keys.RATE_WINDOW_S)
        pipe.execute()
