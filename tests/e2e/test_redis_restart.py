"""Redis dies and comes back under a running stack: clear errors meanwhile, then service again."""

import threading

import openai
import pytest
import requests

from tests.support import RedisServer, free_port, start_api, stop_process, wait_until

SPARE = "tiny-chat-spare"
PROMPT = [{"role": "user", "content": "hello"}]


@pytest.fixture
def private_stack(base_env, start_worker, tmp_path):
    """A Redis of its own (so restarting it leaves the other tests alone), a worker and an API."""
    redis_server = RedisServer(port=free_port(), workdir=tmp_path)
    redis_server.start()
    env = {**base_env, "MODELYARD_REDIS_URL": redis_server.url}
    worker = start_worker(SPARE, env=env, wait=False).wait_ready(redis_server)
    api, log = start_api(env, tmp_path / "api.log")
    yield redis_server, api, worker
    stop_process(api.proc)
    log.close()
    worker.stop()
    redis_server.stop()


def test_api_and_workers_survive_a_redis_restart(private_stack):
    redis_server, api, worker = private_stack
    sdk = openai.OpenAI(base_url=api.url + "/v1", api_key="x", max_retries=0, timeout=30)
    assert sdk.chat.completions.create(model=SPARE, messages=PROMPT, max_tokens=4).choices

    # A long stream is in flight when Redis goes away: it must end, not hang.
    outcome: dict = {}
    streaming = threading.Event()

    def stream() -> None:
        try:
            for _ in sdk.chat.completions.create(
                model=SPARE, messages=PROMPT, max_tokens=1800, temperature=0, stream=True
            ):
                streaming.set()
            outcome["ended"] = "completed"
        except Exception as exc:  # noqa: BLE001 - the outcome is asserted below
            outcome["ended"] = exc

    streamer = threading.Thread(target=stream)
    streamer.start()
    assert streaming.wait(10)
    redis_server.stop()

    streamer.join(30)
    assert not streamer.is_alive(), "a stream hung after Redis died"
    assert isinstance(outcome["ended"], openai.APIError | openai.APIConnectionError), outcome
    health = requests.get(api.url + "/health", timeout=5)
    assert health.status_code == 503 and health.json()["redis"] == "down"
    assert requests.get(api.url + "/health/live", timeout=5).status_code == 200
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.chat.completions.create(model=SPARE, messages=PROMPT, max_tokens=4)
    assert caught.value.status_code == 503

    redis_server.start()  # same port, empty: workers must re-register by themselves

    def serves() -> bool:
        try:
            return bool(sdk.chat.completions.create(model=SPARE, messages=PROMPT, max_tokens=4).choices)
        except openai.APIError:
            return False

    wait_until(serves, 30, "requests to succeed again", interval=0.5)
    assert requests.get(api.url + "/health", timeout=5).json()["redis"] == "up"
    assert worker.proc.poll() is None
