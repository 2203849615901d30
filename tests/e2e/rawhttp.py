"""Raw HTTP/1.1 over asyncio for tests that open hundreds of connections at once.

Threads with ``requests`` cost ~1 ms of CPU per request and a thread each; these bursts need the
client to be cheaper than the server it tests. Each request goes on its own connection
(``Connection: close``), so a reply is everything until the server closes.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def error_code(self) -> str | None:
        """The OpenAI error ``code`` of a JSON error reply, or of an SSE error frame."""
        text = self.body.decode(errors="replace")
        if self.headers.get("content-type", "").startswith("application/json"):
            try:
                return (json.loads(text).get("error") or {}).get("code")
            except (ValueError, AttributeError):
                return None
        for line in text.splitlines():
            if line.startswith("data: {") and '"error"' in line:
                return (json.loads(line[6:]).get("error") or {}).get("code")
        return None


def request_bytes(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> bytes:
    host = urlsplit(url).netloc
    payload = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    return (head + "\r\n").encode() + payload


def _dechunk(data: bytes) -> bytes:
    out, rest = [], data
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2 :]
    return b"".join(out)


async def fetch(url: str, raw: bytes, timeout: float) -> Reply:
    """Send ``raw`` on a new connection; the reply, read until the server closes."""
    parts = urlsplit(url)

    async def go() -> Reply:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            writer.write(raw)
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = _dechunk(body)
        return Reply(status=int(lines[0].split(" ", 2)[1]), headers=headers, body=body)

    return await asyncio.wait_for(go(), timeout)


def burst(url: str, requests: list[bytes], timeout: float) -> list[Reply | BaseException]:
    """All ``requests`` at once, each on its own connection; replies (or errors) in order."""

    async def run() -> list[Reply | BaseException]:
        return await asyncio.gather(*(fetch(url, raw, timeout) for raw in requests), return_exceptions=True)

    return asyncio.run(run())
