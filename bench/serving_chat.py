"""bench/bench_serving.py, section 2: chat on tiny-chat, tokens/s at concurrency 16 against 1, and the
streamed time to first token against the in-process ``CausalLM`` prefill and first sample (with the
in-process ``GenerationEngine`` for reference)."""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from typing import Any

import requests
from loadgen import CpuMonitor, percentile, run_load  # bench/, the script's folder
from report import emit, log, measurement, rnd
from serving_stack import Stack
from workload import CHAT_MODEL, REQUEST_TIMEOUT_S, chat_messages

from shared.catalog import ModelCatalog


class _NullSink:
    def publish(self, messages) -> None:
        pass


def run(stack: Stack, args: argparse.Namespace, monitor: CpuMonitor) -> None:
    from shared.jobs import ChatMessage, GenerateJob, SamplingParams
    from workers.backends.causal_lm import CausalLM
    from workers.engines import sampling
    from workers.engines.generation import GenerationEngine

    max_tokens = args.max_tokens
    body_extra: dict[str, Any] = {"ignore_eos": True}
    probe = requests.post(
        stack.url + "/v1/chat/completions",
        json={"model": CHAT_MODEL, "messages": chat_messages(0), "max_tokens": max_tokens, **body_extra},
        timeout=REQUEST_TIMEOUT_S,
    )
    ignore_eos_accepted = probe.status_code == 200
    if not ignore_eos_accepted:
        log(f"chat: the API refused ignore_eos ({probe.status_code}); falling back to temperature 0")
        body_extra = {"temperature": 0}
    params = SamplingParams(
        max_tokens=max_tokens, ignore_eos=ignore_eos_accepted, temperature=1.0 if ignore_eos_accepted else 0.0
    )
    mode = {
        "ignore_eos_accepted": ignore_eos_accepted,
        "sampling": body_extra
        if ignore_eos_accepted
        else {**body_extra, "note": "ignore_eos refused by the API"},
        "max_tokens": max_tokens,
        "chat_worker_slots": args.chat_slots,
    }

    def completion_tokens(status: int, body: bytes) -> float:
        if status != 200:
            raise RuntimeError(f"HTTP {status}")
        return float(json.loads(body)["usage"]["completion_tokens"])

    chat_request = stack.call(
        "/v1/chat/completions",
        lambda _thread, k: {
            "model": CHAT_MODEL,
            "messages": chat_messages(k),
            "max_tokens": max_tokens,
            **body_extra,
        },
        completion_tokens,
    )

    def ttft_request(session: requests.Session, _thread: int, k: int) -> float:
        t0 = time.perf_counter()
        first = None
        with session.post(
            stack.url + "/v1/chat/completions",
            json={
                "model": CHAT_MODEL,
                "messages": chat_messages(k),
                "max_tokens": max_tokens,
                "stream": True,
                **body_extra,
            },
            timeout=REQUEST_TIMEOUT_S + 5,
            stream=True,
        ) as r:
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}")
            for line in r.iter_lines(chunk_size=None):
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                if first is None:
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        raise RuntimeError(chunk["error"].get("code"))
                    if any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                        first = time.perf_counter() - t0
        if first is None:
            raise RuntimeError("no content in the stream")
        return first * 1000

    log("chat: modelyard at concurrency 1")
    chat_counters = stack.counters(CHAT_MODEL)
    c1 = run_load(1, args.warmup, args.duration, chat_request, monitor, chat_counters)
    log(f"chat: modelyard c1 {c1.value_rate():.1f} tokens/s; concurrency {args.chat_concurrency}")
    c16 = run_load(args.chat_concurrency, args.warmup, args.duration, chat_request, monitor, chat_counters)
    log(f"chat: modelyard c{args.chat_concurrency} {c16.value_rate():.1f} tokens/s; streaming TTFT")
    stream = run_load(1, args.warmup, args.latency_duration, ttft_request, monitor, chat_counters)

    # In-process: the project's CausalLM, prefill + first sample (what the engine does for a newcomer).
    spec = ModelCatalog.load(stack.models_file).resolve(CHAT_MODEL)
    assert spec is not None
    log("chat: loading the in-process CausalLM")
    lm = CausalLM.load(spec)
    first_texts: list[str] = []

    def first_token(_session, _thread, k):
        prompt = lm.chat_prompt([ChatMessage(**m) for m in chat_messages(k)])
        logits, _batch = lm.prefill([prompt])
        sampler = sampling.SequenceSampler(params, prompt, None)
        token = sampling.sample(sampling.process(logits, [sampler]), [sampler])[0]
        if len(first_texts) < 200:
            first_texts.append(lm.decode([token]))
        return None

    ttft_in = run_load(1, min(1.0, args.warmup), args.latency_duration, first_token, monitor)
    base_ttft = percentile(ttft_in.latencies_ms(), 0.5) or 0.0
    my_ttft = percentile(stream.values(), 0.5) or 0.0

    # In-process reference: the project's GenerationEngine, continuous batching, no Redis, no HTTP.
    engine = GenerationEngine(lm, spec.model_copy(update={"max_batch_size": args.chat_slots}), _NullSink())
    engine.start()

    def engine_request(_session, _thread, k):
        job = GenerateJob(
            job_id=uuid.uuid4().hex,
            model=CHAT_MODEL,
            reply_to="bench",
            deadline=time.time() + REQUEST_TIMEOUT_S,
            messages=[ChatMessage(**m) for m in chat_messages(k)],
            sampling=params,
        )
        ticket = engine.submit(job, threading.Event())
        if not ticket.wait(REQUEST_TIMEOUT_S):
            raise TimeoutError("in-process engine")
        return float(ticket.outcome().usage.completion_tokens)

    try:
        log("chat: in-process GenerationEngine at 1 and at the same concurrency")
        counters = lambda: engine.stats().model_dump()  # noqa: E731 - the run reads a dict of counters
        e1 = run_load(1, min(1.0, args.warmup), args.engine_duration, engine_request, monitor, counters)
        e16 = run_load(
            args.chat_concurrency,
            min(1.0, args.warmup),
            args.engine_duration,
            engine_request,
            monitor,
            counters,
        )
    finally:
        engine.stop()
    engine_stats = counters()

    tokens_c1 = c1.value_rate()
    tokens_c16 = c16.value_rate()
    completion = c1.values() + c16.values()
    emit(
        measurement(
            "chat_throughput_scaling",
            "generated tokens/s",
            tokens_c1,
            "modelyard, POST /v1/chat/completions (not streamed), concurrency 1",
            tokens_c16,
            f"modelyard, same request, concurrency {args.chat_concurrency}",
            "ratio >= 4",
            tokens_c16 >= 4 * tokens_c1,
            {
                **mode,
                "mean_completion_tokens": rnd(sum(completion) / len(completion)) if completion else None,
                "modelyard_c1": c1.summary(),
                f"modelyard_c{args.chat_concurrency}": c16.summary(),
                "inprocess_engine_tokens_per_s": {
                    "c1": rnd(e1.value_rate()),
                    f"c{args.chat_concurrency}": rnd(e16.value_rate()),
                    "ratio": rnd(e16.value_rate() / e1.value_rate(), 3) if e1.value_rate() else None,
                },
            },
        )
    )
    emit(
        measurement(
            "chat_ttft_p50",
            "ms",
            base_ttft,
            "in-process CausalLM: chat template + tokenize + prefill + first sample, p50",
            my_ttft,
            "modelyard, streamed chat, concurrency 1: request sent to first content chunk, p50",
            "modelyard - baseline <= 10 ms",
            my_ttft - base_ttft <= 10.0,
            {
                **mode,
                "inprocess": ttft_in.summary(),
                "modelyard": stream.summary(),
                "modelyard_ttft_ms": {
                    "p50": rnd(my_ttft),
                    "p90": rnd(percentile(stream.values(), 0.9)),
                    "mean": rnd(sum(stream.values()) / len(stream.values())) if stream.values() else None,
                },
                "inprocess_first_tokens_with_text": sum(1 for t in first_texts if t and "\ufffd" not in t),
                "inprocess_first_tokens_sampled": len(first_texts),
            },
        )
    )
    emit(
        measurement(
            "chat_throughput_vs_inprocess",
            "generated tokens/s",
            e16.value_rate(),
            "in-process GenerationEngine (continuous batching, no Redis/HTTP), "
            f"concurrency {args.chat_concurrency}",
            tokens_c16,
            f"modelyard, concurrency {args.chat_concurrency}",
            "none (reference)",
            None,
            {
                "inprocess_engine_c1": e1.summary(),
                f"inprocess_engine_c{args.chat_concurrency}": e16.summary(),
                "inprocess_engine_stats": engine_stats,
                "chat_worker_slots": args.chat_slots,
            },
        )
    )
