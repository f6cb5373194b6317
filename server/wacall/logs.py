"""Logging set-up: text lines for people or one JSON object per line for log pipelines, and the libraries' chatter
kept at WARNING.

JSON lines carry time, level, logger and message, and the structured fields a line was logged with (`extra=`), so a
pipeline filters on `method`, `code`, `action`, `reason`... without parsing messages. Nothing here redacts: no code
logs a token, secret, password, Authorization header or signature, and tests/test_operations_logs.py holds to that.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Libraries whose INFO lines (ICE candidates, codec set-up, HTTP access lines) would drown one line per RPC.
QUIET_LOGGERS = ("aiortc", "aioice", "av", "grpc", "aiohttp", "aiohttp.access", "httpx", "httpcore")

# The attributes every LogRecord has: anything else on a record came from `extra=` and is a structured field.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the `extra` fields, and the
    exception's traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and name not in line:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: str, log_format: str, stream: TextIO | None = None) -> None:
    """Send the root logger's lines to `stream` (stderr) in `log_format` ("text" or "json") at `level`."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
