"""Settings shared by the API and the workers, read from ``MODELYARD_*`` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, PositiveFloat, PositiveInt

ENV_PREFIX = "MODELYARD_"
DEFAULT_MODELS_FILE = Path(__file__).resolve().parent.parent / "models.yaml"


class Settings(BaseModel):
    """Everything configurable; see the README's settings table."""

    model_config = ConfigDict(frozen=True)

    redis_url: str = "redis://127.0.0.1:6379/0"
    models_file: Path = DEFAULT_MODELS_FILE
    #: Bearer keys accepted by the API; empty means no authentication.
    api_keys: tuple[str, ...] = ()
    #: Seconds a request may take, queueing included, unless it asks for less.
    request_timeout: PositiveFloat = 600.0
    #: Seconds a worker's heartbeat key lives; it is refreshed every third of that.
    heartbeat_ttl: PositiveInt = 10
    #: Largest request body the API reads, in bytes.
    max_body_bytes: PositiveInt = 16 * 1024 * 1024
    #: Requests per minute one API key (or, without keys, one client address) may make; unset: no limit.
    rate_limit_rpm: PositiveInt | None = None
    #: Tokens (prompt + completion) per minute one API key or address may use; unset: no limit.
    rate_limit_tpm: PositiveInt | None = None
    log_level: str = "INFO"
    #: ``text`` or ``json`` (one object per line), for the API and the workers.
    log_format: Literal["text", "json"] = "text"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read ``MODELYARD_*`` variables (``REDIS_URL`` also works for the Redis URL)."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        redis_url = env.get(f"{ENV_PREFIX}REDIS_URL") or env.get("REDIS_URL")
        if redis_url:
            values["redis_url"] = redis_url
        for field in cls.model_fields:
            raw = env.get(ENV_PREFIX + field.upper())
            if field == "redis_url" or raw is None or raw == "":
                continue
            if field == "api_keys":
                values[field] = tuple(k.strip() for k in raw.split(",") if k.strip())
            else:
                values[field] = raw
        values.update(overrides)
        return cls.model_validate(values)
