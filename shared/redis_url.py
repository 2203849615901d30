"""What a ``MODELYARD_REDIS_URL`` names: one Redis server, or a primary found through Sentinel.

Plain URLs are redis-py's own (``redis://``, ``rediss://`` for TLS, ``unix://``; a user and password
in the URL are ``AUTH user password``, an ACL user; query arguments such as ``ssl_ca_certs`` are
passed to the connection). A Sentinel URL lists the sentinels, then the primary's service name and
the database::

    redis+sentinel://[user:password@]h1:26379,h2:26379/mymaster/0[?sentinel_password=...]
    rediss+sentinel://...   TLS to the sentinels and to the primary

The user and password in it are the primary's; the sentinels' are ``sentinel_username`` and
``sentinel_password`` (none unless given). Other query arguments apply to both, as redis-py reads
them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from redis.connection import SSLConnection, parse_url

SENTINEL_SCHEMES = {"redis+sentinel": "redis", "rediss+sentinel": "rediss"}
DEFAULT_SENTINEL_PORT = 26379

#: Query arguments that configure the sentinels' connections only.
_SENTINEL_ONLY = ("sentinel_username", "sentinel_password")


@dataclass(frozen=True)
class SentinelTarget:
    """A primary found through Sentinel: where to ask, whom to ask for, and how to connect."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    #: Connection arguments for the primary (``username``, ``password``, ``ssl``, ``ssl_*``...).
    connection: dict[str, Any] = field(default_factory=dict)
    #: Connection arguments for the sentinels.
    sentinel_connection: dict[str, Any] = field(default_factory=dict)


def is_sentinel_url(url: str) -> bool:
    return urlsplit(url).scheme in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Split a ``redis+sentinel://`` URL; ``ValueError`` naming what is wrong with it."""
    parts = urlsplit(url)
    plain_scheme = SENTINEL_SCHEMES.get(parts.scheme)
    if plain_scheme is None:
        raise ValueError(f"not a Sentinel URL (redis+sentinel:// or rediss+sentinel://): {redact(url)}")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    sentinels = tuple(_host_port(item, url) for item in hosts.split(",") if item)
    if not sentinels:
        raise ValueError(f"a Sentinel URL names at least one sentinel host: {redact(url)}")
    path = [unquote(p) for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ValueError(f"a Sentinel URL's path is /<service name>[/<db>]: {redact(url)}")
    try:
        db = int(path[1]) if len(path) == 2 else 0
    except ValueError:
        raise ValueError(f"the database in a Sentinel URL is a number: {redact(url)}") from None

    query = parse_qsl(parts.query, keep_blank_values=True)
    sentinel_only = {k: v for k, v in query if k in _SENTINEL_ONLY}
    shared_query = urlencode([(k, v) for k, v in query if k not in _SENTINEL_ONLY])
    # redis-py parses credentials and query arguments of a plain URL: reuse it, host aside.
    plain = urlunsplit(
        (plain_scheme, f"{userinfo}@localhost" if userinfo else "localhost", "/0", shared_query, "")
    )
    connection = parse_url(plain)
    for key in ("host", "port", "db", "path"):
        connection.pop(key, None)
    if connection.pop("connection_class", None) is SSLConnection:
        connection["ssl"] = True  # SentinelConnectionPool picks its TLS connection class from this
    sentinel_connection = {k: v for k, v in connection.items() if k not in ("username", "password")}
    if "sentinel_username" in sentinel_only:
        sentinel_connection["username"] = sentinel_only["sentinel_username"]
    if "sentinel_password" in sentinel_only:
        sentinel_connection["password"] = sentinel_only["sentinel_password"]
    return SentinelTarget(
        sentinels=sentinels,
        service=path[0],
        db=db,
        connection=connection,
        sentinel_connection=sentinel_connection,
    )


def _host_port(item: str, url: str) -> tuple[str, int]:
    if item.startswith("["):  # [IPv6]:port
        host, _, rest = item[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = item.partition(":")
    try:
        return host, int(port) if port else DEFAULT_SENTINEL_PORT
    except ValueError:
        raise ValueError(f"bad sentinel address {item!r} in {redact(url)}") from None


def redact(url: str) -> str:
    """``url`` with its password (and any ``*password`` query argument) replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}{':***' if colon else ''}@{hosts}"
    query = [
        (k, "***" if k.endswith("password") else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe="*/", quote_via=quote), ""))
