"""Start and stop modelyard's processes for the tests and the benchmarks: a private redis-server
on a free port (and its numbered databases), worker processes, the API, and waits on conditions.

Nothing here is imported by the API or the workers themselves.
"""

from harness.processes import REPO, LoggedProcess, crash, free_port, stop_process, stop_processes, wait_until
from harness.redis_server import RedisDatabase, RedisServer, redis_server_binary
from harness.services import ApiServer, WorkerProcess, live_models, live_workers, start_api, started_jobs

__all__ = [
    "REPO",
    "ApiServer",
    "LoggedProcess",
    "RedisDatabase",
    "RedisServer",
    "WorkerProcess",
    "crash",
    "free_port",
    "live_models",
    "live_workers",
    "redis_server_binary",
    "start_api",
    "started_jobs",
    "stop_process",
    "stop_processes",
    "wait_until",
]
