"""One pub/sub subscription per API process, routing job events to the requests waiting for them."""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections.abc import Callable

from redis import Redis, RedisError
from redis.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError

from api.errors import RedisUnavailable
from shared import keys
from shared.events import AnyEvent, ErrorEvent, decode_event
from shared.jobs import BadMessage

log = logging.getLogger(__name__)

Event = AnyEvent


class _SessionPubSub(PubSub):
    """A subscription that never comes back by itself.

    redis-py reconnects a broken subscription and subscribes it again (before it reports the
    error). Workers take a subscriber on a job's reply channel as proof that someone waits for the
    job, and the router fails every waiting request when its subscription breaks: the old channel
    must stay without a subscriber from then on, so a reconnect only notes the interruption.
    """

    interrupted = False

    def on_connect(self, connection) -> None:
        self.interrupted = True


class ReplyRouter:
    """Subscribes once to this process's reply channel; a daemon thread routes each event by job id.

    A request registers its job id *before* enqueueing, so no event can arrive unrouted. PubSub
    objects are not thread-safe, so only the router thread touches the subscription.

    Subscription sessions: when the subscription breaks, events may have been lost, so every
    waiting request is failed, and the next subscription uses a new channel. A job carries the
    channel of the session it was registered in; its channel has a subscriber only while that
    session lives, which is what a worker checks before it starts the job (see
    :func:`shared.keys.reply_channel`). A reloaded Redis snapshot cannot fake that: subscriptions
    are not persisted.
    """

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._instance = uuid.uuid4().hex
        self._session = 0
        self._channel = keys.reply_channel(self._instance, self._session)
        #: The current session is subscribed (confirmed) and not lost; guarded by ``_lock``.
        self._live = False
        self._inboxes: dict[str, queue.SimpleQueue[Event]] = {}
        self._abandon_listeners: list[Callable[[list[str]], None]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def channel(self) -> str:
        """The reply channel of the current session (or of the next one, while none is live)."""
        with self._lock:
            return self._channel

    def on_abandon(self, listener: Callable[[list[str]], None]) -> None:
        """Call ``listener`` with the job ids of the requests a lost subscription failed.

        Their jobs may still be queued (or reloaded from a snapshot): the dispatcher cancels them.
        """
        self._abandon_listeners.append(listener)

    def start(self, timeout: float = 5.0) -> None:
        """Start the router thread (once) and wait until the subscription is live."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="reply-router", daemon=True)
                self._thread.start()
        if not self._subscribed.wait(timeout):
            raise _unsubscribed()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def register(self, job_id: str) -> tuple[str, queue.SimpleQueue[Event]]:
        """The channel the job must reply to and the inbox that will receive its events.

        The channel and the inbox belong to one session: if the session ends after this, the
        request is failed with the others.
        """
        self.start()
        inbox: queue.SimpleQueue[Event] = queue.SimpleQueue()
        with self._lock:
            if not self._live:  # lost between the wait and here
                raise _unsubscribed()
            self._inboxes[job_id] = inbox
            return self._channel, inbox

    def unregister(self, job_id: str) -> None:
        with self._lock:
            self._inboxes.pop(job_id, None)

    def _route(self, data: bytes) -> None:
        try:
            event = decode_event(data)
        except BadMessage:
            log.error("dropping an invalid event on %s", self._channel)
            return
        with self._lock:
            inbox = self._inboxes.get(event.job_id)
        if inbox is not None:
            inbox.put(event)

    def _open_session(self) -> None:
        with self._lock:
            self._live = True
        self._subscribed.set()

    def _end_session(self, reason: str) -> None:
        """The subscription is gone (and closed): fail every waiting request, move to a new channel."""
        with self._lock:
            self._live = False
            self._subscribed.clear()
            self._session += 1
            self._channel = keys.reply_channel(self._instance, self._session)
            inboxes = list(self._inboxes.items())
            self._inboxes.clear()
        error = RedisUnavailable(reason)
        for job_id, inbox in inboxes:
            inbox.put(ErrorEvent.from_error(job_id, error))
        if inboxes:
            abandoned = [job_id for job_id, _ in inboxes]
            for listener in self._abandon_listeners:
                listener(abandoned)

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            pubsub = _SessionPubSub(self._redis.connection_pool)
            failure: Exception | None = None
            try:
                pubsub.subscribe(self.channel)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if pubsub.interrupted:
                        raise RedisConnectionError("the reply subscription's connection was re-made")
                    if message is None:
                        continue
                    if message["type"] == "message":
                        self._route(message["data"])
                    elif message["type"] == "subscribe":
                        # Only the confirmation proves that events published from now on reach us.
                        self._open_session()
                        backoff = 0.1
            except (RedisError, OSError) as exc:
                failure = exc
            finally:
                # Closed before the requests are failed: no worker may see this session alive after.
                try:
                    pubsub.close()
                except (RedisError, OSError):
                    pass
            if failure is None:  # stopped
                self._end_session("the API is shutting down")
                return
            if self._subscribed.is_set():
                log.warning("lost the reply subscription (%s); failing waiting requests", failure)
            self._end_session("lost the connection to Redis while waiting for the result")
            if not self._stop.is_set():
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)


def _unsubscribed() -> RedisUnavailable:
    return RedisUnavailable("cannot subscribe to Redis for replies")
