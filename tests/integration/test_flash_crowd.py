"""A launch second through real nginx: a thousand people press the same button at
once. Nobody gets a 5xx, nobody is let past a full queue, everyone gets a place
(a cookie with a ticket of their own), and the line is in ticket order."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import make_stack
from tests.visitors import Visitor

pytestmark = pytest.mark.integration

CROWD = 1000


def ticket(v: Visitor) -> int:
    assert v.cookie, "no place in line"
    return int(v.cookie.split("|")[4])


async def burst(url: str, path: str, n: int) -> tuple[list[Visitor], list[int]]:
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar()
    ) as http:
        crowd = [Visitor(http, url) for _ in range(n)]
        replies = await asyncio.gather(*(v.get(path) for v in crowd))
    return crowd, [r.status for r in replies]


async def test_a_thousand_newcomers_at_once(tmp_path: Path) -> None:
    stack = make_stack(tmp_path / "s", ANTEROOM_CAPACITY="3", ANTEROOM_SESSION_TTL="60")
    try:
        crowd, statuses = await burst(stack.url, "/q/launch/", CROWD)
        counts = Counter(statuses)
        print(f"burst of {CROWD}: {dict(counts)}")
        assert set(counts) <= {200, 302}, counts  # no 5xx, nothing else either
        assert counts[200] == 3  # exactly the capacity, no more
        tickets = [ticket(v) for v in crowd]  # everyone has a place...
        assert sorted(tickets) == list(range(1, CROWD + 1))  # ...of their own
        admitted = sorted(t for t, s in zip(tickets, statuses, strict=True) if s == 200)
        assert admitted == [1, 2, 3]  # the first three in line

        # positions are 1..N in ticket order
        waiting = sorted((v for v, s in zip(crowd, statuses, strict=True) if s == 302), key=ticket)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            sem = asyncio.Semaphore(100)

            async def position(v: Visitor) -> int:
                async with sem:
                    v.http = http
                    return int((await v.status())["position"])

            positions = await asyncio.gather(*(position(v) for v in waiting))
        assert positions == list(range(1, len(waiting) + 1))
    finally:
        stack.stop()


async def test_a_busy_pool_never_lets_anyone_past_a_full_queue(tmp_path: Path) -> None:
    """One Redis connection for requests and a 50 ms wait for it, with the fail-open
    policy: load is back-pressure ("wait"), never mistaken for Redis being down."""
    stack = make_stack(
        tmp_path / "s",
        ANTEROOM_CAPACITY="3",
        ANTEROOM_ON_REDIS_ERROR="open",
        ANTEROOM_REDIS_POOL="1",
        ANTEROOM_REDIS_POOL_TIMEOUT="0.05",
    )
    try:
        _, first = await burst(stack.url, "/q/pool/", 3)
        assert first == [200, 200, 200]
        _, statuses = await burst(stack.url, "/q/pool/", 600)
        counts = Counter(statuses)
        print(f"burst of 600 on a full queue with a one-connection pool: {dict(counts)}")
        assert counts[200] == 0, counts  # nobody past the full queue
        assert set(counts) == {302}, counts
    finally:
        stack.stop()
