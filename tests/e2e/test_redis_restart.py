"""Redis dies and comes back under a running stack: clear errors meanwhile, then service again.

Redis comes back empty or from a snapshot (``SAVE`` before it stops, as ``bin/up``'s
``--save 60 1000`` does now and then): a snapshot brings back queued jobs whose clients were
answered meanwhile, started jobs, and workers' heartbeat keys that may be stale.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import requests
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FinishedJobRegistry
from rq.serializers import JSONSerializer

from harness import (
    ApiServer,
    RedisServer,
    WorkerProcess,
    free_port,
    live_workers,
    start_api,
    stop_process,
    wait_until,
)
from shared import keys
from shared.events import ErrorEvent, decode_event
from shared.jobs import ChatMessage, GenerateJob, SamplingParams
from tests.settings import LONG_TOKENS, SPARE

PROMPT = [{"role": "user", "content": "hello"}]

#: Longer than the suite's: a beat every 3 s makes "re-registers at once" measurable, and a key
#: deleted by a test stays missing long enough for a janitor sweep (every second) to see it.
HEARTBEAT_TTL = 9


@dataclass
class Stack:
    redis: RedisServer
    api: ApiServer
    api_log: Path
    worker: WorkerProcess

    def sdk(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.api.url + "/v1", api_key="x", max_retries=0, timeout=60)

    def restart_redis(self, *, from_snapshot: bool) -> float:
        """Stop Redis and start it again, empty or from its last ``SAVE``; when it was started."""
        self.redis.stop()
        if not from_snapshot:
            (self.redis.workdir / "dump.rdb").unlink(missing_ok=True)
        started = time.time()
        self.redis.start()
        return started

    def status(self) -> dict | None:
        return self.worker.status(self.redis)

    def fresh_status(self, since: float) -> dict:
        """The worker's status from a beat after ``since`` (epoch seconds)."""
        found: dict = {}

        def beat() -> bool:
            found["status"] = self.status()
            return found["status"] is not None and found["status"]["beat_at"] > since

        wait_until(beat, 2 * HEARTBEAT_TTL, "a fresh heartbeat", interval=0.1)
        return found["status"]

    def idle_engine_jobs_ended(self, model: str, since: float) -> int:
        """Jobs the worker's engine for ``model`` has ended, once it has nothing in hand, at beats
        after ``since``."""
        found: dict = {}

        def idle() -> bool:
            found["ended"], active = self.engine_jobs_ended(model, since)
            return active == 0

        wait_until(idle, 30, f"the {model} engine to be idle", interval=0.5)
        return found["ended"]

    def engine_jobs_ended(self, model: str, since: float) -> tuple[int, int]:
        """Jobs the worker's engine for ``model`` has ended (however) and has in hand, at a beat
        after ``since``."""
        stats = self.fresh_status(since)["engines"][model]
        ended = sum(stats[k] for k in ("jobs_done", "jobs_failed", "jobs_cancelled", "jobs_expired"))
        return ended, stats["active"]

    def skipped(self, model: str, reason: str) -> int:
        return int(self.redis.client().hget(keys.skipped_jobs_key(), f"{model}:{reason}") or 0)


@pytest.fixture(scope="module")
def stack(base_env, start_worker, tmp_path_factory):
    """A Redis of its own (so restarting it leaves the other tests alone), a worker and an API."""
    workdir = tmp_path_factory.mktemp("restarted-redis")
    redis_server = RedisServer(port=free_port(), workdir=workdir)
    redis_server.start()
    env = {**base_env, "MODELYARD_REDIS_URL": redis_server.url, "MODELYARD_HEARTBEAT_TTL": str(HEARTBEAT_TTL)}
    worker = start_worker(SPARE, "minilm", "tiny-reranker", env=env, wait=False).wait_ready(redis_server)
    api, log = start_api(env, workdir / "api.log")
    yield Stack(redis=redis_server, api=api, api_log=workdir / "api.log", worker=worker)
    stop_process(api.proc)
    log.close()
    worker.stop()
    redis_server.stop()


@pytest.fixture
def healthy(stack):
    """The stack serves before the test (a test before may have left it restarting)."""
    wait_until(lambda: live_workers(stack.redis, SPARE) > 0, 30, "the worker to be registered")
    return stack


class Stream:
    """A long streamed chat in a thread of its own; ``outcome`` is "completed" or the exception."""

    def __init__(self, sdk: openai.OpenAI, max_tokens: int = LONG_TOKENS) -> None:
        self.outcome: object = None
        self.chunks = 0
        self.started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(sdk, max_tokens))
        self._thread.start()

    def _run(self, sdk: openai.OpenAI, max_tokens: int) -> None:
        try:
            for _ in sdk.chat.completions.create(
                model=SPARE,
                messages=PROMPT,
                max_tokens=max_tokens,
                temperature=0,
                stream=True,
                extra_body={"ignore_eos": True},
            ):
                self.chunks += 1
                self.started.set()
            self.outcome = "completed"
        except Exception as exc:  # noqa: BLE001 - the outcome is asserted by the test
            self.outcome = exc

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "a stream hung"


def log_since(path: Path, offset: int) -> str:
    return path.read_text(errors="replace")[offset:]


def log_size(path: Path) -> int:
    return len(path.read_text(errors="replace"))


def test_api_and_workers_survive_a_redis_restart(healthy):
    stack = healthy
    sdk = stack.sdk()
    assert sdk.chat.completions.create(model=SPARE, messages=PROMPT, max_tokens=4).choices

    # A long stream is in flight when Redis goes away: it must end, not hang.
    stream = Stream(sdk)
    assert stream.started.wait(10)
    stack.redis.stop()

    stream.join(30)
    assert isinstance(stream.outcome, openai.APIError | openai.APIConnectionError), stream.outcome
    health = requests.get(stack.api.url + "/health", timeout=5)
    assert health.status_code == 503 and health.json()["redis"] == "down"
    assert requests.get(stack.api.url + "/health/live", timeout=5).status_code == 200
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.chat.completions.create(model=SPARE, messages=PROMPT, max_tokens=4)
    assert caught.value.status_code == 503

    # Same port, empty: workers must re-register by themselves, at once (not at their next beat).
    (stack.redis.workdir / "dump.rdb").unlink(missing_ok=True)
    started = time.monotonic()
    stack.redis.start()
    wait_until(lambda: stack.status() is not None, 10, "the worker to register again", interval=0.02)
    assert time.monotonic() - started < HEARTBEAT_TTL / 3 / 2, "the worker waited for its next beat"

    def serves() -> bool:
        try:
            return bool(sdk.chat.completions.create(model=SPARE, messages=PROMPT, max_tokens=4).choices)
        except openai.APIError:
            return False

    wait_until(serves, 30, "requests to succeed again", interval=0.5)
    assert requests.get(stack.api.url + "/health", timeout=5).json()["redis"] == "up"
    assert stack.worker.proc.poll() is None


@pytest.mark.parametrize("first_back", ["worker", "api"])
def test_jobs_answered_while_redis_was_down_never_run_from_its_snapshot(healthy, first_back):
    """Clients wait in the queue, Redis dies (they get 503), Redis comes back from a snapshot that
    holds their jobs: no worker may run them, whether a worker takes them off the queue before the
    API process is back (it is held stopped meanwhile) or the API cancels them first."""
    stack = healthy
    sdk = stack.sdk()
    client = stack.redis.client()
    worker_log = log_size(stack.worker.log_path)

    busy = [Stream(sdk), Stream(sdk)]  # both slots of the model
    wait_until(lambda: all(stream.chunks > 2 for stream in busy), 30, "both streams to run")
    streaming = time.time()
    answers: list[requests.Response | Exception] = []

    def ask() -> None:
        try:
            answers.append(
                requests.post(
                    stack.api.url + "/v1/chat/completions",
                    json={"model": SPARE, "messages": PROMPT, "max_tokens": 64},
                    timeout=60,
                )
            )
        except requests.RequestException as exc:
            answers.append(exc)

    waiting = [threading.Thread(target=ask) for _ in range(3)]
    for thread in waiting:
        thread.start()
    queue_key = keys.rq_queue_key(SPARE)
    wait_until(lambda: client.llen(queue_key) == 3, 20, "three jobs queued behind the busy slots")
    queued = [job_id.decode() for job_id in client.lrange(queue_key, 0, -1)]
    skipped_before = stack.skipped(SPARE, "unawaited")
    ended_before, active = stack.engine_jobs_ended(SPARE, since=streaming)
    assert active == 2 and client.llen(queue_key) == 3
    client.save()  # the snapshot holds the three queued jobs (and the two started ones)

    stack.redis.stop()
    for thread in waiting:
        thread.join(30)
        assert not thread.is_alive(), "a waiting request hung"
    assert [a.status_code for a in answers if isinstance(a, requests.Response)] == [503, 503, 503], answers
    assert all(a.json()["error"]["code"] == "redis_unavailable" for a in answers)
    for stream in busy:
        stream.join(30)

    api_processes = gunicorn_workers(stack.api)
    if first_back == "worker":
        for pid in api_processes:
            os.kill(pid, signal.SIGSTOP)
    try:
        stack.restart_redis(from_snapshot=True)
        assert set(queued) <= {job.id for job in _reloaded(stack, queued)}, "the snapshot lost the jobs"

        def settled() -> bool:
            jobs = _reloaded(stack, queued)
            return len(jobs) == 3 and all(
                job.get_status() in (JobStatus.FAILED, JobStatus.CANCELED) for job in jobs
            )

        wait_until(settled, 30, "the reloaded jobs to be refused")
        if first_back == "worker":
            # Only the workers could have stopped them: they saw nobody subscribed to their channel.
            assert stack.skipped(SPARE, "unawaited") == skipped_before + 3
    finally:
        for pid in api_processes:
            os.kill(pid, signal.SIGCONT)
    settled_at = time.time()
    assert client.llen(queue_key) == 0

    # From the worker's side: its engine never saw them, rq never finished them, its log says why.
    assert stack.idle_engine_jobs_ended(SPARE, since=settled_at) == ended_before + 2  # the two streams
    finished = FinishedJobRegistry(keys.queue_name(SPARE), connection=client, serializer=JSONSerializer)
    assert not set(queued) & set(finished.get_job_ids(cleanup=False))
    log = log_since(stack.worker.log_path, worker_log)
    for job_id in queued:
        assert f"job {job_id} ({SPARE}) done" not in log
        if first_back == "worker":
            assert f"job {job_id} ({SPARE}) skipped, unawaited" in log, log


def gunicorn_workers(api: ApiServer) -> list[int]:
    """The API's serving processes: gunicorn's children (the app runs there, not in its master)."""
    children = Path(f"/proc/{api.proc.pid}/task/{api.proc.pid}/children").read_text().split()
    assert children, "gunicorn has no worker process"
    return [int(pid) for pid in children]


def _reloaded(stack: Stack, job_ids: list[str]) -> list[Job]:
    """The jobs Redis loaded back (a worker may have taken some off the queue already)."""
    jobs = Job.fetch_many(job_ids, connection=stack.redis.client(), serializer=JSONSerializer)
    return [job for job in jobs if job is not None]


def test_a_job_past_its_deadline_never_starts(healthy):
    """A job that reaches a worker after its deadline (it waited too long, or its API host's clock
    runs ahead) is refused, though its API process still listens and nobody cancelled it."""
    stack = healthy
    client = stack.redis.client()
    worker_log = log_size(stack.worker.log_path)
    channel = keys.reply_channel("test-" + uuid.uuid4().hex, 0)
    listener = client.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(channel)
    expired_before = stack.skipped(SPARE, "expired")
    ended_before, _ = stack.engine_jobs_ended(SPARE, since=time.time())

    job = GenerateJob(
        job_id=uuid.uuid4().hex,
        model=SPARE,
        reply_to=channel,
        deadline=time.time() - 1,
        messages=[ChatMessage(role="user", content="hello")],
        sampling=SamplingParams(max_tokens=4),
    )
    Queue(keys.queue_name(SPARE), connection=client, serializer=JSONSerializer).enqueue(
        keys.JOB_FUNCTION, payload=job.model_dump(mode="json"), job_id=job.job_id, result_ttl=60
    )
    message = None
    deadline = time.monotonic() + 30
    while message is None and time.monotonic() < deadline:
        message = listener.get_message(timeout=1.0)
    listener.close()
    assert message is not None, "the worker never answered"
    event = decode_event(message["data"])
    assert isinstance(event, ErrorEvent) and event.code == "deadline_exceeded"
    assert stack.skipped(SPARE, "expired") == expired_before + 1
    skip_line = f"job {job.job_id} ({SPARE}) skipped, expired"
    wait_until(lambda: skip_line in log_since(stack.worker.log_path, worker_log), 10, "the skip in its log")
    assert stack.engine_jobs_ended(SPARE, since=time.time()) == (ended_before, 0)


def test_a_worker_started_while_redis_is_down_waits_for_it(healthy, start_worker, base_env):
    """compose starts Redis and the workers at once, and a chaos run restarted Redis while a
    worker loaded its model: the worker's first beat found no Redis and the process died. It
    waits for Redis instead, then registers."""
    stack = healthy
    env = {**base_env, "MODELYARD_REDIS_URL": stack.redis.url, "MODELYARD_HEARTBEAT_TTL": str(HEARTBEAT_TTL)}
    stack.redis.stop()
    try:
        worker = start_worker(SPARE, env=env, wait=False)
        wait_until(
            lambda: "waiting for it before taking jobs" in worker.log() or worker.proc.poll() is not None,
            120,
            "the worker to find Redis down",
            interval=0.2,
        )
    finally:
        stack.redis.start()
    try:
        worker.wait_ready(stack.redis)
        assert "Redis answers: worker" in worker.log()
    finally:
        worker.stop()


def test_a_job_the_worker_cannot_read_is_answered_400(healthy):
    """A producer other than the API (or an older one) enqueues a payload the wire types refuse:
    its listener gets a 400 with the reason at once, instead of waiting until its deadline."""
    client = healthy.redis.client()
    channel = keys.reply_channel("test-" + uuid.uuid4().hex, 0)
    listener = client.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(channel)
    job = GenerateJob(
        job_id=uuid.uuid4().hex,
        model=SPARE,
        reply_to=channel,
        deadline=time.time() + 60,
        messages=[ChatMessage(role="user", content="hello")],
        sampling=SamplingParams(max_tokens=4),
    )
    payload = job.model_dump(mode="json")
    payload["sampling"]["temperature"] = -3
    Queue(keys.queue_name(SPARE), connection=client, serializer=JSONSerializer).enqueue(
        keys.JOB_FUNCTION, payload=payload, job_id=job.job_id, result_ttl=60
    )
    message = None
    deadline = time.monotonic() + 30
    while message is None and time.monotonic() < deadline:
        message = listener.get_message(timeout=1.0)
    listener.close()
    assert message is not None, "the worker never answered"
    event = decode_event(message["data"])
    assert isinstance(event, ErrorEvent) and event.status == 400, event
    assert event.job_id == job.job_id and "temperature" in event.message


def test_the_janitor_spares_live_workers_that_have_no_key_yet_after_a_restart(healthy):
    """After a restart, live workers have no heartbeat key until they beat again: the janitor must
    not fail their jobs meanwhile (a stream got worker_lost; embedding and rerank jobs were
    requeued and ran twice). The test holds that window open by deleting the worker's key right
    after it re-registered, as a slower beat would have left it missing."""
    stack = healthy
    sdk = stack.sdk()
    api_log = log_size(stack.api_log)
    worker_log = log_size(stack.worker.log_path)
    client = stack.redis.client()
    client.save()

    back = stack.restart_redis(from_snapshot=True)
    wait_until(lambda: (stack.status() or {}).get("beat_at", 0) >= back, 10, "the worker to beat again")
    assert client.delete(keys.worker_key(stack.status()["id"])) == 1
    assert live_workers(stack.redis, SPARE) == 1  # the model's set still counts it: admission passes

    stream = Stream(sdk, max_tokens=400)
    outcomes: list[object] = []

    def pooling() -> None:
        for i in range(12):
            try:
                sdk.embeddings.create(model="minilm", input=[f"text {i}", "another text"])
                requests.post(
                    stack.api.url + "/v1/rerank",
                    json={"model": "tiny-reranker", "query": f"q{i}", "documents": ["a", "b", "c"]},
                    timeout=30,
                ).raise_for_status()
                outcomes.append("ok")
            except Exception as exc:  # noqa: BLE001 - asserted below
                outcomes.append(exc)

    threads = [threading.Thread(target=pooling) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    stream.join(60)

    assert stream.outcome == "completed", stream.outcome
    assert outcomes == ["ok"] * 24, outcomes
    api = log_since(stack.api_log, api_log)
    assert "lost its worker" not in api and "requeued job" not in api, api
    done = re.findall(
        r"job (\w+) \((?:minilm|tiny-reranker)\) done", log_since(stack.worker.log_path, worker_log)
    )
    assert done and len(done) == len(set(done)), "a job ran twice"


def test_a_job_a_snapshot_brings_back_as_started_is_failed_once_its_worker_beats_without_it(healthy):
    """A snapshot taken while a job ran brings it back in rq's started registry after it finished.
    Its worker is alive, so its key alone would keep it "started" until rq's lease ran out (minutes);
    the worker's beats list the jobs it runs, and the janitor fails one they leave out."""
    stack = healthy
    client = stack.redis.client()
    started = Queue(keys.queue_name(SPARE), connection=client, serializer=JSONSerializer).started_job_registry
    before = set(started.get_job_ids(cleanup=False))  # an earlier test's may linger
    stream = Stream(stack.sdk(), max_tokens=60)
    assert stream.started.wait(10)
    (job_id,) = set(started.get_job_ids(cleanup=False)) - before
    client.save()  # the job is started in the snapshot
    stream.join(60)
    assert stream.outcome == "completed", stream.outcome

    back = stack.restart_redis(from_snapshot=True)
    registry = Queue(
        keys.queue_name(SPARE), connection=client, serializer=JSONSerializer
    ).started_job_registry
    assert job_id in registry.get_job_ids(cleanup=False)
    wait_until(
        lambda: job_id not in registry.get_job_ids(cleanup=False),
        3 * HEARTBEAT_TTL,
        "the janitor to fail the stale started job",
    )
    assert time.time() - back >= HEARTBEAT_TTL - 1  # not before live workers had a TTL to beat
    assert Job.fetch(job_id, connection=client, serializer=JSONSerializer).get_status() == JobStatus.FAILED


def test_a_started_job_that_names_no_worker_is_failed_once_no_worker_ran_it_for_a_ttl(healthy):
    """rq lists a job as started in one write and the slot records its worker in the next; a
    failover between the two leaves, on the new primary, a started job that names no worker and
    that no worker runs. The janitor fails it once no live worker's beat has listed it for a TTL."""
    client = healthy.redis.client()
    name = keys.queue_name(SPARE)
    job = Job.create(keys.JOB_FUNCTION, connection=client, serializer=JSONSerializer, origin=name)
    job.save()
    registry = Queue(name, connection=client, serializer=JSONSerializer).started_job_registry
    client.zadd(registry.key, {f"{job.id}:cut-off": time.time() + 600})  # rq's lease: ten minutes
    seen_at = time.monotonic()
    wait_until(
        lambda: job.id not in registry.get_job_ids(cleanup=False),
        3 * HEARTBEAT_TTL,
        "the janitor to fail the started job nobody runs",
    )
    assert time.monotonic() - seen_at >= HEARTBEAT_TTL - 1  # it gave the worker a TTL to list it
    assert f"job {job.id} lost its worker (not recorded)" in log_since(healthy.api_log, 0)
