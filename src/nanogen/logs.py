"""Logging for ``nanogen serve`` and ``nanogen worker``: text or one JSON object per line, request ids.

Configured once by the CLI's entry points (``config`` is a ``logging.config.dictConfig`` dict, also
given to uvicorn as its ``log_config``): every logger (nanogen's, uvicorn's, DBOS's) writes through
one handler on stderr. ``NANOGEN_LOG_FORMAT=json`` makes each line a JSON object with ``time``,
``level``, ``logger``, ``message``, the ``request_id`` of the request being served (when there is
one), and the structured fields a line was logged with (an access line's ``method``, ``route``,
``status``, ``duration_ms``, ``account_id``; a task transition's ``task_id``, ``generation_id``,
``product``, ``engine``, ``from``, ``to``, ``credits``).

Secrets never reach a line: nothing logs headers or raw paths, the HTTP client libraries' request
lines (URLs) are off, and as a last guard every line is scrubbed of anything shaped like a nanogen
API key and of the configured secrets (provider keys, tokens).
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
from collections.abc import Iterable
from typing import Any, Literal

import orjson
from uvicorn.logging import DefaultFormatter

LogFormat = Literal["text", "json"]

# The id of the request being served in this task (server/direct.py sets it).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("nanogen_request_id", default=None)

_API_KEY = re.compile(r"\bng_[A-Za-z0-9_-]{8,}")
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
# Loggers whose INFO lines name URLs (an input image's URL may carry a token): warnings only.
_QUIET = ("httpx", "httpcore", "google_genai", "google.auth", "urllib3", "botocore", "boto3", "s3transfer")


class Redactor:
    """Replaces API keys and the configured secrets in a formatted line."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def __call__(self, line: str) -> str:
        if "ng_" in line:
            line = _API_KEY.sub("ng_[redacted]", line)
        for secret in self.secrets:
            if secret in line:
                line = line.replace(secret, "[redacted]")
        return line


class TextFormatter(DefaultFormatter):
    """uvicorn's ``LEVEL:     message`` lines, scrubbed."""

    def __init__(self, redactor: Redactor | None = None, **options: Any) -> None:
        super().__init__(fmt="%(levelprefix)s %(message)s", use_colors=False, **options)
        self.redact = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, request_id, fields."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redact = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        line: dict[str, Any] = {
            "time": f"{stamp}.{int((record.created - seconds) * 1000):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            line["request_id"] = request_id
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_") and name != "color_message":
                line[name] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc_info"] = record.exc_text
        return self.redact(orjson.dumps(line, default=str).decode())


def config(log_format: LogFormat, level: str, secrets: Iterable[str] = ()) -> dict[str, Any]:
    """The ``dictConfig`` of a server or worker process: one stderr handler for every logger."""
    redactor = Redactor(secrets)
    formatter: dict[str, Any] = (
        {"()": JSONFormatter, "redactor": redactor}
        if log_format == "json"
        else {"()": TextFormatter, "redactor": redactor}
    )
    handler = {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        # "default" and "access" are the names uvicorn may adjust (use_colors); both are ours.
        "formatters": {"default": formatter, "access": formatter},
        "handlers": {"default": handler},
        "root": {"handlers": ["default"], "level": level},
        "loggers": {
            # uvicorn and DBOS write through the root's handler (DBOS adds its own console
            # handler only to a logger that has none: this one has ours).
            "uvicorn": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": True},
            "dbos": {"handlers": ["default"], "propagate": False},
            **{name: {"level": "WARNING"} for name in _QUIET},
        },
    }
