"""A fleet on a Redis nobody can take over: an ACL user over TLS for the worker, the API and
rq-dashboard; rq-dashboard asks for a login beyond loopback and changes nothing on a GET."""

import subprocess
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from harness import REPO, RedisServer, WorkerProcess, free_port, start_api, stop_process, wait_until
from harness.tls import make_tls_files
from shared import keys

ACL = ("--user", "default", "off", "--user", "fleet", "on", ">fleet-pw", "~*", "&*", "+@all")
LOGIN = ("ops", "dash-pw")


@pytest.fixture(scope="module")
def secure_redis(tmp_path_factory) -> Iterator[RedisServer]:
    work = tmp_path_factory.mktemp("secure-redis")
    server = RedisServer(
        port=free_port(), workdir=work, args=ACL, userinfo="fleet:fleet-pw", tls=make_tls_files(work / "tls")
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def secure_env(base_env, secure_redis) -> dict[str, str]:
    assert secure_redis.url.startswith("rediss://fleet:fleet-pw@")
    return {**base_env, "MODELYARD_REDIS_URL": secure_redis.url}


@pytest.fixture(scope="module")
def secure_stack(secure_env, secure_redis, tmp_path_factory) -> Iterator[str]:
    logs = tmp_path_factory.mktemp("secure-logs")
    worker = WorkerProcess(secure_env, ["tiny-chat"], logs / "worker.log").wait_ready(secure_redis)
    api, log = start_api(secure_env, logs / "api.log")
    yield api.url
    stop_process(api.proc)
    log.close()
    worker.stop()


def _start_dashboard(env: dict[str, str], bind: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    argv = [str(REPO / "bin" / "dashboard"), "--json", "--bind", bind, "--port", str(port)]
    proc = subprocess.Popen(argv, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    return proc, f"http://127.0.0.1:{port}"


def test_worker_and_api_serve_through_an_acl_user_over_tls(secure_stack, secure_redis):
    sdk = openai.OpenAI(base_url=secure_stack + "/v1", api_key="unused", max_retries=0, timeout=60)
    # ignore_eos: the random-weight model may end a reply early, and this test wants a fixed length.
    request = dict(
        model="tiny-chat",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        extra_body={"ignore_eos": True},
    )
    reply = sdk.chat.completions.create(**request)
    assert reply.choices[0].finish_reason == "length"
    chunks = list(sdk.chat.completions.create(**request, stream=True))
    assert chunks[-1].choices[0].finish_reason == "length"
    # The job is in this Redis, the one only the ACL user over TLS can reach.
    client = secure_redis.client()
    assert client.acl_whoami() == "fleet"
    assert client.exists(f"rq:job:{reply.id.removeprefix('chatcmpl-')}")
    assert "modelyard-api-replies" in {c["name"] for c in client.client_list()}


def test_dashboard_beyond_loopback_requires_a_login(secure_env, secure_stack, tmp_path):
    env = {k: v for k, v in secure_env.items() if not k.startswith(("MODELYARD_DASHBOARD", "RQ_DASHBOARD"))}
    refused = subprocess.run(
        [str(REPO / "bin" / "dashboard"), "--json", "--bind", "0.0.0.0", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "refusing to listen on 0.0.0.0 without a login" in refused.stderr

    env.update(MODELYARD_DASHBOARD_USERNAME=LOGIN[0], MODELYARD_DASHBOARD_PASSWORD=LOGIN[1])
    proc, url = _start_dashboard(env, "0.0.0.0", tmp_path / "dashboard.log")
    try:

        def answers() -> bool:
            if proc.poll() is not None:
                raise RuntimeError((tmp_path / "dashboard.log").read_text())
            try:
                return requests.get(url + "/0/data/queues.json", timeout=1).status_code == 401
            except requests.RequestException:
                return False

        wait_until(answers, 30, "rq-dashboard", interval=0.2)
        assert requests.get(url + "/0/view/queues", timeout=5).status_code == 401
        assert requests.get(url + "/0/data/queues.json", auth=("ops", "wrong"), timeout=5).status_code == 401
        # Its Redis is the fleet's, through the ACL user over TLS: it lists the fleet's slots.
        workers = requests.get(url + "/0/data/workers.json", auth=LOGIN, timeout=5).json()["workers"]
        assert sum(".tiny-chat." in w["name"] for w in workers) == 4
        assert requests.get(url + "/0/view/workers", auth=LOGIN, timeout=5).status_code == 200

        # State changes: never a GET (a link or an <img> on any page could fire it), never a POST
        # without the header the dashboard's own script sends (a cross-site form cannot).
        requeue = url + "/requeue/" + keys.queue_name("tiny-chat")
        assert requests.get(requeue, auth=LOGIN, timeout=5).status_code == 405
        assert requests.post(requeue, auth=LOGIN, timeout=5).status_code == 403
        assert requests.post(url + "/job/nope/delete", auth=LOGIN, timeout=5).status_code == 403
        assert requests.get(url + "/job/nope/delete", auth=LOGIN, timeout=5).status_code == 405
        own = requests.post(requeue, auth=LOGIN, headers={"X-Requested-With": "XMLHttpRequest"}, timeout=5)
        assert own.status_code == 200 and own.json()["status"] == "OK"
        anonymous = requests.post(requeue, headers={"X-Requested-With": "XMLHttpRequest"}, timeout=5)
        assert anonymous.status_code == 401
    finally:
        stop_process(proc)
