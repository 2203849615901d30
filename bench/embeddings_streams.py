"""In process: one ONNX Runtime (or OpenVINO) pass over every core against concurrent one-thread passes.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/embeddings_streams.py                 # onnx and openvino, ~2 min
    HF_HUB_OFFLINE=1 .venv/bin/python bench/embeddings_streams.py --backends onnx

A script, not a test. For each backend and batch size (8, 16, 32, 64 sentences of
bench/workload.py), 3 s each, two rounds: sentences/s and cores used by one pass at a time on two
intra-op threads (the machine's cores), by one pass at a time on one thread, and by two threads
calling one one-thread model at once (``streams: 2, threads: 1``, the engine's default on 2 cores).
One JSON line per measurement. OpenVINO's streams are one compiled model with ``NUM_STREAMS``.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

from pooling_stack import MINILM  # bench/, the script's folder
from workload import SENTENCES

from shared.catalog import ModelSpec
from workers.backends.onnx_embedding import ExportedEmbedder


def load(backend: str, streams: int, threads: int | None) -> ExportedEmbedder:
    spec = ModelSpec(
        name="m",
        kind="embedding",
        source=str(MINILM),
        device="cpu",
        backend=backend,
        streams=streams,
        threads=threads,
    )
    return ExportedEmbedder.load(spec)


def rate(model: ExportedEmbedder, callers: int, batch: int, seconds: float = 3.0) -> tuple[float, float]:
    """Sentences/s and cores used with ``callers`` threads embedding ``batch`` sentences per call."""
    counts = [0] * callers
    stop = time.perf_counter() + seconds

    def call(k: int) -> None:
        n = 0
        while time.perf_counter() < stop:
            model.embed([SENTENCES[(n + j) % len(SENTENCES)] for j in range(batch)])
            n += batch
        counts[k] = n

    cpu, start = time.process_time(), time.perf_counter()
    threads = [threading.Thread(target=call, args=(k,)) for k in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    return sum(counts) / elapsed, (time.process_time() - cpu) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="onnx,openvino")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    for backend in args.backends.split(","):
        # One stream on two threads, one stream on one thread, two one-thread streams.
        every_core = load(backend, 1, 2)
        one_thread = load(backend, 1, 1)
        two_streams = load(backend, 2, 1)
        for _ in range(args.rounds):
            for batch in (8, 16, 32, 64):
                record: dict[str, object] = {"backend": backend, "batch": batch}
                for name, model, callers in (
                    ("one_pass_2_threads", every_core, 1),
                    ("one_pass_1_thread", one_thread, 1),
                    ("two_streams_1_thread", two_streams, 2),
                ):
                    per_s, cores = rate(model, callers, batch)
                    record[name] = {"per_s": round(per_s), "cores": round(cores, 2)}
                print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
