"""Closing a queue (mode closed, closes_at) and the message to the line, on a
running stack: two sidecar processes behind real nginx, one Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from devstack.stack import Stack
from tests.conftest import eventually, make_stack
from tests.visitors import Visitor

pytestmark = pytest.mark.integration

ADMIN = "closing-admin-token-0123456789"
OPERATOR = "closing-operator-token-012345"
MESSAGE = 'Sold out <b>today</b> & "tomorrow"\nSee you soon'


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = make_stack(
        tmp_path_factory.mktemp("closed"),
        replicas=1,
        ANTEROOM_ADMIN_TOKEN=f"ada:{ADMIN},olga:operator:{OPERATOR}",
        # the shipped refresh interval: the time to every waiting page is the real one
        ANTEROOM_REFRESH_INTERVAL="0.25",
    )
    yield s
    s.stop()


async def api(
    http: aiohttp.ClientSession, stack: Stack, method: str, path: str, token: str = ADMIN, **kw: Any
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.request(method, stack.admin_url + path, headers=headers, **kw) as r:
        return r.status, (
            await r.json() if r.content_type == "application/json" else await r.text()
        )


async def status_on(
    http: aiohttp.ClientSession, port: int, queue: str, cookie: str | None, lang: str = ""
) -> dict[str, Any]:
    """The status endpoint of one sidecar process, asked directly."""
    headers = {"Host": "127.0.0.1"}
    if cookie:
        headers["Cookie"] = f"anteroom_{queue}={cookie}"
    url = f"http://127.0.0.1:{port}/_anteroom/status?queue={queue}&lang={lang}"
    async with http.get(url, headers=headers) as r:
        assert r.status == 200, await r.text()
        return dict(await r.json())


def ports(stack: Stack) -> list[int]:
    return [stack.sidecar_port, *stack.replica_ports]


async def tickets(stack: Stack, queue: str) -> int:
    r = Redis.from_url(stack.redis_url)
    try:
        return int(await r.get(f"aq:{{acme:{queue}}}:tickets") or 0)
    finally:
        await r.aclose()


async def active(stack: Stack, queue: str) -> int:
    r = Redis.from_url(stack.redis_url)
    try:
        return int(await r.zcard(f"aq:{{acme:{queue}}}:active"))
    finally:
        await r.aclose()


async def closed_decisions(http: aiohttp.ClientSession, stack: Stack, queue: str) -> float:
    _, text = await api(http, stack, "GET", "/metrics")
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if (
                s.name == "anteroom_decisions_total"
                and s.labels.get("queue") == queue
                and s.labels.get("outcome") == "closed"
            ):
                return float(s.value)
    return 0.0


async def test_closing_tells_the_line_turns_newcomers_away_and_lets_sessions_finish(
    two: Stack, http: aiohttp.ClientSession
) -> None:
    queue = "closing"
    path = f"/q/{queue}/item"
    inside = [Visitor(http, two.url) for _ in range(2)]  # capacity 2: full
    for v in inside:
        assert (await v.get(path)).status == 200
    line = [Visitor(http, two.url) for _ in range(2)]
    for v in line:
        assert (await v.get(path)).status == 302
        assert (await v.status())["state"] == "waiting"

    changes = {"mode": "closed", "message": MESSAGE, "message_fr": "Épuisé", "closed_link": "/"}
    started = time.monotonic()
    status, view = await api(http, two, "PATCH", f"/api/queues/acme/{queue}", json=changes)
    assert status == 200 and view["mode"] == "closed", view

    # every process tells every waiter, within a second
    async def told_everywhere() -> bool:
        for port in ports(two):
            for v in line:
                if (await status_on(http, port, queue, v.cookie))["state"] != "closed":
                    return False
        return True

    await eventually(told_everywhere, within=1.0, interval=0.02)
    print(f"\nclose -> every waiter on both processes told: {time.monotonic() - started:.3f} s")
    body = await status_on(http, two.sidecar_port, queue, line[0].cookie)
    assert body["message"] == MESSAGE and body["link"] == "/" and body["poll_after"] is None
    assert (await status_on(http, two.replica_ports[0], queue, line[0].cookie, "fr"))[
        "message"
    ] == "Épuisé"

    # newcomers: no place, the closed view; JSON clients a 410
    before = await tickets(two, queue)
    for _ in range(4):  # both processes (nginx takes turns)
        r = await Visitor(http, two.url).get(path)
        assert r.status == 302 and r.location is not None and r.location.endswith("#closed")
        assert not r.set_cookies
    r = await Visitor(http, two.url).get(path, headers={"Accept": "application/json"})
    assert r.status == 410 and r.json()["state"] == "closed" and not r.set_cookies
    # people in line who come back to the page get the closed view, not a claim
    for v in line:
        r = await v.get(path)
        assert r.status == 302 and r.location is not None and r.location.endswith("#closed")
    assert await tickets(two, queue) == before
    # a newcomer's waiting page (no cookie) learns it from status too
    no_place = await status_on(http, two.sidecar_port, queue, None)
    assert no_place["state"] == "closed" and no_place["message"] == MESSAGE
    # the API join: 410 with the message
    async with http.post(
        f"{two.url}/_anteroom/join?queue={queue}", headers={"Host": "127.0.0.1"}
    ) as resp:
        assert resp.status == 410 and (await resp.json())["message"] == MESSAGE

    # admitted sessions finish normally
    for v in inside:
        for _ in range(2):
            assert (await v.get(path)).status == 200
    assert await closed_decisions(http, two, queue) >= 1

    # reopening: newcomers queue again
    await api(http, two, "PATCH", f"/api/queues/acme/{queue}", json={"mode": "on"})

    async def queued_again() -> bool:
        r = await Visitor(http, two.url).get(path)
        return r.status == 302 and not (r.location or "").endswith("#closed")

    await eventually(queued_again, within=1.0, interval=0.05)


async def test_end_sessions_signs_everyone_out_on_every_process(
    two: Stack, http: aiohttp.ClientSession
) -> None:
    queue = "ending"
    path = f"/q/{queue}/item"
    inside = [Visitor(http, two.url) for _ in range(2)]
    for v in inside:
        assert (await v.get(path)).status == 200
    where = f"/api/queues/acme/{queue}"
    # ending sessions is revoking them: an operator may close, not sign people out
    status, body = await api(
        http, two, "PATCH", where, OPERATOR, json={"mode": "closed", "end_sessions": True}
    )
    assert status == 403 and body["needs"] == "admin"
    status, body = await api(http, two, "PATCH", where, json={"end_sessions": True})
    assert status == 400 and "end_sessions" in body["fields"]  # only when closing
    _, view = await api(http, two, "GET", where)
    assert view["mode"] == "on" and await active(two, queue) == 2  # nothing changed

    status, view = await api(
        http, two, "PATCH", where, json={"mode": "closed", "end_sessions": True}
    )
    assert status == 200 and view["mode"] == "closed"

    async def refused_everywhere() -> bool:
        for port in ports(two):
            for v in inside:
                headers = {
                    "Host": "127.0.0.1",
                    "X-Anteroom-Queue": queue,
                    "X-Original-URI": path,
                    "Cookie": f"anteroom_{queue}={v.cookie}",
                }
                url = f"http://127.0.0.1:{port}/_anteroom/auth"
                async with http.get(url, headers=headers) as r:
                    if r.status != 401 or r.headers.get("X-Anteroom-State") != "closed":
                        return False
        return True

    await eventually(refused_everywhere, within=1.5, interval=0.05)
    assert await active(two, queue) == 0
    _, audit = await api(http, two, "GET", "/api/audit?limit=5")
    entry = next(e for e in audit["entries"] if e.get("queue") == queue and e["action"] == "set")
    assert entry["ended_sessions"] == 2 and entry["changes"]["mode"] == ["on", "closed"]


async def test_closes_at_closes_on_time(two: Stack, http: aiohttp.ClientSession) -> None:
    queue = "closes-later"
    path = f"/q/{queue}/item"
    at = int(time.time()) + 2
    status, view = await api(
        http, two, "PATCH", f"/api/queues/acme/{queue}", json={"create": True, "closes_at": at}
    )
    assert status == 201 and view["settings"]["closes_at"] == at
    first = Visitor(http, two.url)
    assert (await first.get(path)).status == 200  # open until then

    async def closed_now() -> bool:
        r = await Visitor(http, two.url).get(path)
        return r.status == 302 and (r.location or "").endswith("#closed")

    await eventually(closed_now, within=4.0, interval=0.1)
    assert time.time() >= at
    assert (await first.get(path)).status == 200  # the session inside goes on
    # the waiting JSON carries the time beforehand (a countdown page may show it)
    r = await Visitor(http, two.url).get(
        f"/_anteroom/status?queue={quote(queue)}", headers={"Accept": "application/json"}
    )
    assert json.loads(r.text)["closes_at"] == at
