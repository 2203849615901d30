"""Reading request bodies whole, within a deadline and a size limit, before the app runs.

A client that sends its headers and then part of a body (or nothing, or a byte now and then) would
otherwise hold its request in the view's first ``request.get_data()`` for as long as it likes. The
middleware reads the whole body first: one that has not arrived ``timeout`` seconds after the
request started gets 408 and its connection is closed; one over ``max_bytes`` gets 413, chunked or
not (a chunked body is counted as it arrives, never cut short and served); one that ends before its
``Content-Length`` gets 400. The app then reads the buffered bytes, as a body with a
``Content-Length``, so views and Flask's own body handling are unchanged.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from api.errors import RequestTimeout
from shared.errors import InvalidRequest, ModelyardError, PayloadTooLarge

log = logging.getLogger(__name__)

#: Bytes asked of the server's input stream per read.
_READ_SIZE = 256 * 1024

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class _BodyTimeout(Exception):
    """The body did not arrive by its deadline.

    An ``Exception`` (gevent's own ``Timeout`` is a ``BaseException``) so that gunicorn's body
    reader sees a failed read and closes the connection instead of draining it for the next request.
    """


class BufferedBody:
    """WSGI middleware: hands the app a fully read ``wsgi.input``, or answers 408/413/400 itself."""

    def __init__(
        self, app: WsgiApp, *, max_bytes: int, timeout: float, upload_max_bytes: int | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout
        #: The limit of a file upload (``POST .../files``), when it differs from other bodies'.
        self.upload_max_bytes = upload_max_bytes or max_bytes

    def limit(self, environ: dict[str, Any]) -> int:
        """The largest body this request may send."""
        upload = environ.get("REQUEST_METHOD") == "POST" and environ.get("PATH_INFO", "").endswith("/files")
        return self.upload_max_bytes if upload else self.max_bytes

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        declared = environ.get("CONTENT_LENGTH") or ""
        if not chunked and declared in ("", "0"):
            return self.app(environ, start_response)  # no body (GET, a WebSocket upgrade)
        started = time.monotonic()
        try:
            length = None if chunked else _content_length(declared)
            limit = self.limit(environ)
            if length is not None and length > limit:
                raise PayloadTooLarge(_too_large(limit))
            body = self._read(environ, length, started + self.timeout, limit)
        except ModelyardError as error:
            log.info(
                "%s %s %d %s (%.1fs)",
                environ.get("REQUEST_METHOD"),
                environ.get("PATH_INFO"),
                error.status,
                error.message,
                time.monotonic() - started,
            )
            return error_response(error, start_response, close=not isinstance(error, PayloadTooLarge))
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        return self.app(environ, start_response)

    def _read(self, environ: dict[str, Any], length: int | None, deadline: float, limit: int) -> bytes:
        """The body (``length`` bytes, or a chunked body to its end), read by ``deadline``."""
        stream = environ["wsgi.input"]
        wanted = limit + 1 if length is None else length
        parts: list[bytes] = []
        have = 0
        try:
            with _deadline(deadline, environ):
                while have < wanted:
                    data = stream.read(min(_READ_SIZE, wanted - have))
                    if not data:
                        break
                    parts.append(data)
                    have += len(data)
        except (_BodyTimeout, TimeoutError) as exc:
            raise RequestTimeout(
                f"the request body did not arrive within {self.timeout:g}s"
                + (f" ({have} of {length} bytes came)" if length is not None else f" ({have} bytes came)")
            ) from exc
        except Exception as exc:  # only I/O runs here (the server's body reader raises its own kinds)
            # The client closed the connection, or broke the chunked framing, mid-body.
            raise InvalidRequest(f"the request body could not be read: {exc or type(exc).__name__}") from exc
        if have > limit:
            raise PayloadTooLarge(_too_large(limit))
        if length is not None and have < length:
            raise InvalidRequest(f"the request body ended after {have} of its Content-Length {length} bytes")
        return b"".join(parts)


def _content_length(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise InvalidRequest("Content-Length must be a non-negative integer", param="Content-Length")
    return value


def _too_large(limit: int) -> str:
    return f"the request body is larger than the server accepts ({limit} bytes)"


@contextmanager
def _deadline(deadline: float, environ: dict[str, Any]) -> Iterator[None]:
    """Bound the reads inside to ``deadline`` (a ``time.monotonic()`` value).

    Under gevent (bin/api's serving) a ``gevent.Timeout`` interrupts the read wherever it waits, so
    the bound holds whatever the client drips. Elsewhere (gunicorn's threaded worker, werkzeug)
    each ``recv`` of the request's socket is bounded by the time left at the start of the read,
    which stops a stalled client but not, strictly, one that sends a byte now and then.
    """
    remaining = max(0.001, deadline - time.monotonic())
    timeout = _gevent_timeout(remaining)
    sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    previous = sock.gettimeout() if isinstance(sock, socket.socket) else None
    if timeout is None and isinstance(sock, socket.socket):
        sock.settimeout(remaining)
    try:
        if timeout is None:
            yield
        else:
            with timeout:
                yield
    finally:
        if timeout is None and isinstance(sock, socket.socket):
            sock.settimeout(previous)


def _gevent_timeout(seconds: float):
    """A ``gevent.Timeout`` raising :class:`_BodyTimeout`, when this process runs under gevent."""
    try:
        from gevent import Timeout, monkey
    except ImportError:
        return None
    if not monkey.is_module_patched("socket"):
        return None
    return Timeout(seconds, _BodyTimeout)


def error_response(error: ModelyardError, start_response: StartResponse, *, close: bool) -> list[bytes]:
    """``error`` in OpenAI's JSON shape, outside Flask; ``close`` asks to close the connection."""
    payload = json.dumps(error.to_dict(), ensure_ascii=False).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
    if error.retry_after is not None:
        headers.append(("Retry-After", str(error.retry_after)))
    if close:
        headers.append(("Connection", "close"))
    start_response(f"{error.status} {_REASONS.get(error.status, 'Error')}", headers)
    return [payload]


_REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large"}
