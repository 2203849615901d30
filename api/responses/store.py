"""Stored responses: one JSON value per response in Redis, ``Settings.response_ttl_s`` seconds.

A record holds the response object, its input items (``/input_items``), the conversation before
its output (chat messages: what ``previous_response_id`` continues, function calls and their outputs
included) and what its job is (id, model, deadline, owner). Any API process reads what another wrote.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from redis import Redis, WatchError

from api.responses import objects
from shared import keys


@dataclass
class Record:
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    #: Chat messages before this response's output (a previous response's conversation, then this input).
    history: list[dict[str, Any]]
    job_id: str
    model: str
    deadline: float
    owner: str | None = None
    #: The job's events are in ``keys.response_events_key(id)`` (a background response).
    background: bool = False

    @property
    def id(self) -> str:
        return self.response["id"]

    @property
    def status(self) -> str:
        return self.response["status"]

    @property
    def final(self) -> bool:
        return self.status in objects.FINAL

    @property
    def overdue(self) -> bool:
        """Past its job's deadline (and a grace): nothing will end it any more but a reader."""
        return time.time() > self.deadline + keys.RESPONSE_DEADLINE_GRACE_S

    def conversation(self) -> list[dict[str, Any]]:
        """The chat messages a response continuing this one starts with."""
        turn = objects.assistant_turn(self.response.get("output") or [])
        return self.history + ([turn] if turn else [])


class ResponseStore:
    def __init__(self, redis: Redis, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s

    def save(self, record: Record) -> None:
        self.redis.set(keys.response_key(record.id), json.dumps(asdict(record)), ex=self.ttl_s)

    def load(self, response_id: str) -> Record | None:
        raw = self.redis.get(keys.response_key(response_id))
        return Record(**json.loads(raw)) if raw is not None else None

    def update(self, response_id: str, response: dict[str, Any]) -> Record | None:
        """Replace the response object unless the stored one is final already (first final wins:
        a cancel and a completion racing end as whichever was stored first). The stored record."""
        key = keys.response_key(response_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        return None
                    record = Record(**json.loads(raw))
                    if record.final:
                        return record
                    record.response = response
                    pipe.multi()
                    pipe.set(key, json.dumps(asdict(record)), keepttl=True)
                    pipe.execute()
                    return record
                except WatchError:
                    continue

    def delete(self, response_id: str) -> bool:
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(keys.response_key(response_id))
        pipe.delete(keys.response_events_key(response_id))
        pipe.zrem(keys.background_responses_key(), response_id)
        return bool(pipe.execute()[0])


def input_items(response: str, items: list[Any]) -> list[dict[str, Any]]:
    """A request's input items as ``/input_items`` lists them, each with an id."""
    listed = []
    for i, item in enumerate(items):
        body = item.model_dump(exclude_none=True)
        body.setdefault("type", "message")
        kind = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}[body["type"]]
        body["id"] = item.id or f"{kind}_in_{response.removeprefix('resp_')}_{i}"
        body.setdefault("status", "completed")
        if body["type"] == "message":
            content = item.content
            parts = (
                [{"type": "input_text", "text": content}]
                if isinstance(content, str)
                else [part.model_dump(exclude_none=True) for part in content]
            )
            body["content"] = parts
        listed.append(body)
    return listed
