"""``bin/worker``: load models once, run their rq slots, heartbeat, drain on SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time

from rq.serializers import JSONSerializer

from shared import keys
from shared.config import Settings
from shared.connection import connect
from shared.models import ModelCatalog, ModelsFileError, ModelSpec
from workers import runtime
from workers.heartbeat import Heartbeat, new_worker_id
from workers.loaders import load_engine
from workers.publisher import RedisEventSink
from workers.slot import SLOT_WORKER_TTL, SlotWorker

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


def main(argv: list[str] | None = None) -> int:
    """Run a worker process until SIGTERM/SIGINT."""
    args = parse_args(argv)
    overrides = {"models_file": args.models_file} if args.models_file else {}
    settings = Settings.from_env(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        specs = select_models(ModelCatalog.load(settings.models_file), args.models)
    except ModelsFileError as exc:
        raise SystemExit(f"bin/worker: {exc}") from exc

    redis = connect(settings.redis_url)
    sink = RedisEventSink(redis)
    engines = {}
    for spec in specs:
        started = time.monotonic()
        log.info("loading %s (%s) from %s", spec.name, spec.kind.value, spec.source)
        engines[spec.name] = load_engine(spec, sink)
        log.info("loaded %s in %.1fs", spec.name, time.monotonic() - started)
    rt = runtime.Runtime(redis=redis, sink=sink, engines=engines)
    runtime.install(rt)
    for engine in engines.values():
        engine.start()

    worker_id = new_worker_id()
    draining = threading.Event()
    slots = [
        SlotWorker(
            [keys.queue_name(spec.name)],
            name=f"{worker_id}.{spec.name}.{i}",
            connection=connect(settings.redis_url, socket_timeout=SLOT_WORKER_TTL + 10),
            serializer=JSONSerializer,
            draining=draining,
        )
        for spec in specs
        for i in range(spec.max_batch_size)
    ]
    threads = [
        threading.Thread(target=slot.work, kwargs={"logging_level": "WARNING"}, name=slot.name, daemon=True)
        for slot in slots
    ]
    heartbeat = Heartbeat(
        redis,
        worker_id,
        models=[spec.name for spec in specs],
        ttl=settings.heartbeat_ttl,
        status=lambda: {
            "device": {spec.name: spec.device for spec in specs},
            "slots": len(slots),
            "busy": rt.running,
            "engines": {name: engine.stats() for name, engine in engines.items()},
        },
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
    for thread in threads:
        thread.start()
    heartbeat.start()
    log.info("worker %s serving %s with %d slots", worker_id, ", ".join(engines), len(slots))

    while not draining.wait(1.0):
        if not heartbeat.alive:
            log.error("heartbeat stopped (a model engine died); exiting")
            draining.set()
    heartbeat.stop()
    deadline = time.monotonic() + args.drain_timeout
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    for engine in engines.values():
        engine.stop()
    leftover = sum(thread.is_alive() for thread in threads)
    log.info("worker %s stopped%s", worker_id, f" ({leftover} jobs cut short)" if leftover else "")
    return 1 if leftover else 0


if __name__ == "__main__":
    sys.exit(main())
