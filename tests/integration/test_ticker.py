"""One ticker per queue, through real nginx, two sidecar processes and Redis: the
process holding a queue's lease is killed (SIGKILL) while the line moves; another
takes the lease over within about a second, and the line keeps every promise
(nothing lost, nobody admitted twice, FIFO, capacity never exceeded)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import aiohttp
import pytest
from redis.asyncio import Redis

from devstack.stack import Stack
from sidecar.queue.engine import QueueRef
from sidecar.queue.keys import TICKERS_KEY
from tests.conftest import eventually, make_stack, ticket_members
from tests.occupancy import sampling
from tests.visitors import Visitor, fill_then_queue

pytestmark = pytest.mark.integration

QUEUE = "ticker"
PATH = f"/q/{QUEUE}/"
CAPACITY = 2


@pytest.fixture
def two_sidecars(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = make_stack(tmp_path_factory.mktemp("ticker"), replicas=1)
    yield s
    s.stop()


def ticket(v: Visitor) -> int:
    assert v.cookie
    return int(v.cookie.split("|")[4])


async def holder(redis: Redis) -> str:
    raw: bytes | None = await redis.hget(TICKERS_KEY, f"l:acme:{QUEUE}")  # type: ignore[assignment]
    return raw.decode().split()[0] if raw else ""


async def test_ticker_killed_mid_tick_is_taken_over_and_the_line_holds(
    two_sidecars: Stack, http: aiohttp.ClientSession
) -> None:
    keys = QueueRef("acme", QUEUE).keys
    redis = Redis.from_url(two_sidecars.redis_url)
    try:
        async with sampling(two_sidecars.redis_url, "acme", QUEUE, every=0.01) as occupancy:
            admitted, waiting = await fill_then_queue(http, two_sidecars.url, PATH, CAPACITY, 10)
            waiting.sort(key=ticket)
            first = await eventually(lambda: holder(redis), within=3)
            pids = {p.pid for name, p in two_sidecars.procs.items() if name.startswith("sidecar")}
            pid = int(first.split("-")[0])
            assert pid in pids  # the lease names a sidecar process

            admitted_tickets: list[int] = []
            takeover = None
            rounds = 0
            while waiting:
                for v in admitted:  # done shopping: the leave wakes the ticker at once
                    await v.post("/_anteroom/leave")
                if rounds == 1:  # the ticker dies while it advances the line
                    os.kill(pid, signal.SIGKILL)
                    killed = time.monotonic()
                    new = await eventually(lambda: _other(redis, first), within=5, interval=0.02)
                    takeover = time.monotonic() - killed
                    assert int(new.split("-")[0]) in pids - {pid}
                rounds += 1
                admitted = []
                for _ in range(100):
                    states = await asyncio.gather(*(v.status() for v in waiting))
                    admitted = [
                        v for v, s in zip(waiting, states, strict=True) if s["state"] == "admitted"
                    ]
                    if admitted:
                        break
                    await asyncio.sleep(0.05)
                assert admitted, "nobody was admitted after places were freed"
                admitted_tickets += [ticket(v) for v in admitted]
                in_line = await ticket_members(redis, keys.waiting)
                assert min(in_line, default=99) > max(admitted_tickets)  # FIFO
                waiting = [v for v in waiting if v not in admitted]
    finally:
        await redis.aclose()
    print(f"lease taken over after {takeover:.2f} s")
    assert takeover is not None and takeover < 1.5, takeover  # lease: 750 ms
    assert sorted(admitted_tickets) == list(range(3, 13))  # nobody lost, nobody twice
    assert occupancy.samples and max(occupancy.samples) <= CAPACITY


async def _other(redis: Redis, first: str) -> str:
    now = await holder(redis)
    return now if now and now != first else ""
