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
from collections.abc import Callable, Sequence

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


CLIENT_LOG_EVERY = 60.0  # seconds between two lines of one kind a client can cause
EXCERPT_CHARS = 40  # what a line may quote of a client's bytes


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """A short, printable excerpt of client-chosen text: anything but printable ASCII
    becomes "?", and more than ``limit`` characters end in "…"."""
    cut = "".join(c if " " <= c <= "~" else "?" for c in text[:limit])
    return cut + "…" if len(text) > limit else cut


class Throttled:
    """Log lines a client can cause at will (a bad Host, a junk queue name, a poll
    while Redis is down): the first of each kind is logged, then at most one a
    minute per kind, each with ``count``, how many happened since the previous
    line. Client text goes through :func:`excerpt`. Kinds are the events' fixed
    texts, never client input, so the table stays small."""

    def __init__(
        self,
        logger: logging.Logger,
        every: float = CLIENT_LOG_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.every = every
        self.clock = clock
        self._last: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def log(self, level: int, event: str, fields: dict[str, object] | None = None) -> bool:
        """Counts ``event``; logs it (True) unless one of its kind was within the minute."""
        self._count[event] = self._count.get(event, 0) + 1
        now = self.clock()
        last = self._last.get(event)
        if last is not None and now - last < self.every:
            return False
        self._last[event] = now
        extra = {**(fields or {}), "count": self._count.pop(event), "every_s": int(self.every)}
        self.logger.log(level, event, extra=extra)
        return True

    def info(self, event: str, fields: dict[str, object] | None = None) -> bool:
        return self.log(logging.INFO, event, fields)

    def warning(self, event: str, fields: dict[str, object] | None = None) -> bool:
        return self.log(logging.WARNING, event, fields)

    def error(self, event: str, fields: dict[str, object] | None = None) -> bool:
        return self.log(logging.ERROR, event, fields)
