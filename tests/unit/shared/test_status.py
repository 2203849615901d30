"""The worker status round-trips, keeps each engine's kind and turns unreadable keys into None."""

import json

import pytest

from shared.status import ENGINE_STATS, GenerationStats, PoolingStats, WorkerStatus


def status(**fields) -> WorkerStatus:
    return WorkerStatus(
        id="w", host="h", pid=7, models=["chat", "embed"], started_at=1.0, beat_at=2.0, **fields
    )


def test_a_status_round_trips_with_each_engine_of_its_kind():
    sent = status(
        slots={"chat": 4, "embed": 2},
        busy=1,
        running=["job-1"],
        engines={
            "chat": GenerationStats(steps=3, cache_tokens_reserved=96),
            "embed": PoolingStats(batches=5),
        },
    )
    back = WorkerStatus.decode(sent.encode())
    assert back == sent
    assert (
        isinstance(back.engines["chat"], GenerationStats) and back.engines["chat"].cache_tokens_reserved == 96
    )
    assert isinstance(back.engines["embed"], PoolingStats) and back.engines["embed"].batches == 5


def test_fields_of_a_newer_worker_are_ignored():
    raw = json.loads(status(engines={"chat": GenerationStats(steps=1)}).encode())
    raw["gpu_temperature"] = 61
    raw["engines"]["chat"]["speculative_hits"] = 9
    back = WorkerStatus.decode(json.dumps(raw))
    assert back is not None and back.engines["chat"].steps == 1


def test_a_status_without_running_ids_reads_as_none():
    raw = json.loads(status().encode())
    del raw["running"]
    assert WorkerStatus.decode(json.dumps(raw).encode()).running is None


@pytest.mark.parametrize(
    "raw",
    [None, b"", b"not json", b"\xff\xfe", b"[]", b'{"id": "w"}', b'{"id": "w", "slots": 4}'],
)
def test_an_unreadable_status_is_none(raw):
    assert WorkerStatus.decode(raw) is None


def test_an_engine_of_an_unknown_kind_makes_the_status_unreadable():
    raw = json.loads(status(engines={"chat": GenerationStats()}).encode())
    raw["engines"]["chat"]["kind"] = "telepathy"
    assert WorkerStatus.decode(json.dumps(raw)) is None


@pytest.mark.parametrize("model", ENGINE_STATS)
def test_every_counter_is_a_metric_with_help(model):
    fields = model.metric_fields()
    assert set(fields) == set(model.model_fields) - {"kind"}
    for kind, text in fields.values():
        assert kind in ("counter", "gauge") and text


def test_counters_never_go_negative():
    with pytest.raises(ValueError):
        GenerationStats(steps=-1)
