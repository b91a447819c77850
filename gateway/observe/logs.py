"""Process-wide logging set-up: text lines for people, or JSON lines for log
collectors (`server.log_format: json`).

A JSON line is one object: `time` (UTC, ISO 8601), `level`, `logger`,
`message`, the `request_id` and `trace_id` of the request being served when
there is one, `exception` when one is logged, and any `extra=` fields. The
request comes from the `CURRENT_REQUEST` context variable, which the transports
set once per request where they create its RequestContext: one ContextVar.set,
and nothing read until a line is actually written.

Every handler set up here carries `RedactingFilter`: whatever a record says
(its message, exception, stack and `extra=` text) passes through
`gateway.observe.redact` before it is written, so no key reaches the log.
"""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

import orjson

from gateway.observe import tracing
from gateway.observe.redact import redact

# The RequestContext of the request this task serves (None outside requests).
# Tasks copy it when they start, so work a request spawns logs under its id.
CURRENT_REQUEST: ContextVar[Any] = ContextVar("gateway_request", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"

# What every LogRecord has; anything else on a record came from `extra=`
# (but uvicorn's `color_message`, the message again with terminal colours).
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


class RedactingFilter(logging.Filter):
    """Blanks credentials out of a record before any handler's formatter sees it:
    the formatted message, the exception text and the stack (see redact.py)."""

    _exceptions = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            # Formatters use exc_text when it is set: formatted once, here, redacted.
            record.exc_text = self._exceptions.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if isinstance(value, str) and (key not in _STANDARD or key == "color_message"):
                record.__dict__[key] = redact(value)  # `extra=` fields, uvicorn's coloured copy
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module's docstring for the keys)."""

    def format(self, record: logging.LogRecord) -> str:
        created = record.created
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
            + f".{int(created * 1000) % 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request = CURRENT_REQUEST.get()
        if request is not None:
            doc["request_id"] = request.request_id
            trace_id = tracing.trace_id_of(request)
            if trace_id is not None:
                doc["trace_id"] = trace_id
        doc["process"] = record.process
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in doc:
                doc[key] = value
        if record.exc_text:  # set (and redacted) by RedactingFilter
            doc["exception"] = record.exc_text
        elif record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(doc, default=str).decode()


def formatter(fmt: str = "text") -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"log format: expected 'text' or 'json', got {fmt!r}")


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
