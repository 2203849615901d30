"""Bearer API keys (``MODELYARD_API_KEYS``)."""

from __future__ import annotations

import hmac

from flask import request

from shared.errors import AuthenticationFailed


def check_api_key(accepted: tuple[str, ...]) -> None:
    """Raise 401 unless the request carries one of ``accepted`` (no keys configured: allow all)."""
    if not accepted:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("missing API key: send 'Authorization: Bearer <key>'")
    token = token.strip().encode()
    # Compare against every key, in constant time, so timing tells nothing about which key is near.
    matched = False
    for key in accepted:
        matched |= hmac.compare_digest(token, key.encode())
    if not matched:
        raise AuthenticationFailed("incorrect API key provided")
