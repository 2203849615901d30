"""Serving benchmark of GitHub issue 3 (a script, not a test): modelyard against the same models
called in-process, in one run.

    .venv/bin/python bench/bench_serving.py            # about 3 minutes on 2 quiet cores
    .venv/bin/python bench/bench_serving.py --quick    # about 3 s per measurement: a smoke test
    .venv/bin/python bench/bench_serving.py --only embeddings,chat,dispatch --duration 12

It starts its own redis-server, workers and API (bin/worker, bench/sleep_worker.py, bin/api) on free
ports of 127.0.0.1, with a models file in a temporary folder pointing at models/, and stops them at
the end. It prints JSON lines on stdout: first the run's ``meta`` (the exact command, the date, git
HEAD, the machine), then one line per measurement with ``baseline``, ``modelyard``, their ``ratio``,
the issue's ``target`` and ``pass``. Progress goes to stderr.

1. Embeddings, one short sentence per request: modelyard requests/s at concurrency 64 against the
   in-process ``Embedder.embed`` at its best batch size (1, 8, 32, 64, 128), and p50 latency at
   concurrency 1 against an in-process one-sentence ``embed`` (targets: >= 0.8x, within 5 ms).
2. Chat, tiny-chat, max_tokens 64 with ``ignore_eos`` (temperature 0 without it, if the API refuses
   it): generated tokens/s at concurrency 16 against concurrency 1 (target >= 4x), and the streamed
   time to first token at concurrency 1 against the in-process ``CausalLM`` prefill + first sample
   (target within 10 ms). For reference, also the in-process ``GenerationEngine`` at 1 and 16.
3. Dispatch: a model that sleeps 50 ms per batch (one job per batch), 1 worker against 8 (target >= 7x).

Every window also reports the CPU (in cores) that the API, each worker, Redis and this process used,
and what the whole machine used, so a missed target can be put down to its cause.

Non-streamed requests go through ``bench/http_load.py`` (``--client raw``, the default): keep-alive
connections on one asyncio loop, ~0.1 ms of CPU per request here. ``--client requests`` uses a
``requests.Session`` per client thread (~1 ms per request, taken from the same 2 cores as the stack;
the figures before 2026-12-01 were measured so). Streamed requests (time to first token) always use
``requests``.

The code: this file is the command line; ``workload.py`` the models and inputs, ``loadgen.py`` the
load generator, ``serving_stack.py`` the stack (on ``harness``), ``serving_embeddings.py``,
``serving_chat.py`` and ``serving_dispatch.py`` one section each, ``report.py`` the output.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import serving_chat  # bench/, the script's folder
import serving_dispatch
import serving_embeddings
from loadgen import CpuMonitor
from report import emit, log, meta, wait_quiet
from serving_stack import Stack
from workload import CHAT_MODEL, EMBED_MODEL

from harness import REPO
from shared.catalog import ModelCatalog

SECTIONS = ("embeddings", "chat", "dispatch")
#: Each section's module runs its measurements on the stack and emits their lines.
RUNS = {"embeddings": serving_embeddings.run, "chat": serving_chat.run, "dispatch": serving_dispatch.run}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = {spec.name: spec for spec in ModelCatalog.load(REPO / "models.yaml")}
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="about 3 s per measurement (smoke test)")
    parser.add_argument("--duration", type=float, help="seconds per modelyard window (default 12, quick 3)")
    parser.add_argument(
        "--warmup", type=float, help="seconds of warm-up before each window (default 3, quick 1)"
    )
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--embed-concurrency", type=int, default=64)
    parser.add_argument("--chat-concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--dispatch-workers", type=int, default=8)
    parser.add_argument("--dispatch-concurrency", type=int, default=32)
    parser.add_argument("--batch-sizes", default="1,8,32,64,128", help="in-process embedding batch sizes")
    parser.add_argument(
        "--embed-slots",
        type=int,
        default=defaults[EMBED_MODEL].max_batch_size,
        help="max_batch_size of the embedding worker (default: models.yaml's)",
    )
    parser.add_argument(
        "--chat-slots",
        type=int,
        default=defaults[CHAT_MODEL].max_batch_size,
        help="max_batch_size of the chat worker (default: models.yaml's)",
    )
    parser.add_argument(
        "--chat-threads",
        type=int,
        default=defaults[CHAT_MODEL].threads,
        help="torch threads of the chat worker (default: models.yaml's)",
    )
    parser.add_argument(
        "--encoding-format",
        choices=("float", "base64"),
        default="base64",
        help="embeddings encoding_format (base64 is what the openai SDK sends)",
    )
    parser.add_argument(
        "--client",
        choices=("raw", "requests"),
        default="raw",
        help="HTTP client of the non-streamed requests: bench/http_load.py's lean one (~0.1 ms of CPU "
        "per request here), or requests (~1 ms, taken from the 2 cores the stack runs on)",
    )
    parser.add_argument("--log-level", default="WARNING", help="MODELYARD_LOG_LEVEL of the stack")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        help="seconds to wait at most for the shared machine to be idle before starting "
        "(default 120, quick 0)",
    )
    parser.add_argument(
        "--worker-omp-threads",
        type=int,
        help="OMP_NUM_THREADS for the stack's processes (default: unset, torch's own choice, as bin/up)",
    )
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 3.0 if args.quick else 12.0
    if args.wait_quiet is None:
        args.wait_quiet = 0.0 if args.quick else 120.0
    if args.warmup is None:
        args.warmup = 1.0 if args.quick else 3.0
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    # Derived windows: the in-process sweep and the c1 latency runs are shorter than the throughput ones.
    args.batch_duration = max(1.0, args.duration / 3)
    args.latency_duration = max(2.0, args.duration * 2 / 3)
    args.engine_duration = max(2.0, args.duration / 2)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else {}
    emit(meta(args, quiet))
    monitor = CpuMonitor()
    folder = Path(tempfile.mkdtemp(prefix="modelyard-bench-"))
    stack = Stack(folder, args, monitor)
    failed = 0
    started = time.monotonic()
    try:
        log(f"starting the stack (logs in {folder})")
        stack.start()
        log(f"stack up in {time.monotonic() - started:.1f}s at {stack.url}")
        for name in args.only:
            try:
                RUNS[name](stack, args, monitor)
            except Exception as exc:  # one broken section must not hide the others' figures
                failed += 1
                log(f"{name} failed: {exc!r}")
                emit({"measurement": name, "error": f"{type(exc).__name__}: {exc}", "logs": str(folder)})
    finally:
        log("stopping the stack")
        stack.stop()
    emit(
        {
            "type": "end",
            "total_s": round(time.monotonic() - started, 1),
            "logs": str(folder),
            "sections_failed": failed,
        }
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
