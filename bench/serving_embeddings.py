"""bench/bench_serving.py, section 1: embeddings, one short sentence per request, against the
in-process ``Embedder.embed`` (throughput at its best batch size, p50 latency at concurrency 1)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from loadgen import CpuMonitor, percentile, run_load  # bench/, the script's folder
from report import emit, log, measurement, rnd
from serving_stack import Stack
from workload import EMBED_MODEL, SENTENCES

from shared.catalog import ModelCatalog


def run(stack: Stack, args: argparse.Namespace, monitor: CpuMonitor) -> None:
    from workers.backends.embedding import Embedder

    spec = ModelCatalog.load(stack.models_file).resolve(EMBED_MODEL)
    assert spec is not None
    log("embeddings: loading the in-process Embedder")
    embedder = Embedder.load(spec)
    n = len(SENTENCES)
    for b in (1, 8, 32, 128):
        embedder.embed(SENTENCES[:b])

    # In-process throughput at each batch size (one thread, as the engine thread runs it).
    per_batch: dict[int, dict[str, Any]] = {}
    for batch in args.batch_sizes:

        def encode(_session, _thread, k, batch=batch):
            start = (k * batch) % n
            embedder.embed([SENTENCES[(start + j) % n] for j in range(batch)])
            return batch

        window = run_load(1, min(1.0, args.warmup), args.batch_duration, encode, monitor)
        per_batch[batch] = {"sentences_per_s": rnd(window.value_rate()), "cpu_cores": window.cpu}
        log(f"embeddings: in-process batch {batch}: {window.value_rate():.1f} sentences/s")
    best = max(per_batch, key=lambda b: per_batch[b]["sentences_per_s"] or 0)

    # modelyard throughput: one sentence per request.
    fmt = args.encoding_format

    def embed_body(thread: int, k: int) -> dict[str, Any]:
        return {"model": EMBED_MODEL, "input": SENTENCES[(thread * 31 + k) % n], "encoding_format": fmt}

    def one_embedding(status: int, body: bytes) -> float:
        if status != 200:
            raise RuntimeError(f"HTTP {status}")
        if len(json.loads(body)["data"]) != 1:
            raise RuntimeError("not one embedding")
        return 1.0

    embed_request = stack.call("/v1/embeddings", embed_body, one_embedding)

    log(f"embeddings: modelyard at concurrency {args.embed_concurrency}")
    many = run_load(
        args.embed_concurrency,
        args.warmup,
        args.duration,
        embed_request,
        monitor,
        stack.counters(EMBED_MODEL),
    )
    log(f"embeddings: modelyard {many.rate():.1f} requests/s")
    baseline = per_batch[best]["sentences_per_s"]
    emit(
        measurement(
            "embeddings_throughput",
            "requests/s (one sentence each)",
            baseline,
            f"in-process Embedder.embed, best batch size ({best}), sentences/s",
            many.rate(),
            f"POST /v1/embeddings, 1 sentence per request, concurrency {args.embed_concurrency}",
            "ratio >= 0.8",
            many.rate() >= 0.8 * baseline,
            {
                "inprocess_by_batch_size": per_batch,
                "modelyard": many.summary(),
                "embed_worker_slots": args.embed_slots,
                "encoding_format": fmt,
                "client_cpu_cores": many.cpu.get("bench_process"),
            },
        )
    )

    # Latency at concurrency 1.
    def encode_one(_session, _thread, k):
        embedder.embed([SENTENCES[k % n]])
        return None

    single = run_load(1, min(1.0, args.warmup), args.latency_duration, encode_one, monitor)
    log("embeddings: modelyard at concurrency 1")
    one = run_load(1, args.warmup, args.latency_duration, embed_request, monitor, stack.counters(EMBED_MODEL))
    base_p50 = percentile(single.latencies_ms(), 0.5) or 0.0
    my_p50 = percentile(one.latencies_ms(), 0.5) or 0.0
    emit(
        measurement(
            "embeddings_latency_p50",
            "ms",
            base_p50,
            "in-process Embedder.embed of one sentence, p50",
            my_p50,
            "POST /v1/embeddings, 1 sentence, concurrency 1, p50 (client-side, HTTP included)",
            "modelyard - baseline <= 5 ms",
            my_p50 - base_p50 <= 5.0,
            {"inprocess": single.summary(), "modelyard": one.summary()},
        )
    )
