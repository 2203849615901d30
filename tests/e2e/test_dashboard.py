"""rq-dashboard as bin/up runs it (bin/dashboard, JSON serializer) shows the model queues and workers."""

import subprocess

import pytest
import requests

from harness import REPO, free_port, stop_process, wait_until
from tests.e2e.test_worker_lifecycle import PROMPT, SPARE


@pytest.fixture
def dashboard(base_env, tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [
            str(REPO / "bin" / "dashboard"),
            "--json",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--redis-url",
            base_env["MODELYARD_REDIS_URL"],
        ],
        env=base_env,
        stdout=open(tmp_path / "dashboard.log", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(url + "/0/data/queues.json", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_until(up, 30, "rq-dashboard", interval=0.2)
        yield url
    finally:
        stop_process(proc)


def test_rq_dashboard_lists_model_queues_and_workers(api_server, dashboard, sdk):
    sdk.embeddings.create(model="minilm", input="make sure the queue exists")
    sdk.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    # rq lists a queue once a job was put on it.
    sdk.post("/rerank", body={"model": "tiny-reranker", "query": "q", "documents": ["d"]}, cast_to=object)
    url = dashboard
    queues = {q["name"]: q for q in requests.get(url + "/0/data/queues.json", timeout=5).json()["queues"]}
    # Each model's queue carries the deployment's key prefix (the suite runs with the default).
    assert {"modelyard:tiny-chat", "modelyard:minilm", "modelyard:tiny-reranker"} <= set(queues)
    workers = requests.get(url + "/0/data/workers.json", timeout=5).json()["workers"]
    names = [w["name"] for w in workers]
    # One rq worker per slot: the session worker registers max_batch_size slots per model.
    assert sum(".tiny-chat." in n for n in names) == 4
    assert sum(".minilm." in n for n in names) == 4
    assert all(w["state"] in ("idle", "busy") for w in workers)
    # Newest first ("dsc" in rq-dashboard's URLs; "desc" means oldest first): the hashes of jobs
    # older than MODELYARD_JOB_RETENTION_S are gone already.
    finished = requests.get(url + "/0/data/jobs/modelyard:minilm/finished/8/dsc/1.json", timeout=5)
    assert finished.status_code == 200 and finished.json()["jobs"], finished.text
    page = requests.get(url + "/0/view/workers", timeout=5)
    assert page.status_code == 200


def test_rq_dashboard_shows_busy_workers_of_json_jobs(start_worker, dashboard, sdk):
    # Stock rq-dashboard 0.9 reads a busy worker's job with pickle: workers.json answered 500.
    worker = start_worker(SPARE)
    try:
        stream = sdk.chat.completions.create(
            model=SPARE, messages=PROMPT, max_tokens=1800, temperature=0, stream=True
        )
        job_id = next(iter(stream)).id.removeprefix("chatcmpl-")
        response = requests.get(dashboard + "/0/data/workers.json", timeout=5)
        stream.close()
        assert response.status_code == 200, response.text[:500]
        # Its own worker's slots only (the names start with its worker id, pid included): a worker
        # another module killed stays in rq's registry, busy with its last job, until its key expires.
        own = [w for w in response.json()["workers"] if f"-{worker.pid}-" in w["name"]]
        busy = [w for w in own if w["current_job"] != "idle"]
        assert [w["current_job"]["job_id"] for w in busy] == [job_id]
        assert busy[0]["current_job"]["call_string"].startswith("workers.tasks.run_job(")
        page = requests.get(dashboard + "/0/view/workers", timeout=5)
        assert page.status_code == 200
    finally:
        worker.stop()
