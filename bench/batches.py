"""The Batch API beside interactive traffic (issue 14), on its own stack (bench/serving_stack.py):
tiny-chat (16 slots) and all-MiniLM-L6-v2 workers, bin/api, redis-server.

Each round measures, in this order:
1. interactive chat at concurrency 4 (``max_tokens`` 32) alone: p50 and p99 latency;
2. the same while a 5,000-line embeddings batch and a 500-line chat batch run (both started just
   before the window);
3. each batch alone, created to completed: lines/s;
4. the same lines sent directly at full concurrency (chat 16, embeddings 64) for as long: lines/s.

Targets: interactive p50 with the batches within 1.5x of alone; a batch's lines/s at least 0.8x of
the same lines sent directly. Run: ``.venv/bin/python bench/batches.py`` (JSON lines on stdout).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import requests  # noqa: E402
from loadgen import CpuMonitor, percentile, run_load  # noqa: E402
from report import emit, log, meta, rnd, spread, wait_quiet  # noqa: E402
from serving_stack import Stack  # noqa: E402
from workload import CHAT_MODEL, EMBED_MODEL, SENTENCES, chat_messages  # noqa: E402

from shared import keys  # noqa: E402

INTERACTIVE_TOKENS = 32
BATCH_CHAT_TOKENS = 32


def chat_body(i: int, tokens: int) -> dict[str, Any]:
    return {
        "model": CHAT_MODEL,
        "messages": chat_messages(i),
        "max_tokens": tokens,
        "ignore_eos": True,
        "seed": i,
    }


def embed_body(i: int) -> dict[str, Any]:
    return {"model": EMBED_MODEL, "input": SENTENCES[i % len(SENTENCES)]}


def ok(status: int, body: bytes) -> float:
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
    return 1.0


def load(stack: Stack, path: str, body, concurrency: int, seconds: float) -> dict[str, Any]:
    """``concurrency`` connections sending ``body(thread, n)`` to ``path`` for ``seconds``
    (loadgen's run, on http_load's client)."""
    window = run_load(concurrency, 0.0, seconds, stack.call(path, body, ok), stack.monitor)
    latencies = window.latencies_ms()
    return {
        "requests_per_s": window.rate(),
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "requests": len(window.ok()),
        "errors": window.errors(),
    }


def start_batch(url: str, endpoint: str, bodies: list[dict[str, Any]]) -> str:
    lines = [
        json.dumps({"custom_id": f"l{i}", "method": "POST", "url": endpoint, "body": body})
        for i, body in enumerate(bodies)
    ]
    upload = requests.post(
        url + "/v1/files",
        files={"file": ("in.jsonl", ("\n".join(lines) + "\n").encode())},
        data={"purpose": "batch"},
        timeout=60,
    )
    upload.raise_for_status()
    created = requests.post(
        url + "/v1/batches",
        json={"input_file_id": upload.json()["id"], "endpoint": endpoint, "completion_window": "24h"},
        timeout=30,
    )
    created.raise_for_status()
    return created.json()["id"]


def wait_batch(url: str, batch_id: str, timeout: float = 900) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = requests.get(f"{url}/v1/batches/{batch_id}", timeout=30).json()
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            return batch
        time.sleep(0.2)
    raise TimeoutError(f"batch {batch_id} did not end in {timeout}s")


def run_batch(stack: Stack, endpoint: str, bodies: list[dict[str, Any]]) -> float:
    """Lines per second of one batch alone, from its creation to its completion (once the interactive
    mark of the load before it expired: a batch yields while it lives)."""
    client = stack.redis.client()
    deadline = time.monotonic() + 30
    while client.exists(keys.interactive_key()) and time.monotonic() < deadline:
        time.sleep(0.1)
    url = stack.url
    started = time.perf_counter()
    batch = wait_batch(url, start_batch(url, endpoint, bodies))
    elapsed = time.perf_counter() - started
    if batch["status"] != "completed" or batch["request_counts"]["failed"]:
        raise RuntimeError(f"batch ended {batch['status']}: {batch['request_counts']}")
    return len(bodies) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per interactive window")
    parser.add_argument("--embed-lines", type=int, default=5000)
    parser.add_argument("--chat-lines", type=int, default=500)
    parser.add_argument("--batch-window", type=int, help="MODELYARD_BATCH_WINDOW (default: the setting's)")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    stack_args = argparse.Namespace(
        chat_slots=16,
        embed_slots=32,
        chat_threads=None,
        worker_omp_threads=None,
        log_level=args.log_level,
        client="raw",
    )
    quiet = wait_quiet(60)
    emit(meta(args, quiet))
    folder = Path(tempfile.mkdtemp(prefix="bench-batches-"))
    monitor = CpuMonitor()
    stack = Stack(folder, stack_args, monitor)
    stack.env["MODELYARD_FILES_DIR"] = str(folder / "files")
    if args.batch_window:
        stack.env["MODELYARD_BATCH_WINDOW"] = str(args.batch_window)
    chat_lines = [chat_body(10_000 + i, BATCH_CHAT_TOKENS) for i in range(args.chat_lines)]
    embed_lines = [embed_body(i) for i in range(args.embed_lines)]
    figures: dict[str, list[float]] = {
        k: [] for k in ("alone_p50", "alone_p99", "busy_p50", "busy_p99", "chat_batch", "chat_direct")
    }
    figures.update(embed_batch=[], embed_direct=[])
    try:
        stack.start()
        load(stack, "/v1/chat/completions", lambda t, n: chat_body(n, INTERACTIVE_TOKENS), 4, 3)  # warm up
        for r in range(args.rounds):
            alone = load(
                stack, "/v1/chat/completions", lambda t, n: chat_body(n, INTERACTIVE_TOKENS), 4, args.duration
            )
            log(f"round {r}: interactive alone {alone}")
            ids = [
                start_batch(stack.url, "/v1/embeddings", embed_lines),
                start_batch(stack.url, "/v1/chat/completions", chat_lines),
            ]
            busy = load(
                stack, "/v1/chat/completions", lambda t, n: chat_body(n, INTERACTIVE_TOKENS), 4, args.duration
            )
            running = [requests.get(f"{stack.url}/v1/batches/{i}", timeout=30).json() for i in ids]
            counts = [b["request_counts"] for b in running]
            log(f"round {r}: interactive beside the batches {busy}; the batches then: {counts}")
            for batch_id in ids:
                wait_batch(stack.url, batch_id)
            figures["alone_p50"].append(alone["p50_ms"])
            figures["alone_p99"].append(alone["p99_ms"])
            figures["busy_p50"].append(busy["p50_ms"])
            figures["busy_p99"].append(busy["p99_ms"])
            chat_batch = run_batch(stack, "/v1/chat/completions", chat_lines)
            chat_direct = load(
                stack, "/v1/chat/completions", lambda t, n: chat_body(n, BATCH_CHAT_TOKENS), 16, 8
            )
            embed_batch = run_batch(stack, "/v1/embeddings", embed_lines)
            embed_direct = load(stack, "/v1/embeddings", lambda t, n: embed_body(n), 64, 8)
            figures["chat_batch"].append(chat_batch)
            figures["chat_direct"].append(chat_direct["requests_per_s"])
            figures["embed_batch"].append(embed_batch)
            figures["embed_direct"].append(embed_direct["requests_per_s"])
            log(
                f"round {r}: chat batch {chat_batch:.1f} lines/s vs direct "
                f"{chat_direct['requests_per_s']:.1f}; embeddings batch {embed_batch:.1f} vs direct "
                f"{embed_direct['requests_per_s']:.1f}"
            )
            emit({"round": r, **{k: rnd(v[-1]) for k, v in figures.items()}})
    finally:
        stack.stop()
    ratios = {
        "busy_over_alone_p50": [
            b / a for b, a in zip(figures["busy_p50"], figures["alone_p50"], strict=True)
        ],
        "chat_batch_over_direct": [
            b / d for b, d in zip(figures["chat_batch"], figures["chat_direct"], strict=True)
        ],
        "embed_batch_over_direct": [
            b / d for b, d in zip(figures["embed_batch"], figures["embed_direct"], strict=True)
        ],
    }
    emit(
        {
            "summary": {k: spread(v) for k, v in figures.items()},
            "ratios": {k: spread(v) for k, v in ratios.items()},
            "targets": {"busy_over_alone_p50": "<= 1.5", "batch_over_direct": ">= 0.8"},
        }
    )


if __name__ == "__main__":
    main()
