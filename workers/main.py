"""``bin/worker``: load models once, run their rq slots, heartbeat, drain on SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import sys
import threading
import time

from rq.serializers import JSONSerializer

from shared import keys
from shared.catalog import ModelCatalog, ModelsFileError, ModelSpec
from shared.config import Settings
from shared.connection import connect
from shared.logs import LOG_FORMATS, setup_logging
from shared.status import ModelCard, WorkerReport
from workers import loaders, runtime
from workers.engines.base import Engine
from workers.heartbeat import Heartbeat, new_worker_id
from workers.loaders import EngineLoader
from workers.publisher import RedisEventSink
from workers.scheduling import BandSlotWorker, QueueOrder, slot_queue_names
from workers.slot import SLOT_WORKER_TTL

log = logging.getLogger("modelyard.worker")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bin/worker", description=__doc__)
    parser.add_argument(
        "models", nargs="*", help="model names from the models file (default: every model in it)"
    )
    parser.add_argument("--models-file", help="overrides MODELYARD_MODELS_FILE")
    parser.add_argument(
        "--drain-timeout", type=float, default=60.0, help="seconds SIGTERM waits for running jobs"
    )
    parser.add_argument("--log-format", choices=LOG_FORMATS, help="overrides MODELYARD_LOG_FORMAT")
    return parser.parse_args(argv)


def select_models(catalog: ModelCatalog, names: list[str]) -> list[ModelSpec]:
    """The specs to serve; exits with a clear message on an unknown name."""
    if not names:
        return list(catalog)
    specs = []
    for name in names:
        spec = catalog.resolve(name)
        if spec is None:
            known = ", ".join(s.name for s in catalog)
            raise SystemExit(f"bin/worker: unknown model {name!r} (the models file has: {known})")
        specs.append(spec)
    return specs


def run_slot(
    redis_url: str,
    worker_id: str,
    model: str,
    index: int,
    draining: threading.Event,
    fetching: threading.Lock,
    order: QueueOrder,
    reserved: bool = False,
) -> None:
    """Run one rq slot until the worker drains; a slot that rq stopped (Redis gone) starts anew.

    ``fetching`` is shared by the model's slots of one kind (reserved or not) in this process (see
    :class:`SlotWorker`), ``order`` by all of them (see :mod:`workers.scheduling`). A ``reserved``
    slot takes high-band jobs only."""
    generation = 0
    taker = keys.slot_worker_name(worker_id, model, index)
    while not draining.is_set():
        # A new name each time: rq refuses a name whose old registration it could not end.
        name = taker + (f"-{generation}" if generation else "")
        slot = BandSlotWorker(
            slot_queue_names(model, reserved),
            name=name,
            connection=connect(redis_url, socket_timeout=SLOT_WORKER_TTL + 10, name=name),
            serializer=JSONSerializer,
            model=model,
            worker_id=worker_id,
            taker=taker,
            draining=draining,
            fetching=fetching,
            order=order,
        )
        try:
            slot.work(logging_level="WARNING")
        except Exception:
            log.exception("slot %s failed", slot.name)
        if draining.wait(1.0):
            slot.leave()
        else:
            log.warning("slot %s stopped (is Redis reachable?); starting it again", slot.name)
            generation += 1


def load_engines(
    specs: list[ModelSpec], sink: RedisEventSink, load_engine: EngineLoader = loaders.load_engine
) -> dict[str, Engine]:
    """Load every model, logging each one's progress: what, where, how long, how much memory."""
    engines: dict[str, Engine] = {}
    all_started = time.monotonic()
    for number, spec in enumerate(specs, 1):
        started = time.monotonic()
        log.info(
            "loading model %d/%d: %s (%s) from %s, device %s, dtype %s, %d slots",
            number,
            len(specs),
            spec.name,
            spec.kind.value,
            spec.source,
            spec.device,
            spec.dtype,
            spec.max_batch_size,
        )
        try:
            engines[spec.name] = load_engine(spec, sink)
        except Exception:
            log.exception("loading %s from %s failed", spec.name, spec.source)
            raise
        log.info(
            "loaded model %d/%d: %s in %.1fs (%s)",
            number,
            len(specs),
            spec.name,
            time.monotonic() - started,
            _memory(),
        )
    log.info("all %d models loaded in %.1fs", len(specs), time.monotonic() - all_started)
    return engines


def _memory() -> str:
    """This process's peak resident memory and, with CUDA, the memory torch holds on each GPU."""
    parts = [f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"]
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        for index in range(torch.cuda.device_count()):
            parts.append(f"cuda:{index} {torch.cuda.memory_allocated(index) / 2**20:.0f} MiB")
    return ", ".join(parts)


def report(
    specs: list[ModelSpec], engines: dict[str, Engine], rt: runtime.Runtime, cards: dict[str, ModelCard]
) -> WorkerReport:
    """What the heartbeat tells about this process's models and jobs now."""
    running = rt.running_ids()
    return WorkerReport(
        device={spec.name: spec.device for spec in specs},
        slots={spec.name: spec.max_batch_size for spec in specs},
        busy=len(running),
        running=running,
        engines={spec.name: engines[spec.name].stats() for spec in specs},
        cards=cards,
    )


def model_cards(specs: list[ModelSpec], engines: dict[str, Engine]) -> dict[str, ModelCard]:
    """Each model's card: what its engine tells, and its checkpoint's time."""
    return {
        spec.name: engines[spec.name]
        .card()
        .model_copy(update={"created": loaders.checkpoint_time(spec.source)})
        for spec in specs
    }


def set_threads(specs: list[ModelSpec]) -> None:
    """torch's CPU threads for this process: the most any of its models asks for (unset: torch's own)."""
    wanted = [spec.threads for spec in specs]
    if None not in wanted:
        import torch

        torch.set_num_threads(max(wanted))


def _library_logs_to_root() -> None:
    """JSON logs: transformers' own handler and progress bars would print plain text; route its
    records through ours and hide the bars."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    hf_logging.disable_progress_bar()


def main(
    argv: list[str] | None = None,
    *,
    load_engine: EngineLoader = loaders.load_engine,
    hooks: runtime.JobHooks = runtime.NO_HOOKS,
) -> int:
    """Run a worker process until SIGTERM/SIGINT.

    ``load_engine`` makes each model's engine (a benchmark's own engine, say); ``hooks`` are called
    at each step of every job (see :class:`workers.runtime.JobHooks`).
    """
    args = parse_args(argv)
    overrides = {"models_file": args.models_file} if args.models_file else {}
    if args.log_format:
        overrides["log_format"] = args.log_format
    settings = Settings.from_env(**overrides)
    setup_logging(settings.log_level, settings.log_format)
    if settings.log_format == "json":
        _library_logs_to_root()
    try:
        specs = select_models(ModelCatalog.load(settings.models_file), args.models)
    except ModelsFileError as exc:
        raise SystemExit(f"bin/worker: {exc}") from exc

    set_threads(specs)
    redis = connect(settings.redis_url)
    sink = RedisEventSink(redis, retention_s=settings.job_retention_s)
    engines = load_engines(specs, sink, load_engine)
    cards = model_cards(specs, engines)
    rt = runtime.Runtime(redis=redis, sink=sink, engines=engines, hooks=hooks)
    runtime.install(rt)
    for engine in engines.values():
        engine.start()

    worker_id = new_worker_id()
    draining = threading.Event()
    # Per model: max_batch_size slots of every band, then the reserved ones of the high band only.
    fetching = {(spec.name, reserved): threading.Lock() for spec in specs for reserved in (False, True)}
    orders = {spec.name: QueueOrder(spec.name) for spec in specs}
    threads = [
        threading.Thread(
            target=run_slot,
            args=(
                settings.redis_url,
                worker_id,
                spec.name,
                i,
                draining,
                fetching[spec.name, i >= spec.max_batch_size],
                orders[spec.name],
                i >= spec.max_batch_size,
            ),
            name=keys.slot_worker_name(worker_id, spec.name, i),
            daemon=True,
        )
        for spec in specs
        for i in range(spec.max_batch_size + settings.priority_reserved_slots)
    ]
    heartbeat = Heartbeat(
        redis,
        worker_id,
        models=[spec.name for spec in specs],
        ttl=settings.heartbeat_ttl,
        report=lambda: report(specs, engines, rt, cards),
        healthy=lambda: all(engine.alive for engine in engines.values()),
    )

    def request_drain(signum: int, _frame: object) -> None:
        if draining.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            sys.exit(1)
        log.info("%s: draining (no new jobs, finishing running ones)", signal.Signals(signum).name)
        draining.set()

    signal.signal(signal.SIGTERM, request_drain)
    signal.signal(signal.SIGINT, request_drain)
    # Beat before any slot can take a job: the API's janitor fails jobs of workers without a heartbeat.
    if not heartbeat.start(give_up=draining):
        log.info("worker %s stopped before Redis answered", worker_id)
        for engine in engines.values():
            engine.stop()
        return 0
    for thread in threads:
        thread.start()
    log.info(
        "worker %s serving %s with %d slots (key prefix %s)",
        worker_id,
        ", ".join(engines),
        len(threads),
        keys.PREFIX,
    )

    while not draining.wait(1.0):
        if not heartbeat.alive:
            log.error("heartbeat stopped (a model engine died); exiting")
            draining.set()
    heartbeat.drain()
    deadline = time.monotonic() + args.drain_timeout
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    for engine in engines.values():
        engine.stop()
    heartbeat.stop()
    leftover = sum(thread.is_alive() for thread in threads)
    log.info("worker %s stopped%s", worker_id, f" ({leftover} jobs cut short)" if leftover else "")
    return 1 if leftover else 0


if __name__ == "__main__":
    sys.exit(main())
