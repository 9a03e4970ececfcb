"""Two sidecar replicas behind one nginx upstream, sharing one Redis: no leader,
no sticky routing, one fair line."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest
from redis.asyncio import Redis

from devstack.stack import Stack
from sidecar.queue.engine import QueueRef
from tests.conftest import eventually, make_stack, ticket_members
from tests.visitors import Visitor

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two_replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = make_stack(tmp_path_factory.mktemp("replicas"), replicas=1)
    yield s
    s.stop()


def ticket(v: Visitor) -> int:
    assert v.cookie
    return int(v.cookie.split("|")[4])


async def test_leave_on_one_replica_refuses_the_cookie_on_all(
    two_replicas: Stack, http: aiohttp.ClientSession
) -> None:
    path = "/q/revoke/"
    v = Visitor(http, two_replicas.url)
    assert (await v.get(path)).status == 200
    cookie = v.cookie
    direct = [
        f"http://127.0.0.1:{p}/_anteroom/auth"
        for p in (two_replicas.sidecar_port, *two_replicas.replica_ports)
    ]
    headers = {
        "Host": "127.0.0.1",
        "Cookie": f"anteroom_revoke={cookie}",
        "X-Anteroom-Queue": "revoke",
        "X-Original-URI": path,
    }
    for url in direct:  # both replicas let the cookie pass from the cookie alone
        async with http.get(url, headers=headers) as r:
            assert r.status == 204
    await v.post("/_anteroom/leave")

    async def refused_everywhere() -> bool:
        statuses = []
        for url in direct:
            async with http.get(url, headers=headers) as r:
                statuses.append(r.status)
        return all(s != 204 for s in statuses)

    await eventually(refused_everywhere, within=1.5)


async def test_one_fair_line_across_replicas(
    two_replicas: Stack, http: aiohttp.ClientSession
) -> None:
    queue = "fair"
    path = f"/q/{queue}/"
    crowd = [Visitor(http, two_replicas.url) for _ in range(14)]
    replies = await asyncio.gather(*(v.get(path) for v in crowd))
    admitted = [v for v, r in zip(crowd, replies, strict=True) if r.status == 200]
    waiting = sorted(
        (v for v, r in zip(crowd, replies, strict=True) if r.status == 302), key=ticket
    )
    assert len(admitted) == 2 and len(waiting) == 12
    assert sorted(ticket(v) for v in crowd) == list(range(1, 15))

    keys = QueueRef("acme", queue).keys
    redis = Redis.from_url(two_replicas.redis_url)
    admitted_tickets: list[int] = []
    try:
        while waiting:
            for v in admitted:  # done shopping
                await v.post("/_anteroom/leave")
            admitted = []
            for _ in range(30):
                states = await asyncio.gather(*(v.status() for v in waiting))
                occupied = await redis.zcard(keys.active) + await redis.zcard(keys.invited)
                assert occupied <= 2
                admitted = [
                    v for v, s in zip(waiting, states, strict=True) if s["state"] == "admitted"
                ]
                if admitted:
                    break
                await asyncio.sleep(0.05)
            assert admitted, "nobody was admitted after two places were freed"
            admitted_tickets += [ticket(v) for v in admitted]
            # FIFO: nobody still in line holds an earlier ticket than someone let in
            in_line = await ticket_members(redis, keys.waiting)
            assert min(in_line, default=99) > max(admitted_tickets)
            waiting = [v for v in waiting if v not in admitted]
    finally:
        await redis.aclose()
    assert sorted(admitted_tickets) == list(range(3, 15))  # nobody lost, nobody twice
