"""What bench/bench_serving.py sends: the models it measures, its request inputs, and its timeouts."""

from __future__ import annotations

import sys

from harness import REPO

EMBED_MODEL = "all-MiniLM-L6-v2"
CHAT_MODEL = "tiny-chat"
SLEEP_MODEL = "sleep-50ms"
SLEEP_MS = 50
#: Its entry in a models file: one job per batch, a queue deep enough for any client concurrency.
SLEEP_ENTRY = (
    f"{{name: {SLEEP_MODEL}, kind: embedding, source: 'sleep:{SLEEP_MS}', max_batch_size: 1,"
    " max_queue: 1024, coalesce_inputs: 1}"
)
#: Seconds the server gives each request; the client's timeout is a little longer.
REQUEST_TIMEOUT_S = 60
#: A worker process whose model only sleeps (bench/sleep_worker.py), given its models as arguments.
SLEEP_WORKER = (sys.executable, str(REPO / "bench" / "sleep_worker.py"))


def sentences(count: int = 256) -> list[str]:
    """Short, distinct English sentences (10 to 14 MiniLM tokens)."""
    subjects = [
        "The cat",
        "A small dog",
        "My neighbour",
        "The old train",
        "A red bird",
        "The teacher",
        "Our team",
        "The river",
        "A tired child",
        "The new phone",
        "The market",
        "A quiet city",
        "The last bus",
        "A bright star",
        "The baker",
        "An open window",
    ]
    verbs = [
        "sits near",
        "looks at",
        "waits for",
        "runs past",
        "talks about",
        "sleeps under",
        "finds",
        "remembers",
    ]
    objects = [
        "the warm mat",
        "a blue door",
        "the busy station",
        "an empty park",
        "the tall tree",
        "a long letter",
    ]
    out = []
    for i in range(count):
        s, v, o = subjects[i % 16], verbs[(i // 16) % 8], objects[(i // 128 + i) % 6]
        out.append(f"{s} {v} {o} on day {i}.")
    return out


SENTENCES = sentences()


def chat_messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Hello! Please tell me a short story about the number {i % 97}."}]
