"""Sentinel URLs parsed, and passwords kept out of what is shown."""

import pytest

from shared.redis_url import is_sentinel_url, parse_sentinel_url, redact


def test_sentinel_url_names_sentinels_service_and_database():
    target = parse_sentinel_url("redis+sentinel://h1:26379,h2:26380,h3/mymaster/2")
    assert target.sentinels == (("h1", 26379), ("h2", 26380), ("h3", 26379))
    assert (target.service, target.db) == ("mymaster", 2)
    assert target.connection == {}
    assert target.sentinel_connection == {}


def test_credentials_go_to_the_primary_and_sentinel_ones_to_the_sentinels():
    target = parse_sentinel_url(
        "redis+sentinel://alice:p%40ss@10.0.0.1:26379,[::1]:26379/mymaster?sentinel_password=s&socket_timeout=3"
    )
    assert target.sentinels == (("10.0.0.1", 26379), ("::1", 26379))
    assert target.db == 0
    assert target.connection == {"username": "alice", "password": "p@ss", "socket_timeout": 3.0}
    assert target.sentinel_connection == {"password": "s", "socket_timeout": 3.0}


def test_rediss_sentinel_is_tls_to_both():
    target = parse_sentinel_url("rediss+sentinel://:pw@h1/mymaster/0?ssl_ca_certs=/ca.crt")
    assert target.connection == {"password": "pw", "ssl": True, "ssl_ca_certs": "/ca.crt"}
    assert target.sentinel_connection == {"ssl": True, "ssl_ca_certs": "/ca.crt"}


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://h1:26379",  # no service
        "redis+sentinel:///mymaster/0",  # no sentinel
        "redis+sentinel://h1:x/mymaster",  # bad port
        "redis+sentinel://h1/mymaster/zero",  # bad db
        "redis+sentinel://h1/a/0/extra",
        "redis://h1:6379/0",
    ],
)
def test_bad_sentinel_urls_are_refused(url):
    with pytest.raises(ValueError):
        parse_sentinel_url(url)


def test_only_sentinel_schemes_are_sentinel_urls():
    assert is_sentinel_url("redis+sentinel://h/m") and is_sentinel_url("rediss+sentinel://h/m")
    assert not is_sentinel_url("redis://h:6379/0") and not is_sentinel_url("rediss://h/0")


def test_redact_hides_passwords():
    assert redact("redis://alice:secret@h:6379/0") == "redis://alice:***@h:6379/0"
    assert redact("redis://:secret@h/0") == "redis://:***@h/0"
    assert redact("redis+sentinel://h1,h2/m/0?sentinel_password=x&ssl_ca_certs=/a") == (
        "redis+sentinel://h1,h2/m/0?sentinel_password=***&ssl_ca_certs=/a"
    )
    assert redact("redis://h/0") == "redis://h/0"
