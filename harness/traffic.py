"""Steady chat traffic against an API, every request recorded with how it ended: what failover and
partition tests count (completed, a retryable error, or a hang)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import requests

#: Error codes a client may retry: the fleet lost Redis, a worker, or was busy for a moment.
RETRYABLE = frozenset({"redis_unavailable", "worker_lost", "model_unavailable", "server_busy", "queue_full"})


@dataclass(frozen=True)
class Outcome:
    """One request: ``ok``, or the error's code (``hang``: no answer within the client's timeout;
    ``broken``: the stream ended without ``[DONE]`` or the API could not be reached)."""

    kind: str  # "stream" or "plain"
    started: float  # time.monotonic()
    ended: float
    result: str
    status: int | None = None
    retry_after: str | None = None

    @property
    def ok(self) -> bool:
        return self.result == "ok"

    @property
    def retryable(self) -> bool:
        return self.result in RETRYABLE


class ChatTraffic:
    """``clients`` threads, each sending chat requests one after another (streams and plain ones in
    turn) until :meth:`stop`; ``outcomes`` holds one :class:`Outcome` per request."""

    def __init__(
        self, api_url: str, model: str, *, clients: int = 4, max_tokens: int = 16, timeout: float = 30
    ) -> None:
        self.api_url = api_url
        self.model = model
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def start(self) -> ChatTraffic:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float | None = None) -> list[Outcome]:
        """Stop after the requests in flight; ``timeout`` defaults to the client's own plus a margin."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 10 if timeout is None else timeout)
        assert not any(t.is_alive() for t in self._threads), "a traffic thread is still waiting"
        return self.snapshot()

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def completed_since(self, since: float) -> int:
        """Requests started at or after ``since`` (monotonic) that completed."""
        return sum(1 for o in self.snapshot() if o.ok and o.started >= since)

    def _run(self, index: int) -> None:
        session = requests.Session()
        stream = index % 2 == 0
        while not self._stop.is_set():
            started = time.monotonic()
            outcome = self._one(session, stream, started)
            with self._lock:
                self.outcomes.append(outcome)
            stream = not stream

    def _one(self, session: requests.Session, stream: bool, started: float) -> Outcome:
        kind = "stream" if stream else "plain"
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": "Tell me about the sea."}],
            "max_tokens": self.max_tokens,
            "stream": stream,
        }

        def done(result: str, status: int | None = None, retry_after: str | None = None) -> Outcome:
            return Outcome(kind, started, time.monotonic(), result, status, retry_after)

        try:
            with session.post(
                self.api_url + "/v1/chat/completions", json=body, stream=stream, timeout=self.timeout
            ) as response:
                if response.status_code != 200:
                    code = _error_code(response.content)
                    return done(code, response.status_code, response.headers.get("Retry-After"))
                if not stream:
                    return done("ok" if response.json()["choices"] else "broken", 200)
                last: dict = {}
                for line in response.iter_lines():
                    if not line.startswith(b"data: "):
                        continue
                    data = line[len(b"data: ") :]
                    if data == b"[DONE]":
                        finished = bool(last.get("choices")) and last["choices"][-1].get("finish_reason")
                        return done("ok" if finished else _error_code(json.dumps(last).encode()), 200)
                    last = json.loads(data)
                return done("broken", 200)
        except requests.Timeout:
            return done("hang")
        except requests.RequestException:
            return done("broken")


def _error_code(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "broken"
