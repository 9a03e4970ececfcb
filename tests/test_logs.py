from __future__ import annotations

import json
import logging

import pytest

from sidecar.config import ConfigError, load
from sidecar.logs import JsonFormatter, TextFormatter, Throttled, excerpt, setup


def levels(raw: str) -> tuple[tuple[str, str], ...]:
    """ANTEROOM_LOG_LEVELS as the configuration reads it."""
    return load({"ANTEROOM_LOG_LEVELS": raw}, serving=False).log_levels


def record(**extra: object) -> logging.LogRecord:
    r = logging.LogRecord("sidecar.gate", logging.INFO, __file__, 1, "admitted", (), None)
    r.__dict__.update(extra)
    return r


def test_json_event_is_one_line_with_fields() -> None:
    line = JsonFormatter().format(record(queue="acme:shop", ticket=7))
    assert "\n" not in line
    event = json.loads(line)
    assert event["event"] == "admitted" and event["level"] == "info"
    assert event["queue"] == "acme:shop" and event["ticket"] == 7
    assert event["logger"] == "sidecar.gate"


def test_text_event_names_fields() -> None:
    assert TextFormatter().format(record(ticket=7)).endswith("sidecar.gate: admitted ticket=7")


@pytest.fixture(autouse=True)
def keep_root_logger():  # setup() replaces the root handlers; put pytest's back
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.NOTSET)
    logging.getLogger("redis").setLevel(logging.NOTSET)


def test_levels_per_logger() -> None:
    setup("info", "json", levels("sidecar.gate=debug, sidecar.refresher=error"))
    try:
        assert logging.getLogger("sidecar.gate").level == logging.DEBUG
        assert logging.getLogger("sidecar.refresher").level == logging.ERROR
        assert logging.getLogger().level == logging.INFO
    finally:
        for name in ("sidecar.gate", "sidecar.refresher"):
            logging.getLogger(name).setLevel(logging.NOTSET)


def test_bad_level_override_is_named() -> None:
    with pytest.raises(ConfigError, match="ANTEROOM_LOG_LEVELS"):
        levels("sidecar.gate=chatty")


def test_redis_client_debug_stays_quiet_unless_asked() -> None:
    setup("debug", "json")
    assert logging.getLogger("redis.asyncio.connection").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("sidecar.gate").getEffectiveLevel() == logging.DEBUG
    setup("debug", "json", levels("redis=debug"))
    assert logging.getLogger("redis.asyncio.connection").getEffectiveLevel() == logging.DEBUG


def test_a_throttled_kind_logs_once_a_minute_with_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [1000.0]
    t = Throttled(logging.getLogger("sidecar.gate"), clock=lambda: now[0])
    with caplog.at_level(logging.INFO):
        assert t.warning("unknown host", {"host": "a"})  # the first one at once
        for _ in range(49):
            assert not t.warning("unknown host", {"host": "b"})
        assert t.error("bad queue name")  # another kind is not held back by the first
        now[0] += 60
        assert t.warning("unknown host", {"host": "c"})
    lines = [(r.getMessage(), r.__dict__["count"]) for r in caplog.records]
    assert lines == [("unknown host", 1), ("bad queue name", 1), ("unknown host", 50)]


def test_an_excerpt_is_short_and_printable() -> None:
    assert excerpt("shop.example") == "shop.example"
    cut = excerpt("a\x1b[31m\n" + "x" * 500)
    assert cut == "a?[31m?" + "x" * 33 + "…"
    assert excerpt("é" * 3) == "???"
