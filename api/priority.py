"""The band a request asks for (vLLM's ``priority``, OpenAI's ``service_tier``, the ``X-Priority``
header) and the one it gets: only the keys of ``Settings.priority_high_keys`` get ``high``."""

from __future__ import annotations

import hmac

from flask import request

from shared.errors import InvalidRequest
from shared.priority import BANDS, DEFAULT_BAND, SERVICE_TIERS, Band, band_of_priority, clamp

#: The header for clients that cannot add body fields: a band name, a ``service_tier`` value or
#: vLLM's integer.
HEADER = "X-Priority"


def band_of_word(value: str, param: str) -> Band:
    """A band from a header's or ``service_tier``'s text: a band, a service tier or an integer."""
    word = value.strip().lower()
    if word in BANDS:
        return word  # type: ignore[return-value]
    if word in SERVICE_TIERS:
        return SERVICE_TIERS[word]
    try:
        return band_of_priority(int(word))
    except ValueError:
        pass
    tiers = ", ".join(sorted(SERVICE_TIERS))
    raise InvalidRequest(
        f"{param} must be one of {', '.join(BANDS)}, a service tier ({tiers}) or an integer priority",
        param=param,
    )


def asked_band(priority: int | None, service_tier: str | None) -> Band:
    """The band a request asks for: its ``priority``, else its ``service_tier``, else the header."""
    if priority is not None:
        return band_of_priority(priority)
    if service_tier is not None:
        if service_tier not in SERVICE_TIERS:
            raise InvalidRequest(
                f"service_tier must be one of {', '.join(sorted(SERVICE_TIERS))}", param="service_tier"
            )
        return SERVICE_TIERS[service_tier]
    header = request.headers.get(HEADER)
    if header is not None:
        return band_of_word(header, HEADER)
    return DEFAULT_BAND


def may_ask_high(allowed: tuple[str, ...]) -> bool:
    """Whether this request's API key is one of ``allowed`` (``*``: every client)."""
    if "*" in allowed:
        return True
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    token_bytes = token.strip().encode()
    matched = False
    for key in allowed:  # every key, in constant time (as api/auth.py)
        matched |= hmac.compare_digest(token_bytes, key.encode())
    return matched


def request_band(priority: int | None, service_tier: str | None, allowed: tuple[str, ...]) -> Band:
    """The band this request runs in: what it asks for, ``high`` clamped to ``normal`` unless allowed."""
    band = asked_band(priority, service_tier)
    return clamp(band, band != "high" or may_ask_high(allowed))
