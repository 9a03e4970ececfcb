"""A real browser walks the waiting page until it is let in."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from devstack.stack import Stack
from tests.axe import axe_path, violations
from tests.browser import Browser, chromium_path, shots_dir
from tests.conftest import ADMIN_TOKEN, eventually, make_stack
from tests.visitors import Visitor

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed"),
]


def keep_present(path: str, holder: Visitor, ahead: list[Visitor]) -> asyncio.Task[None]:
    """As real visitors would while the browser starts (seconds, under load): the
    holder keeps using the site (its session stays confirmed), those ahead keep
    polling (they stay present in line)."""

    async def carry_on() -> None:
        while True:
            await holder.get(path)
            for v in ahead:
                await v.status()
            await asyncio.sleep(0.5)

    return asyncio.create_task(carry_on())


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture(scope="module")
def one_seat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = make_stack(tmp_path_factory.mktemp("browser"), ANTEROOM_CAPACITY="1")
    yield s
    s.stop()


async def test_waiting_page_moves_on_when_admitted(one_seat: Stack, tmp_path: Path) -> None:
    path = "/q/browser/checkout"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        holder = Visitor(http, one_seat.url)
        assert (await holder.get(path)).status == 200
        ahead = [Visitor(http, one_seat.url) for _ in range(3)]
        for v in ahead:
            assert (await v.get(path)).status == 302

        others = keep_present(path, holder, ahead)
        async with Browser() as browser:
            page = await browser.page(390, 844, mobile=True)
            await page.goto(one_seat.url + path)
            await page.wait_for("location.pathname === '/_anteroom/waiting/acme/'")
            shown = await page.wait_for(
                "/^[0-9]+$/.test(document.getElementById('position').textContent)"
                " && document.getElementById('position').textContent"
            )
            assert shown == "4"
            ahead_text = await page.evaluate("document.getElementById('ahead').textContent")
            assert ahead_text == "3 people ahead of you"
            assert await page.evaluate("document.getElementById('updated').textContent")
            shots = shots_dir(tmp_path)
            png = await page.screenshot(shots / "waiting-phone.png")
            assert png.stat().st_size > 10_000

            laptop = await browser.page(1366, 900)
            await laptop.goto(one_seat.url + "/_anteroom/waiting/acme/?return_to=/q/browser/")
            # a second visitor: sent to the page without a place, it takes one (5th)
            await laptop.wait_for("document.getElementById('position').textContent === '5'")
            await laptop.screenshot(shots / "waiting-laptop.png")

            # the holder finishes and the three ahead give up: the browser's turn
            await stop(others)
            await holder.post("/_anteroom/leave")
            for v in ahead:
                await v.post("/_anteroom/leave")
            await page.wait_for(f"location.pathname === '{path}'", within=30)
            await page.wait_for("document.body && document.body.dataset.origin === 'demo'")


async def test_keepalive_script_holds_the_session_while_the_page_is_open(
    one_seat: Stack,
) -> None:
    """An admitted visitor reading a page (no clicks through) keeps the slot through
    keepalive.js; closing the tab lets the session expire and the next one in."""
    path = "/q/keepalive/article"
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
        Browser() as browser,
    ):
        page = await browser.page(1366, 768)
        await page.goto(one_seat.url + path)
        await page.wait_for("document.body && document.body.dataset.origin === 'demo'")
        await page.evaluate(
            """(() => { const s = document.createElement('script');
                s.src = '/_anteroom/waiting/acme/keepalive.js';
                s.dataset.interval = '1'; document.head.appendChild(s); })()"""
        )
        await page.wait_for("!!window.anteroom")
        waiter = Visitor(http, one_seat.url)
        assert (await waiter.get(path)).status == 302
        await asyncio.sleep(6)  # twice the 3 s session TTL, slack included
        assert (await waiter.status())["state"] == "waiting"

        await page.close()

        async def admitted() -> bool:
            return bool((await waiter.status())["state"] == "admitted")

        await eventually(admitted, within=10)


CONCERTS_TOML = """
[tenants.main]
hosts = ["*"]
title = "Demo shop"

[tenants.concerts]
hosts = ["concerts.localhost", "*.concerts.localhost"]
title = "Concert Hall"
theme = "tickets"
"""


@pytest.fixture(scope="module")
def concerts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = make_stack(
        tmp_path_factory.mktemp("concerts"), site_toml=CONCERTS_TOML, ANTEROOM_CAPACITY="1"
    )
    yield s
    s.stop()


async def test_second_tenant_themed_page_walks_through_to_admission(
    concerts: Stack, tmp_path: Path
) -> None:
    """The concerts tenant, on its own host name, shows the tickets theme in the
    browser's language and lets the visitor in when their turn comes."""
    host = f"concerts.localhost:{concerts.site_port}"
    site = f"http://{host}"
    path = "/q/concert/seats"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        holder = Visitor(http, concerts.url, host)
        assert (await holder.get(path)).status == 200
        ahead = [Visitor(http, concerts.url, host) for _ in range(2)]
        for v in ahead:
            assert (await v.get(path)).status == 302

        others = keep_present(path, holder, ahead)
        async with Browser() as browser:
            shots = shots_dir(tmp_path)
            page = await browser.page(390, 844, mobile=True)
            await page.goto(site + path)  # Chromium resolves *.localhost to loopback
            await page.wait_for("location.pathname === '/_anteroom/waiting/concerts/'")
            await page.wait_for("document.getElementById('position').textContent === '3'")
            heading = await page.evaluate("document.getElementById('heading').textContent")
            assert heading == "You're in the ticket queue"
            assert await page.evaluate(
                "document.querySelector('img.logo').naturalWidth > 0"
                " && getComputedStyle(document.body).backgroundColor === 'rgb(26, 16, 51)'"
            )
            await page.screenshot(shots / "waiting-tickets-phone.png")

            # a German browser gets the German page of the same theme
            laptop = await browser.page(1366, 900)
            await laptop.send(
                "Emulation.setUserAgentOverride", userAgent="Mozilla/5.0", acceptLanguage="de-DE"
            )
            await laptop.goto(site + "/_anteroom/waiting/concerts/?return_to=/q/concert/")
            # a visitor of its own, sent to the page without a place: it takes one (4th)
            await laptop.wait_for("document.getElementById('position').textContent === '4'")
            assert await laptop.evaluate("document.documentElement.lang") == "de"
            assert (
                await laptop.evaluate("document.getElementById('ahead').textContent")
                == "3 Personen vor Ihnen"
            )
            await laptop.screenshot(shots / "waiting-tickets-laptop-de.png")
            await laptop.close()

            await stop(others)
            await holder.post("/_anteroom/leave")
            for v in ahead:
                await v.post("/_anteroom/leave")
            await page.wait_for(f"location.pathname === '{path}'", within=30)
            await page.wait_for("document.body && document.body.dataset.origin === 'demo'")
            assert await page.evaluate("location.host") == host
            png = await page.screenshot(shots / "admitted-tickets-phone.png")
            assert png.stat().st_size > 5_000


async def test_countdown_before_a_scheduled_opening_then_admitted(
    one_seat: Stack, tmp_path: Path
) -> None:
    """The operator schedules the opening 6 s ahead: the page counts down (no place
    shown), then moves on by itself once the queue opens."""
    queue = "browser-sale"
    path = f"/q/{queue}/"
    opens_at = int(time.time()) + 6
    async with (
        aiohttp.ClientSession() as http,
        http.patch(
            f"{one_seat.admin_url}/api/queues/acme/{queue}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            json={"opens_at": opens_at, "create": True},  # nobody has visited it yet
        ) as r,
    ):
        assert r.status == 201
    await asyncio.sleep(0.3)  # every process has ticked the override
    async with Browser() as browser:
        page = await browser.page(390, 844, mobile=True)
        await page.goto(one_seat.url + path)
        await page.wait_for("location.pathname === '/_anteroom/waiting/acme/'")
        eta = await page.wait_for(
            "/^Opens in 0:0[0-9]$/.test(document.getElementById('eta').textContent)"
            " && document.getElementById('eta').textContent"
        )
        assert eta.startswith("Opens in 0:0")
        position = await page.evaluate("document.getElementById('position').textContent")
        assert position == "\u2013"  # a dash: no place until the order is drawn
        notice = await page.evaluate("document.getElementById('notice').textContent")
        assert notice.startswith("Entry opens at ")
        if axe_path() is not None:  # make browser-deps installs it
            assert await violations(page) == [], "countdown page"
        await page.screenshot(shots_dir(tmp_path) / "waiting-countdown-phone.png")
        await page.wait_for(f"location.pathname === '{path}'", within=30)
        assert time.time() >= opens_at
