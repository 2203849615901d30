"""The dispatcher's middleware: cross-cutting work on every job a request runs (dramatiq's model).

A middleware overrides the hooks it needs of :class:`DispatchMiddleware`; the app factory gives the
dispatcher an ordered list of them (the request record, the rate limiter's token charge, any a test
or benchmark adds). The hooks, in the order a job meets them:

- ``before_submit(job, context)``: the job is about to be enqueued. Raising a ``ModelyardError``
  refuses it (nothing was queued; no further hook runs).
- ``after_submit(job, context)``: the job is queued; ``job.reply_to`` is its reply channel.
- ``on_event(job, context, event)``: an event of the job reached its request (a delta, then the
  done or error event). Raising a ``ModelyardError`` ends the request with it (the job is cancelled).
- ``after_result(job, context, outcome)``: how the request ended, exactly once per run: the job's
  result, or the error it ended with (``Cancelled`` when its client left or stopped reading).

``before_*`` hooks and ``on_event`` run in the list's order; ``after_*`` hooks in reverse, and an
exception from one is logged, not raised, so the others still run. Hooks run on the request's
thread (a stream's: while its response is sent, outside Flask's app context): what they need comes
in the :class:`RequestContext`, never from ``flask.g``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.errors import ModelyardError
from shared.events import AnyEvent
from shared.jobs import AnyJob, AnyResult

if TYPE_CHECKING:
    from api.observe import RequestRecord

log = logging.getLogger(__name__)

#: How a run ended: the job's result or the error the request got.
Outcome = AnyResult | ModelyardError


def _present() -> bool:
    return False


@dataclass(eq=False)
class RequestContext:
    """One client request as the dispatcher and its middleware see it, passed to ``Dispatcher.run``.

    A coalesced job serves several requests: it runs with a context of its own (no record, nobody
    to charge), and each request it served gets ``after_result`` with its own context and share.
    """

    #: True once the client has closed its connection (checked while the request waits).
    client_gone: Callable[[], bool] = _present
    #: The request's record (its log line and request metrics), if it keeps one.
    record: RequestRecord | None = None
    #: The hashed client whose per-minute window is charged the job's tokens; None: nobody.
    rate_subject: str | None = None


class DispatchMiddleware:
    """Hooks on a job's way through the dispatcher; each one does nothing until overridden."""

    def before_submit(self, job: AnyJob, context: RequestContext) -> None:
        """The job is about to be enqueued; raise a ``ModelyardError`` to refuse it."""

    def after_submit(self, job: AnyJob, context: RequestContext) -> None:
        """The job is queued."""

    def on_event(self, job: AnyJob, context: RequestContext, event: AnyEvent) -> None:
        """An event of the job reached its request; raise a ``ModelyardError`` to end the request."""

    def after_result(self, job: AnyJob, context: RequestContext, outcome: Outcome) -> None:
        """The request ended with ``outcome`` (a result, or an error)."""


class MiddlewareChain:
    """The dispatcher's middleware, called in order (``after_*`` hooks in reverse)."""

    def __init__(self, middleware: Iterable[DispatchMiddleware] = ()) -> None:
        self.middleware = list(middleware)

    def add(self, middleware: DispatchMiddleware) -> None:
        """Append ``middleware`` (a test's probe, say): it runs after those already there."""
        self.middleware.append(middleware)

    def remove(self, middleware: DispatchMiddleware) -> None:
        self.middleware.remove(middleware)

    def before_submit(self, job: AnyJob, context: RequestContext) -> None:
        for middleware in self.middleware:
            middleware.before_submit(job, context)

    def after_submit(self, job: AnyJob, context: RequestContext) -> None:
        for middleware in reversed(self.middleware):
            _guarded(middleware.after_submit, job, context)

    def on_event(self, job: AnyJob, context: RequestContext, event: AnyEvent) -> None:
        for middleware in self.middleware:
            middleware.on_event(job, context, event)

    def after_result(self, job: AnyJob, context: RequestContext, outcome: Outcome) -> None:
        for middleware in reversed(self.middleware):
            _guarded(middleware.after_result, job, context, outcome)


def _guarded(hook: Callable[..., None], *args: object) -> None:
    try:
        hook(*args)
    except Exception:  # the job's outcome stands; one middleware's bug must not change it
        log.exception("dispatcher middleware %s failed", hook.__qualname__)
