"""Log lines a client's requests can cause at will are throttled (logs.Throttled),
in-process on the real Redis fixture: a location that takes the queue name from the
URL lets a client ask for more queues than a process tracks."""

from __future__ import annotations

import logging

import pytest

import sidecar.queue.refresher as refresher
from tests.conftest import AppClient


async def test_too_many_queues_is_one_line_not_one_per_request(
    app_client, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(refresher, "MAX_QUEUES", 2)
    client: AppClient = await app_client()
    statuses = []
    with caplog.at_level(logging.INFO):
        for i in range(30):
            r = await client.get(
                "/_anteroom/auth",
                headers={
                    "Host": "shop.test",
                    "X-Anteroom-Queue": f"junk{i}",
                    "X-Original-URI": "/",
                },
            )
            statuses.append(r.status)
    # two queues tracked; every other one waits (never passes unchecked)
    assert statuses[:2] == [204, 204] and set(statuses[2:]) == {401}, statuses
    lines = [r for r in caplog.records if r.getMessage().startswith("too many queues")]
    assert len(lines) == 1, [r.__dict__ for r in lines]
    assert lines[0].__dict__["count"] == 1
