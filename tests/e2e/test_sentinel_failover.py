"""Redis high availability: the fleet (a worker, the API) on a Sentinel-managed primary with a
replica and three sentinels; the primary is killed under traffic. The fleet follows the new primary
within seconds, every request completes or gets a retryable error, none hangs, no job stays started."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest
import requests

from harness import ApiServer, WorkerProcess, live_models, start_api, started_jobs, stop_process, wait_until
from harness.sentinel import SentinelCluster
from harness.traffic import ChatTraffic
from tests.settings import HEARTBEAT_TTL

MODEL = "tiny-chat"
#: How long after the primary dies the fleet must be serving again: the sentinels see it down
#: after 1 s and elect and promote the replica in about another; reconnections take the rest.
FOLLOW_WITHIN_S = 10.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[SentinelCluster]:
    cluster = SentinelCluster(tmp_path_factory.mktemp("sentinel"), password="ha-secret", down_after_ms=1000)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def ha_stack(base_env, cluster, tmp_path_factory) -> Iterator[ApiServer]:
    env = {**base_env, "MODELYARD_REDIS_URL": cluster.url}
    logs = tmp_path_factory.mktemp("sentinel-logs")
    worker = WorkerProcess(env, [MODEL], logs / "worker.log").wait_ready(cluster)
    api, log = start_api(env, logs / "api.log")
    yield api
    stop_process(api.proc)
    log.close()
    worker.stop()


def test_fleet_follows_a_failover(cluster, ha_stack):
    old = cluster.primary()
    traffic = ChatTraffic(ha_stack.url, MODEL, clients=4, max_tokens=24, timeout=30).start()
    try:
        wait_until(lambda: traffic.completed_since(0) >= 8, 60, "traffic before the failover")
        killed_at = cluster.kill(old)
        wait_until(lambda: traffic.completed_since(killed_at) >= 4, 60, "requests served after the failover")
        wait_until(lambda: traffic.completed_since(time.monotonic() - 0.5) >= 1, 5, "steady traffic", 0.1)
    finally:
        outcomes = traffic.stop()

    new = cluster.primary()
    assert new.port != old.port
    after = [o for o in outcomes if o.started >= killed_at]
    first_served = min(o.ended for o in after if o.ok) - killed_at
    results = Counter(o.result for o in outcomes)
    print(f"failover: a request started after the kill served {first_served:.2f}s after it; {dict(results)}")
    assert first_served < FOLLOW_WITHIN_S, results
    # Every request either completed or got an error a client can retry (a 503 with Retry-After,
    # or an error frame in a stream that had started); none hung, none was cut off unexplained.
    bad = [o for o in outcomes if not (o.ok or o.retryable)]
    assert not bad, bad
    for failed in (o for o in outcomes if o.retryable and o.status is not None and o.status != 200):
        assert failed.status == 503 and failed.retry_after, failed
    assert max(o.ended - o.started for o in outcomes) < 30

    # No job is left started on the new primary: the ones the old primary's death cut off are
    # failed by the janitor once Redis has been up for a heartbeat TTL.
    wait_until(lambda: not started_jobs(cluster, MODEL), 6 * HEARTBEAT_TTL + 10, "no started job left")
    assert live_models(ha_stack.url).get(MODEL) == 1
    # And the fleet keeps serving on the new primary.
    reply = requests.post(
        ha_stack.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    assert cluster.client().exists(f"rq:job:{reply.json()['id'].removeprefix('chatcmpl-')}")
