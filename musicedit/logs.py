"""Structured logging: one JSON object per line, always naming the event (and job id if any).

Never pass API keys, Authorization headers or presigned URLs as fields.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any


def log_event(
    logger: logging.Logger,
    event: str,
    level: int = logging.INFO,
    exc_info: BaseException | None = None,
    **fields: Any,
) -> None:
    """Emit `{"event": event, **fields}` as one line (plus the traceback if `exc_info`)."""
    if logger.isEnabledFor(level):
        message = json.dumps({"event": event, **fields}, default=str, sort_keys=True)
        logger.log(level, message, exc_info=exc_info)


class _JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if not message.startswith("{"):
            message = json.dumps({"event": "log", "message": message})
        head = json.dumps({"ts": round(record.created, 3), "level": record.levelname.lower(),
                           "logger": record.name})
        line = head[:-1] + ", " + message[1:]
        if record.exc_info:
            exception = json.dumps({"exception": self.formatException(record.exc_info)})
            line = line[:-1] + ", " + exception[1:]
        return line


# At DEBUG these libraries log what must never reach a log: botocore the S3 requests with
# their Authorization headers and signing strings, httpx/httpcore the webhook URLs (which may
# carry the receiver's token). They stay at these levels whatever MUSICEDIT_LOG_LEVEL says.
QUIET_LIBRARY_LOGGERS = {
    "botocore": logging.INFO, "boto3": logging.INFO, "s3transfer": logging.INFO,
    "urllib3": logging.INFO, "httpx": logging.WARNING, "httpcore": logging.WARNING,
}


def configure_logging(level: str = "INFO") -> None:
    """Route the root logger to stderr as JSON lines (idempotent)."""
    root = logging.getLogger()
    requested = logging.getLevelName(level.upper())
    requested = requested if isinstance(requested, int) else logging.INFO
    for name, floor in QUIET_LIBRARY_LOGGERS.items():
        logging.getLogger(name).setLevel(max(floor, requested))
    if any(getattr(h, "_musicedit", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLineFormatter())
    handler._musicedit = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
