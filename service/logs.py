"""Logging set-up: one JSON object a line, or plain text when stderr is a terminal.

Callers pass structured values with `extra={"fields": {...}}`; they land as
top-level keys of the JSON line. Nothing here knows a secret, and nothing that
calls it passes one: tokens and keys never reach a log record.
"""

from __future__ import annotations

import json
import logging
import sys
import time

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                  + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return text


def configure(level: str = "INFO", stream=None) -> None:
    """Configure the `roomwarden` logger once per process; later calls only set the level."""
    logger = logging.getLogger("roomwarden")
    logger.setLevel(level if level in logging._nameToLevel else "INFO")
    if getattr(logger, "_roomwarden_configured", False):
        return
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter() if stream.isatty() else JsonFormatter())
    logger.addHandler(handler)
    logger.propagate = False
    logger._roomwarden_configured = True
