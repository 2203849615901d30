"""What a worker tells about itself: its heartbeat status and each engine's counters.

The worker writes a :class:`WorkerStatus` as JSON into its heartbeat key; the API's janitor, health
and metrics read it back with :meth:`WorkerStatus.decode`. Every engine counter is a field here with
its kind (``counter``: only grows; ``gauge``: goes up and down) and help text, so the Prometheus
families are derived from these models, never copied by hand.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MetricKind = Literal["counter", "gauge"]


def _metric(kind: MetricKind, help: str) -> Any:
    """A counter field: 0 by default, exported as ``modelyard_worker_<name>[_total]``."""
    return Field(default=0, ge=0, description=help, json_schema_extra={"metric": kind})


class _Stats(BaseModel):
    # Unknown counters from a newer worker are kept and ignored, not refused: the fleet upgrades
    # one process at a time.
    model_config = ConfigDict(extra="ignore")

    jobs_done: int = _metric("counter", "Jobs finished")
    jobs_failed: int = _metric("counter", "Jobs that failed")
    jobs_cancelled: int = _metric("counter", "Jobs cancelled (client gone, stop-job)")
    jobs_expired: int = _metric("counter", "Jobs whose deadline passed")
    busy_ms: int = _metric("counter", "Milliseconds the engine threads spent in batches or decode steps")
    active: int = _metric("gauge", "Jobs submitted to the engine and not done")

    @classmethod
    def metric_fields(cls) -> dict[str, tuple[MetricKind, str]]:
        """Every exported field: its kind and help text."""
        return {
            name: (field.json_schema_extra["metric"], field.description or name)  # type: ignore[index]
            for name, field in cls.model_fields.items()
            if isinstance(field.json_schema_extra, dict) and "metric" in field.json_schema_extra
        }


class GenerationStats(_Stats):
    """Counters of a continuously batched generation engine."""

    kind: Literal["generation"] = "generation"
    tokens_generated: int = _metric("counter", "Tokens generated")
    steps: int = _metric("counter", "Decode steps (one forward pass of the running batch each)")
    tokens_forced: int = _metric(
        "counter", "Tokens a grammar forced past a row's first in a step (no step of their own)"
    )
    prefills: int = _metric("counter", "Prefill forward passes")
    running: int = _metric("gauge", "Sequences decoding now")
    waiting: int = _metric("gauge", "Sequences waiting for a place in the decode batch")
    last_batch_size: int = _metric("gauge", "Sequences in the latest decode step")
    max_running_seen: int = _metric("gauge", "Most sequences decoded together so far")
    cache_tokens_reserved: int = _metric("gauge", "KV-cache tokens the running sequences reserve")


class PoolingStats(_Stats):
    """Counters of an embedding or rerank engine (micro-batched forward passes)."""

    kind: Literal["pooling"] = "pooling"
    batches: int = _metric("counter", "Embedding/rerank batches run")
    forward_passes: int = _metric("counter", "Embedding/rerank forward passes")
    inputs_done: int = _metric("counter", "Embedding/rerank inputs processed")
    last_batch_jobs: int = _metric("gauge", "Jobs in the latest embedding/rerank batch")
    last_batch_inputs: int = _metric("gauge", "Inputs in the latest embedding/rerank batch")
    last_batch_passes: int = _metric("gauge", "Forward passes of the latest embedding/rerank batch")


#: Every engine stats model (the metric families are derived from their fields).
ENGINE_STATS: tuple[type[_Stats], ...] = (GenerationStats, PoolingStats)

EngineStats = Annotated[GenerationStats | PoolingStats, Field(discriminator="kind")]


class ModelCard(BaseModel):
    """What a worker tells about one model it serves: what ``/v1/models`` shows of it."""

    model_config = ConfigDict(extra="ignore")

    #: Unix time of the checkpoint (its files' modification time); None when unknown.
    created: int | None = None
    #: The format the model writes tool calls in; None: it cannot take tools.
    tool_parser: str | None = None


class WorkerReport(BaseModel):
    """What a worker process tells at each beat about its models and the jobs it runs."""

    model_config = ConfigDict(extra="ignore")

    #: Device of each served model (``cpu``, ``cuda:0``...).
    device: dict[str, str] = Field(default_factory=dict)
    #: rq slots (jobs at once) of each served model.
    slots: dict[str, int] = Field(default_factory=dict)
    #: Jobs running in the process now, and their ids (the janitor fails started jobs not listed;
    #: None from a worker too old to list them).
    busy: int = 0
    running: list[str] | None = None
    engines: dict[str, EngineStats] = Field(default_factory=dict)
    #: Each served model's card.
    cards: dict[str, ModelCard] = Field(default_factory=dict)


class WorkerStatus(WorkerReport):
    """A worker process's heartbeat: who it is, what it serves, what it runs now."""

    id: str
    host: str
    pid: int
    models: list[str]
    started_at: float
    beat_at: float
    #: Draining workers finish their jobs but are no longer offered new ones.
    draining: bool = False

    def encode(self) -> str:
        return self.model_dump_json()

    @classmethod
    def decode(cls, raw: bytes | str | None) -> WorkerStatus | None:
        """The status in a heartbeat key's value; None for a missing or unreadable one."""
        if raw is None:
            return None
        try:
            return cls.model_validate_json(raw)
        except ValidationError:
            return None
