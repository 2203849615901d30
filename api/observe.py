"""What the API records about each request: one log line and the request metrics.

A :class:`RequestRecord` starts with the request (or with each WebSocket message) and travels in
its :class:`~api.middleware.RequestContext`; the dispatcher's :class:`RecordMiddleware` fills in what
only the job's events know (job id, model, time to first token, queue wait, run time, tokens); the
record is finished when the response is closed, so a stream counts once its last chunk went out.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, current_app, g, has_app_context, request

from api.metrics import EXTENSION, ApiMetrics
from api.middleware import DispatchMiddleware, Outcome, RequestContext
from api.routes.prefixes import ALIASES, HOME
from shared.errors import ModelyardError
from shared.events import AnyEvent, DeltaEvent, DoneEvent, ErrorEvent
from shared.jobs import AnyJob

log = logging.getLogger("api.requests")

_RECORD = "modelyard_record"

#: Paths probed every few seconds (health checks, scrapes): their lines are logged at DEBUG.
_QUIET_PREFIXES = ("/health", "/metrics")


@dataclass
class RequestRecord:
    """One request's figures; :class:`RecordMiddleware` fills in its job's."""

    method: str
    path: str
    endpoint: str
    metrics: ApiMetrics
    started: float = field(default_factory=time.monotonic)
    model: str = ""
    job_id: str | None = None
    stream: bool = False
    status: int | None = None
    first_token_s: float | None = None
    queued_s: float | None = None
    run_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None
    finished: bool = False

    def finish(self, status: int | None = None) -> None:
        """Count the request and log its line (once)."""
        if self.finished:
            return
        self.finished = True
        if status is not None:
            self.status = status
        total = time.monotonic() - self.started
        status_label = str(self.status or 0)
        self.metrics.requests.labels(self.endpoint, self.model, status_label).inc()
        self.metrics.latency.labels(self.endpoint, self.model).observe(total)
        fields = self.fields(total)
        level = logging.DEBUG if self.path.startswith(_QUIET_PREFIXES) else logging.INFO
        if log.isEnabledFor(level):
            log.log(level, _text(fields), extra=fields)

    def fields(self, total: float) -> dict[str, Any]:
        """The log line's fields (top-level keys in JSON logs)."""
        fields: dict[str, Any] = {
            "method": self.method,
            "path": self.path,
            "endpoint": self.endpoint,
            "status": self.status,
            "total_s": round(total, 4),
        }
        optional = {
            "model": self.model or None,
            "job_id": self.job_id,
            "stream": self.stream or None,
            "queued_s": self.queued_s,
            "run_s": self.run_s,
            "first_token_s": None if self.first_token_s is None else round(self.first_token_s, 4),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "error": self.error,
        }
        fields.update({k: v for k, v in optional.items() if v is not None})
        return fields


def _text(fields: dict[str, Any]) -> str:
    head = f"{fields['method']} {fields['path']} {fields['status']} {fields['total_s']:.3f}s"
    head_keys = ("method", "path", "status", "total_s")
    rest = " ".join(f"{key}={value}" for key, value in fields.items() if key not in head_keys)
    return f"{head} {rest}"


def endpoint_label(rule: str | None) -> str:
    """The route a request matched, alias prefixes (``/api/v1``, ``/v3``) written as ``/v1``."""
    if rule is None:
        return "unmatched"
    for alias in ALIASES:
        if rule.startswith(alias + "/"):
            return HOME + rule.removeprefix(alias)
    return rule


def begin(method: str | None = None) -> RequestRecord:
    """Start the record of the current request (a WebSocket handler: of its next message)."""
    rule = request.url_rule.rule if request.url_rule is not None else None
    record = RequestRecord(
        method=method or request.method,
        path=request.path,
        endpoint=endpoint_label(rule),
        metrics=current_app.extensions[EXTENSION],
    )
    setattr(g, _RECORD, record)
    return record


def current() -> RequestRecord | None:
    """The record of the request (or WebSocket message) being handled, if any."""
    return g.get(_RECORD) if has_app_context() else None


class RecordMiddleware(DispatchMiddleware):
    """Notes what a job tells into its request's record: the log line's fields and the metrics."""

    def before_submit(self, job: AnyJob, context: RequestContext) -> None:
        record = context.record
        if record is not None:
            record.job_id, record.model = job.job_id, job.model
            record.stream = bool(getattr(job, "stream", False))

    def on_event(self, job: AnyJob, context: RequestContext, event: AnyEvent) -> None:
        record = context.record
        if record is None:
            return
        if isinstance(event, DeltaEvent):
            if record.first_token_s is None and record.stream:
                record.first_token_s = time.monotonic() - record.started
                record.metrics.first_token.labels(record.model).observe(record.first_token_s)
        elif isinstance(event, DoneEvent | ErrorEvent):
            record.queued_s, record.run_s = event.queued_s, event.run_s
            if event.queued_s is not None:
                record.metrics.queue_wait.labels(record.model).observe(event.queued_s)
            if isinstance(event, ErrorEvent):
                record.error = event.code or event.error_type

    def after_result(self, job: AnyJob, context: RequestContext, outcome: Outcome) -> None:
        record = context.record
        if record is None or isinstance(outcome, ModelyardError):
            return
        record.job_id = job.job_id  # a coalesced job's, for each request it served
        record.prompt_tokens = outcome.usage.prompt_tokens
        record.completion_tokens = outcome.usage.completion_tokens


def install(app: Flask, metrics: ApiMetrics) -> None:
    """Keep ``metrics`` in the app and record every request (WebSocket messages record themselves)."""
    app.extensions[EXTENSION] = metrics

    @app.before_request
    def _begin() -> None:
        begin()

    @app.after_request
    def _finish_on_close(response: Response) -> Response:
        record = current()
        if record is None:
            return response
        websocket = request.url_rule is not None and request.url_rule.websocket
        if websocket and response.status_code < 400:
            return response  # the socket's messages were counted one by one
        record.status = response.status_code
        if record.error is None and response.status_code >= 400 and response.is_json:
            body = response.get_json(silent=True)
            if isinstance(body, dict) and isinstance(body.get("error"), dict):
                record.error = body["error"].get("code") or body["error"].get("type")
        response.call_on_close(record.finish)
        return response
