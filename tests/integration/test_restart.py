"""Redis restarts under a queue, through real nginx: without persistence (the queue
gets a new epoch; places from before come back under it while their tokens
return in time: tests/integration/test_recovery.py) and with an append-only file
(nothing changes for anyone)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from devstack.stack import Stack
from tests.conftest import eventually, make_stack
from tests.occupancy import Occupancy, sampling
from tests.visitors import Visitor, fields, fill_then_queue

pytestmark = pytest.mark.integration

QUEUE = "restart"
PATH = f"/q/{QUEUE}/"
CAPACITY = 2


@pytest.fixture
async def sampled(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Stack, Occupancy]]:
    """A stack and its queue's occupancy, sampled every 50 ms through Redis' restarts."""
    aof = getattr(request, "param", False)
    stack = make_stack(tmp_path / "stack", redis_aof=aof, ANTEROOM_CAPACITY=str(CAPACITY))
    try:
        async with sampling(stack.redis_url, "acme", QUEUE) as occupancy:
            yield stack, occupancy
    finally:
        stack.stop()


def restart_redis(stack: Stack) -> None:
    stack.stop_one("redis")
    stack.start_redis()  # same port; the sidecar reconnects by itself


@dataclass
class Admission:
    visitor: str
    ticket: int
    epoch: str
    at: float


async def wait_then_visit(
    name: str, v: Visitor, admissions: list[Admission], hold: float = 0.6, within: float = 40
) -> None:
    """Waits like the waiting page does (status polls), then uses the site for
    ``hold`` seconds and leaves."""
    deadline = time.monotonic() + within
    while True:
        body = await v.status()
        if body["state"] == "admitted":
            break
        if body["state"] == "none":
            assert (await v.get(PATH)).status in (200, 302)  # back to the page: a place
        assert time.monotonic() < deadline, f"{name} still waiting: {body}"
        await asyncio.sleep(0.3)
    state, ticket, epoch = fields(v.cookie)
    assert state == "a"
    admissions.append(Admission(name, ticket, epoch, time.monotonic()))
    until = time.monotonic() + hold
    while time.monotonic() < until:
        assert (await v.get(PATH)).status == 200
        await asyncio.sleep(0.2)
    assert (await v.post(f"/_anteroom/leave?queue={QUEUE}")).status == 200


async def test_restart_without_persistence_nobody_stuck_no_ticket_twice(
    sampled: tuple[Stack, Occupancy], http: aiohttp.ClientSession
) -> None:
    stack, occupancy = sampled
    admitted, waiters = await fill_then_queue(http, stack.url, PATH, CAPACITY, 4)
    assert [fields(v.cookie)[1] for v in waiters] == [3, 4, 5, 6]
    before = fields(waiters[0].cookie)[2]

    restart_redis(stack)  # counters back to zero; every cookie above says otherwise

    admissions = [
        Admission(f"admitted{i}", *fields(v.cookie)[1:], 0.0) for i, v in enumerate(admitted)
    ]
    newcomers = [Visitor(http, stack.url) for _ in range(2)]
    started = time.monotonic()
    crowd = [
        *(wait_then_visit(f"waiter{i}", v, admissions) for i, v in enumerate(waiters)),
        *(wait_then_visit(f"newcomer{i}", v, admissions) for i, v in enumerate(newcomers)),
    ]

    async def admitted_from_before(v: Visitor) -> None:
        # keeps using the site: passes while Redis counts it, else joins the line
        for _ in range(10):
            assert (await v.get(PATH)).status in (200, 302)
            await asyncio.sleep(0.2)
        await v.post(f"/_anteroom/leave?queue={QUEUE}")

    await asyncio.gather(*crowd, *(admitted_from_before(v) for v in admitted))
    took = time.monotonic() - started

    # everyone from before got in, with a place of the new epoch
    names = {a.visitor for a in admissions}
    assert {f"waiter{i}" for i in range(4)} <= names and {"newcomer0", "newcomer1"} <= names
    after = {a.epoch for a in admissions if a.visitor.startswith("waiter")}
    assert len(after) == 1 and before not in after
    # no ticket admitted twice within one epoch
    tickets = [(a.epoch, a.ticket) for a in admissions]
    assert len(tickets) == len(set(tickets)), tickets
    assert occupancy.samples and max(occupancy.samples) <= CAPACITY, max(occupancy.samples)
    print(
        f"\nrestart without persistence: 6 visitors through in {took:.1f}s, "
        f"{len(occupancy.samples)} samples, most occupied {max(occupancy.samples)}/{CAPACITY}"
    )


async def test_sessions_from_before_come_back_only_with_room(
    sampled: tuple[Stack, Occupancy], http: aiohttp.ClientSession
) -> None:
    """After a restart that lost everything, sessions admitted before stay silent
    past the recovery window and newcomers take the free slots; when they come
    back they end (their cookie stops passing) instead of exceeding capacity."""
    stack, occupancy = sampled
    old = [Visitor(http, stack.url) for _ in range(CAPACITY)]
    for v in old:
        assert (await v.get(PATH)).status == 200
    await asyncio.sleep(0.5)  # their heartbeats are written
    restart_redis(stack)
    new = [Visitor(http, stack.url) for _ in range(CAPACITY)]

    async def entered(v: Visitor) -> bool:
        return (await v.get(PATH)).status == 200

    for v in new:
        await eventually(lambda v=v: entered(v), within=10)

    async def turned_away() -> bool:
        codes = [(await v.get(PATH)).status for v in old]
        return all(c == 302 for c in codes)

    await eventually(turned_away, within=5, interval=0.2)
    for v in new:
        assert (await v.get(PATH)).status == 200
    assert max(occupancy.samples) <= CAPACITY


@pytest.mark.parametrize("sampled", [True], indirect=True)
async def test_restart_with_an_append_only_file_changes_nothing(
    sampled: tuple[Stack, Occupancy], http: aiohttp.ClientSession
) -> None:
    stack, occupancy = sampled
    admitted, waiters = await fill_then_queue(http, stack.url, PATH, CAPACITY, 4)
    places = [fields(v.cookie) for v in waiters]

    restart_redis(stack)

    admissions: list[Admission] = []

    async def keep_then_leave(v: Visitor) -> None:
        for _ in range(5):
            assert (await v.get(PATH)).status == 200  # still counted: nobody ended
            await asyncio.sleep(0.2)
        await v.post(f"/_anteroom/leave?queue={QUEUE}")

    await asyncio.gather(
        *(keep_then_leave(v) for v in admitted),
        *(wait_then_visit(f"waiter{i}", v, admissions) for i, v in enumerate(waiters)),
    )
    got = {a.visitor: (a.ticket, a.epoch) for a in admissions}
    # each kept their ticket and epoch, and they went in by ticket order
    assert [got[f"waiter{i}"] for i in range(4)] == [(t, e) for _, t, e in places]
    order = [a.ticket for a in sorted(admissions, key=lambda a: a.at)]
    assert sorted(order[:2]) == [3, 4] and sorted(order[2:]) == [5, 6]  # two slots a round
    assert max(occupancy.samples) <= CAPACITY
