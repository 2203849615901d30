"""Stream events: what a worker publishes on a job's ``reply_to`` channel.

Every job ends with exactly one terminal event (:class:`DoneEvent` or :class:`ErrorEvent`);
streaming generation jobs send :class:`DeltaEvent` before it, one per decode step.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from shared.errors import ModelyardError, error_for_status
from shared.jobs import BadMessage, EmbedResult, FinishReason, GenerateResult, RerankResult, TokenLogprob
from shared.tools import ToolCallDelta


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: str
    #: The run of the job that sent it (``keys.JOB_RUN_FIELD``); None for an event an API process
    #: makes itself. A job requeued after its worker was lost counts only its new run's events.
    run: int | None = None


class ChoiceDelta(BaseModel):
    """New text of one choice; ``finish_reason`` is set on its last delta."""

    model_config = ConfigDict(extra="forbid")

    index: int
    text: str
    finish_reason: FinishReason | None = None
    #: Logprobs of the tokens generated in this step (their text may be held back for a later delta).
    logprobs: list[TokenLogprob] | None = None
    #: Fragments of the choice's tool calls.
    tool_calls: list[ToolCallDelta] | None = None


class DeltaEvent(_Event):
    """Text generated in one decode step; ``seq`` counts a job's deltas from 0, without gaps."""

    type: Literal["delta"] = "delta"
    seq: int
    deltas: list[ChoiceDelta]


class DoneEvent(_Event):
    """The job finished; ``result`` is None when it was too big for pub/sub (read it from rq)."""

    type: Literal["done"] = "done"
    result: Annotated[GenerateResult | EmbedResult | RerankResult | None, Field(discriminator="type")] = None
    #: Seconds the job waited in its queue and ran on its worker, from rq's record (for logs, metrics).
    queued_s: float | None = None
    run_s: float | None = None


class ErrorEvent(_Event):
    """The job failed; carries the error the client should see."""

    type: Literal["error"] = "error"
    status: int
    message: str
    error_type: str
    code: str | None = None
    param: str | None = None
    retry_after: int | None = None
    queued_s: float | None = None
    run_s: float | None = None

    @classmethod
    def from_error(cls, job_id: str, error: ModelyardError, run: int | None = None) -> ErrorEvent:
        """Wrap an error for the wire."""
        return cls(
            job_id=job_id,
            run=run,
            status=error.status,
            message=error.message,
            error_type=error.type,
            code=error.code,
            param=error.param,
            retry_after=error.retry_after,
        )

    def to_error(self) -> ModelyardError:
        """The error to raise on the receiving side."""
        return error_for_status(
            self.status, self.message, param=self.param, code=self.code, retry_after=self.retry_after
        )


class WorkerLostEvent(_Event):
    """The worker running the job died. rq already records the job as failed; the API process
    waiting for it requeues it if its client has seen nothing yet, else ends it with a 503."""

    type: Literal["worker_lost"] = "worker_lost"


AnyEvent = DeltaEvent | DoneEvent | ErrorEvent | WorkerLostEvent
Event = Annotated[AnyEvent, Field(discriminator="type")]
_EVENT = TypeAdapter(Event)


def encode_event(event: AnyEvent) -> str:
    """JSON text for PUBLISH."""
    return event.model_dump_json(exclude_none=True)


def decode_event(data: bytes | str) -> AnyEvent:
    """Parse a pub/sub message; raises :class:`BadMessage`."""
    try:
        return _EVENT.validate_json(data)
    except ValidationError as exc:
        raise BadMessage(f"invalid event: {exc}") from exc
