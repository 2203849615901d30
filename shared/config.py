"""Settings shared by the API and the workers, read from ``MODELYARD_*`` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    StringConstraints,
    ValidationError,
)

from shared.priority import DEFAULT_LANES, MAX_LANES

ENV_PREFIX = "MODELYARD_"
DEFAULT_MODELS_FILE = Path(__file__).resolve().parent.parent / "models.yaml"

#: A deployment's namespace in Redis: letters, digits, ``_ . -`` (no ``:``, the keys' separator).
KeyPrefix = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class Settings(BaseModel):
    """Everything configurable; docs/settings.md lists each one."""

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
    #: Seconds a client has, from the start of its request, to send the whole body; then 408.
    body_timeout: PositiveFloat = 20.0
    #: Redis connections one API process opens for its requests (its reply subscription has its
    #: own); past that a request waits for a free one, up to ``redis_pool_timeout``.
    redis_max_connections: PositiveInt = 64
    #: Seconds a request waits for a free Redis connection; then 503 ``server_busy`` (Redis is up).
    redis_pool_timeout: PositiveFloat = 5.0
    #: Requests per minute one API key (or, without keys, one client address) may make; unset: no limit.
    rate_limit_rpm: PositiveInt | None = None
    #: Tokens (prompt + completion) per minute one API key or address may use; unset: no limit.
    rate_limit_tpm: PositiveInt | None = None
    #: Seconds Redis keeps a job that ended (finished, failed, stopped or cancelled), and with it the
    #: client's prompt and output: rq's job hash and result, a large result parked for the API.
    #: Long enough for a requeue after a worker's death and a look at rq-dashboard; no longer.
    job_retention_s: PositiveInt = 60
    #: Seconds a stored response (``store``, the Responses API's default) keeps its input and output
    #: items in Redis, for ``GET /v1/responses/{id}`` and ``previous_response_id`` (docs/responses.md).
    response_ttl_s: PositiveInt = 86400
    #: API keys that may ask for the high band (``priority`` below 0, ``service_tier: priority``, the
    #: ``X-Priority`` header); ``*`` lets every client. Others asking are served in the normal band
    #: (clamped, not refused: docs/scheduling.md). Empty: nobody jumps the queue.
    priority_high_keys: tuple[str, ...] = ()
    #: Slots per model of each worker process that take high-band jobs only, on top of its
    #: ``max_batch_size`` slots: a high request never waits behind a full batch of low ones. Off by
    #: default (a reserved slot is one more sequence the engine may batch).
    priority_reserved_slots: NonNegativeInt = 0
    #: Seconds a queued job waits in its band before it moves up one (to the front of the next
    #: band's lane), so that no band starves; None (``0``, ``off`` or ``none`` in the environment):
    #: no aging.
    priority_aging_s: PositiveFloat | None = 30.0
    #: Folder of the files uploaded for the Batch API and of the batches' output files (every API
    #: process of a deployment must see the same folder: a shared volume past one host).
    files_dir: Path = Path("var/files")
    #: Largest file ``POST /v1/files`` accepts, in bytes (413 past it).
    file_max_bytes: PositiveInt = 100 * 1024 * 1024
    #: Most request lines of a batch input file (400 past it).
    batch_max_lines: PositiveInt = 50_000
    #: Lines of one batch queued or running at a time while no interactive job was admitted in the
    #: last 2 s: the rest wait in its file, not in Redis.
    batch_window: PositiveInt = 64
    #: The same while interactive jobs come (any model, any API process), each line followed by a
    #: rest three times as long as it ran: a batch then leaves the workers and the CPU to them.
    batch_window_busy: PositiveInt = 1
    #: Fair-share lanes per priority band (docs/scheduling.md): a client's key hashes to one, and
    #: slots take the lanes of a band round robin. Process-wide, like ``key_prefix``:
    #: ``shared.priority`` reads it from the environment as it is imported; every process of a
    #: deployment must have the same value. 1: no fair share.
    priority_lanes: int = Field(DEFAULT_LANES, ge=1, le=MAX_LANES)
    log_level: str = "INFO"
    #: ``text`` or ``json`` (one object per line), for the API and the workers.
    log_format: Literal["text", "json"] = "text"
    #: Namespace of every Redis key and rq queue name of this deployment: deployments with
    #: different prefixes share one Redis without seeing each other's jobs or workers. Process-wide:
    #: ``shared.keys`` reads it from the environment as it is imported (:func:`key_prefix_from_env`).
    key_prefix: KeyPrefix = "modelyard"
    #: rq-dashboard's login (its own HTTP basic auth). Without a password it refuses to listen on
    #: any address but loopback (``dashboard/``).
    dashboard_username: str = "admin"
    dashboard_password: SecretStr | None = None

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
            if field in ("api_keys", "priority_high_keys"):
                values[field] = tuple(k.strip() for k in raw.split(",") if k.strip())
            elif field == "priority_aging_s" and _switched_off(raw):
                values[field] = None
            else:
                values[field] = raw
        values.update(overrides)
        return cls.model_validate(values)


def _switched_off(raw: str) -> bool:
    """Whether a variable's text switches its feature off: ``0``, ``off`` or ``none``."""
    word = raw.strip().lower()
    if word in ("off", "none"):
        return True
    try:
        return float(word) == 0
    except ValueError:
        return False


def key_prefix_from_env(environ: Mapping[str, str] | None = None) -> str:
    """``Settings.key_prefix`` from ``MODELYARD_KEY_PREFIX`` alone (no other variable is read)."""
    env = os.environ if environ is None else environ
    raw = env.get(ENV_PREFIX + "KEY_PREFIX") or None
    try:
        return Settings.model_validate({} if raw is None else {"key_prefix": raw}).key_prefix
    except ValidationError as exc:
        raise ValueError(
            f"{ENV_PREFIX}KEY_PREFIX={raw!r}: letters, digits, '_', '.' or '-', at most 64, no ':'"
        ) from exc
