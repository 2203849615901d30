"""shared.logs: one set-up for text or JSON lines, safe to call many times."""

import io
import json
import logging
from contextlib import contextmanager

import pytest

from shared.logs import JsonFormatter, setup_logging


def record(message="hello %s", args=("world",), **extra) -> logging.LogRecord:
    rec = logging.LogRecord("api.requests", logging.INFO, __file__, 1, message, args, None)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_carry_the_message_and_extra_fields():
    line = json.loads(JsonFormatter().format(record(job_id="j1", status=200, queued_s=0.25)))
    assert line["message"] == "hello world" and line["level"] == "INFO" and line["logger"] == "api.requests"
    assert (line["job_id"], line["status"], line["queued_s"]) == ("j1", 200, 0.25)
    assert line["ts"].endswith("+00:00")
    assert "args" not in line and "msg" not in line and "levelno" not in line


def test_json_lines_include_the_traceback():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = json.loads(JsonFormatter().format(rec))
    assert "ValueError: boom" in line["exc_info"]


@contextmanager
def bare_root():
    """The root logger without pytest's capture handlers (added once a test runs), then restored."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers = []
    try:
        yield root
    finally:
        root.handlers, root.level = saved, level


def test_setup_replaces_its_own_handler(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    with bare_root() as root:
        setup_logging("INFO", "text")
        setup_logging("DEBUG", "json")  # the app factory runs once per app
        assert len(root.handlers) == 1 and root.level == logging.DEBUG
        logging.getLogger("t").info("one", extra={"k": 1})
    assert json.loads(stream.getvalue()) | {"ts": None} == {
        "ts": None,
        "level": "INFO",
        "logger": "t",
        "message": "one",
        "k": 1,
    }


def test_setup_leaves_a_configured_root_alone():
    with bare_root() as root:
        theirs = logging.NullHandler()
        root.addHandler(theirs)
        setup_logging("INFO", "json")
        assert root.handlers == [theirs]


def test_unknown_format_is_refused():
    with bare_root(), pytest.raises(ValueError):
        setup_logging("INFO", "xml")
