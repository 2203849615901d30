"""Streamed chat completions and completions: a job's events as typed stream items.

:func:`open_stream` submits a streaming job; :meth:`Stream.items` then yields what the client is
sent, as objects: :class:`Chunk` (an OpenAI chunk object), :class:`Waiting` (nothing yet: a
keep-alive, with the queue position while the job is queued) and :class:`Failed` (the error that
ends the stream). The end of the items is the end of the stream (``[DONE]``); a client that left
ends them with :class:`~shared.errors.Cancelled`. The SSE route and the WebSocket route each
encode the items their own way; nothing here knows either format.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from api import logprobs
from api.dispatch import Dispatcher
from api.job_run import JobRun
from api.middleware import RequestContext
from api.openai_objects import usage_dict
from shared.errors import Cancelled, ModelyardError
from shared.events import ChoiceDelta, DeltaEvent
from shared.jobs import GenerateJob, Usage
from shared.tools import ToolCallDelta


def compact_json(payload: Any) -> str:
    """The JSON text a stream item is sent as (SSE data and WebSocket messages alike)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Chunk:
    """One OpenAI chunk object (``chat.completion.chunk`` or ``text_completion``)."""

    body: dict[str, Any]

    def json(self) -> str:
        return compact_json(self.body)


@dataclass(frozen=True)
class Waiting:
    """Nothing to send yet: ``position`` jobs are ahead of the queued job, or None once it runs."""

    position: int | None


@dataclass(frozen=True)
class Failed:
    """The stream ends with ``error`` (after the chunks already sent)."""

    error: ModelyardError

    def json(self) -> str:
        return compact_json(self.error.to_dict())


StreamItem = Chunk | Waiting | Failed


class ChunkBuilder:
    """The chunk objects of one streamed chat completion or completion."""

    def __init__(self, job_id: str, model: str, created: int, chat: bool, include_usage: bool) -> None:
        self.id = f"chatcmpl-{job_id}" if chat else f"cmpl-{job_id}"
        self.object = "chat.completion.chunk" if chat else "text_completion"
        self.model = model
        self.created = created
        self.chat = chat
        self.include_usage = include_usage
        #: Completions: where each choice's next token starts in its text (logprobs' text_offset).
        self._offsets: dict[int, int] = {}

    def _chunk(self, choices: list[dict[str, Any]], usage: Usage | None = None) -> Chunk:
        body: dict[str, Any] = {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            body["usage"] = usage_dict(usage) if usage else None
        return Chunk(body)

    def _chat_choice(
        self, index: int, delta: dict[str, Any], token_logprobs: Any, finish: str | None
    ) -> Chunk:
        return self._chunk(
            [{"index": index, "delta": delta, "logprobs": token_logprobs, "finish_reason": finish}]
        )

    def opening(self, choice_count: int) -> list[Chunk]:
        """Chat streams announce the assistant role first, one chunk per choice."""
        if not self.chat:
            return []
        return [
            self._chat_choice(i, {"role": "assistant", "content": ""}, None, None)
            for i in range(choice_count)
        ]

    def delta(self, delta: ChoiceDelta) -> list[Chunk]:
        """The chunks of one choice's delta (none for an empty one)."""
        chunks = []
        if self.chat:
            if delta.text or delta.logprobs:
                chunks.append(
                    self._chat_choice(
                        delta.index, {"content": delta.text}, logprobs.chat(delta.logprobs), None
                    )
                )
            if delta.tool_calls:
                calls = {"tool_calls": [tool_call_delta(d) for d in delta.tool_calls]}
                chunks.append(self._chat_choice(delta.index, calls, None, None))
            if delta.finish_reason:
                chunks.append(self._chat_choice(delta.index, {}, None, delta.finish_reason))
        elif delta.text or delta.finish_reason or delta.logprobs:
            body, self._offsets[delta.index] = logprobs.completion(
                delta.logprobs, self._offsets.get(delta.index, 0)
            )
            choice = {
                "index": delta.index,
                "text": delta.text,
                "logprobs": body,
                "finish_reason": delta.finish_reason,
            }
            chunks.append(self._chunk([choice]))
        return chunks

    def closing(self, usage: Usage) -> list[Chunk]:
        """The usage chunk, when the client asked for it."""
        return [self._chunk([], usage)] if self.include_usage else []


def tool_call_delta(delta: ToolCallDelta) -> dict[str, Any]:
    """A call fragment in OpenAI's shape: the first of a call has its id, type and name (the SDK
    concatenates every repeated string, so they are sent once), the others only arguments."""
    if delta.id is None:
        return {"index": delta.index, "function": {"arguments": delta.arguments}}
    return {
        "index": delta.index,
        "id": delta.id,
        "type": "function",
        "function": {"name": delta.name, "arguments": delta.arguments},
    }


@dataclass
class Stream:
    """A streaming job whose first event arrived (or that is still queued after a tick)."""

    run: JobRun
    builder: ChunkBuilder
    choices: int
    #: The run's events, the first one already taken.
    events: Iterator[DeltaEvent | None]

    def items(self) -> Iterator[StreamItem]:
        """What the client is sent; closing the iterator early (the client left) cancels the job.

        Runs after the view returned, outside the app context: everything it needs is kept here.
        """
        run, builder = self.run, self.builder
        started = False
        try:
            yield from builder.opening(self.choices)
            for event in self.events:
                if event is None:
                    yield Waiting(None if started else run.queue_position())
                    continue
                started = True
                for delta in event.deltas:
                    yield from builder.delta(delta)
            assert run.result is not None
            yield from builder.closing(run.result.usage)
        except Cancelled:
            raise  # the client left: nothing more is sent
        except ModelyardError as error:
            yield Failed(error)
        finally:
            run.close()

    def close(self) -> None:
        """Forget the job (cancelling it if it runs) when the items were never read."""
        self.run.close()


def open_stream(
    dispatcher: Dispatcher, job: GenerateJob, builder: ChunkBuilder, choices: int, context: RequestContext
) -> Stream:
    """Submit a streaming job and wait up to one tick (a second) for its first event.

    Holding the response until the worker accepted the job lets its errors (a prompt longer than
    the context, say) keep their HTTP status: they are raised here, not sent mid-stream, and so is
    :class:`Cancelled` when the client left meanwhile. A job still queued after that tick starts
    its stream anyway, with its queue position in :class:`Waiting` items until the first token.
    """
    run = dispatcher.run(job, context)
    events = run.events()
    try:
        first = [next(events)]
    except StopIteration:  # done already
        first = []
    except BaseException:
        run.close()
        raise
    return Stream(run, builder, choices, itertools.chain(first, events))
