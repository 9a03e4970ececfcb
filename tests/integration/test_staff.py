"""Staff and monitoring past the gate (docs/nginx.md, step 12), through real nginx:
the doc's own snippets, with clients bound to other loopback addresses. Staff
take no place, set no cookie and pass whatever the queue's mode; everyone else
still waits."""

from __future__ import annotations

import re
from collections.abc import Iterator

import aiohttp
import pytest
from redis.asyncio import Redis

from devstack.stack import ROOT, Stack
from tests.conftest import FAST, make_stack
from tests.visitors import Reply, Visitor, client_from

STAFF_ADDRESS = "127.0.0.2"
KEY = "3f9c2a7d1e5b8c04a6d2e9f1b7c3a5d8e0f2b4c6a8d1e3f5"  # the doc's example key


def doc_blocks() -> tuple[str, str]:
    """The two nginx blocks of docs/nginx.md's staff section: http {} and locations."""
    doc = (ROOT / "docs" / "nginx.md").read_text()
    section = doc.split("## 12. Optional: staff and monitoring skip the line", 1)[1]
    section = section.split("\n## ", 1)[0]
    http, locations = re.findall(r"```nginx\n(.*?)```", section, re.S)
    return http, locations


@pytest.fixture(scope="module")
def staff_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    http, locations = doc_blocks()
    # the office of the doc is this test's second loopback address
    assert "192.0.2.0/24" in http and "http://app;" in locations
    http = http.replace("192.0.2.0/24", f"{STAFF_ADDRESS}/32")
    locations = locations.replace("http://app;", "http://origin;")
    work = tmp_path_factory.mktemp("staff")
    s = make_stack(work, extra_locations=locations, extra_http=http, ANTEROOM_CAPACITY="1")
    yield s
    s.stop()


def served(r: Reply) -> bool:
    """The origin answered (its own 404 for these paths): the gate let it through."""
    return r.status == 404 and 'data-origin="demo"' in r.text


async def tickets(stack: Stack) -> int:
    r = Redis.from_url(stack.redis_url)
    try:
        return int(await r.get("aq:{acme:checkout}:tickets") or 0)
    finally:
        await r.aclose()


async def close_queue(stack: Stack) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.patch(
            f"{stack.admin_url}/api/queues/acme/checkout",
            json={"mode": "closed", "create": True},
            headers={"Authorization": "Bearer " + FAST["ANTEROOM_ADMIN_TOKEN"].split(":")[1]},
        ) as r,
    ):
        assert r.status in (200, 201), await r.text()


async def test_staff_address_and_key_skip_the_gate_without_a_place(staff_stack: Stack) -> None:
    """The queue is full (capacity 1, one visitor inside): a visitor from 127.0.0.1
    waits; staff from 127.0.0.2 and a monitor with the key get the page itself,
    with no cookie and no ticket taken, even once the queue is closed."""
    async with client_from("127.0.0.1", force_close=True) as http:
        inside = Visitor(http, staff_stack.url)
        assert served(await inside.get("/checkout/cart"))
        outside = Visitor(http, staff_stack.url)
        assert (await outside.get("/checkout/cart")).status == 302
        taken = await tickets(staff_stack)

        monitor = Visitor(http, staff_stack.url)
        r = await monitor.get("/checkout/cart", headers={"X-Staff-Key": KEY})
        assert served(r) and not r.set_cookies
        wrong = Visitor(http, staff_stack.url)
        r = await wrong.get("/checkout/cart", headers={"X-Staff-Key": KEY[:-1] + "0"})
        assert r.status == 302  # a wrong key is a visitor like any other

    async with client_from(STAFF_ADDRESS, force_close=True) as http:
        staff = Visitor(http, staff_stack.url)
        for _ in range(3):
            r = await staff.get("/checkout/cart")
            assert served(r) and not r.set_cookies
        r = await staff.post("/checkout/pay", data=b"x=1")  # the method is kept
        assert served(r)
    # the wrong key took a place; nobody else did
    assert await tickets(staff_stack) == taken + 1

    await close_queue(staff_stack)
    async with client_from(STAFF_ADDRESS, force_close=True) as http:
        r = await Visitor(http, staff_stack.url).get("/checkout/cart")
        assert served(r) and not r.set_cookies


async def test_other_loopback_addresses_are_not_staff(staff_stack: Stack) -> None:
    """Only the listed address: 127.0.0.3 waits like anyone (the list is exact)."""
    async with client_from("127.0.0.3", force_close=True) as http:
        v = Visitor(http, staff_stack.url)
        r = await v.get("/q/staff-other/page")
        assert r.set_cookies  # a visitor: a place or a session
