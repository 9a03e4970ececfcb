"""The dashboard in headless Chromium: sign in, live figures, a change through its form."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from devstack.stack import Stack
from tests.axe import axe_path, violations
from tests.browser import Browser, chromium_path, shots_dir
from tests.conftest import ADMIN_TOKEN, make_stack
from tests.visitors import Visitor

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed"),
]


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # a long grace: the two invitations stay on the board until the page refreshes
    s = make_stack(
        tmp_path_factory.mktemp("dashboard"), ANTEROOM_SESSION_TTL="60", ANTEROOM_GRACE="30"
    )
    yield s
    s.stop()


def section(queue: str) -> str:
    return f"document.querySelector('section[data-queue=\"acme/{queue}\"]')"


async def test_dashboard_live_figures_and_a_form_change(board: Stack, tmp_path: Path) -> None:
    queue = "board"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        crowd = [Visitor(http, board.url) for _ in range(5)]
        for v in crowd:  # two inside, three in line
            await v.get(f"/q/{queue}/")
        for v in crowd[2:]:  # on the waiting page: they poll
            await v.status()

        async with Browser() as browser:
            page = await browser.page(1366, 900)
            await page.goto(board.admin_url + "/")  # returns once the page has loaded
            assert await page.evaluate("location.pathname") == "/login"
            # a wrong token is refused with a message, and no session
            async with page.navigation():
                await page.evaluate(
                    "document.getElementById('token').value = 'wrong-token-0123456789';"
                    "document.querySelector('form').submit()"
                )
            assert await page.evaluate("document.querySelector('.error') !== null")
            async with page.navigation():
                await page.evaluate(
                    f"document.getElementById('token').value = {json.dumps(ADMIN_TOKEN)};"
                    "document.querySelector('form').submit()"
                )
            assert await page.evaluate(f"{section(queue)} !== null")
            # live: the script has refreshed the figures from /ui/data
            await page.wait_for("document.body.dataset.refreshed !== undefined")
            figure = f"{section(queue)}.querySelector('[data-field=\"{{}}\"]').textContent"
            await page.wait_for(f"{figure.format('waiting')} === '3'")
            assert await page.evaluate(figure.format("active")) == "2"
            assert await page.evaluate(figure.format("tickets")) == "5"
            assert (
                await page.evaluate(f"{section(queue)}.querySelectorAll('svg.chart').length") == 3
            )
            shot = await page.screenshot(shots_dir(tmp_path) / "dashboard.png")
            assert shot.stat().st_size > 10_000

            # keyboard users reach the settings: every control is focusable, in order
            focusable = await page.evaluate(
                f"Array.from({section(queue)}.querySelectorAll('input:not([type=hidden]), button'))"
                ".every(e => e.tabIndex >= 0)"
            )
            assert focusable

            # change capacity through the form; the next page shows it
            async with page.navigation():
                await page.evaluate(
                    f"const f = {section(queue)}.querySelector('form.settings');"
                    "f.elements.capacity.value = '4'; f.submit()"
                )
            await page.wait_for(
                f"{section(queue)} && {section(queue)}.querySelector('form.settings')"
                f".elements.capacity.value === '4' && !!{section(queue)}.querySelector('em')"
            )
            await page.wait_for(f"{figure.format('invited')} === '2'")  # two more invited

            # an invalid value is refused with a message, nothing changed
            async with page.navigation():
                await page.evaluate(
                    f"const g = {section(queue)}.querySelector('form.settings');"
                    "g.elements.capacity.value = '3'; g.elements.abandon_after.value = '2';"
                    "g.submit()"
                )
            assert await page.evaluate("document.querySelector('.error[role=alert]') !== null")
            message = await page.evaluate("document.querySelector('.error[role=alert]').innerText")
            assert "abandon_after" in message

        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with http.get(f"{board.admin_url}/api/queues/acme/{queue}", headers=headers) as r:
            view = await r.json()
        assert view["settings"]["capacity"] == 4 and view["overrides"] == {"capacity": 4}
        async with http.get(f"{board.admin_url}/api/audit", headers=headers) as r:
            entries = (await r.json())["entries"]
        assert {"sign-in", "set"} <= {e["action"] for e in entries}


async def test_forms_without_the_csrf_token_are_refused(board: Stack) -> None:
    # unsafe: keep cookies of an IP address host (127.0.0.1)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post(board.admin_url + "/login", data={"token": ADMIN_TOKEN}) as r:
            assert r.status == 200 and "csrf" in await r.text()  # followed to the dashboard
        url = f"{board.admin_url}/ui/queues/acme/board"
        async with http.post(url, data={"action": "paused"}, allow_redirects=False) as r:
            assert r.status == 403
        stranger = aiohttp.ClientSession()  # no session cookie at all
        async with stranger, stranger.post(url, data={"action": "paused"}) as r:
            assert r.status == 401


async def test_the_gate_stoppers_ask_first_and_times_are_local(
    board: Stack, tmp_path: Path
) -> None:
    queue, walkin = "safety", "walkin"
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        await Visitor(http, board.url).get(f"/q/{queue}/")
        await Visitor(http, board.url).get(f"/q/{walkin}/")  # one of two places taken

        async def mode() -> str:
            async with http.get(f"{board.admin_url}/api/queues/acme/{queue}", headers=headers) as r:
                return str((await r.json())["mode"])

        async with Browser() as browser:
            shots = shots_dir(tmp_path)
            for width, height, mobile, suffix in (
                (1280, 900, False, "laptop"),
                (390, 844, True, "phone"),
            ):
                page = await browser.page(width, height, mobile=mobile)
                await page.send("Emulation.setTimezoneOverride", timezoneId="Europe/Paris")
                await page.goto(board.admin_url + "/login")
                async with page.navigation():
                    await page.evaluate(
                        f"document.getElementById('token').value = {json.dumps(ADMIN_TOKEN)};"
                        "document.querySelector('form').submit()"
                    )
                s = section(queue)
                # a newcomer to a queue with room walks in: no made-up minute
                eta = f"{section(walkin)}.querySelector('[data-field=\"eta\"]').textContent"
                assert await page.evaluate(eta) == "0 (walks in)"
                await page.screenshot(shots / f"dashboard-{suffix}.png")
                if mobile:
                    # nothing wider than the phone: no sideways scrolling
                    assert await page.evaluate("document.documentElement.scrollWidth <= 390")
                    await page.evaluate(f"{s}.querySelector('form.settings').scrollIntoView()")
                    await page.screenshot(shots / f"dashboard-controls-{suffix}.png")
                    async with page.navigation():
                        await page.evaluate(f"{s}.querySelector('button[value=\"drain\"]').click()")
                    assert await page.evaluate("document.documentElement.scrollWidth <= 390")
                    await page.screenshot(shots / f"dashboard-confirm-{suffix}.png")
                    continue

                # Pause asks first; Cancel changes nothing
                button = f"{s}.querySelector('button[value=\"{{}}\"]')"
                assert await page.evaluate(f"{button.format('off')}.textContent") == "Off…"
                async with page.navigation():
                    await page.evaluate(f"{button.format('paused')}.click()")
                text = await page.evaluate("document.querySelector('main').innerText")
                assert "Pause acme / safety?" in text and "keep their places" in text
                await page.screenshot(shots / f"dashboard-confirm-{suffix}.png")
                assert await mode() == "on"
                async with page.navigation():
                    await page.evaluate("document.querySelector('a.cancel').click()")
                assert await mode() == "on"

                # Off has a button, asks first, and Yes turns the queue off
                async with page.navigation():
                    await page.evaluate(f"{button.format('off')}.click()")
                assert "lets everyone through" in await page.evaluate("document.body.innerText")
                async with page.navigation():
                    await page.evaluate("document.querySelector('button.warn').click()")
                assert await mode() == "off"

                # the opening in the browser's own zone (Paris, summer: UTC+2)
                field = f"{section(queue)}.querySelector('input[name=\"opens_at\"]')"
                zone = f"{field}.parentNode.querySelector('.zone').textContent"
                assert await page.evaluate(zone) == "(Europe/Paris)"
                async with page.navigation():
                    await page.evaluate(
                        f"{field}.value = '2030-06-01T09:00'; {field}.form.requestSubmit()"
                    )
                async with http.get(
                    f"{board.admin_url}/api/queues/acme/{queue}", headers=headers
                ) as r:
                    view = await r.json()
                paris_nine = int(datetime(2030, 6, 1, 7, 0, tzinfo=UTC).timestamp())
                assert view["settings"]["opens_at"] == paris_nine
                assert view["overrides"] == {"mode": "off", "opens_at": paris_nine}
                await page.wait_for(f"{field}.value === '2030-06-01T09:00'")  # shown as entered

                # Close asks first, for the words to show and whether to end sessions
                async with page.navigation():
                    await page.evaluate(f"{button.format('closed')}.click()")
                text = await page.evaluate("document.querySelector('main').innerText")
                assert "Close acme / safety?" in text and "closed page" in text
                assert await page.evaluate("!!document.querySelector('input[name=end_sessions]')")
                await page.evaluate(
                    "document.querySelector('textarea[name=message]').value = 'Sold out <b>!</b>'"
                )
                await page.screenshot(shots / "dashboard-close-laptop.png")
                assert await mode() == "off"  # nothing yet
                async with page.navigation():
                    await page.evaluate("document.querySelector('button.warn').click()")
                assert await mode() == "closed"
                async with http.get(
                    f"{board.admin_url}/api/queues/acme/{queue}", headers=headers
                ) as r:
                    assert (await r.json())["settings"]["message"] == "Sold out <b>!</b>"


@pytest.mark.skipif(axe_path() is None, reason="axe-core is not installed (make browser-deps)")
async def test_the_dashboard_passes_axe_at_phone_and_laptop_widths(
    board: Stack, tmp_path: Path
) -> None:
    """axe-core: no serious or critical violation, with figures, how the sale went and
    every control on the page; reduced motion asked for and honoured; screenshots."""
    queue = "a11y"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        crowd = [Visitor(http, board.url) for _ in range(4)]
        for v in crowd:  # two inside, two in line
            await v.get(f"/q/{queue}/")
        for v in crowd[2:]:
            await v.status()
        await crowd[3].post("/_anteroom/leave")  # one gave up
        async with Browser() as browser:
            shots = shots_dir(tmp_path)
            for width, height, mobile, suffix in (
                (1280, 900, False, "laptop"),
                (390, 844, True, "phone"),
            ):
                page = await browser.page(width, height, mobile=mobile)
                await page.send(
                    "Emulation.setEmulatedMedia",
                    features=[{"name": "prefers-reduced-motion", "value": "reduce"}],
                )
                await page.goto(board.admin_url + "/login")
                found = await violations(page)
                assert found == [], f"sign-in ({suffix}): {found}"
                async with page.navigation():
                    await page.evaluate(
                        f"document.getElementById('token').value = {json.dumps(ADMIN_TOKEN)};"
                        "document.querySelector('form').submit()"
                    )
                await page.wait_for("document.body.dataset.refreshed !== undefined")
                sale = f"{section(queue)}.querySelector('.sale')"
                await page.wait_for(
                    f"{sale}.querySelector('[data-sale-field=\"abandonment\"]').textContent"
                    " !== '\u2013'"
                )
                assert await page.evaluate(
                    f"{sale}.querySelector('a[href$=\"report.csv\"]') !== null"
                )
                # what the page asks of the browser: no animation, no transition
                moving = await page.evaluate(
                    "Array.from(document.querySelectorAll('*')).filter(e => {"
                    " const s = getComputedStyle(e);"
                    " return s.animationName !== 'none' ||"
                    " parseFloat(s.transitionDuration) > 0 }).length"
                )
                assert moving == 0
                found = await violations(page)
                assert found == [], f"dashboard ({suffix}): {found}"
                await page.evaluate(f"{section(queue)}.scrollIntoView()")
                await page.screenshot(shots / f"dashboard-sale-{suffix}.png")
                if mobile:
                    assert await page.evaluate("document.documentElement.scrollWidth <= 390")
                await page.close()


@pytest.mark.skipif(axe_path() is None, reason="axe-core is not installed (make browser-deps)")
async def test_access_codes_from_the_dashboard_shown_once_and_axe_clean(
    board: Stack, tmp_path: Path
) -> None:
    """Invite-only and random order chosen in the drop-downs, codes made through the
    form (links shown once, then only the count), axe-clean at both widths."""
    queue = "codes"
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.patch(
            f"{board.admin_url}/api/queues/acme/{queue}", json={"create": True}, headers=headers
        ) as r:
            assert r.status == 201
        async with Browser() as browser:
            shots = shots_dir(tmp_path)
            for width, height, mobile, suffix in (
                (1280, 900, False, "laptop"),
                (390, 844, True, "phone"),
            ):
                page = await browser.page(width, height, mobile=mobile)
                await page.goto(board.admin_url + "/login")
                async with page.navigation():
                    await page.evaluate(
                        f"document.getElementById('token').value = {json.dumps(ADMIN_TOKEN)};"
                        "document.querySelector('form').submit()"
                    )
                s = section(queue)
                if not mobile:
                    async with page.navigation():
                        await page.evaluate(
                            f"const f = {s}.querySelector('form.settings');"
                            "f.elements.order.value = 'random';"
                            "f.elements.access.value = 'invite'; f.requestSubmit()"
                        )
                    async with page.navigation():
                        await page.evaluate(
                            f"const c = {s}.querySelector('form.make-codes');"
                            "c.elements.count.value = '3'; c.elements.label.value = 'press';"
                            "c.elements.path.value = '/q/codes/'; c.requestSubmit()"
                        )
                    links = await page.evaluate("document.querySelector('textarea').value")
                    made = [line.rsplit("=", 1)[1] for line in links.splitlines()]
                    assert len(made) == 3 and links.startswith("/q/codes/?anteroom_code=")
                    assert await violations(page) == []
                    await page.screenshot(shots / f"dashboard-codes-made-{suffix}.png")
                    async with page.navigation():
                        await page.evaluate("document.querySelector('a.cancel').click()")
                    html = await page.evaluate("document.documentElement.outerHTML")
                    assert not any(code in html for code in made)  # shown once
                unused = f"{s}.querySelector('.codes .unused').innerText"
                assert await page.evaluate(unused) == "3 unused · only code holders may join"
                assert await page.evaluate(f"{s}.querySelector('select[name=order]').value") == (
                    "random"
                )
                found = await violations(page)
                assert found == [], f"dashboard ({suffix}): {found}"
                await page.evaluate(f"{s}.querySelector('form.settings').scrollIntoView()")
                await page.screenshot(shots / f"dashboard-codes-{suffix}.png")
                if mobile:
                    assert await page.evaluate("document.documentElement.scrollWidth <= 390")
                    await page.evaluate(f"{s}.querySelector('.codes').scrollIntoView()")
                    await page.screenshot(shots / f"dashboard-codes-form-{suffix}.png")
                await page.close()
