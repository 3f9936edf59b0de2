"""Structured logs: one JSON object per line, carrying the request id of the request being served."""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import datetime, timezone

from niff_contract import ContractError
from niff_serve.errors import ConfigurationError

# uvicorn prints the lifespan's exception as a traceback; these are the start-up errors the app words itself.
_STARTUP_ERRORS = tuple(f"{c.__module__}.{c.__qualname__}:" for c in (ContractError, ConfigurationError))
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
# Visible ASCII only, so a client cannot inject line breaks or control bytes into the logs.
_VALID_REQUEST_ID = re.compile(r"[!-~]{1,128}")

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged as a field.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message", "taskName"}


def valid_request_id(text: str) -> str | None:
    """A client's request id (HTTP ``X-Request-ID``, gRPC ``x-request-id``) if it is safe to log, else None."""
    return text if _VALID_REQUEST_ID.fullmatch(text) else None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            payload["request_id"] = request_id
        payload.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def _not_an_expected_startup_traceback(record: logging.LogRecord) -> bool:
    """Drop uvicorn's traceback of a start-up error: the app already logged it in one line."""
    message = str(record.msg)
    return not (message.startswith("Traceback") and any(name in message for name in _STARTUP_ERRORS))


def configure_logging(level: str) -> None:
    """Route every logger (uvicorn's too) and Python's warnings through one JSON handler on stdout."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_not_an_expected_startup_traceback)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
    # Warnings (Pillow's DecompressionBombWarning, deprecations) would otherwise go to stderr as plain text.
    logging.captureWarnings(True)
