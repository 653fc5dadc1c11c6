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
    """One JSON object a line. Every request writes one (web.log_request), so the parts that cost
    the most are made once: the timestamp's text once a second, the encoder once."""

    _encode = json.JSONEncoder(default=str).encode

    def __init__(self):
        super().__init__()
        self._second: int | None = None
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # a race between threads only writes the same text twice
            self._stamp, self._second = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)), second
        line = {
            "ts": f"{self._stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return self._encode(line)


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
    # Neither format shows the caller or thread, and every request writes a line: skip gathering
    # them (the logging HOWTO's "Optimization"). These switches are global, and gunicorn's own
    # format prints %(process)d, so the process id stays gathered.
    logging.logThreads = logging.logMultiprocessing = False
    logging._srcfile = None
