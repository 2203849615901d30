"""The take (shared/takings.py) against a real Redis: a job is always queued, taken or started, so
no lost connection and no dead slot can lose it; a slot cut off long enough to be given up does not
start what it had taken."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from redis import Redis
from rq import Queue
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from api.janitor import Janitor
from harness import wait_until
from shared import keys
from shared.doorbell import ring
from shared.priority import BANDS
from shared.takings import Takings
from workers.slot import SlotWorker, TakenBack

MODEL = "taking-model"
SLOT = "worker-a.taking-model.0"


@pytest.fixture
def redis(redis_db):
    client = redis_db.client()
    client.flushdb()
    yield client
    client.flushdb()


def enqueue(redis, job_id: str, band: str = "normal", lane: int = 0, at_front: bool = False) -> Queue:
    queue = Queue(keys.queue_name(MODEL, band, lane), connection=redis, serializer=JSONSerializer)
    queue.enqueue(keys.JOB_FUNCTION, payload={}, job_id=job_id, at_front=at_front)
    pipe = redis.pipeline(transaction=False)
    ring(pipe, MODEL, band)
    pipe.execute()
    return queue


def take(redis, slot: str = SLOT, worker: str = "worker-a"):
    bells = [keys.doorbell_key(MODEL, band) for band in BANDS]
    queue_keys = [keys.RQ_QUEUE_PREFIX + name for name in keys.model_queue_names(MODEL)]
    return Takings(redis).take(slot, worker, bells, queue_keys)


def test_a_take_moves_the_first_job_of_the_most_urgent_band_into_the_takings(redis) -> None:
    enqueue(redis, "low-1", "low")
    enqueue(redis, "normal-1", "normal")
    enqueue(redis, "normal-2", "normal")
    queue_key, job_id, fields = take(redis)
    assert (queue_key, job_id) == (keys.RQ_QUEUE_PREFIX + keys.queue_name(MODEL), "normal-1")
    assert fields[b"status"] == b"queued"  # the job's rq hash, read in the same call
    assert redis.hkeys(keys.slot_takings_key(SLOT)) == [b"normal-1"]
    assert redis.hget(keys.takers_key(), SLOT) == b"worker-a"
    # The normal band still holds a job: its doorbell keeps ringing; the next take empties it.
    assert redis.llen(keys.doorbell_key(MODEL, "normal")) == 2
    assert take(redis)[1] == "normal-2"
    assert not redis.exists(keys.doorbell_key(MODEL, "normal"))
    assert take(redis)[1] == "low-1"
    assert take(redis) is None
    assert not redis.exists(keys.doorbell_key(MODEL, "low"))


def test_a_job_deleted_while_queued_is_skipped(redis) -> None:
    queue = enqueue(redis, "deleted")
    enqueue(redis, "kept")
    redis.delete(queue.job_class.key_for("deleted"))
    assert take(redis)[1] == "kept"
    assert redis.hkeys(keys.slot_takings_key(SLOT)) == [b"kept"]


def test_takings_given_back_go_to_the_front_of_their_queues_and_ring(redis) -> None:
    queue = enqueue(redis, "first")
    enqueue(redis, "second")
    take(redis)
    redis.delete(keys.doorbell_key(MODEL, "normal"))
    assert Takings(redis).give_back(SLOT) == 1
    assert queue.get_job_ids() == ["first", "second"]
    assert redis.llen(keys.doorbell_key(MODEL, "normal")) == 1
    assert not redis.exists(keys.slot_takings_key(SLOT))
    assert redis.hexists(keys.takers_key(), SLOT)  # still a taker, until it is forgotten
    assert Takings(redis).give_back(SLOT, forget=True) == 0
    assert not redis.hexists(keys.takers_key(), SLOT)


def test_the_janitor_gives_back_the_takings_of_dead_workers_only(redis) -> None:
    queue = enqueue(redis, "of-the-dead")
    enqueue(redis, "of-the-living")
    take(redis, slot="dead.m.0", worker="dead")
    take(redis, slot="alive.m.0", worker="alive")
    redis.set(keys.worker_key("alive"), b"{}", ex=60)
    Janitor(redis, [], owner="test", heartbeat_ttl=2).sweep()
    assert queue.get_job_ids() == ["of-the-dead"]
    assert redis.hkeys(keys.slot_takings_key("alive.m.0")) == [b"of-the-living"]
    assert redis.hgetall(keys.takers_key()) == {b"alive.m.0": b"alive"}


@pytest.fixture
def slot(redis, redis_db) -> Iterator[SlotWorker]:
    worker = SlotWorker(
        keys.model_queue_names(MODEL),
        name=SLOT,
        connection=Redis.from_url(redis_db.url),  # rq names it after the slot
        serializer=JSONSerializer,
        model=MODEL,
        worker_id="worker-a",
        taker=SLOT,
        draining=threading.Event(),
        fetching=threading.Lock(),
    )
    yield worker
    worker._draining.set()


def test_a_slot_waits_on_the_doorbell_and_takes_a_job_as_it_comes(redis, slot) -> None:
    got: list = []
    waiting = threading.Thread(target=lambda: got.append(slot.dequeue_job_and_maintain_ttl(timeout=10)))
    waiting.start()
    wait_until(
        lambda: any(c["name"] == SLOT and c["cmd"] == "blpop" for c in redis.client_list(_type="normal")),
        10,
        "the slot blocked on its doorbells",
    )
    asked = time.monotonic()
    enqueue(redis, "rung")
    waiting.join(timeout=10)
    assert time.monotonic() - asked < 2, "the ring did not wake the slot"
    job, queue = got[0]
    assert (job.id, queue.name) == ("rung", keys.queue_name(MODEL))
    assert redis.hkeys(keys.slot_takings_key(SLOT)) == [b"rung"]


def test_a_slot_returns_what_an_earlier_take_left_behind_before_it_takes(redis, slot) -> None:
    queue = enqueue(redis, "left-behind")
    take(redis)  # a take whose answer never came back (the connection broke)
    job, _ = slot.dequeue_job_and_maintain_ttl(timeout=1)
    assert job.id == "left-behind"
    assert queue.get_job_ids() == []


def test_a_job_given_back_meanwhile_does_not_start(redis, slot) -> None:
    queue = enqueue(redis, "given-back")
    slot._unsure = False
    job, _ = slot.dequeue_job_and_maintain_ttl(timeout=1)
    Takings(redis).give_back(SLOT)  # the janitor, while this slot was cut off
    with pytest.raises(TakenBack):
        slot.prepare_execution(job)
    assert StartedJobRegistry(queue.name, connection=redis).get_job_ids() == []
    assert queue.get_job_ids() == ["given-back"]


def test_a_start_removes_the_job_from_the_takings_in_its_transaction(redis, slot) -> None:
    queue = enqueue(redis, "started")
    job, _ = slot.dequeue_job_and_maintain_ttl(timeout=1)
    slot.prepare_execution(job)
    assert not redis.exists(keys.slot_takings_key(SLOT))
    assert StartedJobRegistry(queue.name, connection=redis).get_job_ids() == ["started"]


def test_a_job_rq_cannot_read_is_dropped_and_the_next_one_taken(redis, slot) -> None:
    queue = enqueue(redis, "unreadable")
    enqueue(redis, "readable")
    redis.hset(queue.job_class.key_for("unreadable"), "data", b"not a job")
    slot._unsure = False
    job, _ = slot.dequeue_job_and_maintain_ttl(timeout=1)
    assert job.id == "readable"
    assert redis.hkeys(keys.slot_takings_key(SLOT)) == [b"readable"]
