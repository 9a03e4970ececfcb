"""Line integrity through real nginx: the ways around first-come-first-served and
capacity that a hostile (or just careless) client tried, each closed."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from devstack.stack import Stack
from sidecar.queue.engine import QueueRef
from tests.conftest import eventually, make_stack
from tests.visitors import Visitor

pytestmark = pytest.mark.integration


def new_queue() -> str:
    return "i" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="module")
def one_seat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Capacity 1, grace 2 s: turns come and go quickly."""
    s = make_stack(tmp_path_factory.mktemp("one-seat"), ANTEROOM_CAPACITY="1", ANTEROOM_GRACE="2")
    yield s
    s.stop()


async def test_a_stale_waiting_cookie_is_no_pass_to_the_front(
    one_seat: Stack, http: aiohttp.ClientSession
) -> None:
    """A bot keeps its old waiting cookie (ignoring every new one) and replays it as
    fast as it can while seats free up: it is admitted at most once with that
    ticket, and the honest waiters who keep polling are all admitted."""
    queue = new_queue()
    path = f"/q/{queue}/"
    holder = Visitor(http, one_seat.url)
    assert (await holder.get(path)).status == 200
    bot = Visitor(http, one_seat.url)
    assert (await bot.get(path)).status == 302
    stale = bot.cookie
    assert stale
    await bot.status()
    await holder.post("/_anteroom/leave")  # the bot is invited...
    await asyncio.sleep(4.5)  # ...and lets its turn lapse, and its second chance too
    holder = Visitor(http, one_seat.url)
    assert (await holder.get(path)).status == 200  # the seat is taken again
    honest = [Visitor(http, one_seat.url) for _ in range(3)]
    for v in honest:
        assert (await v.get(path)).status == 302
    admitted_bot = 0
    admitted_honest: set[int] = set()

    async def replay() -> None:
        nonlocal admitted_bot
        deadline = time.monotonic() + 9
        while time.monotonic() < deadline and len(admitted_honest) < len(honest):
            r = await bot.get(
                f"/_anteroom/status?queue={queue}", headers={"Cookie": f"anteroom_{queue}={stale}"}
            )
            if r.json()["state"] == "admitted":
                admitted_bot += 1
            await asyncio.sleep(0.02)

    async def wait_and_shop(i: int, v: Visitor) -> None:
        while time.monotonic() < start + 9:
            if (await v.status())["state"] == "admitted":
                admitted_honest.add(i)
                await asyncio.sleep(0.3)
                await v.post(f"/_anteroom/leave?queue={queue}")
                return
            await asyncio.sleep(0.3)

    async def holder_leaves() -> None:
        await asyncio.sleep(1)
        await holder.post("/_anteroom/leave")

    start = time.monotonic()
    await asyncio.gather(
        replay(), holder_leaves(), *(wait_and_shop(i, v) for i, v in enumerate(honest))
    )
    assert admitted_bot == 0  # its turn and its one second chance were long gone
    assert admitted_honest == {0, 1, 2}


async def test_a_cookieless_burst_does_not_delay_an_honest_waiter(
    one_seat: Stack, http: aiohttp.ClientSession
) -> None:
    """300 cookieless requests (bots, curl, previews) take places that are never
    polled; they cost the honest visitor behind them nothing."""
    queue = new_queue()
    path = f"/q/{queue}/"
    holder = Visitor(http, one_seat.url)
    assert (await holder.get(path)).status == 200
    sem = asyncio.Semaphore(50)

    async def bot() -> int:
        async with sem:
            return (await Visitor(http, one_seat.url).get(path)).status

    assert set(await asyncio.gather(*(bot() for _ in range(300)))) == {302}
    honest = Visitor(http, one_seat.url)
    assert (await honest.get(path)).status == 302
    assert (await honest.status())["state"] == "waiting"
    await asyncio.sleep(0.5)  # the first poll reaches Redis with the next heartbeat
    await holder.post("/_anteroom/leave")
    started = time.monotonic()

    async def admitted() -> bool:
        return bool((await honest.status())["state"] == "admitted")

    await eventually(admitted, within=3, interval=0.2)
    waited = time.monotonic() - started
    print(f"honest waiter admitted {waited:.2f}s after the seat freed, behind 300 bot places")


async def test_a_client_that_drops_cookies_holds_no_slot_past_the_grace_time(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Clients that never send the cookie back (curl, link previews, crawlers) are
    admitted while there is room, but their slots return after the grace time
    (3 s here), while a browser that keeps its cookie keeps its session."""
    stack = make_stack(tmp_path / "s", ANTEROOM_SESSION_TTL="30")
    try:
        path = "/q/drops/"
        browser = Visitor(http, stack.url)
        assert (await browser.get(path)).status == 200
        curl = Visitor(http, stack.url)
        assert (await curl.get(path)).status == 200
        curl.cookies.clear()  # drops it
        assert (await Visitor(http, stack.url).get(path)).status == 302  # full
        for _ in range(7):  # the browser keeps using the site (confirm 3 s + 1.2 s slack)
            await asyncio.sleep(1)
            assert (await browser.get(path)).status == 200
        # curl's slot came back (and the waiter who never polled was passed over)
        assert (await Visitor(http, stack.url).get(path)).status == 200
        assert (await browser.get(path)).status == 200  # still in
    finally:
        stack.stop()


async def test_preflights_previews_and_cross_site_posts_take_no_place(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """OPTIONS and HEAD without a session never reach the origin (many answer
    OPTIONS with the page itself) and take no place; a form posted from another
    site (the browser sends no SameSite=Lax cookie) must not replace the place of
    the visitor it targets."""
    queue = new_queue()
    path = f"/q/{queue}/"
    redis = Redis.from_url(stack.redis_url)
    try:
        v = Visitor(http, stack.url)
        for method, headers in (
            ("OPTIONS", {"Origin": "http://127.0.0.1"}),
            ("HEAD", {}),
            ("POST", {"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.test"}),
        ):
            r = await v.request(method, path, headers=headers)
            assert r.status == 302 and not r.set_cookies, (method, r.status)
            assert 'data-origin="demo"' not in r.text
        assert await redis.get(QueueRef("acme", queue).keys.tickets) is None
        # the same post from the site's own pages takes a place as usual
        r = await v.request("POST", path, headers={"Sec-Fetch-Site": "same-origin"})
        assert r.status == 200 and r.set_cookies
        # and the API join refuses a cross-site browser request
        r = await v.request(
            "POST", f"/_anteroom/join?queue={queue}", headers={"Sec-Fetch-Site": "cross-site"}
        )
        assert r.status == 403
    finally:
        await redis.aclose()


def _raw_get(port: int, path: str, cookie: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(
            b"GET "
            + path.encode()
            + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: "
            + cookie
            + b"\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


async def test_malformed_cookies_get_a_normal_answer(stack: Stack) -> None:
    """``abc|é`` once crashed the gate with a TypeError on every request."""
    queue = new_queue()
    log = stack.workdir / "sidecar.log"
    before = log.stat().st_size
    for cookie in ("abc|é", "é|é", "\x7f|\x01", "a|" + "é" * 300):
        raw = f"anteroom_{queue}={cookie}".encode()
        reply = await asyncio.to_thread(_raw_get, stack.site_port, f"/q/{queue}/", raw)
        status = int(reply.split(b" ", 2)[1])
        assert status in (200, 302), reply[:200]
    assert b"Traceback" not in log.read_bytes()[before:]


async def test_a_session_ends_at_its_absolute_lifetime_even_in_use(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Sliding keeps an admitted session going while it is used, but never past
    session_max (10 s here): one admission cannot be handed to a bot farm for the
    whole sale."""
    stack = make_stack(
        tmp_path / "s", ANTEROOM_SESSION_TTL="4", ANTEROOM_SESSION_MAX="10", ANTEROOM_CAPACITY="1"
    )
    try:
        path = "/q/lifetime/"
        v = Visitor(http, stack.url)
        assert (await v.get(path)).status == 200
        first = v.cookie
        started = time.monotonic()
        statuses = []
        while time.monotonic() - started < 12:
            statuses.append((time.monotonic() - started, (await v.get(path)).status))
            await asyncio.sleep(0.5)
        assert v.cookie != first  # it did slide while in use
        assert all(s == 200 for t, s in statuses if t < 9)
        assert statuses[-1][1] == 302  # ended, back in line
    finally:
        stack.stop()


async def test_joins_and_leaves_with_long_urls_keep_memory_bounded(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """Each waiter's leave once stayed in every replica's memory for 12 h, and
    verified tokens with 2 KB return_to filled a 100k-entry cache."""
    queue = new_queue()
    pid = stack.procs["sidecar"].pid

    def rss_mb() -> float:
        with open(f"/proc/{pid}/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return kb / 1024

    holders = [Visitor(http, stack.url) for _ in range(2)]
    for h in holders:  # the queue is full...
        assert (await h.get(f"/q/{queue}/")).status == 200
    done = asyncio.Event()

    async def keep_shopping() -> None:  # ...for the whole flood
        while not done.is_set():
            for h in holders:
                await h.get(f"/q/{queue}/")
            await asyncio.sleep(0.5)

    shopping = asyncio.create_task(keep_shopping())
    before = rss_mb()
    sem = asyncio.Semaphore(50)
    long_path = f"/q/{queue}/" + "x" * 1000 + "?q=" + "y" * 900

    async def pair() -> None:
        async with sem:
            v = Visitor(http, stack.url)
            assert (await v.get(long_path)).status == 302
            assert v.cookie is not None and len(v.cookie) < 1400
            assert (await v.post(f"/_anteroom/leave?queue={queue}")).status == 200

    await asyncio.gather(*(pair() for _ in range(3000)))
    done.set()
    await shopping
    grown = rss_mb() - before
    print(f"sidecar RSS grew {grown:.1f} MB over 3,000 join+leave pairs with long URLs")
    assert grown < 25


async def test_secure_cookies_over_plain_http_are_warned_about_once(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Browsers drop Secure cookies on http://, so every request would take a new
    place: the sidecar says so in its log, once, naming the setting to change."""
    stack = make_stack(tmp_path / "s", ANTEROOM_COOKIE_SECURE="1")
    try:
        for _ in range(3):
            r = await Visitor(http, stack.url).get("/q/plain/")
            assert "Secure" in r.headers.get("Set-Cookie", "")
        log = (stack.workdir / "sidecar.log").read_text()
        assert log.count("ANTEROOM_COOKIE_SECURE=0") == 1, log[-2000:]
    finally:
        stack.stop()
