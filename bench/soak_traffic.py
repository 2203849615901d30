"""The soak's clients: good traffic mixed with attacks, stalled bodies, bursts, and a /health watch,
each judged against the faults the chaos loop caused (see bench/soak.py)."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

#: Seconds the server gives each request; a client waiting longer than this plus slack has hung.
DEADLINE_S = 20
HANG_S = DEADLINE_S + 15

#: Seconds after a chaos event ends during which a request may still feel it (a heartbeat TTL, a
#: requeue, a reconnect).
FAULT_GRACE_S = 6


class Faults:
    """When the chaos loop broke something: a 5xx overlapping a fault is the fault's, not a bug.

    A fault is open from the moment it starts: requests answered during an outage are judged
    before the outage ends.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: list[tuple[str, float, float]] = []

    def begin(self, kind: str) -> int:
        """Open a fault window now; returns its handle for ``end``."""
        with self._lock:
            self._windows.append((kind, time.time(), float("inf")))
            return len(self._windows) - 1

    def end(self, handle: int) -> None:
        """Close a fault window, leaving the grace period during which requests may still feel it."""
        with self._lock:
            kind, start, _ = self._windows[handle]
            self._windows[handle] = (kind, start, time.time() + FAULT_GRACE_S)

    def during(self, start: float, end: float, kinds: tuple[str, ...] = ("kill", "term", "redis")) -> bool:
        with self._lock:
            return any(k in kinds and s <= end and start <= e for k, s, e in self._windows)


@dataclass
class Tally:
    """What happened to every request, and the job ids of those answered without a result (each
    with whether a fault was on meanwhile)."""

    outcomes: Counter = field(default_factory=Counter)
    codes: Counter = field(default_factory=Counter)
    wrong: Counter = field(default_factory=Counter)
    unanswered_jobs: dict[str, bool] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(
        self, outcome: str, code: str | None = None, job_id: str | None = None, during_fault: bool = False
    ) -> None:
        with self.lock:
            self.outcomes[outcome] += 1
            if code is not None:
                (self.wrong if outcome == "wrong" else self.codes)[code] += 1
            if job_id and outcome != "ok":
                self.unanswered_jobs[job_id] = during_fault


def good_request(rng: random.Random) -> tuple[str, dict]:
    """A well-formed request of a random kind."""
    kind = rng.choice(["chat", "chat-stream", "completion", "embeddings", "rerank"])
    if kind.startswith("chat"):
        return "/v1/chat/completions", {
            "model": "tiny-chat",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": rng.randint(8, 200),
            "stream": kind == "chat-stream",
        }
    if kind == "completion":
        return "/v1/completions", {"model": "tiny-chat", "prompt": "Once", "max_tokens": 32}
    if kind == "embeddings":
        return "/v1/embeddings", {"model": "minilm", "input": ["a cat", "a dog"] * rng.randint(1, 8)}
    return "/v1/rerank", {"model": "tiny-reranker", "query": "q", "documents": ["a", "b", "c"]}


#: Bodies an attacker sends; each must be refused with a 4xx in OpenAI's shape, nothing queued.
HOSTILE = {
    "poisoned-embedding": ("/v1/embeddings", '{"model": "minilm", "input": ["ok", "bad \\ud800"]}'),
    "poisoned-chat": (
        "/v1/chat/completions",
        '{"model": "tiny-chat", "messages": [{"role": "user", "content": "a\\udfff"}]}',
    ),
    "huge-int": (
        "/v1/completions",
        '{"model": "tiny-chat", "prompt": "x", "max_tokens": ' + "9" * 5000 + "}",
    ),
    "deep-json": ("/v1/embeddings", '{"model": "minilm", "input": ' + "[" * 5000 + "]" * 5000 + "}"),
    "lax-types": ("/v1/chat/completions", '{"model": "tiny-chat", "messages": [], "stream": "yes"}'),
    "huge-request": (
        "/v1/completions",
        json.dumps({"model": "tiny-chat", "prompt": ["tell me"] * 256, "n": 128, "max_tokens": 4}),
    ),
}


def one_request(url: str, rng: random.Random, faults: Faults, tally: Tally, hostile: float) -> None:
    """Send one request (hostile with probability ``hostile``) and judge its answer.

    ``ok``: a result; ``clear``: an OpenAI error the request deserved (a refused hostile body, a
    429/503 with Retry-After, a 5xx while a fault was on); ``wrong``: any other error, e.g. a 5xx
    or ``redis_unavailable`` with nothing broken; ``hung``: no answer by the deadline plus slack.
    Like a well-behaved client, it waits out a 429/503's Retry-After (at most 2 s).
    """
    name = None
    if rng.random() < hostile:
        name = rng.choice(list(HOSTILE))
        path, data = HOSTILE[name]
        kwargs: dict = {"data": data.encode(), "headers": {"Content-Type": "application/json"}}
        stream = False
    else:
        path, body = good_request(rng)
        kwargs, stream = {"json": body}, body.get("stream", False)
    started = time.time()
    try:
        response = requests.post(url + path, timeout=HANG_S, stream=stream, **kwargs)
        job_id = response.headers.get("X-Job-Id")
        if response.status_code == 200:
            if name is not None:
                tally.add("wrong", f"200 for {name}")
            elif not stream:
                response.json()
                tally.add("ok")
            else:
                lines = [line for line in response.iter_lines() if line]
                if not lines or lines[-1] != b"data: [DONE]":
                    tally.add("unclear", "stream without [DONE]", job_id)
                elif errors := [line for line in lines if line.startswith(b'data: {"error"')]:
                    error = json.loads(errors[0][6:])["error"]
                    status = {"deadline_exceeded": 504, "rate_limit_exceeded": 429}.get(error["code"], 503)
                    judge_error(status, f"stream error frame {error['code']}", started, faults, tally, job_id)
                else:
                    tally.add("ok")
            return
        error = response.json().get("error")
        if not error:
            tally.add("unclear", f"{response.status_code} without an OpenAI error", job_id)
            return
        code = f"{response.status_code} {error['code']}"
        if name is not None:
            tally.add("clear" if 400 <= response.status_code < 500 else "wrong", f"{code} for {name}")
            return
        if response.status_code in (429, 503) and "Retry-After" not in response.headers:
            tally.add("wrong", f"{code} without Retry-After", job_id)
            return
        judge_error(response.status_code, code, started, faults, tally, job_id)
        if response.status_code in (429, 503):
            time.sleep(min(2.0, float(response.headers.get("Retry-After", 1))))
    except requests.Timeout:
        tally.add("hung", path)
    except (requests.ConnectionError, ValueError) as exc:
        kind = "clear" if faults.during(started, time.time()) else "unclear"
        tally.add(kind, f"connection: {type(exc).__name__}")


def judge_error(status: int, code: str, started: float, faults: Faults, tally: Tally, job_id) -> None:
    """A good request's error: clear if it is a refusal, or a 5xx while a fault was on."""
    during = faults.during(started, time.time())
    # A deadline that passed in a queue swollen by a burst is the load's doing, not a bug: clear,
    # and counted under its code in the summary.
    if status in (429, 504) or (status == 503 and "busy" in code) or (status >= 500 and during):
        tally.add("clear", code, job_id, during)
    elif "redis_unavailable" in code and faults.during(started, time.time(), ("redis",)):
        tally.add("clear", code, job_id, during)
    else:
        tally.add("wrong", code, job_id, during)


def stalled_clients(port: int, stop: threading.Event, count: int, tally: Tally) -> None:
    """Keep ``count`` connections that send headers and half a body, then nothing."""
    socks: list[socket.socket] = []
    head = (
        b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b'Content-Length: 400\r\n\r\n{"model": "minilm", "input": '
    )
    while not stop.is_set():
        while len(socks) < count and not stop.is_set():
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.sendall(head)
                sock.setblocking(False)
                socks.append(sock)
            except OSError:
                break
        stop.wait(1)
        for sock in list(socks):  # the server answers 408 at its body deadline and closes
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            socks.remove(sock)
            sock.close()
            tally.add(
                "clear" if data.startswith(b"HTTP/1.1 408") else "unclear",
                "stalled body: " + (data.split(b"\r\n", 1)[0].decode(errors="replace") or "closed"),
            )
    for sock in socks:
        sock.close()


def bursts(url: str, stop: threading.Event, every: float, size: int, faults: Faults, tally: Tally) -> None:
    """Every ``every`` seconds, ``size`` concurrent requests at once, past every pool."""
    rng = random.Random(7)
    with ThreadPoolExecutor(size) as pool:
        while not stop.wait(every):
            list(pool.map(lambda _: one_request(url, rng, faults, tally, 0.0), range(size)))


def health_watch(url: str, stop: threading.Event, latencies: list[float]) -> None:
    """/health once a second: it must stay answerable whatever the other clients do."""
    while not stop.wait(1):
        began = time.monotonic()
        try:
            requests.get(url + "/health", timeout=30)
            latencies.append(time.monotonic() - began)
        except requests.RequestException:
            latencies.append(30.0)
