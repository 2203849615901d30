"""``/v1/chat/completions`` and ``/v1/completions``, streaming and not."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass

from flask import Blueprint, Response, jsonify

from api import openai_objects
from api.fleet import check_takes_tools
from api.middleware import RequestContext
from api.routes.common import envelope, json_body, request_context, resolve_model
from api.schemas.base import parse_body
from api.schemas.generation import ChatCompletionRequest, CompletionRequest
from api.services import services
from api.streaming import ChunkBuilder, Stream, Waiting, open_stream
from shared.catalog import ModelKind
from shared.errors import Cancelled
from shared.jobs import GenerateJob

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

    def open_stream(self, context: RequestContext) -> Stream:
        """Submit the (streaming) job: its stream, once the job was accepted (the WebSocket uses it too)."""
        builder = ChunkBuilder(
            self.job.job_id, self.model, int(time.time()), chat=self.chat, include_usage=self.include_usage
        )
        return open_stream(services().dispatcher, self.job, builder, self.choices, context)


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
    spec = resolve_model(req.model, ModelKind.CHAT)
    spec.check_sequences(1, req.n)  # before anything is queued or counted
    tools = req.tool_use()
    if tools is not None:
        check_takes_tools(services().redis, spec)
    job = GenerateJob(
        **envelope(spec, req),
        stream=req.stream,
        messages=messages,
        n=req.n,
        sampling=sampling,
        constraint=req.constraint(),
        tools=tools,
    )
    return Generation(job, req.model, chat=True, include_usage=req.include_usage, choices=req.n)


def completion_generation(body: object) -> Generation:
    """Validate a completions body into its job (the WebSocket endpoint uses it too)."""
    req: CompletionRequest = parse_body(CompletionRequest, body)
    req.check()
    prompts, sampling = req.prompts, req.sampling(req.max_tokens)
    spec = resolve_model(req.model, ModelKind.CHAT)
    spec.check_sequences(len(prompts), req.n)  # before anything is queued or counted
    job = GenerateJob(
        **envelope(spec, req),
        stream=req.stream,
        prompts=prompts,
        n=req.n,
        sampling=sampling,
        echo=req.echo,
        constraint=req.constraint(),
    )
    return Generation(
        job, req.model, chat=False, include_usage=req.include_usage, choices=len(prompts) * req.n
    )


def _generate(gen: Generation):
    if not gen.job.stream:
        created = int(time.time())
        with services().dispatcher.run(gen.job, request_context()) as run:
            result = run.wait()
        build = openai_objects.chat_completion if gen.chat else openai_objects.completion
        return jsonify(build(gen.job.job_id, gen.model, created, result))

    stream = gen.open_stream(request_context())
    response = Response(
        _sse(stream),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    response.call_on_close(stream.close)  # also when the response is closed before it was read
    return response


#: The end of an SSE stream, and what is sent while there is nothing to send (clients ignore it).
SSE_DONE = "data: [DONE]\n\n"
SSE_KEEPALIVE = ": keep-alive\n\n"


def _sse(stream: Stream) -> Iterator[str]:
    """The stream as text/event-stream frames: a data frame per chunk or error, then ``[DONE]``;
    comments while waiting (the job's queue position while it is queued)."""
    try:
        with closing(stream.items()) as items:
            for item in items:
                if isinstance(item, Waiting):
                    yield SSE_KEEPALIVE if item.position is None else f": queued position={item.position}\n\n"
                else:  # a chunk, or the error that ends the stream (the SDK raises it)
                    yield f"data: {item.json()}\n\n"
    except Cancelled:
        return  # the client left: nobody reads a [DONE]
    yield SSE_DONE
