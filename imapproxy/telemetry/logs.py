"""Structured logging: one event name plus fields, rendered as JSON or text.

Nothing here sees raw protocol lines: callers pass named fields, and the session never puts
credentials into any field (passwords and SASL data do not leave ``sasl.py``).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from pathlib import Path
from typing import Any

_FIELDS = "imapproxy_fields"


def log_event(
    logger: logging.Logger, event: str, *, level: int = logging.INFO, **fields: Any
) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={_FIELDS: fields})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        doc.update(getattr(record, _FIELDS, {}))
        if record.exc_info:
            doc["traceback"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, _FIELDS, {})
        text = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        line = f"{self.formatTime(record)} {record.levelname.lower()} {record.getMessage()} {text}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line.rstrip()


def configure(level: str = "info", fmt: str = "json", file: Path | None = None) -> logging.Handler:
    """Route the ``imapproxy`` loggers to stderr or a file. A file handler reopens the file
    when logrotate moved it (WatchedFileHandler) and on ``reopen()`` (SIGHUP)."""
    handler: logging.Handler
    if file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.handlers.WatchedFileHandler(file)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("imapproxy")
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    return handler


def reopen() -> None:
    for handler in logging.getLogger("imapproxy").handlers:
        if isinstance(handler, logging.handlers.WatchedFileHandler):
            handler.acquire()
            try:
                handler.close()
                handler.stream = handler._open()  # the handler's own reopen path
            finally:
                handler.release()
