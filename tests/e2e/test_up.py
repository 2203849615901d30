"""bin/up supervises its stack: a killed worker comes back alone, and two stacks never share state."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import redis
import requests

from harness import REPO, free_port, wait_until


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _services(pid: int) -> set[int]:
    """The stack's long-lived processes other than workers: Redis, gunicorn, rq-dashboard."""
    found = set()
    for child in _descendants(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if any(name in cmdline for name in ("redis-server", "gunicorn", "dashboard")):
            found.add(child)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Stack:
    """One ``bin/up`` on ports of its own, serving tiny-chat only."""

    def __init__(self, models_file: Path, tmp: Path) -> None:
        self.port, self.redis_port = free_port(), free_port()
        self.state = REPO / "var" / str(self.port)
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "MODELYARD_REDIS_URL")}
        env.update(
            MODELYARD_PORT=str(self.port),
            MODELYARD_REDIS_PORT=str(self.redis_port),
            MODELYARD_DASHBOARD_PORT=str(free_port()),
            MODELYARD_MODELS_FILE=str(models_file),
            MODELYARD_HEARTBEAT_TTL="2",
            MODELYARD_API_THREADS="16",
            HF_HUB_OFFLINE="1",
        )
        self._out = open(tmp / f"up-{self.port}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(REPO / "bin" / "up")], env=env, stdout=self._out, stderr=subprocess.STDOUT
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.redis = redis.Redis(port=self.redis_port)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            self._out.flush()
            log = Path(self._out.name).read_text(errors="replace")
            raise RuntimeError(f"bin/up exited with {self.proc.returncode}:\n{log}")
        try:
            return all(requests.get(self.url + "/health", timeout=1).json()["models"].values())
        except (requests.RequestException, ValueError, KeyError):
            return False

    def worker_pids(self) -> set[int]:
        pids = set()
        for key in self.redis.scan_iter(match="modelyard:worker:*"):
            raw = self.redis.get(key)
            if raw:
                pids.add(json.loads(raw)["pid"])
        return pids

    def chat(self) -> int:
        body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        return requests.post(self.url + "/v1/chat/completions", json=body, timeout=60).status_code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        shutil.rmtree(self.state, ignore_errors=True)


@pytest.fixture
def stacks(models_dir, tmp_path):
    models_file = tmp_path / "models.yaml"
    models_file.write_text(
        f'models:\n  - {{name: tiny-chat, kind: chat, source: "{models_dir / "tiny-chat"}", '
        "context_length: 256, max_batch_size: 2}\n"
    )
    started: list[Stack] = []

    def start() -> Stack:
        stack = Stack(models_file, tmp_path)
        started.append(stack)
        return stack

    yield start
    for stack in started:
        stack.stop()


def test_a_killed_worker_is_restarted_two_stacks_keep_their_own_state_and_sigterm_stops_all(stacks):
    one, two = stacks(), stacks()
    wait_until(one.ready, 240, "the first stack")
    wait_until(two.ready, 240, "the second stack")
    assert one.state != two.state
    for stack in (one, two):
        assert (stack.state / "log" / "api.log").exists()
        assert (stack.state / "redis").is_dir()
    assert one.worker_pids().isdisjoint(two.worker_pids())

    (first,) = one.worker_pids()
    services = _services(one.proc.pid)
    assert len(services) >= 3  # Redis, the API (gunicorn's arbiter and worker), the dashboard
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: one.worker_pids() - {first}, 120, "a restarted worker")
    wait_until(one.ready, 60, "the stack after the restart")
    assert one.proc.poll() is None, "bin/up must not stop when a worker dies"
    assert all(_alive(pid) for pid in services), "only the dead worker is restarted"
    assert one.chat() == 200 and two.chat() == 200
    log = (one.state / "log" / "up.log").read_text()
    assert "worker tiny-chat exited with status 137; restarting it" in log

    everything = _descendants(one.proc.pid)
    one.proc.send_signal(signal.SIGTERM)
    one.proc.wait(60)
    wait_until(lambda: not any(_alive(pid) for pid in everything), 30, "every process of the stack to stop")
    assert two.ready(), "stopping one stack must leave the other alone"
