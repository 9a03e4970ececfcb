"""The join budget caps the places one address holds, through real nginx: in a
scheduled pre-queue every place is a draw at the opening, so an address that
keeps joining and keeps its places alive must never hold more than the budget."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from devstack.stack import Stack
from tests.conftest import make_stack
from tests.visitors import Visitor, clients_from

pytestmark = pytest.mark.integration

BUDGET = 3
QUEUE = "presale"
PATH = f"/q/{QUEUE}/"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Stack]:
    s = make_stack(
        tmp_path / "stack",
        ANTEROOM_JOINS_PER_ADDRESS=str(BUDGET),
        ANTEROOM_OPENS_AT="4000000000",  # a pre-queue for the whole test
        ANTEROOM_LOG_LEVEL="info",
    )
    yield s
    s.stop()


@pytest.fixture
async def honest_http() -> AsyncIterator[list[aiohttp.ClientSession]]:
    """Five visitors' clients, each from its own loopback address (127.0.0.2 ..)."""
    async with clients_from(f"127.0.0.{n}" for n in range(2, 7)) as sessions:
        yield sessions


async def test_an_address_never_holds_more_places_than_its_budget(
    site: Stack, http: aiohttp.ClientSession, honest_http: list[aiohttp.ClientSession]
) -> None:
    """One client (127.0.0.1) takes a new place about every 0.4 s for 8 s and keeps
    every place alive (status polls). Every 2 s a minute passes for the join rate
    (its per-minute counters are dropped, as their expiry would), so the test shows
    in seconds what took minutes: with a per-minute count alone it held 3, 6, 9, ...
    places. It never holds more than BUDGET; five visitors from other addresses each
    get their place and keep it."""
    redis = Redis.from_url(site.redis_url)
    places: list[Visitor] = []  # the client's places (one cookie each)
    most, attempts, refused, minutes = 0, 0, 0, 0

    async def still_in_line() -> int:
        held = 0
        for v in places:
            body = await v.status()
            held += body["state"] == "waiting" and body["notice"] == "opens_later"
        return held

    async def attack() -> None:
        nonlocal most, attempts, refused, minutes
        started = time.monotonic()
        next_minute = started + 2
        while time.monotonic() - started < 8:
            attempts += 1
            v = Visitor(http, site.url)
            r = await v.get(PATH)
            assert r.status == 302, r.status
            if v.cookie:
                places.append(v)
            else:
                refused += 1
                assert r.headers.get("Retry-After") == "60"
            most = max(most, await still_in_line())
            if time.monotonic() >= next_minute:
                minutes += 1
                next_minute += 2
                async for k in redis.scan_iter(f"aq:{{acme:{QUEUE}}}:addr:*"):
                    await redis.delete(k)
            await asyncio.sleep(0.4)

    async def honest(i: int, session: aiohttp.ClientSession) -> str:
        await asyncio.sleep(0.7 * i)  # arriving during the attack
        v = Visitor(session, site.url)
        r = await v.get(PATH)
        assert r.status == 302 and v.cookie, (i, r.status)
        for _ in range(8):
            body = await v.status()
            assert body["state"] == "waiting" and body["notice"] == "opens_later", body
            await asyncio.sleep(0.5)
        return v.cookie

    try:
        _, *tokens = await asyncio.gather(
            attack(), *(honest(i, s) for i, s in enumerate(honest_http))
        )
        assert minutes >= 3 and attempts >= 15, (minutes, attempts)
        assert most == BUDGET, f"held {most} places at once (budget {BUDGET})"
        assert refused >= attempts - BUDGET - 1
        assert len(set(tokens)) == 5
        assert await still_in_line() == BUDGET  # and it still holds its places
    finally:
        await redis.aclose()
