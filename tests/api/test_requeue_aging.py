"""A job requeued after its worker died counts its time in the band from the requeue: aging does not
move it up for the time it spent in that band before it ran (docs/scheduling.md#aging)."""

from __future__ import annotations

import time
from datetime import timedelta

from rq import Queue
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import now, utcformat

from api.aging import Ager
from shared import keys
from shared.jobs import GenerateJob

MODEL = "ghost"  # nothing serves it: a job stays where it is put


def test_a_requeued_job_ages_from_its_requeue(app, redis_db) -> None:
    services = app.extensions["modelyard"]
    redis = redis_db.client()
    name = keys.queue_name(MODEL)
    queue = Queue(name, connection=redis, serializer=JSONSerializer)
    job = GenerateJob(job_id="requeued-after-aging", model=MODEL, reply_to="", deadline=time.time() + 60)
    try:
        rq_job = queue.enqueue(keys.JOB_FUNCTION, payload=job.model_dump(mode="json"), job_id=job.job_id)
        # Aged into normal 100 s ago, then taken by a worker that died: rq filed it as failed.
        long_ago = utcformat(now() - timedelta(seconds=100))
        redis.hset(rq_job.key, mapping={"enqueued_at": long_ago, keys.BAND_SINCE_FIELD: long_ago})
        redis.lrem(queue.key, 1, job.job_id)
        FailedJobRegistry(name, connection=redis, serializer=JSONSerializer).add(rq_job, ttl=60)

        assert services.dispatcher.requeue(job)
        assert redis.lrange(queue.key, 0, -1) == [job.job_id.encode()]
        assert redis.hget(rq_job.key, keys.BAND_SINCE_FIELD) is None
        ager = Ager(redis, services.dispatcher.catalog, owner="test", aging_s=60)
        assert ager.sweep() == 0
        assert redis.lrange(queue.key, 0, -1) == [job.job_id.encode()]
    finally:
        queue.delete(delete_jobs=True)
