"""The waiting page in a real browser as an operator talks to the line and closes
it: the message shown as text within a poll, the paused notice once, the closed
view that stops polling; axe-core on the closed page at phone and laptop widths."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devstack.stack import Stack
from tests.axe import axe_path, violations
from tests.browser import Browser, chromium_path, shots_dir
from tests.conftest import ADMIN_TOKEN, make_stack
from tests.visitors import Visitor

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed"),
    pytest.mark.skipif(axe_path() is None, reason="axe-core is not installed (make browser-deps)"),
]

WAITING = "/_anteroom/waiting/acme/"
MESSAGE = "Doors open at <b>10:00</b> & the merch stand is at gate 2."
CLOSED_MESSAGE = "Sold out. Thank you!\nReturns go on sale Friday."
STATUS_POLLS = (
    "performance.getEntriesByType('resource')"
    ".filter(e => e.name.indexOf('/_anteroom/status') !== -1).length"
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # sessions outlast the test: the holder keeps the queue full without polling
    s = make_stack(
        tmp_path_factory.mktemp("closed-page"),
        ANTEROOM_CAPACITY="1",
        ANTEROOM_SESSION_TTL="600",
        ANTEROOM_GRACE="60",
    )
    yield s
    s.stop()


async def patch(http: aiohttp.ClientSession, stack: Stack, queue: str, **changes: Any) -> None:
    async with http.patch(
        f"{stack.admin_url}/api/queues/acme/{queue}",
        json=changes,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as r:
        assert r.status == 200, await r.text()


async def test_message_paused_once_then_closed_view_that_stops_polling(
    site: Stack, tmp_path: Path
) -> None:
    queue = "closing-page"
    path = f"/q/{queue}/"
    shots = shots_dir(tmp_path)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        holder = Visitor(http, site.url)
        assert (await holder.get(path)).status == 200  # capacity 1: full
        assert (await holder.get(path)).status == 200  # the cookie came back: confirmed
        async with Browser() as browser:
            page = await browser.page(390, 844, mobile=True)
            await page.goto(site.url + path)
            await page.wait_for(f"location.pathname === '{WAITING}'")
            await page.wait_for("document.getElementById('position').textContent === '1'")
            assert await page.evaluate("document.getElementById('message-box').hidden")

            # a message: on the page within one poll (3 s at the front), as text
            await patch(http, site, queue, message=MESSAGE)
            started = time.monotonic()
            await page.wait_for("!document.getElementById('message-box').hidden", within=6)
            print(f"\nmessage -> waiting page: {time.monotonic() - started:.2f} s")
            shown = await page.evaluate("document.getElementById('message').textContent")
            assert shown == MESSAGE
            assert await page.evaluate("document.querySelector('#message b') === null")

            # paused: the notice says so once (the estimate no longer repeats it)
            await patch(http, site, queue, mode="paused")
            await page.wait_for("!document.getElementById('notice').hidden", within=6)
            text = await page.evaluate("document.body.innerText")
            assert text.count("Entry is paused for a moment") == 1, text
            assert await page.evaluate("document.getElementById('eta').textContent") == "On hold"

            # closed: the closed view, the operator's words and link; polling stops
            await patch(
                http,
                site,
                queue,
                mode="closed",
                message=CLOSED_MESSAGE,
                closed_link="/",
            )
            await page.wait_for(
                "document.getElementById('heading').textContent === 'This line is closed'",
                within=6,
            )
            assert await page.evaluate("document.getElementById('message').textContent") == (
                CLOSED_MESSAGE
            )
            assert await page.evaluate("document.getElementById('live').hidden")
            assert await page.evaluate("document.getElementById('leave-form').hidden")
            link = await page.evaluate(
                "document.getElementById('closed-link').getAttribute('href')"
            )
            assert link == "/"
            polls = await page.evaluate(STATUS_POLLS)
            await page.evaluate("new Promise(r => setTimeout(r, 4500))")  # > a poll at the front
            assert await page.evaluate(STATUS_POLLS) == polls
            found = await violations(page)
            assert found == [], f"closed page (phone): {found}"
            await page.screenshot(shots / "closed-phone.png")
            await page.close()

            # a newcomer on a laptop lands on the closed view straight away
            wide = await browser.page(1280, 800)
            await wide.goto(site.url + path)
            await wide.wait_for("location.hash === '#closed'")
            await wide.wait_for(
                "document.getElementById('heading').textContent === 'This line is closed'"
            )
            found = await violations(wide)
            assert found == [], f"closed page (laptop): {found}"
            await wide.screenshot(shots / "closed-laptop.png")
        # the holder's session goes on
        assert (await holder.get(path)).status == 200
