"""One pub/sub subscription per API process, routing job events to the requests waiting for them."""

from __future__ import annotations

import logging
import queue
import threading
import uuid

from redis import Redis, RedisError

from shared import keys
from shared.errors import ServiceUnavailable
from shared.events import AnyEvent, ErrorEvent, decode_event
from shared.jobs import BadMessage

log = logging.getLogger(__name__)

Event = AnyEvent


class ReplyRouter:
    """Subscribes once to this process's reply channel; a daemon thread routes each event by job id.

    A request registers its job id *before* enqueueing, so no event can arrive unrouted. PubSub
    objects are not thread-safe, so only the router thread touches the subscription.
    """

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self.channel = keys.reply_channel(uuid.uuid4().hex)
        self._inboxes: dict[str, queue.SimpleQueue[Event]] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 5.0) -> None:
        """Start the router thread (once) and wait until the subscription is live."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="reply-router", daemon=True)
                self._thread.start()
        if not self._subscribed.wait(timeout):
            raise ServiceUnavailable(
                "cannot subscribe to Redis for replies", code="redis_unavailable", retry_after=2
            )

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def register(self, job_id: str) -> queue.SimpleQueue[Event]:
        """The inbox that will receive ``job_id``'s events."""
        self.start()
        inbox: queue.SimpleQueue[Event] = queue.SimpleQueue()
        with self._lock:
            self._inboxes[job_id] = inbox
        return inbox

    def unregister(self, job_id: str) -> None:
        with self._lock:
            self._inboxes.pop(job_id, None)

    def _route(self, data: bytes) -> None:
        try:
            event = decode_event(data)
        except BadMessage:
            log.error("dropping an invalid event on %s", self.channel)
            return
        with self._lock:
            inbox = self._inboxes.get(event.job_id)
        if inbox is not None:
            inbox.put(event)

    def _fail_all(self, reason: str) -> None:
        """Events may have been lost: end every waiting request with a retryable error."""
        with self._lock:
            inboxes = list(self._inboxes.items())
            self._inboxes.clear()
        error = ServiceUnavailable(reason, code="redis_unavailable", retry_after=2)
        for job_id, inbox in inboxes:
            inbox.put(ErrorEvent.from_error(job_id, error))

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            pubsub = self._redis.pubsub()
            try:
                pubsub.subscribe(self.channel)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] == "message":
                        self._route(message["data"])
                    elif message["type"] == "subscribe":
                        # Only the confirmation proves that events published from now on reach us.
                        self._subscribed.set()
                        backoff = 0.1
            except (RedisError, OSError) as exc:
                if self._subscribed.is_set():
                    log.warning("lost the reply subscription (%s); failing waiting requests", exc)
                self._subscribed.clear()
                self._fail_all("lost the connection to Redis while waiting for the result")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                try:
                    pubsub.close()
                except (RedisError, OSError):
                    pass
