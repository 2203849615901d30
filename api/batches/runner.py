"""Running batches: each API process has a :class:`BatchRunner`; one of them at a time holds a
batch's lease and runs it (:class:`BatchRun`), so a batch goes on when the process running it dies.

A run validates the input file, then sends its lines a window at a time through the endpoint's
view in the batch band (api/batches/execute.py) and appends each answer to the batch's partial files
(api/batches/partials.py), the record of what is done: a run that takes over sends only the lines
they lack, so no line reaches the output twice (a line in flight when its runner died runs again;
its first answer went to nobody).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from flask import Flask
from redis import Redis, RedisError

from api.batches import lines
from api.batches.execute import RETRYABLE, Outcome, expired_line, output_line, run_line
from api.batches.files import FileStore
from api.batches.lines import Line
from api.batches.partials import Partials
from api.batches.store import FINAL, BatchStore
from shared import keys

log = logging.getLogger(__name__)

#: Renew a lease (KEYS[1]) that ARGV[1] holds for ARGV[2] ms; 0 if someone else holds it now.
_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
#: Delete a lease (KEYS[1]) only if ARGV[1] holds it.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

#: Seconds between a run's looks at its batch (cancelled? expired?) and writes of its counts.
_CHECK_S = 0.5
#: The share of its time a busy window's line runs (the rest it rests).
_BUSY_DUTY = 0.25
#: Longest pause before a line refused for a retryable reason is sent again.
_MAX_BACKOFF_S = 10.0


class BatchRunner:
    """A daemon thread: every ``interval``, renew the leases of the batches this process runs and
    take the lease of any active batch nobody holds (a new one, or one whose runner died)."""

    def __init__(
        self,
        app: Flask,
        redis: Redis,
        store: BatchStore,
        files: FileStore,
        *,
        owner: str,
        window: int,
        busy_window: int,
        max_lines: int,
        request_timeout: float,
        interval: float = 1.0,
    ) -> None:
        self.app = app
        self.redis = redis
        self.store = store
        self.files = files
        self.owner = owner
        self.window = window
        self.busy_window = busy_window
        self._busy = False
        self._busy_checked = 0.0
        self.max_lines = max_lines
        self.request_timeout = request_timeout
        self.interval = interval
        self._renew = redis.register_script(_RENEW_LUA)
        self._release = redis.register_script(_RELEASE_LUA)
        self._runs: dict[str, BatchRun] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="batch-runner", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """Stop taking batches and stop the runs (their leases expire: another process resumes)."""
        self._stopped.set()
        self._wake.set()
        with self._lock:
            for run in self._runs.values():
                run.lost.set()

    def busy(self) -> bool:
        """Whether interactive jobs come: the mark every admission outside the batch band sets, read
        at most every 0.2 s."""
        now = time.monotonic()
        if now - self._busy_checked >= 0.2:
            self._busy_checked = now
            try:
                self._busy = bool(self.redis.exists(keys.interactive_key()))
            except RedisError:
                self._busy = True  # no news is no licence to flood
        return self._busy

    def window_now(self) -> int:
        """Lines a batch may have in flight now."""
        return self.busy_window if self.busy() else self.window

    def wake(self) -> None:
        """Look for batches now (one was just created here), not at the next tick."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stopped.is_set():
                return
            try:
                self.tick()
            except RedisError as exc:
                log.info("batch runner: Redis unavailable (%s)", exc)
            except Exception:
                log.exception("batch runner tick failed")

    def tick(self) -> None:
        """Renew what this process runs; start what nobody runs."""
        with self._lock:
            runs = dict(self._runs)
        for batch_id, run in runs.items():
            if not self._renew(keys=[keys.batch_lease_key(batch_id)], args=[self.owner, keys.BATCH_LEASE_MS]):
                log.warning("batch %s: lease lost; stopping its run here", batch_id)
                run.lost.set()
        for batch_id in self.store.active():
            if batch_id in runs or self._stopped.is_set():
                continue
            if self.redis.set(keys.batch_lease_key(batch_id), self.owner, nx=True, px=keys.BATCH_LEASE_MS):
                run = BatchRun(self, batch_id)
                with self._lock:
                    self._runs[batch_id] = run
                threading.Thread(target=self._run, args=(run,), name=f"batch-{batch_id}", daemon=True).start()

    def _run(self, run: BatchRun) -> None:
        try:
            run.run()
        except Exception:
            log.exception("batch %s: its run failed; it resumes when the lease expires", run.batch_id)
            time.sleep(self.interval)  # not straight back: the failure may be Redis being away
        finally:
            with self._lock:
                self._runs.pop(run.batch_id, None)
            try:
                self._release(keys=[keys.batch_lease_key(run.batch_id)], args=[self.owner])
            except RedisError:
                pass  # it expires


class BatchRun:
    """One batch, run by the process holding its lease until it is final or the lease is lost."""

    def __init__(self, runner: BatchRunner, batch_id: str) -> None:
        self.runner = runner
        self.batch_id = batch_id
        #: Set when this process may no longer write the batch (lease lost, shutting down).
        self.lost = threading.Event()
        #: Set when the lines in flight must stop: lost, cancelled or expired.
        self.stopping = threading.Event()
        #: When the batch expires (its object's ``expires_at``, read again at each check).
        self.expires_at = 0.0
        self.partials = Partials(runner.files, batch_id)
        self.owner: str | None = None

    # -- the whole run ---------------------------------------------------------------------
    def run(self) -> None:
        store = self.runner.store
        record = store.load(self.batch_id)
        if record is None or record.status in FINAL:
            return
        self.owner = record.owner  # its output files are its owner's
        input_file = self.runner.files.get(record.batch["input_file_id"], None)
        path = input_file.path if input_file is not None else None
        if record.status == "validating" and not self._validate(record.batch, path):
            return
        batch = store.load(self.batch_id).batch
        done = self.partials.recover()
        if batch["status"] == "in_progress" and path is not None:
            self._send(batch, path, done)
        if self.lost.is_set():
            return
        batch = store.load(self.batch_id).batch
        if batch["status"] == "cancelling":
            self._finish("cancelled")
        elif batch["status"] == "in_progress" and time.time() >= batch["expires_at"]:
            if path is not None:
                self._expire(path, batch["endpoint"], done)
            self._finish("expired")
        else:  # every line answered (or its input file deleted meanwhile: what was answered)
            self._finish("completed")

    def _validate(self, batch: dict[str, Any], path: Path | None) -> bool:
        """Check the input file; False (the batch failed, or was cancelled meanwhile) to end here."""
        if path is None or not path.exists():
            errors = [
                {
                    "code": "file_not_found",
                    "message": "the input file was deleted",
                    "param": "input_file_id",
                    "line": None,
                }
            ]
            checked = None
        else:
            checked = lines.check(path, batch["endpoint"], self.runner.max_lines)
            errors = checked.errors

        def change(b: dict[str, Any]) -> None:
            now = int(time.time())
            if b["status"] != "validating":  # cancelled while it was validated
                if b["status"] == "cancelling":
                    b.update(status="cancelled", cancelled_at=now)
                return
            if errors:
                b.update(status="failed", failed_at=now, errors={"object": "list", "data": errors})
                return
            assert checked is not None
            b.update(status="in_progress", in_progress_at=now, model=checked.model)
            b["request_counts"] = {"total": checked.lines, "completed": 0, "failed": 0}

        return self.runner.store.update(self.batch_id, change).status == "in_progress"

    # -- sending the lines -----------------------------------------------------------------
    def _send(self, batch: dict[str, Any], path: Path, done: set[str]) -> None:
        endpoint = batch["endpoint"]
        self.expires_at = batch["expires_at"]
        counts = self.partials.counts()
        last_check = 0.0
        handles = self.partials.open()
        most = max(self.runner.window, self.runner.busy_window)
        pool = ThreadPoolExecutor(most, thread_name_prefix=f"batch-lines-{self.batch_id[-6:]}")
        inflight: set[Future[tuple[Line, Outcome | None]]] = set()
        try:
            pending = (line for line in lines.read(path, endpoint) if line.custom_id not in done)
            for line in pending:
                while len(inflight) >= self.runner.window_now() and not self.stopping.is_set():
                    finished, inflight = wait(inflight, timeout=_CHECK_S, return_when=FIRST_COMPLETED)
                    self._write(finished, handles, counts)
                    last_check = self._check(counts, last_check)
                if self.stopping.is_set():
                    break
                inflight.add(pool.submit(self._line, endpoint, line))
            while inflight:
                finished, inflight = wait(inflight, timeout=_CHECK_S, return_when=FIRST_COMPLETED)
                self._write(finished, handles, counts)
                last_check = self._check(counts, last_check)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            for handle in handles.values():
                handle.close()
        if not self.lost.is_set():
            self._save_counts(counts)

    def _line(self, endpoint: str, line: Line) -> tuple[Line, Outcome | None]:
        """Run a line until it gets an answer that is not retryable; None if the run stopped first."""
        backoff = 0.5
        while not self.stopping.is_set():
            left = min(self.runner.request_timeout, self.expires_at - time.time())
            if left < 1:
                break
            started = time.monotonic()
            outcome = run_line(self.runner.app, endpoint, line, left, self.stopping.is_set)
            if self.runner.busy():
                # While interactive jobs come, a line's turn is also a rest (its slot of the window
                # stays taken): the batch keeps only a share of the workers and the CPU it runs on.
                self.stopping.wait((time.monotonic() - started) * (1 / _BUSY_DUTY - 1))
            if outcome.status not in RETRYABLE:
                return line, outcome
            log.info("batch %s line %d: %s; sent again", self.batch_id, line.number, outcome.status)
            self.stopping.wait(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, _MAX_BACKOFF_S)
        return line, None

    def _write(self, finished, handles, counts: dict[str, int]) -> None:
        for future in finished:
            line, outcome = future.result()
            if outcome is None or self.lost.is_set():
                continue  # stopped: it runs again when the batch resumes (or never, cancelled)
            ok = 200 <= outcome.status < 300
            self.partials.append(handles["output" if ok else "error"], output_line(line, outcome))
            counts["completed" if ok else "failed"] += 1

    def _check(self, counts: dict[str, int], last: float) -> float:
        """Every :data:`_CHECK_S`: save the counts, and stop on a cancel, the expiry or a lost lease."""
        now = time.monotonic()
        if self.lost.is_set():
            self.stopping.set()
        if now - last < _CHECK_S:
            return last
        record = self._save_counts(counts)
        self.expires_at = record.batch["expires_at"]
        if record.status != "in_progress" or time.time() >= self.expires_at:
            self.stopping.set()
        return now

    def _save_counts(self, counts: dict[str, int]):
        def change(b: dict[str, Any]) -> None:
            b["request_counts"].update(counts)

        return self.runner.store.update(self.batch_id, change)

    # -- the end ---------------------------------------------------------------------------
    def _expire(self, path: Path, endpoint: str, done: set[str]) -> None:
        """An error line for every line the batch did not answer before it expired."""
        answered = self.partials.recover() | done
        with self.partials.paths["error"].open("ab") as handle:
            for line in lines.read(path, endpoint):
                if line.custom_id not in answered:
                    self.partials.append(handle, expired_line(line))

    def _finish(self, status: str) -> None:
        """Publish the partial files as the batch's output and error files; end it with ``status``."""
        store = self.runner.store
        if status == "completed":
            store.update(
                self.batch_id, lambda b: b.update(status="finalizing", finalizing_at=int(time.time()))
            )
        counts = self.partials.counts()
        ids = self.partials.publish(self.owner)
        if counts == {"completed": 0, "failed": 0}:  # the partials were moved by a finish before
            counts = store.load(self.batch_id).batch["request_counts"]

        def change(b: dict[str, Any]) -> None:
            b["request_counts"].update(completed=counts["completed"], failed=counts["failed"])
            b.update(status=status, output_file_id=ids["output"], error_file_id=ids["error"])
            b[f"{status}_at"] = int(time.time())

        store.update(self.batch_id, change)
        log.info("batch %s %s: %s", self.batch_id, status, counts)
