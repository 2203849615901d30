"""Child processes with a log file each, ports, and waiting on conditions."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

#: The checkout: bin/ scripts, models/ and the default models file live here.
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``predicate`` until it is true; ``TimeoutError`` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a process we started, by its PID: SIGTERM, then SIGKILL."""
    stop_processes([proc], timeout)


def stop_processes(procs: Iterable[subprocess.Popen], timeout: float = 20) -> None:
    """SIGTERM every process first (workers drain side by side), then wait; SIGKILL what outlives
    ``timeout``."""
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in running:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def crash(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGKILL ``proc`` and its children at once, as a host crash would, and wait until none runs.

    Killing a gunicorn master alone leaves its workers serving the listening socket until they
    notice, so a server started on the same port would share it with them."""
    pid = proc.pid
    children = [
        int(child)
        for task in Path(f"/proc/{pid}/task").glob("*")
        for child in (task / "children").read_text().split()
    ]
    proc.kill()
    proc.wait()
    for child in children:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            continue

    def gone(child: int) -> bool:  # not ours to reap: dead once it is a zombie or has no entry
        try:
            return Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except (FileNotFoundError, ProcessLookupError):
            return True

    wait_until(lambda: all(gone(child) for child in children), timeout, f"the children of {pid} to die")


class LoggedProcess:
    """A child process whose output goes to a log file, appended to (a restart keeps earlier runs')."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv, env=dict(env), cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_running(self) -> None:
        """Raise ``RuntimeError`` with the log when the process has exited."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"{' '.join(self.argv)} exited with {self.proc.returncode}:\n{self.log()}")

    def stop(self, timeout: float = 20) -> None:
        stop_process(self.proc, timeout)
        self._log.close()
