"""A thousand requests waiting at once: none is taken for a client that went away.

Issue 10: in a 500-request burst the API reached descriptor 1111; ``select()`` cannot watch past
1023, so the client-gone probe said "gone" and 34 waiting clients got 504 "the client went away".
Here the API starts at a soft limit of 1024 open files (a common default), as it would on such a
system; 200 stalled connections hold the low descriptors, and a burst of 1000 embedding requests
(they wait together in the API's coalescer, probed as they wait) takes it past descriptor 1200.
"""

from __future__ import annotations

import os
import resource
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from api.fdlimit import raise_open_files_limit
from harness import start_api, stop_process, wait_until
from tests.e2e.rawhttp import Reply, burst, request_bytes

BURST = 1000
#: Connections that stall first (a partial body) and keep the low descriptors taken, so that the
#: burst's own connections, not only the Redis connections its pool opens meanwhile, pass 1023.
STALLED = 200
EMBED = {"model": "minilm", "input": "a cat sits on the mat"}


@contextmanager
def _soft_open_files(limit: int) -> Iterator[None]:
    """Processes started inside begin with ``limit`` open files (soft), as on many systems."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _workers(master_pid: int) -> list[int]:
    return [int(pid) for pid in Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()]


def _soft_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-files line in /proc/limits")


def _highest_fd(pid: int) -> int:
    try:
        return max(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        return 0


def test_a_thousand_waiting_requests_get_no_false_client_gone(base_env, fleet, tmp_path):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4 * BURST:
        pytest.skip(f"the hard open-files limit ({hard}) is too low for a {BURST}-connection burst")
    raise_open_files_limit()  # this test's own client needs as many descriptors
    with _soft_open_files(1024):
        api, log = start_api({**base_env, "MODELYARD_BODY_TIMEOUT": "120"}, tmp_path / "api.log")
    stalled: list[socket.socket] = []
    try:
        (worker,) = _workers(api.proc.pid)
        assert _soft_limit(worker) > 4 * BURST  # raised at start, from 1024

        port = int(api.url.rsplit(":", 1)[1])
        partial = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
        for _ in range(STALLED):
            stalled.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            stalled[-1].sendall(partial)
        wait_until(lambda: len(os.listdir(f"/proc/{worker}/fd")) > STALLED, 10, "the stalled connections")

        highest = [0]
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.05):
                highest[0] = max(highest[0], _highest_fd(worker))

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            raw = request_bytes(api.url, "POST", "/v1/embeddings", EMBED)
            replies = burst(api.url, [raw] * BURST, timeout=180)
        finally:
            done.set()
            watcher.join()

        counts: dict[str, int] = {}
        for reply in replies:
            if isinstance(reply, Reply):
                verdict = str(reply.status) if reply.status == 200 else f"{reply.status} {reply.error_code()}"
            else:
                verdict = f"client error {type(reply).__name__}"
            counts[verdict] = counts.get(verdict, 0) + 1
        assert counts == {"200": BURST}, counts
        assert highest[0] > STALLED + BURST, f"the burst only reached descriptor {highest[0]}"
        log_text = (tmp_path / "api.log").read_text()
        assert "went away" not in log_text
    finally:
        for sock in stalled:
            sock.close()
        stop_process(api.proc)
        log.close()
