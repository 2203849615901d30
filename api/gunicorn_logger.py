"""gunicorn's own log lines (master and workers) as JSON, for ``MODELYARD_LOG_FORMAT=json``.

``bin/api`` passes ``--logger-class api.gunicorn_logger.JsonLogger`` in JSON mode, so that even the
lines gunicorn writes before the app is loaded are JSON.
"""

from __future__ import annotations

from gunicorn.glogging import Logger

from shared.logs import JsonFormatter


class JsonLogger(Logger):
    def setup(self, cfg) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(JsonFormatter())
