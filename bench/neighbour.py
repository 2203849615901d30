"""What a small CPU neighbour costs the in-process embedding model (a script, not a test).

    .venv/bin/python bench/neighbour.py                       # batch 21, neighbour at 30% of a core
    .venv/bin/python bench/neighbour.py --batch 32 --duty 0.25 --rounds 3

On a machine with as many cores as torch has threads, the API has to run on the model's cores. This
measures the in-process ``Embedder.embed`` (sentences/s, and the cores it used) alone, and beside a
process that keeps ``--duty`` of one core busy in 1 ms slices (about what the API uses at ~250
embedding requests/s), alternating, and prints one JSON line per window and a summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
from workload import EMBED_MODEL, SENTENCES  # bench/, the script's folder

from harness import REPO
from shared.catalog import ModelCatalog

_SPIN = """
import sys, time
busy = float(sys.argv[1]) / 1000
while True:
    t = time.perf_counter()
    while time.perf_counter() - t < busy:
        pass
    time.sleep(0.001 - busy)
"""


@contextlib.contextmanager
def running(duty: float | None) -> Iterator[None]:
    """A process keeping ``duty`` of one core busy for the block (none when ``duty`` is None)."""
    if duty is None:
        yield
        return
    spin = subprocess.Popen([sys.executable, "-c", _SPIN, str(duty)])
    try:
        time.sleep(0.3)  # let it reach its pace
        yield
    finally:
        spin.terminate()
        spin.wait()


def window(embedder, batch: int, seconds: float) -> dict[str, float]:
    me = psutil.Process()
    cpu0, n, start = sum(me.cpu_times()[:2]), 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        embedder.embed([SENTENCES[(n + j) % len(SENTENCES)] for j in range(batch)])
        n += batch
    elapsed = time.perf_counter() - start
    cores = (sum(me.cpu_times()[:2]) - cpu0) / elapsed
    return {"sentences_per_s": round(n / elapsed, 1), "cores": round(cores, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=21, help="sentences per embed call")
    parser.add_argument("--duty", type=float, default=0.3, help="share of one core the neighbour uses")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from workers.backends.embedding import Embedder

    spec = ModelCatalog.load(REPO / "models.yaml").resolve(EMBED_MODEL)
    assert spec is not None
    embedder = Embedder.load(spec)
    window(embedder, args.batch, 1.0)  # warm-up
    alone, beside = [], []
    for _ in range(args.rounds):
        result = window(embedder, args.batch, args.seconds)
        alone.append(result["sentences_per_s"])
        print(json.dumps({"neighbour": None, **result}))
        with running(args.duty):
            result = window(embedder, args.batch, args.seconds)
        beside.append(result["sentences_per_s"])
        print(json.dumps({"neighbour": args.duty, **result}))
    ratio = sum(beside) / sum(alone)
    print(json.dumps({"batch": args.batch, "duty": args.duty, "beside_vs_alone": round(ratio, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
