"""Structured logs: one JSON object per line, with the user/job/guild a line is about."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

CONTEXT_FIELDS = ("user", "job", "guild", "interaction", "command", "ms", "samples", "lag_p50_ms", "lag_p99_ms",
                  "lag_max_ms", "peak_rss_mb", "busy_share", "busy_seconds")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({name: getattr(record, name) for name in CONTEXT_FIELDS if hasattr(record, name)})
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("discord").setLevel(max(logging.getLevelName(level), logging.INFO))
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
