"""A background response's job events ("frames"), kept in a Redis Stream, and what they say.

The worker appends each event of the job (``workers/publisher.py``); an API process appends the
terminal event itself when the worker cannot (a cancel while queued, a dead worker, a deadline).
Translation stops at the first terminal frame, so whichever end was appended first is the end.
"""

from __future__ import annotations

from collections.abc import Iterator

from redis import Redis

from api.dispatch import Dispatcher
from api.responses.events import Event, Translator
from api.responses.store import Record, ResponseStore
from shared import keys
from shared.errors import InternalError, ModelyardError
from shared.events import (
    AnyEvent,
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    WorkerLostEvent,
    decode_event,
    encode_event,
)
from shared.jobs import BadMessage

#: Stream ids start after this one (XREAD's "from the start").
START = "0-0"


def read(
    redis: Redis, response: str, after: str = START, block_ms: int | None = None
) -> list[tuple[str, AnyEvent]]:
    """Frames after stream id ``after`` (waiting up to ``block_ms`` for one when given)."""
    key = keys.response_events_key(response)
    if block_ms is None:
        entries = redis.xrange(key, f"({after}" if after != START else "-", "+")
    else:
        answer = redis.xread({key: after}, block=block_ms, count=1000)
        entries = answer[0][1] if answer else []
    frames = []
    for entry_id, fields in entries:
        try:
            frames.append((_text(entry_id), decode_event(fields[b"event"])))
        except (BadMessage, KeyError):
            continue  # not a frame of ours: skipped, as every reader skips it
    return frames


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def append(redis: Redis, response: str, event: AnyEvent) -> None:
    """Append a frame as the worker does (bounded, expiring)."""
    key = keys.response_events_key(response)
    pipe = redis.pipeline(transaction=False)
    pipe.xadd(key, {"event": encode_event(event)}, maxlen=keys.RESPONSE_EVENTS_MAXLEN, approximate=True)
    pipe.expire(key, keys.RESPONSE_EVENTS_TTL_S)
    pipe.execute()


def append_error(redis: Redis, record: Record, error: ModelyardError) -> None:
    append(redis, record.id, ErrorEvent.from_error(record.job_id, error))


def is_terminal(frame: AnyEvent) -> bool:
    return isinstance(frame, DoneEvent | ErrorEvent)


def as_created(response: dict) -> dict:
    """A background response's object as it was created: where every translation starts."""
    return {
        **response,
        "status": "queued",
        "output": [],
        "usage": None,
        "error": None,
        "incomplete_details": None,
    }


def translate(dispatcher: Dispatcher, record: Record) -> Iterator[Event | str]:
    """Every event of the response's frames, in order; a stream id (str) after each frame's events,
    so a follower knows where to go on. Ends after a terminal frame, or when the frames run out."""
    translator = Translator(as_created(record.response))
    yield from translator.opening(queued=True)
    yield from follow(dispatcher, record, translator, START, None)


def follow(
    dispatcher: Dispatcher, record: Record, translator: Translator, after: str, block_ms: int | None
) -> Iterator[Event | str]:
    """The events of the frames after ``after`` (one read), then the last stream id read."""
    for entry_id, frame in read(dispatcher.redis, record.id, after, block_ms):
        if translator.final is not None:
            return
        yield from frame_events(dispatcher, translator, frame)
        yield entry_id


def frame_events(dispatcher: Dispatcher, translator: Translator, frame: AnyEvent) -> list[Event]:
    if isinstance(frame, DeltaEvent):
        events = translator.started()
        for delta in frame.deltas:
            events += translator.delta(delta)
        return events
    if isinstance(frame, DoneEvent):
        try:
            result = dispatcher.done_result(frame)
        except InternalError as error:
            return translator.failed(error)
        if not translator.streamed:  # a job that did not stream: its whole result at once
            return translator.result(result)
        return translator.finish(result.usage, result.choices[0].finish_reason if result.choices else None)
    if isinstance(frame, ErrorEvent):
        return translator.failed(frame.to_error())
    assert isinstance(frame, WorkerLostEvent)
    return []


def trimmed(frames: list[tuple[str, AnyEvent]]) -> bool:
    """Whether the stream lost its first frames to its length bound (no replay from the start)."""
    first = next((frame for _, frame in frames if isinstance(frame, DeltaEvent)), None)
    return first is not None and first.seq != 0


def final_response(dispatcher: Dispatcher, record: Record) -> dict | None:
    """The response's final object if its frames ended, else None."""
    frames = read(dispatcher.redis, record.id)
    if not any(is_terminal(frame) for _, frame in frames):
        return None
    if trimmed(frames):  # the deltas are partly gone: the output comes from the result
        translator = Translator(as_created(record.response))
        translator.opening(queued=True)
        terminal = next(frame for _, frame in frames if is_terminal(frame))
        if isinstance(terminal, DoneEvent):
            try:
                translator.result(dispatcher.done_result(terminal))
            except InternalError as error:
                translator.failed(error)
        else:
            translator.failed(terminal.to_error())
        return translator.final
    for item in translate(dispatcher, record):
        if isinstance(item, dict) and item["type"] in TERMINAL_EVENTS:
            return item["response"]
    return None


#: The events that end a response's stream.
TERMINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")


def finalize(dispatcher: Dispatcher, store: ResponseStore, record: Record) -> Record:
    """Store the final object of a background response whose frames ended; returns the record."""
    if record.final or not record.background:
        return record
    final = final_response(dispatcher, record)
    if final is None:
        return record
    stored = store.update(record.id, final) or record
    dispatcher.redis.zrem(keys.background_responses_key(), record.id)
    return stored


def produced(redis: Redis, response: str) -> bool:
    """Whether the job sent anything yet (a frame of any kind)."""
    return bool(redis.xlen(keys.response_events_key(response)))


def has_terminal(redis: Redis, response: str) -> bool:
    return any(is_terminal(frame) for _, frame in read(redis, response))
