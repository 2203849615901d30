"""compose.yaml: checked by ``docker compose config`` where the plugin exists, and structurally always."""

import os
import shutil
import subprocess

import pytest
import yaml

from harness import REPO
from shared.catalog import ModelCatalog

COMPOSE = REPO / "compose.yaml"
WORKERS = ("worker-chat", "worker-embedding", "worker-rerank")
#: Every modelyard service's Redis URL: AUTH with the password compose requires (no default).
REQUIRED = "set MODELYARD_REDIS_PASSWORD (see the top of compose.yaml)"
REDIS_URL = f"redis://:${{MODELYARD_REDIS_PASSWORD:?{REQUIRED}}}@redis:6379/0"


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
    secrets = {"MODELYARD_REDIS_PASSWORD": "r", "MODELYARD_DASHBOARD_PASSWORD": "d"}
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, **secrets},
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


def test_each_service_runs_the_image_of_its_role(services):
    """The API and rq-dashboard run the image without the model stack; workers run the worker image."""
    roles = {"api": "api", "rq-dashboard": "api", **{name: "worker" for name in WORKERS}}
    for name, role in roles.items():
        assert services[name]["build"] == {"context": ".", "target": role}, name
        assert services[name]["image"] == f"modelyard-{role}:latest", name


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
    # Its Redis comes from MODELYARD_REDIS_URL: a --redis-url would show the password in argv.
    assert "--redis-url" not in command


def test_redis_requires_a_password_and_is_not_published(services):
    redis = services["redis"]
    assert "ports" not in redis and "network_mode" not in redis
    assert "requirepass" in " ".join(redis["command"])
    # No default: compose refuses to start without the variable (":?").
    assert redis["environment"]["REDIS_PASSWORD"].startswith("${MODELYARD_REDIS_PASSWORD:?")
    assert redis["environment"]["REDISCLI_AUTH"] == redis["environment"]["REDIS_PASSWORD"]


def test_rq_dashboard_has_a_login_and_is_published_on_loopback(services):
    dashboard = services["rq-dashboard"]
    env = dashboard["environment"]
    assert env["MODELYARD_DASHBOARD_PASSWORD"].startswith("${MODELYARD_DASHBOARD_PASSWORD:?")
    assert env["MODELYARD_REDIS_URL"] == REDIS_URL
    assert dashboard["ports"] == ["${MODELYARD_DASHBOARD_HOST:-127.0.0.1}:9181:9181"]


def test_only_the_api_and_the_dashboard_are_published(services):
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"api", "rq-dashboard"}
