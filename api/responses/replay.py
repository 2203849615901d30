"""Following a background response's events: replay its frames' events after ``starting_after``,
then follow new frames as the worker appends them, from any API process.

Each reader translates the frames from the first one, so every reader numbers the events alike;
it sends only those after ``starting_after``.
"""

from __future__ import annotations

from collections.abc import Iterator

from api.dispatch import Dispatcher
from api.responses import background, frames
from api.responses.events import Event, Translator
from api.responses.store import Record, ResponseStore
from shared.errors import InvalidRequest

#: Milliseconds one read waits for a new frame (then the reader looks at the response's state and
#: sends a keep-alive).
BLOCK_MS = 1000


def check_replayable(dispatcher: Dispatcher, record: Record, starting_after: int) -> None:
    """A 400 when the events asked for are no longer all there (the stream was trimmed or expired)."""
    entries = frames.read(dispatcher.redis, record.id)
    if (entries and frames.trimmed(entries)) or (not entries and record.final):
        raise InvalidRequest(
            "this response's events are no longer kept (streams are bounded in length and time); "
            "GET it without stream for its final object",
            param="starting_after",
        )


def events(
    dispatcher: Dispatcher, store: ResponseStore, record: Record, starting_after: int
) -> Iterator[Event | None]:
    """The response's events after ``starting_after``, and None while waiting (keep-alives), until
    its end. The reader settles the response itself while it waits (a deadline, a dead worker)."""
    translator = Translator(frames.as_created(record.response))
    after = frames.START
    pending = translator.opening(queued=True)
    block: int | None = None  # the first read takes whatever is there at once
    while True:
        for event in pending:
            if event["sequence_number"] > starting_after:
                yield event
        if translator.final is not None:
            return
        pending = []
        got_any = False
        for item in frames.follow(dispatcher, record, translator, after, block):
            if isinstance(item, str):
                after, got_any = item, True
            else:
                pending.append(item)
        if translator.final is not None:
            continue  # send them, then end
        block = BLOCK_MS
        if not got_any:
            yield None
            # A deadline or a dead worker ends it with a frame, which the next read gets.
            record = background.settle(dispatcher, store, record)
