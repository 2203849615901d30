"""Where the time to first token goes: a timeline of streamed chat requests through the real stack.

    .venv/bin/python bench/trace_ttft.py                 # 60 requests, tiny-chat, 16 slots
    .venv/bin/python bench/trace_ttft.py --requests 200
    .venv/bin/python bench/trace_ttft.py --embeddings    # one-sentence embedding requests instead

A script, not a test. It starts its own redis-server, one ``bin/worker``-equivalent process and
gunicorn serving ``api.app`` (as ``bin/api`` does) on free ports of 127.0.0.1, each given probes
that write a wall-clock mark to one shared file as a request passes (the API: a dispatcher
middleware; the worker: its job hooks, and wrappers where rq and the engines have no seam); nothing
else in them changes. Then it sends streamed chat requests one at a time (``max_tokens`` 64,
``ignore_eos``) and prints, as JSON lines, the median time from the client's send to each mark: the
HTTP request reaching Flask, validation, admission with the rq enqueue, the worker's dequeue, rq's
bookkeeping, the job function, the prefill, the PUBLISH, the API's request thread taking the first
token event, and the client holding the first content chunk. All processes share one clock (one
machine). With ``--embeddings`` the requests are one-sentence embeddings (all-MiniLM-L6-v2,
base64), timed to the whole response, with marks on the embedding engine's batch, the PUBLISH of
the result and the API taking it instead.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import requests

from harness import (
    REPO,
    LoggedProcess,
    RedisServer,
    WorkerProcess,
    free_port,
    live_models,
    stop_processes,
    wait_until,
)

MODEL = "tiny-chat"
EMBED_MODEL = "all-MiniLM-L6-v2"
MARKS_ENV = "MODELYARD_TRACE_FILE"


# -- marks (in the traced processes) -------------------------------------------------------------


@functools.cache
def _marks_file():
    # Opened once per process, not per mark (that would add to what is measured); O_APPEND and one
    # write per line keep the lines of both processes whole.
    return open(os.environ[MARKS_ENV], "a", buffering=1)


def _mark(what: str) -> None:
    _marks_file().write(f"{time.time():.6f} {what}\n")


def _trace(owner: Any, name: str, label: str, entry: bool = False) -> None:
    """Mark when ``owner.name`` returns (and when it is entered, with ``entry``)."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def traced(*args, **kwargs):
        if entry:
            _mark(label + ".in")
        result = original(*args, **kwargs)
        _mark(label)
        return result

    setattr(owner, name, traced)


def traced_app():
    """``api.app.create_app()`` with marks from a dispatcher middleware: the job built, enqueued, its
    first token event and its done event taken by the request's thread, its result."""
    from api.app import create_app
    from api.middleware import DispatchMiddleware
    from shared.events import DeltaEvent, DoneEvent

    class TraceMiddleware(DispatchMiddleware):
        def before_submit(self, job, context) -> None:
            _mark("api validated, model resolved, job built")

        def after_submit(self, job, context) -> None:
            _mark("api admitted and enqueued (one MULTI)")

        def on_event(self, job, context, event) -> None:
            if isinstance(event, DeltaEvent) and event.seq == 0:
                _mark("api request took the first token event")
            elif isinstance(event, DoneEvent):
                _mark("api request took the done event")

        def after_result(self, job, context, outcome) -> None:
            _mark("api has the job's result")

    app = create_app(middleware=[TraceMiddleware()])
    app.before_request_funcs.setdefault(None, []).insert(0, lambda: _mark("api request reached Flask"))
    return app


def run_traced_worker(model: str) -> int:
    """``bin/worker MODEL`` with marks on the dequeue, rq's bookkeeping, the job and the engine.

    The job's own steps are marked by :class:`TraceHooks`, the worker's job hooks; rq's internals
    and the engines' inner steps have no seam, and are wrapped.
    """
    from rq.worker.base import BaseWorker

    from workers import main as worker_main
    from workers import publisher
    from workers.engines import generation, pooling
    from workers.runtime import JobHooks
    from workers.slot import SlotWorker

    class TraceHooks(JobHooks):
        def job_started(self, job) -> None:
            _mark("worker job function entered (job decoded)")

        def job_submitted(self, job) -> None:
            _mark("worker job tokenized and submitted")

        def job_ended(self, job, error) -> None:
            if error is None:
                _mark("worker published the result")

    take = SlotWorker._take

    def traced_take(self):
        taken = take(self)
        if taken is not None:
            _mark("worker took the job (one script)")
        return taken

    SlotWorker._take = traced_take
    _trace(SlotWorker, "prepare_execution", "worker registered the execution (one MULTI)")
    _trace(BaseWorker, "prepare_job_execution", "worker rq prepare_job_execution")
    _trace(generation.GenerationEngine, "_admit", "engine prefill + first sample", entry=True)
    _trace(publisher.RedisEventSink, "publish", "engine published the first token")
    _trace(pooling.PoolingEngine, "_run_batch", "engine embedding batch", entry=True)
    return worker_main.main([model], hooks=TraceHooks())


# -- the driver ----------------------------------------------------------------------------------


def stream_once(session, url: str, k: int) -> tuple[float, float]:
    """Send one streamed chat request; its send time and the time its first content arrived."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Hello! Tell me a story about the number {k % 97}."}],
        "max_tokens": 64,
        "ignore_eos": True,
        "stream": True,
    }
    sent = time.time()
    first = None
    with session.post(url + "/v1/chat/completions", json=body, stream=True, timeout=60) as response:
        response.raise_for_status()
        for line in response.iter_lines(chunk_size=None):
            if first is None and line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                if any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                    first = time.time()
    if first is None:
        raise RuntimeError("no content in the stream")
    return sent, first


def embed_once(session, url: str, k: int) -> tuple[float, float]:
    """Send one one-sentence embedding request; its send time and the time its response was read."""
    body = {
        "model": EMBED_MODEL,
        "input": f"A sentence about the number {k % 97}.",
        "encoding_format": "base64",
    }
    sent = time.time()
    response = session.post(url + "/v1/embeddings", json=body, timeout=60)
    response.raise_for_status()
    if len(response.json()["data"]) != 1:
        raise RuntimeError("not one embedding")
    return sent, time.time()


def timeline(requests_: list[tuple[float, float]], marks_file: Path, last: str) -> dict[str, list[float]]:
    """Milliseconds from each request's send to the first of each mark before its first content."""
    marks = []
    for line in marks_file.read_text().splitlines():
        stamp, _, what = line.partition(" ")
        marks.append((float(stamp), what))
    stages: dict[str, list[float]] = defaultdict(list)
    for sent, first in requests_:
        seen = set()
        for stamp, what in marks:
            if sent <= stamp <= first and what not in seen:
                seen.add(what)
                stages[what].append((stamp - sent) * 1000)
        stages[last].append((first - sent) * 1000)
    return stages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--slots", type=int, default=16, help="max_batch_size of the model")
    parser.add_argument("--embeddings", action="store_true", help="trace embedding requests, not chat")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run the traced worker
    args = parser.parse_args()
    if args.worker:
        return run_traced_worker(args.worker)

    folder = Path(tempfile.mkdtemp(prefix="modelyard-trace-"))
    marks_file = folder / "marks.log"
    models_file = folder / "models.yaml"
    model = EMBED_MODEL if args.embeddings else MODEL
    kind = "embedding" if args.embeddings else "chat, context_length: 2048"
    models_file.write_text(
        f"models:\n  - {{name: {model}, kind: {kind}, source: '{REPO / 'models' / model}',"
        f" max_batch_size: {args.slots}}}\n"
    )
    send = embed_once if args.embeddings else stream_once
    last = "client read the response" if args.embeddings else "client parsed the first content chunk"
    redis_server = RedisServer(free_port(), folder)
    redis_server.start()
    port = free_port()
    env = {
        **os.environ,
        "MODELYARD_REDIS_URL": redis_server.url,
        "MODELYARD_MODELS_FILE": str(models_file),
        "MODELYARD_LOG_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
        MARKS_ENV: str(marks_file),
    }
    print(f"logs in {folder}", file=sys.stderr)
    procs = [
        WorkerProcess(env, [model], folder / "worker.log", program=(sys.executable, __file__, "--worker")),
        LoggedProcess(
            [
                *(sys.executable, "-m", "gunicorn", "--worker-class", "gthread", "--threads", "64"),
                *("--bind", f"127.0.0.1:{port}", "--pythonpath", str(REPO / "bench")),
                "trace_ttft:traced_app()",
            ],
            env,
            folder / "api.log",
        ),
    ]
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            for proc in procs:
                proc.check_running()
            return bool(live_models(url).get(model))

        wait_until(ready, 180, "the traced API and worker")
        session = requests.Session()
        for k in range(args.warmup):
            send(session, url, k)
        marks_file.write_text("")
        sent = [send(session, url, k) for k in range(args.requests)]
        stages = timeline(sent, marks_file, last)
    finally:
        stop_processes(proc.proc for proc in procs)
        for proc in procs:
            proc.stop()  # closes its log
        redis_server.stop()
    print(
        json.dumps(
            {
                "type": "meta",
                "command": " ".join(sys.argv),
                "date": time.strftime("%FT%TZ", time.gmtime()),
                "requests": args.requests,
                "model": model,
                "slots": args.slots,
            }
        )
    )
    previous = 0.0
    for what, values in sorted(stages.items(), key=lambda kv: statistics.median(kv[1])):
        at = statistics.median(values)
        print(
            json.dumps(
                {
                    "mark": what,
                    "median_ms": round(at, 2),
                    "step_ms": round(at - previous, 2),
                    "seen_in": len(values),
                }
            )
        )
        previous = at
    return 0


if __name__ == "__main__":
    sys.exit(main())
