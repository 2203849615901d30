"""rq-dashboard, run as bin/up runs it (JSON serializer), shows the model queues and the workers."""

import subprocess
import sys
from pathlib import Path

import requests

from tests.support import free_port, stop_process, wait_until


def test_rq_dashboard_lists_model_queues_and_workers(api_server, base_env, sdk, tmp_path):
    sdk.embeddings.create(model="minilm", input="make sure the queue exists")
    sdk.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    # rq lists a queue once a job was put on it.
    sdk.post("/rerank", body={"model": "tiny-reranker", "query": "q", "documents": ["d"]}, cast_to=object)
    port = free_port()
    dashboard = subprocess.Popen(
        [
            str(Path(sys.prefix) / "bin" / "rq-dashboard"),
            "--json",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--redis-url",
            base_env["MODELYARD_REDIS_URL"],
        ],
        stdout=open(tmp_path / "dashboard.log", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return requests.get(url + "/0/data/queues.json", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(up, 30, "rq-dashboard", interval=0.2)
        queues = {q["name"]: q for q in requests.get(url + "/0/data/queues.json", timeout=5).json()["queues"]}
        assert {"tiny-chat", "minilm", "tiny-reranker"} <= set(queues)
        workers = requests.get(url + "/0/data/workers.json", timeout=5).json()["workers"]
        names = [w["name"] for w in workers]
        # One rq worker per slot: the session worker registers max_batch_size slots per model.
        assert sum(".tiny-chat." in n for n in names) == 4
        assert sum(".minilm." in n for n in names) == 4
        assert all(w["state"] in ("idle", "busy") for w in workers)
        finished = requests.get(url + "/0/data/jobs/minilm/finished/8/asc/1.json", timeout=5)
        assert finished.status_code == 200 and finished.json()["jobs"], finished.text
        page = requests.get(url + "/0/view/workers", timeout=5)
        assert page.status_code == 200
    finally:
        stop_process(dashboard)
