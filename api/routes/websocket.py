"""``/v1/ws``: chat completions and completions streamed over a WebSocket.

Each text message the client sends is one request: the JSON body of ``/v1/chat/completions``
(``"type": "chat"``) or of ``/v1/completions`` (``"type": "completion"``); without ``type``, a body
with ``messages`` is a chat request and any other a completion. ``stream`` is implied. The answer is
what the SSE endpoint sends, one text message per chunk (the same chunk JSON), then ``[DONE]``; an
error is OpenAI's error JSON, then ``[DONE]``. The socket then takes the next request. Closing the
socket cancels the running job. The items come from the same stream as SSE's
(:class:`api.streaming.Stream`), encoded here as messages.
"""

from __future__ import annotations

import logging
from contextlib import closing

from flask import Blueprint
from flask_sock import Sock
from simple_websocket import ConnectionClosed, Server

from api import observe
from api.json_parsing import parse_json
from api.routes.common import request_context
from api.routes.generation import Generation, chat_generation, completion_generation
from api.streaming import Waiting, compact_json
from shared.errors import Cancelled, InternalError, InvalidRequest, ModelyardError

log = logging.getLogger(__name__)

bp = Blueprint("websocket", __name__, url_prefix="/v1")
sock = Sock()

DONE = "[DONE]"

#: Seconds between the server's pings: a peer that stops answering is disconnected (its job cancelled).
PING_INTERVAL_S = 25


@bp.record_once
def _configure(state) -> None:
    # A message is a request body: it gets the same size limit.
    state.app.config.setdefault(
        "SOCK_SERVER_OPTIONS",
        {"max_message_size": state.app.config.get("MAX_CONTENT_LENGTH"), "ping_interval": PING_INTERVAL_S},
    )


@sock.route("/ws", bp=bp)
def websocket(ws: Server) -> None:
    """Serve one request after another until the client closes the socket."""
    while True:
        message = ws.receive()  # ConnectionClosed ends the loop (flask-sock catches it)
        if message is not None:
            _serve(ws, message)


def _serve(ws: Server, message: str | bytes) -> None:
    record = observe.begin(method="WS")
    status = 200
    try:
        gen = _generation(message)
        stream = gen.open_stream(request_context(client_gone=lambda: not ws.connected))
        with closing(stream.items()) as items:  # closing early cancels the job
            for item in items:
                if not isinstance(item, Waiting):  # a chunk, or the error that ends the stream
                    ws.send(item.json())
        ws.send(DONE)
    except ConnectionClosed:
        status = 499
        raise
    except Cancelled:  # the socket closed while the job was queued or running: nobody to tell
        status = 499
    except ModelyardError as error:
        status = error.status
        _send_error(ws, error)
    except Exception:
        log.exception("unhandled error in a WebSocket request")
        status = 500
        _send_error(ws, InternalError("internal server error"))
    finally:
        record.finish(status)


def _send_error(ws: Server, error: ModelyardError) -> None:
    ws.send(compact_json(error.to_dict()))
    ws.send(DONE)


def _generation(message: str | bytes) -> Generation:
    body = parse_json(message, what="message")
    if not isinstance(body, dict):
        raise InvalidRequest("the message must be a JSON object")
    kind = body.pop("type", None) or ("chat" if "messages" in body else "completion")
    body["stream"] = True
    if kind == "chat":
        return chat_generation(body)
    if kind == "completion":
        return completion_generation(body)
    raise InvalidRequest("'type' must be 'chat' or 'completion'", param="type")
