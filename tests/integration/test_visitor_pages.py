"""The visitor pages in Chromium through real nginx + Redis + sidecar: the browser
check (proof of work) before a place, the turn noticed in a hidden tab, a line
that never moves for a flagged client, and axe-core on each page."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from devstack.stack import Stack
from sidecar.web.challenge import solve
from tests.axe import axe_path, violations
from tests.browser import Browser, Page, chromium_path, shots_dir
from tests.conftest import make_stack
from tests.visitors import Visitor

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed"),
    pytest.mark.skipif(axe_path() is None, reason="axe-core is not installed (make browser-deps)"),
]

WAITING = "/_anteroom/waiting/acme/"
# Stand-ins the page cannot tell from the real thing, recording what it asked for:
# the tab's visibility, notifications (permission asked only on a click), the
# vibration motor and the sound (an oscillator started).
SPIES = """
window.__spy = {permissionAsked: 0, notes: [], vibrate: 0, tones: 0, hidden: false};
Object.defineProperty(Document.prototype, 'visibilityState',
  {get() { return window.__spy.hidden ? 'hidden' : 'visible'; }});
Object.defineProperty(Document.prototype, 'hidden', {get() { return window.__spy.hidden; }});
class FakeNotification {
  constructor(title, options) { window.__spy.notes.push([title, options.body]); }
  close() {}
}
FakeNotification.permission = 'default';
FakeNotification.requestPermission = () => {
  window.__spy.permissionAsked += 1;
  FakeNotification.permission = 'granted';
  return Promise.resolve('granted');
};
window.Notification = FakeNotification;
navigator.vibrate = () => { window.__spy.vibrate += 1; return true; };
const start = OscillatorNode.prototype.start;
OscillatorNode.prototype.start = function (...a) {
  window.__spy.tones += 1;
  return start.apply(this, a);
};
"""
# a browser check that never finishes: the challenge page held still to be looked at
STUCK_WORKER = """
window.Worker = class {
  postMessage() { setTimeout(() => this.onmessage({data: {progress: 6}}), 50); }
  terminate() {}
};
"""


@pytest.fixture(scope="module")
def pow_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = make_stack(
        tmp_path_factory.mktemp("pow"),
        ANTEROOM_CAPACITY="1",
        ANTEROOM_CHALLENGE="pow",
        ANTEROOM_CHALLENGE_DIFFICULTY="16",
        ANTEROOM_FLAGGED="infinite",
        ANTEROOM_JOINS_PER_ADDRESS="3",
    )
    yield s
    s.stop()


async def api_join(v: Visitor, queue: str) -> dict[str, Any]:
    """What an API client does: the challenge, solved, then a place."""
    r = await v.get(f"/_anteroom/challenge?queue={queue}")
    c = r.json()
    solution = ",".join(map(str, solve(c["seed"], c["bits"], c["parts"])))
    joined = await v.post(
        f"/_anteroom/join?queue={queue}&challenge={c['challenge']}&solution={solution}"
    )
    assert joined.status == 200, joined.text
    body: dict[str, Any] = joined.json()
    return body


async def no_blocking_violations(page: Page, what: str) -> None:
    found = await violations(page)
    assert found == [], f"{what}: {found}"


async def test_browser_check_then_a_place_then_the_turn_noticed_while_hidden(
    pow_site: Stack, tmp_path: Path
) -> None:
    queue = "pow-turn"
    path = f"/q/{queue}/"
    shots = shots_dir(tmp_path)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        # a newcomer without JavaScript's help gets no place: the page, #challenge
        first = await Visitor(http, pow_site.url).get(path)
        assert first.status == 302 and first.location is not None
        assert first.location.endswith("#challenge") and not first.set_cookies

        holder = Visitor(http, pow_site.url)
        assert (await api_join(holder, queue))["state"] == "admitted"
        assert (await holder.get(path)).status == 200

        async with Browser() as browser:
            # the check held still: looked at, and checked by axe at both widths
            for width, height, name in ((390, 844, "phone"), (1280, 800, "laptop")):
                still = await browser.page(width, height, mobile=width < 500)
                await still.send("Page.addScriptToEvaluateOnNewDocument", source=STUCK_WORKER)
                await still.goto(pow_site.url + path)
                await still.wait_for("document.getElementById('check-progress').value === 6")
                assert await still.evaluate("!document.getElementById('check').hidden")
                intro = await still.evaluate("document.getElementById('intro').textContent")
                assert intro.startswith("Before you get a place, your browser does a quick check")
                await no_blocking_violations(still, f"challenge page ({name})")
                await still.screenshot(shots / f"challenge-{name}.png")
                await still.close()

            page = await browser.page(390, 844, mobile=True)
            await page.send("Page.addScriptToEvaluateOnNewDocument", source=SPIES)
            started = time.monotonic()
            await page.goto(pow_site.url + path)
            await page.wait_for(f"location.pathname === '{WAITING}'")
            # solved in the worker, joined: second in line behind the holder
            await page.wait_for("document.getElementById('position').textContent === '1'")
            solved_in = time.monotonic() - started
            assert await page.evaluate("document.getElementById('check').hidden")
            assert await page.evaluate("window.__spy.permissionAsked") == 0  # never on load
            announced = await page.evaluate("document.getElementById('announce').textContent")
            assert announced == "Your place in line: 1. You're next"
            await no_blocking_violations(page, "waiting page")

            # the visitor opts in, by clicks: sound and a notification
            for box in ("alert-sound", "alert-notify"):
                await page.send(
                    "Runtime.evaluate",
                    expression=f"document.getElementById('{box}').click()",
                    userGesture=True,
                )
            await page.wait_for("window.__spy.permissionAsked === 1")
            await page.screenshot(shots / "waiting-alerts-phone.png")

            # the tab goes to the background; the holder leaves: the turn comes
            await page.evaluate(
                "window.__spy.hidden = true; document.dispatchEvent(new Event('visibilitychange'))"
            )
            await holder.post("/_anteroom/leave")
            await page.wait_for("window.__spy.notes.length === 1", within=30)
            assert await page.evaluate("window.__spy.notes[0][0]") == "It's your turn!"
            assert await page.evaluate("window.__spy.vibrate") == 1
            assert await page.evaluate("window.__spy.tones") == 1
            await page.wait_for('document.title === "It\'s your turn!"')
            await page.wait_for('document.title !== "It\'s your turn!"', within=5)  # flashing
            assert await page.evaluate("location.pathname") == WAITING  # waits for the visitor

            # they come back to the tab: in they go
            await page.evaluate(
                "window.__spy.hidden = false; document.dispatchEvent(new Event('visibilitychange'))"
            )
            await page.wait_for(f"location.pathname === '{path}'", within=10)
            await page.wait_for("document.body && document.body.dataset.origin === 'demo'")
            print(f"browser check at difficulty 16, page load to place: {solved_in:.2f} s")


async def test_flagged_client_sees_a_normal_page_that_never_moves(
    pow_site: Stack, tmp_path: Path
) -> None:
    """An address over its join budget (3 a minute here) gets a waiting page like
    anyone's, in a line that never moves, and takes no place."""
    queue = "pow-flagged"
    path = f"/q/{queue}/"
    # the first bot walks in (capacity 1), so the address holds two places in line:
    # only the per-minute count stops the fourth join, and all four must fall in one
    # minute of Redis' clock
    into = time.time() % 60
    if into > 40:
        await asyncio.sleep(60.5 - into)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        bots = [Visitor(http, pow_site.url) for _ in range(3)]
        assert (await bots[0].get(path)).status == 302  # nginx names the queue: no place
        for bot in bots:  # the budget, used by solved challenges (the pow costs them)
            await api_join(bot, queue)
        async with Browser() as browser:
            page = await browser.page(390, 844, mobile=True)
            await page.goto(pow_site.url + path)
            await page.wait_for(f"location.pathname === '{WAITING}'")
            shown = await page.wait_for(
                "/^[0-9]+$/.test(document.getElementById('position').textContent)"
                " && +document.getElementById('position').textContent"
            )
            assert shown >= 3
            eta = await page.evaluate("document.getElementById('eta').textContent")
            assert eta.startswith(("About", "Less", "More"))
            assert "|f|" in (await page.send("Network.getAllCookies"))["cookies"][0]["value"]
            await no_blocking_violations(page, "flagged waiting page")
            await page.screenshot(shots_dir(tmp_path) / "waiting-flagged-phone.png")
            await asyncio.sleep(4)  # a few polls: still there, never let in
            assert await page.evaluate("location.pathname") == WAITING
            assert await page.evaluate("+document.getElementById('position').textContent") >= 3
        # nobody but the three paying bots holds a place
        tickets = await pow_site_tickets(pow_site, queue)
        assert tickets == 3


async def pow_site_tickets(stack: Stack, queue: str) -> int:
    r = Redis.from_url(stack.redis_url)
    try:
        return int(await r.get(f"aq:{{acme:{queue}}}:tickets") or 0)
    finally:
        await r.aclose()
