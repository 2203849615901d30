"""Embeddings and rerank per backend, side by side in one run: the in-process model on each backend,
modelyard on each backend, and Infinity's torch engine, all HTTP load driven by ``wrk`` (issue 15).

    .venv/bin/python bench/embeddings_backends.py                  # the run in bench/RESULTS.md (~6 min)
    .venv/bin/python bench/embeddings_backends.py --quick          # a smoke test (~1.5 min)
    .venv/bin/python bench/embeddings_backends.py --neighbour 0.3  # also beside bench/neighbour.py's spinner

A script, not a test. It starts its own redis-server, one worker process per backend (serving
all-MiniLM-L6-v2 and tiny-reranker on it, named ``minilm-<backend>`` and ``reranker-<backend>``) and
``bin/api`` on free ports of 127.0.0.1, and, if ``/tmp/infinity-venv`` holds Infinity (see
bench/RESULTS.md for its install), ``infinity_emb v2 --engine torch --device cpu`` on the same
MiniLM folder. Then, interleaved so that every target sees the same machine:

1. in-process, each backend: the p50 of one sentence (as at concurrency 1) and sentences/s at batch 32;
2. ``wrk`` (``bench/wrk_pooling.lua``: one short sentence per request, a different one each time) at
   concurrency 64, ``--runs`` windows for the key backend and ``--other-runs`` for the other targets,
   then at concurrency 1;
3. rerank: a query and 8 documents per request at concurrency 16, per modelyard backend (documents/s);
4. with ``--neighbour``: the key backend's stack at concurrency 64 and the in-process model at batch
   16 alone and beside a process busy ``--neighbour`` of one core, alternating.

One JSON line per window on stdout, then a summary line per target (min, median, max) and the
targets of issue 15; progress on stderr. Load goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import neighbour  # bench/, the script's folder
from pooling_stack import INFINITY, MINILM, SERVED_NAME, Servers
from report import spread
from workload import SENTENCES

from harness import REPO
from shared.catalog import ModelBackend, ModelSpec

WRK_SCRIPT = REPO / "bench" / "wrk_pooling.lua"
RERANK_DOCUMENTS = 8


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


# -- in-process ---------------------------------------------------------------------------------------


def load_inprocess(backend: str):
    spec = ModelSpec(
        name=f"minilm-{backend}", kind="embedding", source=str(MINILM), device="cpu", backend=backend
    )
    if backend == "torch":
        from workers.backends.embedding import Embedder

        return Embedder.load(spec)
    from workers.backends.onnx_embedding import ExportedEmbedder

    return ExportedEmbedder.load(spec)


def one_sentence_p50(model, calls: int) -> float:
    """Median ms of embedding one sentence, a short pause between calls (as at concurrency 1)."""
    times = []
    for k in range(calls):
        start = time.perf_counter()
        model.embed([SENTENCES[k % len(SENTENCES)]])
        times.append((time.perf_counter() - start) * 1000)
        time.sleep(0.002)
    return statistics.median(times)


def batch_rate(model, batch: int, seconds: float) -> float:
    """Sentences/s embedding ``batch`` sentences per call for ``seconds``."""
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.embed([SENTENCES[(n + j) % len(SENTENCES)] for j in range(batch)])
        n += batch
    return n / (time.perf_counter() - start)


def wrk(url: str, path: str, model: str, connections: int, seconds: float) -> dict[str, Any]:
    """One ``wrk`` window; its done() line as a dict."""
    env = {**os.environ, "WRK_PATH": path, "WRK_MODEL": model, "WRK_DOCUMENTS": str(RERANK_DOCUMENTS)}
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "30s",
        "-s",
        str(WRK_SCRIPT),
        url,
    ]
    out = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=seconds + 60, check=True
    ).stdout
    line = [ln for ln in out.splitlines() if ln.startswith("{")][-1]
    return json.loads(line)


def summary(values: list[float]) -> dict[str, float | None]:
    return {**spread(values), "runs": len(values)}


# -- main ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backends", default="torch,onnx,openvino", help="modelyard backends (comma-separated)"
    )
    parser.add_argument("--key-backend", default="onnx", help="the backend measured --runs times")
    parser.add_argument("--runs", type=int, default=10, help="concurrency-64 windows of the key backend")
    parser.add_argument("--other-runs", type=int, default=4, help="concurrency-64 windows of the others")
    parser.add_argument("--seconds", type=float, default=10.0, help="each concurrency-64 window")
    parser.add_argument("--c1-runs", type=int, default=3)
    parser.add_argument("--c1-seconds", type=float, default=4.0)
    parser.add_argument("--rerank-runs", type=int, default=3)
    parser.add_argument("--rerank-seconds", type=float, default=6.0)
    parser.add_argument("--neighbour", type=float, default=0.0, help="share of a core; 0: no neighbour runs")
    parser.add_argument("--neighbour-runs", type=int, default=3)
    parser.add_argument("--no-infinity", action="store_true")
    parser.add_argument("--quick", action="store_true", help="2 windows of 3 s everywhere")
    args = parser.parse_args()
    if args.quick:
        args.runs = args.other_runs = args.c1_runs = args.rerank_runs = 2
        args.seconds = args.c1_seconds = args.rerank_seconds = 3.0
        args.neighbour_runs = min(args.neighbour_runs, 1)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    backends = [b for b in args.backends.split(",") if b]
    for backend in backends:
        ModelBackend(backend)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    emit(
        {
            "meta": {
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "head": head.stdout.strip(),
                "cpus": os.cpu_count(),
                "load_average": os.getloadavg(),
                "infinity": INFINITY.exists() and not args.no_infinity,
            }
        }
    )

    # 1. In-process, interleaved rounds.
    models = {backend: load_inprocess(backend) for backend in backends}
    for model in models.values():
        model.embed(SENTENCES[:32])
    inprocess: dict[str, dict[str, list[float]]] = {b: {"p50_ms": [], "batch32_per_s": []} for b in backends}
    for _ in range(3):
        for backend, model in models.items():
            inprocess[backend]["p50_ms"].append(one_sentence_p50(model, 60))
            inprocess[backend]["batch32_per_s"].append(batch_rate(model, 32, 1.5))
    for backend, figures in inprocess.items():
        record = {
            "inprocess": backend,
            "p50_ms": round(statistics.median(figures["p50_ms"]), 2),
            "batch32_sentences_per_s": round(statistics.median(figures["batch32_per_s"]), 1),
            "rounds": figures,
        }
        emit(record)
    neighbour_model = models.get(args.key_backend) if args.neighbour else None
    models = {}  # the stack's workers get the cores to themselves

    folder = Path(tempfile.mkdtemp(prefix="modelyard-embench-"))
    servers = Servers(folder, backends, infinity=INFINITY.exists() and not args.no_infinity)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    try:
        log(f"starting the stack in {folder}")
        servers.start()
        targets = [(f"modelyard-{b}", servers.url, f"minilm-{b}") for b in backends]
        if servers.infinity is not None:
            targets.append(("infinity-torch", servers.infinity_url, SERVED_NAME))
        for _name, url, model in targets:  # warm-up
            wrk(url, "/v1/embeddings", model, 64, 2)
        key = f"modelyard-{args.key_backend}"

        def window(name: str, url: str, model: str, connections: int, seconds: float, phase: str) -> None:
            result = wrk(
                url, "/v1/embeddings" if phase != "rerank" else "/v1/rerank", model, connections, seconds
            )
            if result["non_2xx"] or result["socket_errors"]:
                log(f"{name}: {result['non_2xx']} non-2xx, {result['socket_errors']} socket errors")
            if phase == "rerank":
                result["documents_per_s"] = round(result["requests_per_s"] * RERANK_DOCUMENTS, 1)
            emit({"phase": phase, "target": name, "connections": connections, **result})
            results.setdefault(phase, {}).setdefault(name, []).append(result)

        # 2. Concurrency 64, then 1; the order rotates every round.
        for phase, connections, runs, seconds in (
            ("c64", 64, args.runs, args.seconds),
            ("c1", 1, args.c1_runs, args.c1_seconds),
        ):
            for r in range(max(runs, args.other_runs if phase == "c64" else runs)):
                order = targets[r % len(targets) :] + targets[: r % len(targets)]
                for name, url, model in order:
                    if phase == "c64" and name != key and r >= args.other_runs:
                        continue
                    window(name, url, model, connections, seconds, phase)

        # 3. Rerank, concurrency 16.
        for r in range(args.rerank_runs):
            for backend in backends[r % len(backends) :] + backends[: r % len(backends)]:
                window(
                    f"modelyard-{backend}",
                    servers.url,
                    f"reranker-{backend}",
                    16,
                    args.rerank_seconds,
                    "rerank",
                )

        # 4. Beside a CPU neighbour.
        if args.neighbour:
            for _ in range(args.neighbour_runs):
                for beside in (False, True):
                    with neighbour.running(args.neighbour if beside else None):
                        phase = "neighbour" if beside else "alone"
                        window(key, servers.url, f"minilm-{args.key_backend}", 64, args.seconds, phase)
    finally:
        servers.stop()
        log(f"logs in {folder}")

    if neighbour_model is not None:
        for _ in range(args.neighbour_runs):
            for beside in (False, True):
                with neighbour.running(args.neighbour if beside else None):
                    rate = batch_rate(neighbour_model, 16, min(args.seconds, 4.0))
                phase = "inprocess-neighbour" if beside else "inprocess-alone"
                emit(
                    {
                        "phase": phase,
                        "target": args.key_backend,
                        "batch": 16,
                        "sentences_per_s": round(rate, 1),
                    }
                )
                results.setdefault(phase, {}).setdefault(args.key_backend, []).append(
                    {"requests_per_s": rate}
                )

    # Summaries and the targets.
    table: dict[str, dict[str, Any]] = {}
    for phase, by_target in results.items():
        for name, windows in by_target.items():
            rates = [w.get("documents_per_s", w["requests_per_s"]) for w in windows]
            row = {"phase": phase, "target": name, "per_s": summary(rates)}
            if "p50_ms" in windows[0]:
                row["p50_ms"] = summary([w["p50_ms"] for w in windows])
                row["p99_ms"] = summary([w["p99_ms"] for w in windows])
            emit({"summary": row})
            table[f"{phase}/{name}"] = row
    checks: dict[str, Any] = {}
    best = table.get(f"c64/{key}")
    peer = table.get("c64/infinity-torch")
    if best and peer:
        checks["c64_vs_infinity"] = round(best["per_s"]["median"] / peer["per_s"]["median"], 2)
        checks["c64_vs_infinity_pass"] = checks["c64_vs_infinity"] >= 2.0
    if best:
        checks["c64_min_over_median"] = round(best["per_s"]["min"] / best["per_s"]["median"], 3)
        checks["c64_min_over_median_pass"] = checks["c64_min_over_median"] >= 0.8
    for backend in backends:
        c1 = table.get(f"c1/modelyard-{backend}")
        if c1:
            base = statistics.median(inprocess[backend]["p50_ms"])
            checks[f"c1_p50_minus_inprocess_{backend}_ms"] = round(c1["p50_ms"]["median"] - base, 2)
    if "alone" in results and "inprocess-alone" in results:

        def mean_rate(phase: str) -> float:
            return statistics.mean(w["requests_per_s"] for ws in results[phase].values() for w in ws)

        checks["stack_beside_vs_alone"] = round(mean_rate("neighbour") / mean_rate("alone"), 3)
        checks["inprocess_beside_vs_alone"] = round(
            mean_rate("inprocess-neighbour") / mean_rate("inprocess-alone"), 3
        )
    emit({"checks": checks})
    return 0


if __name__ == "__main__":
    sys.exit(main())
