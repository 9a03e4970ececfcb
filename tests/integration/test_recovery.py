"""Redis loses a queue (killed, restarted without persistence) while newcomers
keep arriving, through real nginx: the line is rebuilt from the signed tokens.
The admitted visitors keep passing, the waiters from before keep their tickets
and go first, in their order, and newcomers queue behind them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from devstack.stack import Stack
from tests.conftest import make_stack
from tests.occupancy import Occupancy, sampling
from tests.visitors import Visitor, fields, fill_then_queue

pytestmark = pytest.mark.integration

QUEUE = "recover"
PATH = f"/q/{QUEUE}/"
CAPACITY = 2


@dataclass
class Line:
    """What the visitors saw, and what Redis counted every 50 ms."""

    occupancy: Occupancy
    admitted: list[tuple[str, int, str]] = field(default_factory=list)  # name, ticket, epoch
    first_place: dict[str, tuple[int, str]] = field(default_factory=dict)  # ticket, epoch
    refused_inside: list[str] = field(default_factory=list)


@pytest.fixture
async def stack_and_line(tmp_path: Path) -> AsyncIterator[tuple[Stack, Line]]:
    stack = make_stack(tmp_path / "stack", ANTEROOM_CAPACITY=str(CAPACITY))
    try:
        async with sampling(stack.redis_url, "acme", QUEUE) as occupancy:
            yield stack, Line(occupancy)
    finally:
        stack.stop()


async def wait_then_visit(name: str, v: Visitor, line: Line, within: float = 60) -> None:
    """Takes a place if it has none (Redis may be down: then it comes back), waits
    like the waiting page (status polls), uses the site briefly, and leaves."""
    deadline = time.monotonic() + within
    while not v.cookie:
        assert (await v.get(PATH)).status == 302
        assert time.monotonic() < deadline, f"{name} never got a place"
        if not v.cookie:
            await asyncio.sleep(0.3)
    line.first_place[name] = fields(v.cookie)[1:]
    while True:
        body = await v.status()
        if body["state"] == "admitted":
            break
        assert body["state"] == "waiting", (name, body)
        assert time.monotonic() < deadline, f"{name} still waiting: {body}"
        await asyncio.sleep(0.25)
    state, ticket, epoch = fields(v.cookie)
    assert state == "a"
    line.admitted.append((name, ticket, epoch))
    for _ in range(2):
        assert (await v.get(PATH)).status == 200
        await asyncio.sleep(0.15)
    assert (await v.post(f"/_anteroom/leave?queue={QUEUE}")).status == 200


async def test_redis_data_loss_rebuilds_the_line_from_tokens(
    stack_and_line: tuple[Stack, Line], http: aiohttp.ClientSession
) -> None:
    stack, line = stack_and_line
    inside, waiters = await fill_then_queue(http, stack.url, PATH, CAPACITY, 4)
    old_places = {f"waiter{i}": fields(v.cookie)[1:] for i, v in enumerate(waiters)}
    old_epoch = fields(waiters[0].cookie)[2]
    assert [t for t, _ in old_places.values()] == [3, 4, 5, 6]

    released = asyncio.Event()

    async def keep_using(name: str, v: Visitor) -> None:
        # an admitted visitor browsing through the outage: never sent to the waiting page
        while not released.is_set():
            r = await v.get(PATH)
            if r.status != 200:
                line.refused_inside.append(f"{name}: {r.status}")
            await asyncio.sleep(0.2)
        await v.post(f"/_anteroom/leave?queue={QUEUE}")

    newcomers: list[tuple[str, Visitor]] = []
    stop_arrivals = asyncio.Event()

    async def arrivals() -> list[None]:
        visits = []
        while not stop_arrivals.is_set():
            name = f"newcomer{len(newcomers)}"
            v = Visitor(http, stack.url)
            newcomers.append((name, v))
            visits.append(asyncio.create_task(wait_then_visit(name, v, line)))
            await asyncio.sleep(0.6)
        return await asyncio.gather(*visits)

    crowd = [
        *(asyncio.create_task(keep_using(f"inside{i}", v)) for i, v in enumerate(inside)),
        *(
            asyncio.create_task(wait_then_visit(n, v, line))
            for n, v in zip(old_places, waiters, strict=True)
        ),
        asyncio.create_task(arrivals()),
    ]
    await asyncio.sleep(1.0)
    stack.stop_one("redis")  # no persistence: everything in it is gone
    await asyncio.sleep(1.0)
    stack.start_redis()  # same port, empty; the sidecar reconnects by itself
    restarted = time.monotonic()
    await asyncio.sleep(6.5)  # past the recovery window (heartbeat 0.2 s + 1 s + 4 s)
    stop_arrivals.set()
    await asyncio.sleep(1.0)
    released.set()  # the visitors inside leave: the line moves
    await asyncio.gather(*crowd)
    took = time.monotonic() - restarted

    assert not line.refused_inside, line.refused_inside
    got = {name: (ticket, epoch) for name, ticket, epoch in line.admitted}
    assert len(got) == len(line.admitted), "someone admitted twice"
    new_epoch = got["waiter0"][1]
    assert new_epoch != old_epoch and {e for _, _, e in line.admitted} == {new_epoch}
    # every place from before the loss (the waiters and newcomers who had joined)
    # went in with its own ticket, under the new epoch
    old = {n: p[0] for n, p in line.first_place.items() if p[1] == old_epoch}
    assert set(old) >= set(old_places) and len(old) > len(old_places), old
    for name, ticket in old.items():
        assert got[name] == (ticket, new_epoch), (name, got[name])
    after = {n for n, p in line.first_place.items() if p[1] == new_epoch}
    assert len(after) >= 5, "newcomers kept arriving after the loss"
    # in ticket order: nobody overtook anyone by more than the slots opened at
    # once (capacity), so places from before went in ahead of newcomers
    order = [ticket for _, ticket, _ in line.admitted]
    for i, t in enumerate(order):
        assert all(t < later for later in order[i + CAPACITY :]), order
    names = [n for n, _, _ in line.admitted]
    assert all(n in old for n in names[: len(old) - CAPACITY + 1]), names
    # capacity held throughout (Redis' count, sampled every 50 ms)
    occupancy = line.occupancy.samples
    assert occupancy and max(occupancy) <= CAPACITY, max(occupancy)
    print(
        f"\nredis data loss: {len(line.admitted)} admissions in {took:.1f}s after the restart, "
        f"{len(old)} places from before, {len(after)} newcomers after; "
        f"most occupied {max(occupancy)}/{CAPACITY}"
    )
