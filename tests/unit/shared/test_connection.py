"""shared.connection.connect against real redis-servers: a password, an ACL user, and TLS."""

from collections.abc import Iterator

import pytest
import redis

from harness import RedisServer, free_port
from harness.tls import TlsFiles, make_tls_files
from shared.connection import connect

#: An ACL user with every right; the default user is off, so nothing gets in without AUTH.
ACL = ("--user", "default", "off", "--user", "alice", "on", ">wonderland", "~*", "&*", "+@all")


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def _server(tmp_path_factory, **kwargs) -> Iterator[RedisServer]:
    server = RedisServer(port=free_port(), workdir=tmp_path_factory.mktemp("redis"), **kwargs)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def password_server(tmp_path_factory) -> Iterator[RedisServer]:
    yield from _server(tmp_path_factory, args=("--requirepass", "s3cret"), userinfo=":s3cret")


@pytest.fixture(scope="module")
def acl_tls_server(tmp_path_factory, tls_files) -> Iterator[RedisServer]:
    yield from _server(tmp_path_factory, args=ACL, userinfo="alice:wonderland", tls=tls_files)


def test_password_in_the_url(password_server):
    client = connect(password_server.url)
    assert client.ping() and client.acl_whoami() == "default"
    with pytest.raises(redis.AuthenticationError):
        connect(password_server.url.replace("s3cret", "wrong")).ping()
    with pytest.raises(redis.AuthenticationError, match="required"):  # no password: NOAUTH
        connect(password_server.url.replace(":s3cret@", "")).ping()


def test_acl_user_over_tls(acl_tls_server, tls_files):
    url = acl_tls_server.url
    assert url.startswith("rediss://alice:wonderland@127.0.0.1:")
    client = connect(url, name="acl-tls-test")
    assert client.ping() and client.acl_whoami() == "alice"
    assert client.client_getname() == "acl-tls-test"
    # A pub/sub subscription (the API's reply router, the workers' watch) takes the same path.
    pubsub = client.pubsub()
    pubsub.subscribe("tls-channel")
    assert client.publish("tls-channel", "x") == 1
    pubsub.close()
    with pytest.raises(redis.AuthenticationError):
        connect(url.replace("wonderland", "nope")).ping()


def test_tls_server_refuses_plain_and_unverified_connections(acl_tls_server, tmp_path):
    plain = acl_tls_server.url.replace("rediss://", "redis://").split("?")[0]
    with pytest.raises(redis.ConnectionError):
        connect(plain).ping()
    # Another CA's certificate: the server's cannot be verified.
    other = make_tls_files(tmp_path / "other")
    with pytest.raises(redis.ConnectionError):
        connect(acl_tls_server.url.split("?")[0] + f"?ssl_ca_certs={other.ca}").ping()
