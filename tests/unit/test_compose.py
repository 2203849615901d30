"""compose.yaml: checked by ``docker compose config`` where the plugin exists, and structurally always."""

import shutil
import subprocess

import pytest
import yaml

from shared.models import ModelCatalog
from tests.support import REPO

COMPOSE = REPO / "compose.yaml"
WORKERS = ("worker-chat", "worker-embedding", "worker-rerank")
REDIS_URL = "redis://redis:6379/0"


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _has_compose_plugin() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return probe.returncode == 0


def test_docker_compose_accepts_the_file():
    if not _has_compose_plugin():
        pytest.skip("the docker compose plugin is not installed")
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr


def test_every_service_is_there_with_a_healthcheck(services):
    assert set(services) == {"redis", "api", *WORKERS, "rq-dashboard"}
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
        assert check.get("interval") and check.get("retries"), name


def test_modelyard_services_share_redis_and_wait_for_it(services):
    for name, service in services.items():
        if name == "redis":
            continue
        assert service["environment"]["MODELYARD_REDIS_URL"] == REDIS_URL, name
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert service["build"] == "." and service["image"] == "modelyard:latest", name


def test_api_listens_on_all_interfaces_without_a_second_bind(services):
    api = services["api"]
    # bin/api already binds MODELYARD_HOST:MODELYARD_PORT; another --bind to the same port fails.
    assert api["environment"]["MODELYARD_HOST"] == "0.0.0.0"
    assert not any(arg.startswith("--bind") for arg in api["command"])
    assert "8000:8000" in api["ports"]


def test_workers_serve_models_of_the_models_file(services):
    catalog = ModelCatalog.load(REPO / "models.yaml")
    for name in WORKERS:
        command = services[name]["command"]
        assert command[0] == "bin/worker"
        for model in command[1:]:
            assert catalog.resolve(model) is not None, f"{name} serves {model!r}, not in models.yaml"
        # Longer than the worker's default drain (--drain-timeout 60): SIGTERM lets streams finish.
        assert services[name]["stop_grace_period"] == "60s"


def test_rq_dashboard_uses_the_json_serializer(services):
    command = services["rq-dashboard"]["command"]
    # bin/dashboard: rq-dashboard with the fix that lets it show busy workers of JSON jobs.
    assert command[0] == "bin/dashboard" and "--json" in command
    assert command[command.index("--redis-url") + 1] == REDIS_URL
    assert "9181:9181" in services["rq-dashboard"]["ports"]
