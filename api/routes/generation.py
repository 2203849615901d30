"""``/v1/chat/completions`` and ``/v1/completions``, streaming and not."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from flask import Blueprint, Response, jsonify, request

from api import responses
from api.disconnect import client_gone_probe
from api.dispatch import Dispatcher, Ticket
from api.routes.common import envelope, json_body
from api.schemas.base import parse_body
from api.schemas.generation import ChatCompletionRequest, CompletionRequest
from api.services import services
from shared.errors import ModelyardError
from shared.events import DeltaEvent, DoneEvent, ErrorEvent
from shared.jobs import GenerateJob
from shared.models import ModelKind

bp = Blueprint("generation", __name__, url_prefix="/v1")


@dataclass
class Generation:
    """A validated chat or completion request and its job, ready to submit."""

    job: GenerateJob
    #: The model as the client named it (echoed in responses).
    model: str
    chat: bool
    include_usage: bool
    choices: int


@bp.post("/chat/completions")
def chat_completions():
    return _generate(chat_generation(json_body()))


@bp.post("/completions")
def completions():
    return _generate(completion_generation(json_body()))


def chat_generation(body: object) -> Generation:
    """Validate a chat completions body into its job (the WebSocket endpoint uses it too)."""
    req: ChatCompletionRequest = parse_body(ChatCompletionRequest, body)
    messages, sampling = req.chat_messages(), req.sampling(req.token_limit)
    spec = services().dispatcher.resolve(req.model, ModelKind.CHAT)
    job = GenerateJob(
        **envelope(spec),
        stream=req.stream,
        messages=messages,
        n=req.n,
        sampling=sampling,
    )
    return Generation(job, req.model, chat=True, include_usage=req.include_usage, choices=req.n)


def completion_generation(body: object) -> Generation:
    """Validate a completions body into its job (the WebSocket endpoint uses it too)."""
    req: CompletionRequest = parse_body(CompletionRequest, body)
    req.check()
    prompts, sampling = req.prompts, req.sampling(req.max_tokens)
    spec = services().dispatcher.resolve(req.model, ModelKind.CHAT)
    job = GenerateJob(
        **envelope(spec),
        stream=req.stream,
        prompts=prompts,
        n=req.n,
        sampling=sampling,
        echo=req.echo,
    )
    return Generation(
        job, req.model, chat=False, include_usage=req.include_usage, choices=len(prompts) * req.n
    )


def _generate(gen: Generation):
    gone = client_gone_probe(request.environ)
    if not gen.job.stream:
        dispatcher = services().dispatcher
        created = int(time.time())
        ticket = dispatcher.submit(gen.job)
        try:
            result = dispatcher.result(ticket, gone)
        finally:
            dispatcher.close(ticket)
        build = responses.chat_completion if gen.chat else responses.completion
        return jsonify(build(gen.job.job_id, gen.model, created, result))

    stream = open_stream(gen, gone)
    if stream is None:  # the client left while the job was queued
        return Response(status=499)
    return Response(
        stream.frames(),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def open_stream(gen: Generation, client_gone: Callable[[], bool]) -> Stream | None:
    """Submit a streaming job and wait up to one tick (a second) for its first event.

    Holding the response until the worker accepted the job lets its errors (a prompt longer than
    the context, say) keep their HTTP status: they are raised here, not sent mid-stream. A job
    still queued after that tick starts its stream anyway, with its queue position as SSE
    comments until the first token. None if the client left meanwhile.
    """
    dispatcher = services().dispatcher
    created = int(time.time())
    ticket = dispatcher.submit(gen.job)
    events = dispatcher.events(ticket, client_gone)
    try:
        first = next(events)
    except StopIteration:
        dispatcher.close(ticket)
        return None
    except BaseException:
        dispatcher.close(ticket)
        raise
    if isinstance(first, ErrorEvent):
        dispatcher.close(ticket)
        raise first.to_error()
    writer = responses.ChunkWriter(
        gen.job.job_id, gen.model, created, chat=gen.chat, include_usage=gen.include_usage
    )
    return Stream(dispatcher, ticket, writer, gen.choices, itertools.chain([first], events))


@dataclass
class Stream:
    """A streaming job whose first event arrived: its chunks, for SSE and the WebSocket alike."""

    dispatcher: Dispatcher
    ticket: Ticket
    writer: responses.ChunkWriter
    choices: int
    events: Iterator

    def frames(self) -> Iterator[str]:
        """SSE frames; if the consumer stops early (the client left), the ``finally`` cancels the job.

        Runs after the view returned, outside the app context: everything it needs is kept here.
        """
        dispatcher, ticket, writer = self.dispatcher, self.ticket, self.writer
        finished = started = False
        try:
            yield from writer.opening(self.choices)
            for event in self.events:
                if event is None:
                    position = None if started else dispatcher.queue_position(ticket.job)
                    yield responses.KEEPALIVE if position is None else responses.queue_comment(position)
                    continue
                started = True
                if isinstance(event, DeltaEvent):
                    for delta in event.deltas:
                        yield from writer.delta(delta)
                elif isinstance(event, DoneEvent):
                    finished = True
                    yield from writer.closing(dispatcher.done_result(event).usage)
                elif isinstance(event, ErrorEvent):
                    finished = True
                    yield responses.sse_error(event.to_error())
                    yield responses.DONE
        except ModelyardError as error:
            finished = True
            yield responses.sse_error(error)
            yield responses.DONE
        finally:
            if not finished:
                dispatcher.cancel(ticket.job.job_id)
            dispatcher.close(ticket)
