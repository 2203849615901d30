"""shared/keys.py: every name carries the deployment's prefix; who runs a job is recorded, not parsed."""

import inspect
import os
import subprocess
import sys

import pytest
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from harness import REPO
from shared import keys
from shared.config import Settings, key_prefix_from_env
from shared.priority import LANES_PER_BAND
from workers.slot import SlotJob

#: A host name of the kind cloud VMs have, in a worker id as new_worker_id makes it.
DOTTED_WORKER = "node1.cluster.local-4242-a1b2c3"


def every_name(worker_id: str = DOTTED_WORKER) -> list[str]:
    """One value of every key, channel and queue name function of shared.keys."""
    return [
        keys.queue_name("tiny-chat"),
        keys.queue_name("tiny-chat", "high", 3),
        *keys.band_queue_names("tiny-chat", "batch"),
        *keys.model_queue_names("tiny-chat"),
        keys.aging_lock_key(),
        keys.worker_key(worker_id),
        keys.model_workers_key("tiny-chat"),
        keys.reply_channel("api-1", 0),
        keys.cancel_key("job"),
        keys.skipped_jobs_key(),
        keys.worker_watch_channel(worker_id),
        keys.result_key("job"),
        keys.job_durations_key("tiny-chat"),
        keys.janitor_lock_key(),
        keys.rate_key("subject", "tokens", 120.0),
        keys.response_key("resp_1"),
        keys.response_events_key("resp_1"),
        keys.background_responses_key(),
        keys.responses_keeper_lock_key(),
        keys.batch_key("batch_1"),
        keys.batches_key(),
        keys.active_batches_key(),
        keys.batch_lease_key("batch_1"),
        keys.interactive_key(),
        keys.doorbell_key("m", "normal"),
        keys.slot_takings_key("w.m.0"),
        keys.takers_key(),
    ]


def test_every_name_function_is_covered():
    # A name function added to shared/keys.py must be added to every_name (and so be prefixed).
    listed = {
        "queue_name",
        "band_queue_names",
        "model_queue_names",
        "aging_lock_key",
        "worker_key",
        "model_workers_key",
        "reply_channel",
        "cancel_key",
        "skipped_jobs_key",
        "worker_watch_channel",
        "result_key",
        "job_durations_key",
        "janitor_lock_key",
        "rate_key",
        "response_key",
        "response_events_key",
        "background_responses_key",
        "responses_keeper_lock_key",
        "batch_key",
        "batches_key",
        "active_batches_key",
        "batch_lease_key",
        "interactive_key",
        "doorbell_key",
        "slot_takings_key",
        "takers_key",
    }
    not_names = {
        "slot_worker_name",
        "job_worker_id",
        "rq_queue_key",
        "key_prefix_from_env",
        "is_events_stream",
        "queue_place",
    }
    functions = {name for name, value in vars(keys).items() if inspect.isfunction(value)}
    assert functions - not_names == listed


def test_every_key_channel_and_queue_name_starts_with_the_prefix():
    assert keys.PREFIX == "modelyard"  # the suite runs with the default
    for name in every_name():
        assert name.startswith("modelyard:"), name


def test_a_model_queue_is_namespaced_in_rq(redis_db):
    assert keys.queue_name("default") == "modelyard:default"
    assert keys.rq_queue_key("default") == "rq:queue:modelyard:default"
    queue = Queue(keys.queue_name("default"), connection=redis_db.client())
    assert queue.key == keys.rq_queue_key("default")


def test_another_prefix_renames_everything():
    # The prefix is read once per process, as shared.keys is imported: a process of its own.
    script = (
        "from shared import keys; from tests.unit.shared.test_keys import every_name; "
        "print(keys.PREFIX); print('\\n'.join(every_name()))"
    )
    env = {**os.environ, "MODELYARD_KEY_PREFIX": "team-b.prod"}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "team-b.prod"
    defaults = every_name()
    assert len(out[1:]) == len(defaults)
    for theirs, ours in zip(out[1:], defaults, strict=True):
        assert theirs == "team-b.prod:" + ours.removeprefix("modelyard:")


def test_the_prefix_setting():
    assert Settings().key_prefix == "modelyard"
    assert Settings.from_env({"MODELYARD_KEY_PREFIX": "staging"}).key_prefix == "staging"
    assert key_prefix_from_env({}) == "modelyard"
    assert key_prefix_from_env({"MODELYARD_KEY_PREFIX": ""}) == "modelyard"
    assert key_prefix_from_env({"MODELYARD_KEY_PREFIX": "team_b-2.eu"}) == "team_b-2.eu"


@pytest.mark.parametrize("bad", ["a:b", "rq:", " x", "x y", "-x", "x/y", "x" * 65, "é"])
def test_a_prefix_that_could_collide_or_break_a_key_is_refused(bad):
    with pytest.raises(ValueError, match="MODELYARD_KEY_PREFIX"):
        key_prefix_from_env({"MODELYARD_KEY_PREFIX": bad})
    with pytest.raises(ValueError):
        Settings(key_prefix=bad)


def test_the_worker_of_a_job_comes_from_its_meta_whatever_the_hostname():
    for worker_id in (DOTTED_WORKER, "a-b-c-1-2", "x" * 200 + ".example.com-1-ffffff"):
        assert keys.job_worker_id({keys.JOB_WORKER: worker_id}) == worker_id
        # The slot's rq name is for people; it is never taken apart.
        assert keys.slot_worker_name(worker_id, "tiny-chat", 3) == f"{worker_id}.tiny-chat.3"
    assert keys.job_worker_id({}) is None
    assert keys.job_worker_id({keys.JOB_WORKER: ""}) is None
    assert keys.job_worker_id({keys.JOB_WORKER: 7}) is None


def test_a_slot_job_records_its_worker_in_the_transaction_that_starts_it(redis_db):
    client = redis_db.client()
    queue = Queue(keys.queue_name("keys-test"), connection=client, serializer=JSONSerializer)
    queue.enqueue(keys.JOB_FUNCTION, payload={}, job_id="keys-test-job", meta={"other": 1})
    job = SlotJob.fetch("keys-test-job", connection=client, serializer=JSONSerializer)
    job.meta[keys.JOB_WORKER] = DOTTED_WORKER
    with client.pipeline() as pipe:
        job.prepare_for_execution(f"{DOTTED_WORKER}.keys-test.0", pipeline=pipe)
        pipe.execute()
    stored = Job.fetch("keys-test-job", connection=client, serializer=JSONSerializer)
    assert stored.worker_name == f"{DOTTED_WORKER}.keys-test.0"
    assert keys.job_worker_id(stored.meta) == DOTTED_WORKER
    assert stored.meta["other"] == 1


def test_queue_place_reads_back_every_band_and_lane():
    for band in ("high", "normal", "low", "batch"):
        for lane in {0, LANES_PER_BAND - 1}:
            assert keys.queue_place("tiny-chat", keys.queue_name("tiny-chat", band, lane)) == (band, lane)
    assert keys.queue_name("tiny-chat") == f"{keys.PREFIX}:tiny-chat"  # the name it had before bands
    assert keys.queue_place("tiny-chat", keys.queue_name("other-model")) is None


def test_the_lanes_come_from_the_environment_within_bounds():
    from shared.config import Settings
    from shared.priority import DEFAULT_LANES, MAX_LANES, lanes_from_env

    assert lanes_from_env({}) == DEFAULT_LANES == Settings().priority_lanes
    assert lanes_from_env({"MODELYARD_PRIORITY_LANES": "8"}) == 8
    for bad in ("0", str(MAX_LANES + 1), "four"):
        with pytest.raises(ValueError, match="MODELYARD_PRIORITY_LANES"):
            lanes_from_env({"MODELYARD_PRIORITY_LANES": bad})
