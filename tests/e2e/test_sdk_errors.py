"""Authentication, size limits and deadlines, seen through the SDK's exception types."""

import time

import openai
import pytest
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from harness import start_api, stop_process, wait_until
from shared import keys
from tests.settings import LONG_TOKENS, SPARE


@pytest.fixture(scope="module")
def strict_api(base_env, fleet, tmp_path_factory):
    """A second API with keys, a 1 s deadline and a 4 kB body limit, in front of the same Redis."""
    env = {
        **base_env,
        "MODELYARD_API_KEYS": "key-one,key-two",
        "MODELYARD_REQUEST_TIMEOUT": "1",
        "MODELYARD_MAX_BODY_BYTES": "4096",
    }
    server, log = start_api(env, tmp_path_factory.mktemp("strict-api") / "api.log")
    yield server
    stop_process(server.proc)
    log.close()


def client(server, key):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=30)


def test_missing_or_wrong_key_is_401(strict_api):
    with pytest.raises(openai.AuthenticationError) as caught:
        client(strict_api, "wrong").models.list()
    assert caught.value.code == "invalid_api_key"
    assert {m.id for m in client(strict_api, "key-two").models.list()} >= {"tiny-chat"}


def test_body_over_the_limit_is_413(strict_api):
    with pytest.raises(openai.APIStatusError) as caught:
        client(strict_api, "key-one").embeddings.create(model="minilm", input=["x" * 5000])
    assert caught.value.status_code == 413
    assert caught.value.code == "request_too_large"


def test_deadline_is_504_and_the_job_is_stopped(strict_api, start_worker, redis_server):
    worker = start_worker(SPARE)
    try:
        sdk = client(strict_api, "key-one")
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as caught:
            sdk.chat.completions.create(
                model=SPARE,
                messages=[{"role": "user", "content": "go"}],
                max_tokens=LONG_TOKENS,
                temperature=0,
            )
        assert caught.value.status_code == 504 and caught.value.code == "deadline_exceeded"
        assert time.monotonic() - started < 3
        # Streaming: the first tokens arrive, then an error frame ends the stream at the deadline.
        with pytest.raises(openai.APIError) as streamed:
            for _ in sdk.chat.completions.create(
                model=SPARE,
                messages=[{"role": "user", "content": "go"}],
                max_tokens=LONG_TOKENS,
                temperature=0,
                stream=True,
            ):
                pass
        assert "deadline" in str(streamed.value)
        # Both jobs were stopped on the worker, not left running.
        redis = redis_server.client()
        started = StartedJobRegistry(keys.queue_name(SPARE), connection=redis, serializer=JSONSerializer)
        wait_until(lambda: not started.get_job_ids(cleanup=False), 5, "the jobs to stop")
        # Stopped by the API's cancel (STOPPED) or by the engine's own deadline check (FAILED).
        ended = FailedJobRegistry(
            keys.queue_name(SPARE), connection=redis, serializer=JSONSerializer
        ).get_job_ids(cleanup=False)
        assert len(ended) >= 2
        assert {Job.fetch(i, connection=redis, serializer=JSONSerializer).get_status() for i in ended} <= {
            JobStatus.STOPPED,
            JobStatus.FAILED,
        }
    finally:
        worker.stop()
