"""``/v1/chat/completions`` and ``/v1/completions``, streaming and not."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

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


@bp.post("/chat/completions")
def chat_completions():
    req: ChatCompletionRequest = parse_body(ChatCompletionRequest, json_body())
    messages, sampling = req.chat_messages(), req.sampling(req.token_limit)
    spec = services().dispatcher.resolve(req.model, ModelKind.CHAT)
    job = GenerateJob(
        **envelope(spec),
        stream=req.stream,
        messages=messages,
        n=req.n,
        sampling=sampling,
    )
    return _generate(job, req.model, chat=True, include_usage=req.include_usage, choices=req.n)


@bp.post("/completions")
def completions():
    req: CompletionRequest = parse_body(CompletionRequest, json_body())
    req.check()
    prompts, sampling = req.prompts, req.sampling(req.max_tokens)
    spec = services().dispatcher.resolve(req.model, ModelKind.CHAT)
    job = GenerateJob(
        **envelope(spec),
        stream=req.stream,
        prompts=prompts,
        n=req.n,
        sampling=sampling,
    )
    return _generate(
        job, req.model, chat=False, include_usage=req.include_usage, choices=len(prompts) * req.n
    )


def _generate(job: GenerateJob, model: str, *, chat: bool, include_usage: bool, choices: int):
    dispatcher = services().dispatcher
    gone = client_gone_probe(request.environ)
    created = int(time.time())
    ticket = dispatcher.submit(job)
    if not job.stream:
        try:
            result = dispatcher.result(ticket, gone)
        finally:
            dispatcher.close(ticket)
        build = responses.chat_completion if chat else responses.completion
        return jsonify(build(job.job_id, model, created, result))

    # Hold the headers until the worker accepted the job, so that its errors (a prompt longer
    # than the context, say) keep their HTTP status instead of becoming a mid-stream error.
    events = dispatcher.events(ticket, gone)
    try:
        first = next((event for event in events if event is not None), None)
    except BaseException:
        dispatcher.close(ticket)
        raise
    if first is None:  # the client left while the job was queued
        dispatcher.close(ticket)
        return Response(status=499)
    if isinstance(first, ErrorEvent):
        dispatcher.close(ticket)
        raise first.to_error()
    writer = responses.ChunkWriter(job.job_id, model, created, chat=chat, include_usage=include_usage)
    return Response(
        _frames(dispatcher, ticket, writer, choices, itertools.chain([first], events)),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _frames(
    dispatcher: Dispatcher, ticket: Ticket, writer: responses.ChunkWriter, choices: int, events
) -> Iterator[str]:
    """SSE frames; if the client goes away mid-stream, the ``finally`` cancels the job.

    Runs after the view returned, outside the app context: everything it needs is passed in.
    """
    finished = False
    try:
        yield from writer.opening(choices)
        for event in events:
            if event is None:
                yield responses.KEEPALIVE
            elif isinstance(event, DeltaEvent):
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
