"""SIGTERM to bin/api: it stops accepting, but the streams it has open run to their end."""

import signal

import openai

from harness import start_api
from tests.settings import SPARE


def test_sigterm_to_the_api_finishes_open_streams(base_env, start_worker, tmp_path):
    worker = start_worker(SPARE)
    api, log = start_api(base_env, tmp_path / "api.log")
    try:
        sdk = openai.OpenAI(base_url=api.url + "/v1", api_key="x", max_retries=0, timeout=60)
        stream = sdk.chat.completions.create(
            model=SPARE,
            messages=[{"role": "user", "content": "go"}],
            max_tokens=800,
            temperature=0,
            stream=True,
        )
        chunks = iter(stream)
        next(chunks)
        api.proc.send_signal(signal.SIGTERM)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finish == ["length"]
        assert api.proc.wait(30) == 0
    finally:
        if api.proc.poll() is None:
            api.proc.kill()
        log.close()
        worker.stop()
