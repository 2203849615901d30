"""A lean HTTP/1.1 load generator: keep-alive connections driven by one asyncio loop.

``requests`` costs about 1 ms of CPU per request on the benchmark machine, as much as the API's own
work for a request, and on 2 cores that CPU comes out of the server's share. This client sends
prebuilt request bytes and reads replies by ``Content-Length``: roughly a tenth of that.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: ``record(start, end, value, error)``: one finished request, times from ``time.perf_counter``.
Recorder = Callable[[float, float, float | None, str | None], None]


@dataclass(frozen=True)
class RawCall:
    """What each request of a load run is: its bytes, and what a reply is worth."""

    host: str
    port: int
    #: The request bytes for connection ``i``'s ``n``-th request.
    request: Callable[[int, int], bytes]
    #: The value of a reply (``status``, ``body``); raises on a reply that is not a success.
    value: Callable[[int, bytes], float | None]


def post_json(host: str, port: int, path: str, body: dict[str, Any]) -> bytes:
    """The bytes of a keep-alive ``POST`` of ``body`` as JSON."""
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + payload


async def _read_reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
        elif name.strip().lower() == "transfer-encoding":
            raise RuntimeError("chunked replies are not supported by this client")
    if length is None:
        raise RuntimeError("a reply without Content-Length")
    return status, await reader.readexactly(length)


async def _connection(index: int, call: RawCall, t_end: float, record: Recorder, pause: float) -> None:
    writer = None
    try:
        for n in itertools.count():
            if time.perf_counter() >= t_end:
                break
            t0 = time.perf_counter()
            value, error = None, None
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(call.host, call.port)
                writer.write(call.request(index, n))
                status, body = await _read_reply(reader)
                value = call.value(status, body)
            except Exception as exc:  # counted and shown, never fatal to the run
                error = f"{type(exc).__name__}: {str(exc)[:120]}"
                if writer is not None:
                    writer.close()
                    writer = None
            record(t0, time.perf_counter(), value, error)
            if error is not None:
                await asyncio.sleep(pause)  # no busy loop against a failing server
    finally:
        if writer is not None:
            writer.close()


def drive(concurrency: int, call: RawCall, t_end: float, record: Recorder, pause: float = 0.05) -> None:
    """Run ``concurrency`` connections, each sending requests back to back until ``t_end``."""

    async def main() -> None:
        await asyncio.gather(*(_connection(i, call, t_end, record, pause) for i in range(concurrency)))

    asyncio.run(main())
