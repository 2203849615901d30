"""``/v1/responses``: the Responses API on the chat completions machinery (docs/responses.md)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import closing
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from api.openai_objects import page
from api.ratelimit import subject_of_request
from api.responses import background, replay
from api.responses.events import Event, Translator
from api.responses.objects import response_id, skeleton
from api.responses.store import Record, ResponseStore, input_items
from api.routes.common import int_arg, json_body, order_arg, request_context
from api.routes.generation import chat_generation
from api.schemas.base import parse_body
from api.schemas.responses import ResponseRequest, chat_messages, responses_param
from api.services import services
from api.streaming import Failed, Waiting, compact_json, open_stream
from shared.errors import Cancelled, DeadlineExceeded, InvalidRequest, ModelyardError, NotFound
from shared.events import ChoiceDelta
from shared.jobs import Usage

bp = Blueprint("responses", __name__, url_prefix="/v1")

_EXTENSION = "modelyard-responses"
_ID = re.compile(r"^resp_[0-9a-f]{32}$")


def _store() -> ResponseStore:
    state = current_app.extensions.get(_EXTENSION)
    if state is None:
        svc = services()
        store = ResponseStore(svc.redis, svc.settings.response_ttl_s)
        keeper = background.Keeper(svc.dispatcher, store, owner=svc.router.channel)
        state = current_app.extensions[_EXTENSION] = (store, keeper)
    return state[0]


@bp.before_app_request
def _start_keeper() -> None:
    # Threads start in the serving process (after gunicorn forks), as the janitor does.
    _store()
    current_app.extensions[_EXTENSION][1].start()


@bp.post("/responses")
def create_response():
    req: ResponseRequest = parse_body(ResponseRequest, json_body())
    items = req.input_items()
    store = _store()
    history: list[dict[str, Any]] = []
    if req.previous_response_id is not None:
        previous = _load(req.previous_response_id, param="previous_response_id")
        if not previous.final:
            raise InvalidRequest(
                f"response {previous.id!r} is still {previous.status}; continue it once it is done",
                param="previous_response_id",
            )
        history = previous.conversation()
    try:
        gen = chat_generation(req.chat_body(history, items))
    except InvalidRequest as exc:  # named as the Responses body names it
        param = responses_param(exc.param)
        if exc.param and param != exc.param:
            exc.message = exc.message.replace(f"'{exc.param}'", f"'{param}'")
        exc.param = param
        raise
    job, rid = gen.job, response_id(gen.job.job_id)
    record = Record(
        response=skeleton(rid, req, background=req.background),
        input_items=input_items(rid, items),
        history=history + chat_messages(items),
        job_id=job.job_id,
        model=job.model,
        deadline=job.deadline,
        owner=job.owner,
        background=req.background,
    )
    svc = services()
    if req.background:
        store.save(record)
        try:
            background.submit(svc.dispatcher, job, record, request_context())
        except BaseException:
            store.delete(rid)
            raise
        if req.stream:
            return _sse(replay.events(svc.dispatcher, store, record, -1))
        return jsonify(record.response)
    if req.store:
        store.save(record)
    translator = Translator(record.response)
    if req.stream:
        stream = open_stream(svc.dispatcher, job, _Builder(translator), 1, request_context())
        return _sse(_live(stream, translator, store if req.store else None, rid), on_close=stream.close)
    try:
        with svc.dispatcher.run(job, request_context()) as run:
            translator.result(run.wait())
    except ModelyardError as error:
        if req.store:
            translator.failed(error)
            store.update(rid, translator.final)
        raise
    if req.store:
        store.update(rid, translator.final)
    return jsonify(translator.final)


class _Builder:
    """What ``api.streaming`` asks of a chunk builder, giving a response's events instead."""

    def __init__(self, translator: Translator) -> None:
        self.translator = translator

    def opening(self, choices: int) -> list[Event]:
        return self.translator.opening(queued=False)

    def delta(self, delta: ChoiceDelta) -> list[Event]:
        return self.translator.delta(delta)

    def closing(self, usage: Usage) -> list[Event]:
        return self.translator.finish(usage)


def _live(stream, translator: Translator, store: ResponseStore | None, rid: str) -> Iterator[Event | None]:
    """A streamed (not background) response's events; its stored object ends as the stream does."""
    try:
        with closing(stream.items()) as items:
            for item in items:
                if isinstance(item, Waiting):
                    yield None
                elif isinstance(item, Failed):
                    yield from translator.failed(item.error)
                else:
                    yield item
    except Cancelled:
        pass  # the client left: its job is cancelled
    finally:
        if translator.final is None:  # the client left before the end
            translator.failed(Cancelled("the client went away"))
        if store is not None:
            store.update(rid, translator.final)


def _sse(events: Iterator[Event | None], on_close=None) -> Response:
    def encode() -> Iterator[str]:
        with closing(events):
            for event in events:
                if event is None:
                    yield ": keep-alive\n\n"
                else:
                    yield f"event: {event['type']}\ndata: {compact_json(event)}\n\n"

    response = Response(
        encode(),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    if on_close is not None:
        response.call_on_close(on_close)
    return response


def _load(rid: str, param: str = "id") -> Record:
    """The caller's stored response; another key's is as unknown as one that never was (404)."""
    record = _store().load(rid) if _ID.match(rid) else None
    if record is None or (services().settings.api_keys and record.owner != subject_of_request()):
        raise NotFound(f"no response {rid!r} (responses are kept a while, then expire)", param=param)
    return record


@bp.get("/responses/<rid>")
def get_response(rid: str):
    record, svc, store = _load(rid), services(), _store()
    if request.args.get("stream", "false").lower() in ("true", "1"):
        if not record.background:
            raise InvalidRequest("only background responses can be streamed again", param="stream")
        starting_after = int_arg("starting_after", -1, -(2**63), 2**63 - 1)
        replay.check_replayable(svc.dispatcher, record, starting_after)
        return _sse(replay.events(svc.dispatcher, store, record, starting_after))
    if record.background:
        return jsonify(background.view(svc.dispatcher, store, record))
    return jsonify(_settled(record))


def _settled(record: Record) -> dict[str, Any]:
    """A response that is not background: failed once its deadline passed (its API process died)."""
    if not record.final and record.overdue:
        translator = Translator(record.response)
        translator.failed(DeadlineExceeded("the response's deadline passed before it was done"))
        return (_store().update(record.id, translator.final) or record).response
    return record.response


@bp.get("/responses/<rid>/input_items")
def list_input_items(rid: str):
    record = _load(rid)
    limit = int_arg("limit", 20, 1, 100)
    return jsonify(page(record.input_items, order_arg(), limit, request.args.get("after")))


@bp.post("/responses/<rid>/cancel")
def cancel_response(rid: str):
    record = _load(rid)
    if not record.background:
        raise InvalidRequest("only background responses can be cancelled", param="id")
    return jsonify(background.cancel(services().dispatcher, _store(), record).response)


@bp.delete("/responses/<rid>")
def delete_response(rid: str):
    record, store = _load(rid), _store()
    if record.background and not record.final:
        services().dispatcher.cancel(record.job_id)
    store.delete(rid)
    return jsonify({"id": rid, "object": "response", "deleted": True})
