"""A response's stream events, translated from its job's events by one deterministic state machine.

The same job events (a live stream's deltas, or a background job's frames read back from Redis)
always give the same events with the same ``sequence_number``s and item ids, in whichever API
process they are translated: so a client resuming with ``starting_after`` anywhere gets exactly
the rest. At most one output item is open at a time: text opens a message, a call's first
fragment closes it and opens a ``function_call`` item.
"""

from __future__ import annotations

import copy
from typing import Any

from api.responses import objects
from shared.errors import Cancelled, ModelyardError
from shared.events import ChoiceDelta
from shared.jobs import GenerateResult, Usage
from shared.tools import ToolCallDelta

Event = dict[str, Any]


class Translator:
    """Events of one response; ``skeleton`` is its object as created (:func:`objects.skeleton`)."""

    def __init__(self, skeleton: dict[str, Any]) -> None:
        self.skeleton = skeleton
        self.id: str = skeleton["id"]
        self.seq = 0
        #: The output items so far (the open one last, with its status ``in_progress``).
        self.output: list[dict[str, Any]] = []
        self._open: int | None = None
        #: A choice's call index -> its output index.
        self._calls: dict[int, int] = {}
        self._finish: str | None = None
        self._queued = False
        #: Deltas came (else a job's result arrives whole: :meth:`result`).
        self.streamed = False
        self.final: dict[str, Any] | None = None

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return event

    def snapshot(self, status: str) -> dict[str, Any]:
        return {**copy.deepcopy(self.skeleton), "status": status, "output": copy.deepcopy(self.output)}

    # -- lifecycle ---------------------------------------------------------------------------
    def opening(self, queued: bool) -> list[Event]:
        """``response.created``, then ``response.queued`` (background) or ``response.in_progress``."""
        self._queued = queued
        status = "queued" if queued else "in_progress"
        events = [self._event("response.created", response=self.snapshot(status))]
        events.append(self._event(f"response.{status}", response=self.snapshot(status)))
        return events

    def started(self) -> list[Event]:
        """``response.in_progress`` once a queued response's job sends its first event."""
        if not self._queued:
            return []
        self._queued = False
        return [self._event("response.in_progress", response=self.snapshot("in_progress"))]

    def delta(self, delta: ChoiceDelta) -> list[Event]:
        """The events of one step of the (only) choice."""
        if delta.index != 0:
            return []
        self.streamed = True
        events = self.started()
        if delta.text:
            events += self._text(delta.text)
        for fragment in delta.tool_calls or []:
            events += self._call(fragment)
        if delta.finish_reason:
            self._finish = delta.finish_reason
        return events

    def finish(self, counts: Usage, finish_reason: str | None = None) -> list[Event]:
        """Close the open item; ``response.completed`` (``.incomplete`` when ``max_output_tokens`` cut it)."""
        events = self.started()
        reason = finish_reason or self._finish
        incomplete = reason == "length"
        events += self._close("incomplete" if incomplete else "completed")
        status = "incomplete" if incomplete else "completed"
        final = self.snapshot(status)
        final["usage"] = objects.usage(counts)
        if incomplete:
            final["incomplete_details"] = {"reason": "max_output_tokens"}
        self.final = final
        events.append(self._event(f"response.{status}", response=final))
        return events

    def failed(self, error: ModelyardError) -> list[Event]:
        """``response.failed`` (its response is ``cancelled`` for a cancelled job, else ``failed``)."""
        status = "cancelled" if isinstance(error, Cancelled) else "failed"
        final = self.snapshot(status)
        if status == "failed":
            final["error"] = objects.error_body(error)
        self.final = final
        return [self._event("response.failed", response=final)]

    def result(self, result: GenerateResult) -> list[Event]:
        """The events of a whole result at once (a job that did not stream)."""
        choice = result.choices[0]
        calls = [
            ToolCallDelta(index=i, id=call.id, name=call.function.name, arguments=call.function.arguments)
            for i, call in enumerate(choice.tool_calls or [])
        ]
        events = self.delta(ChoiceDelta(index=0, text=choice.text, tool_calls=calls or None))
        return events + self.finish(result.usage, choice.finish_reason)

    # -- items -------------------------------------------------------------------------------
    def _text(self, text: str) -> list[Event]:
        events: list[Event] = []
        if self._open is None or self.output[self._open]["type"] != "message":
            events += self._close("completed")
            index = len(self.output)
            item = objects.message_item(self.id, index, "", "in_progress")
            item["content"] = []
            self.output.append(item)
            self._open = index
            events.append(
                self._event("response.output_item.added", output_index=index, item=copy.deepcopy(item))
            )
            item["content"].append(objects.output_text(""))
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=objects.output_text(""),
                )
            )
        index = self._open
        item = self.output[index]
        item["content"][0]["text"] += text
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return events

    def _call(self, fragment: ToolCallDelta) -> list[Event]:
        events: list[Event] = []
        if fragment.id is not None or fragment.index not in self._calls:
            events += self._close("completed")
            index = len(self.output)
            item = objects.call_item(
                self.id, index, fragment.id or f"call_{index}", fragment.name or "", "", "in_progress"
            )
            self.output.append(item)
            self._open = index
            self._calls[fragment.index] = index
            events.append(
                self._event("response.output_item.added", output_index=index, item=copy.deepcopy(item))
            )
        index = self._calls[fragment.index]
        item = self.output[index]
        if fragment.arguments:
            item["arguments"] += fragment.arguments
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=index,
                    delta=fragment.arguments,
                )
            )
        return events

    def _close(self, status: str) -> list[Event]:
        """Close the open item, if any."""
        if self._open is None:
            return []
        index, self._open = self._open, None
        item = self.output[index]
        item["status"] = status
        events: list[Event] = []
        if item["type"] == "message":
            part = item["content"][0]
            events.append(
                self._event(
                    "response.output_text.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    text=part["text"],
                    logprobs=[],
                )
            )
            events.append(
                self._event(
                    "response.content_part.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=copy.deepcopy(part),
                )
            )
        else:
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
        events.append(self._event("response.output_item.done", output_index=index, item=copy.deepcopy(item)))
        return events
