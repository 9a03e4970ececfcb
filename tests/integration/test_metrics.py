"""/metrics on a sidecar with two worker processes: counters add up over workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack.stack import Stack
from tests.conftest import ADMIN_TOKEN, eventually, make_stack
from tests.visitors import Visitor

Sample = tuple[str, frozenset[tuple[str, str]]]

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = make_stack(tmp_path_factory.mktemp("metrics"), ANTEROOM_WORKERS="2")
    yield s
    s.stop()


async def scrape(http: aiohttp.ClientSession, stack: Stack) -> dict[Sample, float]:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with http.get(stack.admin_url + "/metrics", headers=headers) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await r.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_counters_follow_traffic_through_nginx_over_both_workers(
    workers: Stack, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    queue = "counted"

    def decided(outcome: str) -> Sample:
        labels = {("tenant", "acme"), ("queue", queue), ("outcome", outcome)}
        return ("anteroom_decisions_total", frozenset(labels))

    before = await scrape(http, workers)
    crowd = [Visitor(http, workers.url) for _ in range(4)]
    for v in crowd:  # two enter (capacity 2), two wait
        await v.get(f"/q/{queue}/")
    for _ in range(3):  # the two inside browse on: six admitted decisions
        for v in crowd[:2]:
            assert (await v.get(f"/q/{queue}/")).status == 200
    # new connections each time: the kernel spreads them over both workers

    async def counted() -> dict[Sample, Any] | None:
        m = await scrape(http, workers)
        got = {o: m.get(decided(o), 0) for o in ("entered", "waiting", "admitted")}
        return m if got == {"entered": 2, "waiting": 2, "admitted": 6} else None

    m = await eventually(counted, within=3.0, interval=0.2)
    h: Sample = ("anteroom_decision_duration_seconds_count", frozenset())
    assert m[h] - before.get(h, 0) >= 10
    inf: Sample = ("anteroom_decision_duration_seconds_bucket", frozenset({("le", "+Inf")}))
    assert m[inf] == m[h]  # a histogram's +Inf bucket is its count
    hb: Sample = ("anteroom_heartbeat_batch_size_count", frozenset())

    async def flushed() -> bool:  # admitted sessions were written as heartbeats
        return (await scrape(http, workers)).get(hb, 0) >= 1

    await eventually(flushed, within=3.0, interval=0.2)
