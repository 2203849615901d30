"""Structured output benchmark of issue 12 (a script, not a test).

    .venv/bin/python bench/structured_outputs.py                  # both parts, about 3 minutes
    .venv/bin/python bench/structured_outputs.py --only masks     # the in-process mask cost only

1. ``masks``: the constraint hook's cost per decode step, in process: 16 rows under a JSON Schema
   (each at its own place in it), for a 32k and a 128k vocabulary (made up: the 256 bytes and
   random word pieces, with and without a leading space), the fill (llguidance, every row) and the
   apply (``workers.constraints.bitmask.apply`` on float32 logits) timed apart, per step and per
   row; the engine's way (forced tokens without a mask, a check of an unmasked draw, the mask only
   for a refused one) with every draw allowed and with every draw refused; also binding the
   vocabulary (once per model) and compiling.
2. ``throughput``: tiny-chat tokens/s at concurrency 16 with the same JSON Schema on every request
   against the same requests without one (target >= 0.8x), through a stack of its own (redis-server,
   ``bin/worker``, ``bin/api`` on free ports of 127.0.0.1), windows alternated so load drifts on the
   machine hit every kind. The baseline decodes the same lengths as the constrained replies (a
   schema ends a reply early, and requests that end early cost a prefill and a round trip more per
   token); the same ``max_tokens`` without a schema is reported too. Every constrained reply is
   checked against the schema.

Prints JSON lines: the run's ``meta``, then one per measurement.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from http_load import RawCall, drive, post_json  # bench/, the script's folder
from pydantic import BaseModel, Field
from serving_stack import engine_totals

from harness import REPO, RedisServer, WorkerProcess, free_port, start_api, stop_process
from shared.jobs import JsonSchemaConstraint
from workers.constraints import bitmask, get_backend
from workers.constraints.vocabulary import Vocabulary


class Colour(StrEnum):
    red = "red"
    green = "green"
    blue = "blue"


class Address(BaseModel):
    city: str = Field(pattern=r"^[A-Z][a-z]{0,7}$")
    zip: int | None = Field(ge=0, le=99999)


class Person(BaseModel):
    """Nested objects, an enum, an optional field, an array: every length bounded, as in the e2e test."""

    name: str = Field(pattern=r"^[A-Za-z ]{1,12}$")
    age: int = Field(ge=0, le=120)
    colour: Colour
    home: Address
    tags: list[Annotated[str, Field(pattern=r"^[a-z]{1,4}$")]] = Field(max_length=3)


def strict_schema() -> dict[str, Any]:
    """``Person`` as the openai SDK's ``parse()`` sends it (every property required, no others)."""
    from openai.lib._pydantic import to_strict_json_schema

    return to_strict_json_schema(Person)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


# -- 1. the mask cost ------------------------------------------------------------------------------


def made_up_vocabulary(size: int, seed: int = 0) -> Vocabulary:
    """The 256 bytes, then distinct random pieces of 2-8 letters (a third with a leading space,
    some digits and punctuation), and one EOS: shaped like a byte-level BPE vocabulary."""
    rng = random.Random(seed)
    tokens: list[bytes] = [bytes([b]) for b in range(256)]
    seen = set(tokens)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" + ',.:;"{}[]_-'
    while len(tokens) < size - 1:
        piece = "".join(rng.choice(alphabet) for _ in range(rng.randint(2, 8)))
        data = (" " + piece if rng.random() < 0.33 else piece).encode()
        if data not in seen:
            seen.add(data)
            tokens.append(data)
    tokens.append(b"<eos>")
    eos = len(tokens) - 1
    by_bytes = {t: i for i, t in enumerate(tokens[:256])}
    return Vocabulary(
        tokens, frozenset({eos}), frozenset({eos}), lambda s: [by_bytes[bytes([b])] for b in s.encode()]
    )


def stats_ms(values: list[float]) -> dict[str, float]:
    ms = np.array(values) * 1000
    return {
        "p50": round(float(np.median(ms)), 3),
        "mean": round(float(ms.mean()), 3),
        "p99": round(float(np.percentile(ms, 99)), 3),
    }


def bench_masks(args: argparse.Namespace) -> None:
    spec = JsonSchemaConstraint(json_schema=strict_schema())
    for size in (32_000, 128_000):
        vocabulary = made_up_vocabulary(size)
        began = time.perf_counter()
        compiler = get_backend().bind(vocabulary)
        bind_s = time.perf_counter() - began
        began = time.perf_counter()
        template = compiler.compile(spec)
        compile_s = time.perf_counter() - began
        rng = np.random.default_rng(0)
        rows = [template.copy() for _ in range(args.rows)]
        logits = torch.randn(args.rows, size)
        fills, applies, kept, redrawn = [], [], [], []
        forced_rows = 0
        for _ in range(args.steps):
            ahead = [m.copy() for m in rows]
            mask = bitmask.allocate(args.rows, size)
            t0 = time.perf_counter()
            compiler.fill([(m, j) for j, m in enumerate(rows)], mask)
            t1 = time.perf_counter()
            masked = bitmask.apply(logits, list(range(args.rows)), mask)
            t2 = time.perf_counter()
            fills.append(t1 - t0)
            applies.append(t2 - t1)
            yes, no = way_of_the_engine(compiler, ahead, masked, size)
            kept.append(yes[0])
            redrawn.append(no)
            forced_rows += yes[1]
            for j, matcher in enumerate(rows):
                allowed = np.flatnonzero(torch.isfinite(masked[j]).numpy())
                matcher.accept(int(rng.choice(allowed)))
                if matcher.done or matcher.error:
                    rows[j] = template.copy()  # start over: rows stay at mixed places in the schema
        emit(
            {
                "measurement": f"mask cost per decode step, {size // 1000}k vocabulary, {args.rows} rows",
                "unit": "ms",
                "fill": stats_ms(fills),
                "apply": stats_ms(applies),
                "per_row_fill_and_apply_mean_ms": round(
                    (sum(fills) + sum(applies)) * 1000 / len(fills) / args.rows, 4
                ),
                "engine_way_draws_allowed": stats_ms(kept),
                "engine_way_draws_refused": stats_ms(redrawn),
                "forced_row_share": round(forced_rows / (args.steps * args.rows), 3),
                "bind_vocabulary_s": round(bind_s, 3),
                "compile_schema_ms": round(compile_s * 1000, 2),
                "steps": args.steps,
            }
        )


def way_of_the_engine(
    compiler: Any, rows: list[Any], masked: torch.Tensor, size: int
) -> tuple[tuple[float, int], float]:
    """The grammar's work on one step in the engine's way (``workers.engines.generation.constrained``):
    ``forced()`` on every row, then a check of a token drawn without a mask on the others, allowed (a
    model that writes what the grammar wants: no mask) or refused (a random model: the mask too).
    Returns ((seconds with every draw allowed, forced rows), seconds with every draw refused)."""
    allowed = [np.flatnonzero(torch.isfinite(masked[j]).numpy()) for j in range(len(rows))]
    refused = [int(np.flatnonzero(~torch.isfinite(masked[j]).numpy())[0]) for j in range(len(rows))]
    t0 = time.perf_counter()
    unforced = [j for j, m in enumerate(rows) if not m.forced()]
    t1 = time.perf_counter()
    for j in unforced:
        rows[j].allows(int(allowed[j][0]))
    t2 = time.perf_counter()
    for j in unforced:
        rows[j].allows(refused[j])
    if unforced:
        compiler.fill([(rows[j], j) for j in unforced], bitmask.allocate(len(rows), size))
    t3 = time.perf_counter()
    return (t2 - t0, len(rows) - len(unforced)), (t1 - t0) + (t3 - t2)


# -- 2. throughput through the stack ---------------------------------------------------------------


def bench_throughput(args: argparse.Namespace) -> None:
    """Three kinds of window, alternated: the schema on every request; the same requests without it,
    each cut (``ignore_eos``) at the length of one of the constrained replies, so both runs decode the
    same lengths and leave the batch as unevenly; and without it at the same ``max_tokens``."""
    folder = Path(tempfile.mkdtemp(prefix="bench-structured-"))
    redis = RedisServer(port=free_port(), workdir=folder)
    redis.start()
    source = REPO / "models" / "tiny-chat"
    if args.hidden_size:
        source = widened(source, folder / "widened-chat", args.hidden_size, args.layers)
    models = folder / "models.yaml"
    models.write_text(
        "models:\n"
        f"  - {{name: tiny-chat, kind: chat, source: '{source}', context_length: 2048,"
        " max_batch_size: 16, threads: 1}\n"
    )
    env = {**os.environ, "MODELYARD_REDIS_URL": redis.url, "MODELYARD_MODELS_FILE": str(models)}
    env.update(MODELYARD_LOG_LEVEL="WARNING", HF_HUB_OFFLINE="1")
    worker = WorkerProcess(env, ["tiny-chat"], folder / "worker.log").wait_ready(redis)
    api, api_log = start_api(env, folder / "api.log")
    try:
        base = {
            "model": "tiny-chat",
            "messages": [{"role": "user", "content": "Describe a person as JSON."}],
            "max_tokens": args.max_tokens,
        }
        schema = {"type": "json_schema", "json_schema": {"name": "Person", "schema": strict_schema()}}
        constrained = {**base, "response_format": schema}
        lengths: list[int] = []  # of the constrained replies, in order
        window(api.port, [base], args.concurrency, 3.0)  # warm-up
        results: dict[str, list[dict[str, float]]] = {
            "json_schema": [],
            "free_same_lengths": [],
            "free_same_max": [],
        }
        engine: dict[str, list[dict[str, float]]] = {name: [] for name in results}
        for _ in range(args.rounds):
            before = engine_totals(redis, "tiny-chat")[0]
            results["json_schema"].append(
                window(api.port, [constrained], args.concurrency, args.duration, lengths)
            )
            engine["json_schema"].append(decode_work(before, engine_totals(redis, "tiny-chat")[0]))
            before = engine_totals(redis, "tiny-chat")[0]
            matched = [{**base, "max_tokens": n, "ignore_eos": True} for n in lengths]
            results["free_same_lengths"].append(window(api.port, matched, args.concurrency, args.duration))
            engine["free_same_lengths"].append(decode_work(before, engine_totals(redis, "tiny-chat")[0]))
            results["free_same_max"].append(window(api.port, [base], args.concurrency, args.duration))
            for name, windows in results.items():
                log(f"{name}: {windows[-1]}")
        rate = {
            name: sum(w["tokens"] for w in ws) / sum(w["seconds"] for w in ws) for name, ws in results.items()
        }
        ratio = rate["json_schema"] / rate["free_same_lengths"]
        emit(
            {
                "measurement": f"chat tokens/s at concurrency {args.concurrency}, JSON Schema vs none",
                "unit": "completion tokens/s",
                "json_schema": round(rate["json_schema"], 1),
                "free_same_lengths": round(rate["free_same_lengths"], 1),
                "free_same_max_tokens": round(rate["free_same_max"], 1),
                "ratio": round(ratio, 3),
                "ratio_per_round": [
                    round(a["tokens"] / b["tokens"], 3)
                    for a, b in zip(results["json_schema"], results["free_same_lengths"], strict=True)
                ],
                "ratio_same_max_tokens": round(rate["json_schema"] / rate["free_same_max"], 3),
                "target": ">= 0.8x (same lengths)",
                "pass": ratio >= 0.8,
                "decode_work": {name: w for name, w in engine.items() if w},
                "windows": results,
            }
        )
    finally:
        stop_process(api.proc)
        api_log.close()
        worker.stop()
        redis.stop()


def decode_work(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Tokens per decode step and the share of tokens a grammar forced past a row's first in a step,
    between two reads of the worker's heartbeat counters (approximate: it beats every few seconds)."""
    delta = {n: after.get(n, 0) - before.get(n, 0) for n in ("tokens_generated", "tokens_forced", "steps")}
    if not delta["steps"] or not delta["tokens_generated"]:
        return {}
    return {
        "tokens_per_step": round(delta["tokens_generated"] / delta["steps"], 2),
        "forced_share": round(delta["tokens_forced"] / delta["tokens_generated"], 3),
    }


def widened(source: Path, dest: Path, hidden_size: int, layers: int) -> Path:
    """tiny-chat's tokenizer and chat template on a random Llama of ``hidden_size`` and ``layers``: a
    model whose decode step costs what a bigger model's does, under the same vocabulary and grammar."""
    from transformers import AutoConfig, LlamaForCausalLM

    config = AutoConfig.from_pretrained(source)
    heads = max(hidden_size // 64, 1)
    config.update(
        {
            "hidden_size": hidden_size,
            "intermediate_size": hidden_size * 11 // 4,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": max(heads // 2, 1),
            "head_dim": hidden_size // heads,
        }
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(dest)
    for path in source.iterdir():
        if path.name.startswith(("tokenizer", "chat_template", "generation_config")):
            (dest / path.name).write_bytes(path.read_bytes())
    params = sum(p.numel() for p in LlamaForCausalLM.from_pretrained(dest).parameters())
    log(f"widened model: hidden {hidden_size}, {layers} layers, {params / 1e6:.1f}M parameters")
    return dest


def window(
    port: int,
    bodies: list[dict[str, Any]],
    concurrency: int,
    seconds: float,
    lengths: list[int] | None = None,
) -> dict[str, float]:
    """Requests back to back for ``seconds``, cycling through ``bodies``: completion tokens, requests,
    errors. With ``lengths``, replies are checked against the schema and their lengths kept there."""
    tokens, done, errors = [0], [0], [0]
    sent = itertools.count()

    def value(status: int, reply: bytes) -> float:
        if status != 200:
            raise RuntimeError(f"status {status}: {reply[:200]!r}")
        data = json.loads(reply)
        if lengths is not None:
            for choice in data["choices"]:
                if choice["finish_reason"] == "stop":
                    Person.model_validate_json(choice["message"]["content"])
            lengths.append(data["usage"]["completion_tokens"])
        return data["usage"]["completion_tokens"]

    def record(start: float, end: float, got: float | None, error: str | None) -> None:
        if error is not None:
            errors[0] += 1
            log(error)
        elif end <= t_end:
            tokens[0] += int(got or 0)
            done[0] += 1

    payloads = [post_json("127.0.0.1", port, "/v1/chat/completions", body) for body in bodies]
    began = time.perf_counter()
    t_end = began + seconds
    call = RawCall("127.0.0.1", port, lambda i, n: payloads[next(sent) % len(payloads)], value)
    drive(concurrency, call, t_end, record)
    return {
        "seconds": seconds,
        "tokens": tokens[0],
        "requests": done[0],
        "errors": errors[0],
        "tokens_per_s": round(tokens[0] / seconds, 1),
        "tokens_per_request": round(tokens[0] / max(done[0], 1), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", default="masks,throughput", help="comma-separated subset of masks,throughput"
    )
    parser.add_argument("--rows", type=int, default=16, help="constrained rows per decode step (masks)")
    parser.add_argument("--steps", type=int, default=300, help="decode steps timed per vocabulary (masks)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--duration", type=float, default=12.0, help="seconds per throughput window")
    parser.add_argument("--rounds", type=int, default=3, help="A/B pairs of throughput windows")
    parser.add_argument(
        "--hidden-size",
        type=int,
        default=0,
        help="throughput on a random model of this width with tiny-chat's tokenizer (0: tiny-chat itself)",
    )
    parser.add_argument("--layers", type=int, default=8, help="layers of the --hidden-size model")
    args = parser.parse_args(argv)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    emit(
        {
            "meta": {
                "command": shlex.join([sys.executable, *sys.argv]),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "head": head.stdout.strip(),
                "cpus": os.cpu_count(),
                "load_average": os.getloadavg(),
            }
        }
    )
    parts = set(args.only.split(","))
    if "masks" in parts:
        bench_masks(args)
    if "throughput" in parts:
        bench_throughput(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
