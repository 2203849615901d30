"""How a worker process's rq slots wait for jobs, seen from Redis."""

import time

from tests.e2e.test_worker_lifecycle import SPARE


def _waiting_on_queues(redis_server, worker_id: str) -> list[str]:
    """Names of the worker's slots blocked on a queue now (each slot names its connections)."""
    return [
        client["name"]
        for client in redis_server.client().client_list()
        # BLMOVE on one queue, BLPOP over several (a model's priority bands)
        if client.get("cmd") in ("blmove", "blpop") and client.get("name", "").startswith(worker_id)
    ]


def test_one_slot_per_model_waits_on_the_queue_at_a_time(start_worker, redis_server):
    """Two slots, but one blocked pop: Redis serves the longest-blocked client first, so with one
    waiter per process jobs go round a model's workers instead of piling onto a busy one."""
    worker = start_worker(SPARE)
    try:
        worker_id = worker.status(redis_server)["id"]
        seen = set()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            waiting = _waiting_on_queues(redis_server, worker_id)
            assert len(waiting) <= 1, waiting
            seen.update(waiting)
            time.sleep(0.05)
        assert len(seen) >= 1, "no slot of the worker waited on the queue"
    finally:
        worker.stop()
