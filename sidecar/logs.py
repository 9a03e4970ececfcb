"""Structured logs: one event per line, JSON or text, levels from the configuration.

``ANTEROOM_LOG_LEVEL`` sets the level of everything; ``ANTEROOM_LOG_LEVELS``
overrides it per logger, e.g. ``sidecar.gate=debug,aiohttp.access=info``.
The ``redis`` and ``aiohttp.access`` loggers stay at warning unless overridden.
Fields passed with ``extra={...}`` become keys of the event.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence

# attributes every LogRecord has; anything else came from ``extra``
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        event.update(_fields(record))
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{stamp} {record.levelname.lower():7} {record.name}: {record.getMessage()}"
        line = f"{line} {extra}" if extra else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(level: str, fmt: str, levels: Sequence[tuple[str, str]] = ()) -> None:
    """Root level and format; ``levels``: per-logger overrides (``ANTEROOM_LOG_LEVELS``,
    read and checked by the configuration)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would double nginx's; opt in with a per-logger level
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # the Redis client's own debug lines (connection chatter) would drown ours
    logging.getLogger("redis").setLevel(logging.WARNING)
    for name, lvl in levels:
        logging.getLogger(name).setLevel(lvl.upper())
