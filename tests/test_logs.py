from __future__ import annotations

import json
import logging

import pytest

from sidecar.config import ConfigError, load
from sidecar.logs import JsonFormatter, TextFormatter, setup


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
