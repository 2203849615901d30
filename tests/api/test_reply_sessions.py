"""Reply-router sessions and the cancel backlog, against a real Redis that the test restarts."""

from __future__ import annotations

import pytest

from api.cancels import CancelBacklog
from api.reply_router import ReplyRouter
from harness import RedisServer, free_port, wait_until
from shared import keys
from shared.connection import connect
from shared.events import ErrorEvent


@pytest.fixture
def own_redis(tmp_path):
    """A Redis of this test's own: restarting it leaves the session's Redis alone."""
    server = RedisServer(port=free_port(), workdir=tmp_path)
    server.start()
    yield server
    server.stop()


def subscribers(server: RedisServer, channel: str) -> int:
    return int(server.client().pubsub_numsub(channel)[0][1])


def test_a_lost_subscription_fails_its_requests_and_its_channel_never_comes_back(own_redis):
    router = ReplyRouter(connect(own_redis.url, max_connections=2))
    abandoned: list[str] = []
    router.on_abandon(abandoned.extend)
    try:
        channel, inbox = router.register("job-1")
        assert subscribers(own_redis, channel) == 1  # what a worker reads as "someone waits"

        own_redis.stop()
        own_redis.start()

        event = inbox.get(timeout=10)
        assert isinstance(event, ErrorEvent) and event.code == "redis_unavailable"
        assert abandoned == ["job-1"]
        new_channel, _ = router.register("job-2")  # waits for the new session
        assert new_channel != channel
        # redis-py would have subscribed the old channel again by itself; the router must not.
        assert subscribers(own_redis, channel) == 0
        assert subscribers(own_redis, new_channel) == 1
    finally:
        router.stop()


def test_a_stopped_router_leaves_no_subscriber_and_fails_its_requests(own_redis):
    router = ReplyRouter(connect(own_redis.url, max_connections=2))
    channel, inbox = router.register("job-1")
    router.stop()
    event = inbox.get(timeout=5)
    assert isinstance(event, ErrorEvent) and event.status == 503
    wait_until(lambda: subscribers(own_redis, channel) == 0, 5, "the subscription to end")


def test_cancellations_that_failed_are_sent_once_redis_answers(own_redis):
    client = connect(own_redis.url)
    sent: list[str] = []

    def send(job_id: str) -> None:
        client.set(keys.cancel_key(job_id), 1, ex=60)  # raises while Redis is down
        sent.append(job_id)

    backlog = CancelBacklog(send)
    own_redis.stop()
    backlog.add(["job-1", "job-2"])
    assert len(backlog) == 2
    own_redis.start()
    wait_until(lambda: len(backlog) == 0, 10, "the backlog to drain")
    assert sorted(sent) == ["job-1", "job-2"]
    assert own_redis.client().exists(keys.cancel_key("job-1"), keys.cancel_key("job-2")) == 2
