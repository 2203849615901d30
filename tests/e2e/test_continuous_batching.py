"""Continuous batching seen from outside: through the SDK, bin/api and a real bin/worker."""

from tests.e2e.test_worker_lifecycle import PROMPT, SPARE, engine_stats


def test_a_job_that_arrives_mid_decode_joins_the_batch_and_leaves_first(start_worker, sdk, redis_server):
    worker = start_worker(SPARE)  # its own worker: the engine's counters start at zero
    try:
        assert engine_stats(redis_server, worker)["max_running_seen"] == 0
        # Greedy decoding of the tiny model never picks its end token: the long stream runs until closed.
        stream = sdk.chat.completions.create(
            model=SPARE, messages=PROMPT, max_tokens=1800, temperature=0, stream=True
        )
        chunks = iter(stream)
        for _ in range(5):
            next(chunks)  # the long job is decoding now, alone

        short = sdk.chat.completions.create(model=SPARE, messages=PROMPT, max_tokens=8, seed=3)
        assert short.choices[0].finish_reason == "length"
        assert short.usage.completion_tokens == 8

        # The long stream is still going after the short job has finished: the short one left at once.
        assert any(chunk.choices and chunk.choices[0].delta.content for chunk in (next(chunks), next(chunks)))
        stats = engine_stats(redis_server, worker)
        assert stats["max_running_seen"] == 2, "the short job decoded in the same batch as the long one"
        assert stats["running"] == 1 and stats["jobs_done"] == 1
        assert stats["last_batch_size"] == 1
        stream.close()
    finally:
        worker.stop()
