"""One logging set-up for the API and the workers: text lines or JSON lines on stderr.

``MODELYARD_LOG_FORMAT=json`` (or ``--log-format json`` on ``bin/api`` and ``bin/worker``) writes one
JSON object per line: ``ts``, ``level``, ``logger``, ``message``, plus every field a call passes in
``extra=`` (the API's request lines carry ``job_id``, ``model``, ``status``, ``queued_s``...).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys() | {"message", "asctime"}
)

#: Loggers that do not propagate to the root logger and keep their own handlers.
_OWN_HANDLER_LOGGERS = ("gunicorn.error", "gunicorn.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ``extra=`` fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_") and key not in payload:
                payload[key] = value
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


def make_formatter(fmt: LogFormat) -> logging.Formatter:
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r} (expected one of {', '.join(LOG_FORMATS)})")
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def setup_logging(level: str = "INFO", fmt: LogFormat = "text") -> None:
    """Log ``level`` and up to stderr in ``fmt``; safe to call many times (the app factory does).

    Like :func:`logging.basicConfig`, it leaves a root logger that someone else configured alone
    (a host application, pytest's capture), replacing only the handler it installed itself.
    In JSON, gunicorn's own loggers (which do not propagate) get the same format.
    """
    formatter = make_formatter(fmt)
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "_modelyard", False)]
    if len(ours) == len(root.handlers):
        for handler in ours:
            root.removeHandler(handler)
        handler = logging.StreamHandler(sys.stderr)
        handler._modelyard = True  # type: ignore[attr-defined]
        handler.setFormatter(formatter)
        root.addHandler(handler)
        root.setLevel(level.upper())
    # Python warnings (a library's deprecation notice) become log records, in the same format.
    logging.captureWarnings(True)
    for name in _OWN_HANDLER_LOGGERS if fmt == "json" else ():
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(formatter)
