"""Hosts of their own on this machine: network namespaces joined by veth links to a bridge.

The first host is this one (the root namespace, where Redis, the API and the test run), at
``<subnet>.1`` on the bridge; every other host is a network namespace with its own address
``<subnet>.<n+1>`` and, for what runs there, its own UTS namespace and a dotted hostname
(``node<n>.cluster.test``). A host's link is the root end of its veth pair: :meth:`Host.cut`
takes it down (its packets go nowhere, its TCP connections hang as a pulled cable would leave
them), :meth:`Host.heal` brings it back.

Needs root and iproute2 (``ip netns``, ``ip link``); :func:`why_not` says why not, for a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def why_not() -> str | None:
    """Why network namespaces cannot be made here (None when they can)."""
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        return "iproute2 (ip) or util-linux (unshare) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"myprobe{uuid.uuid4().hex[:6]}"
    try:
        _ip("netns", "add", probe)
    except RuntimeError as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        _ip("netns", "del", probe)
    except RuntimeError:
        pass
    return None


@dataclass
class Host:
    """One namespace host: its name (``ip netns``), address, hostname and link."""

    netns: str
    address: str
    hostname: str
    link: str  # the root end of its veth pair

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run on this host: in its network namespace and a UTS namespace of its own
        named ``hostname`` (the pid is the program's: ip, unshare and sh each exec the next)."""
        script = 'hostname "$0" && exec "$@"'
        return [
            "ip",
            "netns",
            "exec",
            self.netns,
            "unshare",
            "--uts",
            "sh",
            "-c",
            script,
            self.hostname,
            *argv,
        ]

    def cut(self) -> None:
        """Pull its cable: the link goes down, nothing reaches it or leaves it."""
        _ip("link", "set", self.link, "down")

    def heal(self) -> None:
        _ip("link", "set", self.link, "up")


@dataclass
class Network:
    """A bridge in the root namespace and ``hosts`` namespace hosts on it; :meth:`close` removes
    everything (namespaces, links, bridge)."""

    hosts: int = 3
    #: The first three octets of the /24; one unlikely to clash with the machine's own.
    subnet: str = "10.231.17"
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:5])
    members: list[Host] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"mybr{self.tag}"

    @property
    def first_host(self) -> str:
        """The root namespace's address on the bridge: where Redis and the API listen."""
        return f"{self.subnet}.1"

    def open(self) -> Network:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.first_host}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for n in range(1, self.hosts + 1):
                self.members.append(self._add_host(n))
        except BaseException:
            self.close()
            raise
        return self

    def _add_host(self, n: int) -> Host:
        host = Host(
            netns=f"my{self.tag}h{n}",
            address=f"{self.subnet}.{n + 1}",
            hostname=f"node{n}.cluster.test",
            link=f"my{self.tag}v{n}",
        )
        _ip("netns", "add", host.netns)
        _ip("link", "add", host.link, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        _ip("link", "set", host.link, "master", self.bridge)
        _ip("link", "set", host.link, "up")
        _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        _ip("-n", host.netns, "link", "set", "lo", "up")
        return host

    def close(self) -> None:
        for host in self.members:
            for args in (("link", "del", host.link), ("netns", "del", host.netns)):
                try:
                    _ip(*args)
                except RuntimeError:
                    pass
        self.members.clear()
        try:
            _ip("link", "del", self.bridge)
        except RuntimeError:
            pass

    def __enter__(self) -> Network:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
