"""Access codes, invite-only queues and random order through nginx, three sidecar
replicas and one Redis: a code link is one place across every replica, an
invite-only queue turns everyone else away (a page for browsers, a 403 for JSON
clients), the code never stays in return_to, capacity holds, and a drawn waiter
is let in from the waiting page's polls."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from devstack.stack import Stack
from sidecar.queue.engine import QueueRef
from tests.conftest import ADMIN_TOKEN, eventually, make_stack
from tests.visitors import Visitor

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = make_stack(tmp_path_factory.mktemp("codes"), replicas=2)
    yield s
    s.stop()


async def setup(http: aiohttp.ClientSession, site: Stack, queue: str, **changes: Any) -> None:
    url = f"{site.admin_url}/api/queues/acme/{queue}"
    async with http.patch(url, headers=AUTH, json={"create": True, **changes}) as r:
        assert r.status in (200, 201), await r.text()


async def make_codes(http: aiohttp.ClientSession, site: Stack, queue: str, n: int) -> list[str]:
    url = f"{site.admin_url}/api/queues/acme/{queue}/codes"
    body = {"count": n, "label": "test", "path": f"/q/{queue}/page?x=1"}
    async with http.post(url, headers=AUTH, json=body) as r:
        assert r.status == 201, await r.text()
        return list((await r.json())["links"])


def state(v: Visitor) -> str:
    assert v.cookie
    return v.cookie.split("|")[3]


async def occupancy(redis: Redis, q: QueueRef) -> int:
    return int(await redis.zcard(q.keys.active)) + int(await redis.zcard(q.keys.invited))


async def test_a_code_link_is_one_place_across_three_replicas(
    site: Stack, http: aiohttp.ClientSession
) -> None:
    """40 clients open the same link at once, spread over three replicas: exactly one
    gets a place; the others are told the invitation does not work."""
    await setup(http, site, "race", access="invite", capacity=5)
    (link,) = await make_codes(http, site, "race", 1)
    clients = [Visitor(http, site.url) for _ in range(40)]
    replies = await asyncio.gather(*(v.get(link) for v in clients))
    placed = [v for v in clients if v.cookie]
    print(f"codes: 40 clients racing one link on 3 replicas: {len(placed)} place")
    assert len(placed) == 1 and state(placed[0]) == "a"
    refused = [r for r in replies if r.status == 302]
    assert len(refused) == 39
    assert all("access=invite#invite-invalid" in (r.location or "") for r in refused)


async def test_invite_only_turns_away_everyone_without_a_code(
    site: Stack, http: aiohttp.ClientSession
) -> None:
    await setup(http, site, "invite", access="invite")
    v = Visitor(http, site.url)
    r = await v.get("/q/invite/")
    assert r.status == 302 and (r.location or "").endswith("access=invite#invite")
    assert v.cookie is None  # no place
    r = await v.get("/q/invite/", headers={"Accept": "application/json"})
    assert r.status == 403 and r.json()["state"] == "invite"
    assert (await v.get("/_anteroom/status?queue=invite")).json()["state"] == "invite"
    r = await v.post("/_anteroom/join?queue=invite", headers={"Accept": "application/json"})
    assert r.status == 403 and r.json()["state"] == "invite"
    # a holder of a code gets in; the link's code is not kept anywhere
    (link,) = await make_codes(http, site, "invite", 1)
    r = await v.get(link)
    assert r.status == 200 and state(v) == "a"
    assert "anteroom_code" not in v.cookie  # type: ignore[operator]
    assert (await v.get("/q/invite/")).status == 200


async def test_a_code_holder_is_next_in_and_the_code_leaves_return_to(
    site: Stack, http: aiohttp.ClientSession
) -> None:
    q = QueueRef("acme", "next")
    await setup(http, site, "next", capacity=1)
    redis = Redis.from_url(site.redis_url)
    try:
        inside = Visitor(http, site.url)
        assert (await inside.get("/q/next/")).status == 200
        line = [Visitor(http, site.url) for _ in range(3)]
        for w in line:
            assert (await w.get("/q/next/")).status == 302
            await w.status()
        (link,) = await make_codes(http, site, "next", 1)
        holder = Visitor(http, site.url)
        r = await holder.get(link)
        assert r.status == 302 and state(holder) == "p"
        assert "anteroom_code" not in (r.location or "")
        assert "x%3D1" in (r.location or "")  # the rest of the link is kept
        body = await holder.status()
        assert (body["position"], body["ahead"]) == (1, 0)
        await inside.post("/_anteroom/leave")

        seen: list[dict[str, Any]] = []

        async def holder_first() -> bool:
            for w in line:
                assert (await w.status())["state"] == "waiting"
            assert await occupancy(redis, q) <= 1
            seen.append(await holder.status())
            return bool(seen[-1]["state"] == "admitted")

        await eventually(holder_first, within=10)
        body = seen[-1]  # the answer that let the holder in: back to the link's page
        assert "anteroom_code" not in body["redirect"] and body["redirect"].endswith("x=1")
        assert (await holder.get("/q/next/page?x=1")).status == 200
    finally:
        await redis.aclose()


async def test_random_order_through_the_waiting_page(
    site: Stack, http: aiohttp.ClientSession
) -> None:
    await setup(http, site, "draw", capacity=1, order="random")
    inside = Visitor(http, site.url)
    assert (await inside.get("/q/draw/")).status == 200
    line = [Visitor(http, site.url) for _ in range(4)]
    for w in line:
        assert (await w.get("/q/draw/")).status == 302

    async def all_in_draw() -> bool:
        bodies = [await w.status() for w in line]
        return all(b["order"] == "random" and b["in_draw"] == 4 for b in bodies)

    await eventually(all_in_draw, within=10)
    body = await line[0].status()
    assert body["position"] is None and body["eta_range"] is None
    await inside.post("/_anteroom/leave")

    async def one_admitted() -> bool:
        states = [(await w.status())["state"] for w in line]
        assert states.count("admitted") <= 1
        return states.count("admitted") == 1

    await eventually(one_admitted, within=15, interval=0.3)
