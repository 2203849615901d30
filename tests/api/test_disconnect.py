"""The client-gone probe on descriptors past ``select()``'s 1023, and the open-files limit."""

from __future__ import annotations

import os
import resource
import select
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from api.disconnect import client_gone_probe, socket_closed_by_peer
from api.fdlimit import raise_open_files_limit

HIGH_FD = 1500


@pytest.fixture
def high_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected pair whose server end has descriptor 1500."""
    if raise_open_files_limit() <= HIGH_FD:
        pytest.skip("this process cannot open a descriptor above 1500")
    server, client = socket.socketpair()
    os.dup2(server.fileno(), HIGH_FD)
    server.close()
    high = socket.socket(fileno=HIGH_FD)
    yield high, client
    high.close()
    client.close()


def test_select_cannot_watch_the_descriptor(high_pair):
    """Why the probe polls: ``select()`` refuses the descriptor outright."""
    high, _ = high_pair
    with pytest.raises(ValueError):
        select.select([high], [], [], 0)


def test_probe_sees_an_open_client_as_present(high_pair):
    high, _ = high_pair
    assert high.fileno() == HIGH_FD
    assert socket_closed_by_peer(high) is False
    assert client_gone_probe({"gunicorn.socket": high})() is False


def test_probe_takes_pipelined_bytes_for_a_client_still_there(high_pair):
    high, client = high_pair
    client.sendall(b"GET / HTTP/1.1\r\n")
    assert socket_closed_by_peer(high) is False
    assert high.recv(64, socket.MSG_PEEK) == b"GET / HTTP/1.1\r\n"  # left for the server to read


def test_probe_sees_a_closed_client_as_gone(high_pair):
    high, client = high_pair
    client.close()
    assert socket_closed_by_peer(high) is True
    assert client_gone_probe({"gunicorn.socket": high})() is True


def test_probe_of_a_closed_socket_says_gone():
    server, client = socket.socketpair()
    server.close()
    client.close()
    assert socket_closed_by_peer(server) is True


def test_without_a_socket_the_client_is_assumed_present():
    assert client_gone_probe({})() is False


def test_a_low_open_files_limit_is_raised():
    """A process started at 1024 open files (a common default) raises its soft limit itself."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip("the hard limit leaves nothing to raise to")
    code = (
        "import resource; from api.fdlimit import raise_open_files_limit; raise_open_files_limit();"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard)),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    expected = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    assert int(done.stdout) == expected
