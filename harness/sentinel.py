"""A Redis primary, its replica and three sentinels on free ports of 127.0.0.1: what a Sentinel
failover test needs (``redis-server --sentinel``, the same binary)."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from harness.processes import free_port, stop_process, wait_until
from harness.redis_server import RedisServer, redis_server_binary
from shared.connection import connect

#: The service name the sentinels monitor; the URL's path.
SERVICE = "mymaster"


@dataclass
class Sentinel:
    """One ``redis-server --sentinel`` watching ``primary_port`` (its config file is its own:
    sentinels rewrite it as they learn the topology)."""

    port: int
    workdir: Path
    proc: subprocess.Popen | None = None

    def start(self, primary_port: int, quorum: int, down_after_ms: int, password: str | None) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "sentinel.conf"
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {self.workdir}",
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} {quorum}",
            f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}",
            f"sentinel failover-timeout {SERVICE} {max(3 * down_after_ms, 3000)}",
            f"sentinel parallel-syncs {SERVICE} 1",
        ]
        if password:
            lines.append(f"sentinel auth-pass {SERVICE} {password}")
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen(
            [redis_server_binary(), str(conf), "--sentinel"],
            stdout=open(self.workdir / "sentinel.log", "wb"),  # noqa: SIM115 - the child holds it
            stderr=subprocess.STDOUT,
        )
        wait_until(self._pings, 10, f"sentinel on {self.port}")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, decode_responses=True)

    def primary(self) -> tuple[str, int] | None:
        """The primary this sentinel names now."""
        try:
            found = self.client().sentinel_get_master_addr_by_name(SERVICE)
        except redis.RedisError:
            return None
        return (found[0], int(found[1])) if found else None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def _pings(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False


@dataclass
class SentinelCluster:
    """A primary, ``replicas`` replicas and ``sentinels`` sentinels (quorum: a majority).

    ``url`` is the ``redis+sentinel://`` URL every process gets; :meth:`client` follows the primary
    as they do. ``password`` (optional) is the servers' ``requirepass`` and ``masterauth``."""

    workdir: Path
    replicas: int = 1
    sentinels: int = 3
    down_after_ms: int = 1000
    password: str | None = None
    servers: list[RedisServer] = field(default_factory=list)
    watchers: list[Sentinel] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.watchers)
        auth = f":{self.password}@" if self.password else ""
        return f"redis+sentinel://{auth}{hosts}/{SERVICE}/0"

    def client(self) -> redis.Redis:
        return connect(self.url, socket_timeout=5)

    def start(self) -> SentinelCluster:
        auth: tuple[str, ...] = ()
        if self.password:
            auth = ("--requirepass", self.password, "--masterauth", self.password)
        userinfo = f":{self.password}" if self.password else ""
        primary = RedisServer(port=free_port(), workdir=self._dir("primary"), args=auth, userinfo=userinfo)
        primary.start()
        self.servers.append(primary)
        for i in range(self.replicas):
            replica = RedisServer(
                port=free_port(),
                workdir=self._dir(f"replica{i}"),
                args=(*auth, "--replicaof", "127.0.0.1", str(primary.port)),
                userinfo=userinfo,
            )
            replica.start()
            self.servers.append(replica)
        wait_until(lambda: self._replicas_in_sync(primary), 20, "the replicas to sync")
        for i in range(self.sentinels):
            sentinel = Sentinel(port=free_port(), workdir=self._dir(f"sentinel{i}"))
            sentinel.start(primary.port, self.sentinels // 2 + 1, self.down_after_ms, self.password)
            self.watchers.append(sentinel)
        wait_until(self._sentinels_know_everyone, 30, "the sentinels to see each other and the replicas")
        return self

    def primary(self) -> RedisServer:
        """The server the sentinels name as primary now (a majority of them agree)."""
        named = [s.primary() for s in self.watchers]
        for server in self.servers:
            if named.count(("127.0.0.1", server.port)) > len(self.watchers) // 2:
                return server
        raise LookupError(f"no primary agreed on by the sentinels: {named}")

    def kill(self, server: RedisServer) -> float:
        """``kill -9`` a server; returns the monotonic time it died at."""
        assert server.proc is not None
        server.proc.kill()
        server.proc.wait()
        server.proc = None
        return time.monotonic()

    def stop(self) -> None:
        for sentinel in self.watchers:
            sentinel.stop()
        for server in self.servers:
            server.stop()

    def _dir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _replicas_in_sync(self, primary: RedisServer) -> bool:
        info = redis.Redis(port=primary.port, password=self.password).info("replication")
        online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        return len([r for r in online if r.get("state") == "online"]) == self.replicas

    def _sentinels_know_everyone(self) -> bool:
        for sentinel in self.watchers:
            try:
                state = sentinel.client().sentinel_master(SERVICE)
            except redis.RedisError:
                return False
            peers, replicas = int(state["num-other-sentinels"]), int(state["num-slaves"])
            if peers != self.sentinels - 1 or replicas != self.replicas:
                return False
        return True
