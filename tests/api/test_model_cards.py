"""What workers tell about their models reaches /v1/models (tools, parser, created), and a request
with tools for a model that cannot take them is refused before it is queued."""

from __future__ import annotations

import time

import pytest

from shared import keys
from shared.status import ModelCard, WorkerStatus

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


@pytest.fixture
def beat(redis_db):
    """Writes a worker heartbeat for ``ghost`` with the given card; removed afterwards."""
    r = redis_db.client()
    worker = "cards-test-worker"

    def write(card: ModelCard | None, started_at: float = 1_700_000_000.0) -> None:
        now = time.time()
        status = WorkerStatus(
            id=worker,
            host="test-host",
            pid=1,
            models=["ghost"],
            started_at=started_at,
            beat_at=now,
            cards={} if card is None else {"ghost": card},
        )
        r.set(keys.worker_key(worker), status.encode(), ex=30)
        r.zadd(keys.model_workers_key("ghost"), {worker: now + 30})

    yield write
    r.delete(keys.worker_key(worker))
    r.zrem(keys.model_workers_key("ghost"), worker)


def test_models_show_tools_parser_and_the_checkpoint_time(client, beat) -> None:
    beat(ModelCard(created=1_712_345_678, tool_parser="hermes"))
    card = client.get("/v1/models/ghost").json
    assert (card["created"], card["tools"], card["tool_parser"]) == (1_712_345_678, True, "hermes")
    listed = {m["id"]: m for m in client.get("/v1/models").json["data"]}
    assert listed["ghost"] == card


def test_a_worker_that_does_not_know_its_checkpoint_time_gives_its_start(client, beat) -> None:
    beat(None, started_at=1_700_000_123.9)
    card = client.get("/v1/models/ghost").json
    assert (card["created"], card["tools"], card["tool_parser"]) == (1_700_000_123, False, None)


def test_tools_for_a_model_that_cannot_take_them_are_refused_before_queueing(client, beat, redis_db) -> None:
    beat(ModelCard(created=1, tool_parser=None))
    body = {"model": "ghost", "messages": [{"role": "user", "content": "hi"}], "tools": TOOLS}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json["error"]
    assert (error["param"], error["code"]) == ("tools", "tools_not_supported")
    assert redis_db.client().llen(keys.rq_queue_key("ghost")) == 0
    # tool_choice none offers no tools: nothing to refuse.
    body["tool_choice"] = "none"
    response = client.post("/v1/chat/completions", json=body, headers={"X-Request-Timeout": "1"})
    assert response.status_code != 400
