"""Priority bands through a real API and real workers (docs/scheduling.md): a busy slot takes the
bands in order, only listed keys get ``high``, the ``X-Priority`` header, aging, queue positions that
count the bands above, background responses in their band, and a reserved slot for ``high``.

The module's stack runs on its own Redis database and models file: ``prio-chat`` (one slot) and
``prio-chat-reserved`` (one slot plus a reserved one, on a worker of its own), both tiny-chat. A
long streamed request holds a model's slot; the test's jobs queue behind it until it is cancelled,
and rq's ``started_at`` says in which order they started.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from harness import RedisDatabase, start_api, stop_process, wait_until
from harness.services import ApiServer, WorkerProcess
from shared import keys

MODEL = "prio-chat"
RESERVED = "prio-chat-reserved"
HIGH_KEY = "k-high"
OTHER_KEY = "k-other"
#: Holds a slot until cancelled: tiny-chat writes 2000 tokens in about 3 s, these in about 25.
HOLD = {"messages": [{"role": "user", "content": "go"}], "max_tokens": 6000, "ignore_eos": True}
SHORT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def stack_env(base_env, redis_db: RedisDatabase, models_dir: Path, tmp_path_factory) -> dict[str, str]:
    chat = models_dir / "tiny-chat"
    models = tmp_path_factory.mktemp("priority") / "models.yaml"
    models.write_text(
        "models:\n"
        f'  - {{name: {MODEL}, kind: chat, source: "{chat}", context_length: 6144, max_batch_size: 1,'
        " max_queue: 8}\n"
        f'  - {{name: {RESERVED}, kind: chat, source: "{chat}", context_length: 6144, max_batch_size: 1}}\n'
    )
    return {
        **base_env,
        "MODELYARD_REDIS_URL": redis_db.url,
        "MODELYARD_MODELS_FILE": str(models),
        "MODELYARD_PRIORITY_HIGH_KEYS": HIGH_KEY,
        # Off, so that nothing moves while a test looks at the queues (the aging test starts an API
        # that ages).
        "MODELYARD_PRIORITY_AGING_S": "off",
    }


def start_on(redis_db: RedisDatabase, start_worker, env: dict[str, str], model: str) -> WorkerProcess:
    return start_worker(model, env=env, wait=False).wait_ready(redis_db)


@pytest.fixture(scope="module")
def worker(stack_env, start_worker, redis_db) -> Iterator[WorkerProcess]:
    process = start_on(redis_db, start_worker, stack_env, MODEL)
    yield process
    process.stop()


@contextmanager
def serve(env: dict[str, str], log: Path) -> Iterator[ApiServer]:
    """``bin/api`` with ``env``, stopped on the way out."""
    server, log_file = start_api(env, log)
    try:
        yield server
    finally:
        stop_process(server.proc)
        log_file.close()


@pytest.fixture(scope="module")
def api(stack_env, worker, tmp_path_factory) -> Iterator[ApiServer]:
    with serve(stack_env, tmp_path_factory.mktemp("priority-api") / "api.log") as server:
        yield server


class Stream:
    """A streamed chat request, open: its job id and band from the headers, read on demand."""

    def __init__(self, api: ApiServer, model: str, body: dict, headers: dict[str, str] | None = None):
        self.response = requests.post(
            f"{api.url}/v1/chat/completions",
            json={"model": model, "stream": True, **body},
            headers=headers or {},
            stream=True,
            timeout=120,
        )
        assert self.response.status_code == 200, self.response.text
        self.job_id = self.response.headers["X-Job-Id"]
        self.band = self.response.headers["X-Priority-Band"]

    def finish(self) -> bool:
        """Read to the end; whether it ended with ``[DONE]`` after some text."""
        with self.response:
            lines = [line for line in self.response.iter_lines(decode_unicode=True) if line]
        return lines[-1] == "data: [DONE]" and any('"content"' in line for line in lines)


def job(api: ApiServer, job_id: str) -> dict:
    return requests.get(f"{api.url}/v1/jobs/{job_id}", timeout=10).json()


def hold(api: ApiServer, model: str = MODEL) -> Stream:
    """A request that has the model's one slot, once it started."""
    holder = Stream(api, model, HOLD)
    wait_until(lambda: job(api, holder.job_id)["status"] == "started", 30, "the holder to start")
    return holder


def release(api: ApiServer, holder: Stream) -> None:
    assert requests.delete(f"{api.url}/v1/jobs/{holder.job_id}", timeout=10).status_code == 200
    holder.response.close()


def queued(api: ApiServer, *streams: Stream) -> list[tuple[str, int]]:
    """Each job's band and queue position, once it is queued."""
    for stream in streams:
        wait_until(lambda s=stream: job(api, s.job_id)["status"] == "queued", 10, "the job to queue")
    return [(found["band"], found["queue_position"]) for found in (job(api, s.job_id) for s in streams)]


def started_order(redis_db: RedisDatabase, *streams: Stream) -> list[Stream]:
    """``streams`` in the order their jobs started (rq's ``started_at``, written as sortable text)."""
    client = redis_db.client()
    stamps = {s.job_id: client.hget(keys.RQ_JOB_PREFIX + s.job_id, "started_at") for s in streams}
    assert all(stamps.values()), stamps
    return sorted(streams, key=lambda s: stamps[s.job_id])


def test_a_busy_slot_takes_high_then_normal_then_low(api, redis_db) -> None:
    holder = hold(api)
    try:
        low = Stream(api, MODEL, {**SHORT, "priority": 3})
        normal = Stream(api, MODEL, SHORT)
        high = Stream(api, MODEL, SHORT, {"X-Priority": "High", **bearer(HIGH_KEY)})
        assert (low.band, normal.band, high.band) == ("low", "normal", "high")
        # Positions count every job of the bands above, lower bands never.
        assert queued(api, high, normal, low) == [("high", 0), ("normal", 1), ("low", 2)]
    finally:
        release(api, holder)
    assert all(stream.finish() for stream in (low, normal, high))
    assert started_order(redis_db, low, normal, high) == [high, normal, low]


def test_only_a_listed_key_gets_high(api, redis_db) -> None:
    # The unlisted key's two requests share its fair-share lane: they start in arrival order.
    holder = hold(api)
    try:
        clamped = Stream(api, MODEL, {**SHORT, "service_tier": "priority"}, bearer(OTHER_KEY))
        by_header = Stream(api, MODEL, SHORT, {"X-Priority": "high", **bearer(OTHER_KEY)})
        listed = Stream(api, MODEL, {**SHORT, "service_tier": "priority"}, bearer(HIGH_KEY))
        # The body decides over the header: a listed key asking flex in its body runs low.
        header = {"X-Priority": "high", **bearer(HIGH_KEY)}
        flex = Stream(api, MODEL, {**SHORT, "service_tier": "flex"}, header)
        assert [s.band for s in (clamped, by_header, listed, flex)] == ["normal", "normal", "high", "low"]
        assert queued(api, clamped, by_header, listed, flex) == [
            ("normal", 1),
            ("normal", 2),
            ("high", 0),
            ("low", 3),
        ]
    finally:
        release(api, holder)
    assert all(stream.finish() for stream in (clamped, by_header, listed, flex))
    assert started_order(redis_db, clamped, by_header, listed, flex) == [listed, clamped, by_header, flex]


def test_a_responses_request_runs_in_the_band_its_body_or_header_asks(api) -> None:
    def band(body: dict, headers: dict[str, str]) -> str:
        answer = requests.post(
            f"{api.url}/v1/responses",
            json={"model": MODEL, "input": "hi", "max_output_tokens": 4, **body},
            headers=headers,
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        return answer.headers["X-Priority-Band"]

    assert band({"service_tier": "priority"}, bearer(HIGH_KEY)) == "high"
    assert band({"priority": -1}, bearer(OTHER_KEY)) == "normal"  # clamped, as chat's
    assert band({}, {"X-Priority": "high"}) == "normal"  # no key at all
    assert band({"service_tier": "flex"}, {}) == "low"
    assert band({}, {"X-Priority": "batch"}) == "batch"
    assert band({"priority": 0}, {"X-Priority": "low"}) == "normal"


def test_aging_moves_a_low_job_ahead_of_later_normal_work(api, stack_env, redis_db, tmp_path) -> None:
    # An API process that ages (3 s in a band), next to the module's, which does not.
    with serve({**stack_env, "MODELYARD_PRIORITY_AGING_S": "3"}, tmp_path / "api.log") as ager:
        holder = hold(ager)
        try:
            low = Stream(ager, MODEL, {**SHORT, "priority": 5})
            assert low.band == "low"
            wait_until(lambda: job(api, low.job_id)["band"] == "normal", 15, "the low job to age", 0.1)
            # Aged to the front of normal: ahead of normal work that came after it (which itself
            # ages only 3 s on, long after the slot is free).
            later = Stream(ager, MODEL, SHORT)
            (band, position), after = queued(api, low, later)
            assert band == "normal" and after == ("normal", position + 1)
        finally:
            release(ager, holder)
        assert low.finish() and later.finish()
        assert started_order(redis_db, low, later) == [low, later]
        assert low.band == "low"  # the header names the band it was admitted in


def background(api: ApiServer, key: str, **body) -> dict:
    answer = requests.post(
        f"{api.url}/v1/responses",
        json={"model": MODEL, "input": "hi", "max_output_tokens": 4, "background": True, **body},
        headers=bearer(key),
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_background_response_waits_in_its_band(api, redis_db) -> None:
    client = redis_db.client()
    holder = hold(api)
    created: list[dict] = []
    try:
        # The normal job and the clamped response share the unlisted key's fair-share lane.
        normal = Stream(api, MODEL, SHORT, bearer(OTHER_KEY))
        created.append(high := background(api, HIGH_KEY, service_tier="priority"))
        created.append(background(api, OTHER_KEY, service_tier="priority"))
        origins = [client.hget(keys.RQ_JOB_PREFIX + r["id"].removeprefix("resp_"), "origin") for r in created]
        assert [o.decode() for o in origins] == [keys.queue_name(MODEL, "high"), keys.queue_name(MODEL)]
        shown = [requests.get(f"{api.url}/v1/responses/{r['id']}", timeout=10).json() for r in created]
        # The high one is next; the clamped one waits behind it and the normal job queued before.
        assert [(r["status"], r["queue_position"]) for r in shown] == [("queued", 0), ("queued", 2)]
    finally:
        release(api, holder)
    assert normal.finish()

    def ended(response: dict) -> bool:
        got = requests.get(f"{api.url}/v1/responses/{response['id']}", timeout=10).json()
        return got["status"] in ("completed", "incomplete", "failed")

    wait_until(lambda: all(ended(r) for r in created), 60, "both responses to end", 0.1)
    stamps = [client.hget(keys.RQ_JOB_PREFIX + r["id"].removeprefix("resp_"), "started_at") for r in created]
    normal_started = client.hget(keys.RQ_JOB_PREFIX + normal.job_id, "started_at")
    assert stamps[0] < normal_started < stamps[1]
    assert requests.get(f"{api.url}/v1/responses/{high['id']}", timeout=10).json()["status"] == "incomplete"


def test_a_reserved_slot_starts_a_high_job_while_every_other_slot_is_busy(
    api, stack_env, start_worker, redis_db
) -> None:
    env = {**stack_env, "MODELYARD_PRIORITY_RESERVED_SLOTS": "1"}
    reserved = start_on(redis_db, start_worker, env, RESERVED)
    try:
        holder = hold(api, RESERVED)
        try:
            normal = Stream(api, RESERVED, SHORT)
            assert queued(api, normal) == [("normal", 0)]
            high = Stream(api, RESERVED, SHORT, {"X-Priority": "high", **bearer(HIGH_KEY)})
            assert high.finish()  # while the one ordinary slot still holds the holder
            assert job(api, holder.job_id)["status"] == "started"
            assert job(api, normal.job_id)["status"] == "queued"
        finally:
            release(api, holder)
        assert normal.finish()
    finally:
        reserved.stop()
