"""Fair share across API keys: a key that floods a model and a key that sends one request at a time.

A stack of its own (bin/api and bin/worker with the default lanes, on a model only it serves, one
slot): key A keeps 48 requests in flight; key B's requests, hashed to another lane, start after at
most a job of A's instead of after all of them."""

from __future__ import annotations

import hashlib
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from harness import start_api, stop_process, wait_until
from harness.services import ApiServer
from shared.priority import DEFAULT_LANES, lane_of

FAIR = "fair-chat"
BODY = {"model": FAIR, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "ignore_eos": True}
FLOOD = 48


def subject(token: str) -> str:
    """The client a request with ``token`` is counted as (api/ratelimit.py's subject_of_request)."""
    return hashlib.sha256(f"key:{token}".encode()).hexdigest()[:20]


def two_keys() -> tuple[str, str]:
    """Two keys in different lanes of DEFAULT_LANES."""
    a = "key-a"
    b = next(
        f"key-b{i}"
        for i in range(100)
        if lane_of(subject(f"key-b{i}"), DEFAULT_LANES) != lane_of(subject(a), DEFAULT_LANES)
    )
    return a, b


@pytest.fixture(scope="module")
def fair_api(base_env, models_dir, start_worker, tmp_path_factory) -> Iterator[ApiServer]:
    folder = tmp_path_factory.mktemp("fair")
    models = folder / "models.yaml"
    models.write_text(
        "models:\n"
        f"  - {{name: {FAIR}, kind: chat, source: '{models_dir / 'tiny-chat'}', context_length: 256,"
        " max_batch_size: 1, max_queue: 200}\n"
    )
    env = {**base_env, "MODELYARD_MODELS_FILE": str(models), "MODELYARD_PRIORITY_LANES": str(DEFAULT_LANES)}
    worker = start_worker(FAIR, env=env)
    server, log = start_api(env, folder / "api.log")
    yield server
    stop_process(server.proc)
    log.close()
    worker.stop()


def timed(url: str, token: str) -> float:
    started = time.perf_counter()
    answer = requests.post(url, json=BODY, headers={"Authorization": f"Bearer {token}"}, timeout=120)
    assert answer.status_code == 200, answer.text
    return time.perf_counter() - started


def test_one_keys_flood_does_not_hold_up_another_key(fair_api) -> None:
    key_a, key_b = two_keys()
    url = fair_api.url + "/v1/chat/completions"
    alone = [timed(url, key_b) for _ in range(8)]
    stop = threading.Event()
    flooded: list[float] = []

    def flood() -> None:
        while not stop.is_set():
            flooded.append(timed(url, key_a))

    with ThreadPoolExecutor(FLOOD) as pool:
        for _ in range(FLOOD):
            pool.submit(flood)
        wait_until(lambda: len(flooded) >= FLOOD, 120, "the flood to be under way")
        beside = [timed(url, key_b) for _ in range(8)]
        stop.set()
    a, b, b_alone = statistics.median(flooded), statistics.median(beside), statistics.median(alone)
    # A waits behind its own 48; B behind at most one of A's (round robin across the lanes).
    assert b * 4 < a, (b_alone, b, a)
    assert b < b_alone + 4 * a / FLOOD + 0.5, (b_alone, b, a)
