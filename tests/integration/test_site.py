"""The whole product over HTTP: real nginx with the shipped snippets, the sidecar,
Redis and an origin, as a visitor's browser (or an API client) sees them."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import pytest

from sidecar.web.tokens import ADMITTED, WAITING, Signer, Token
from tests.conftest import SECRET, eventually, make_stack
from tests.visitors import Visitor

pytestmark = pytest.mark.integration

WAITING_PAGE = "/_anteroom/waiting/acme/"


def new_queue() -> str:
    return "t" + uuid.uuid4().hex[:12]


async def fill(visitor, path: str, n: int = 2) -> list[Visitor]:
    """n visitors admitted on ``path`` (the stack's capacity is 2)."""
    admitted = []
    for _ in range(n):
        v = visitor()
        r = await v.get(path)
        assert r.status == 200, r.status
        admitted.append(v)
    return admitted


async def test_capacity_then_waiting_page_with_cookie(visitor) -> None:
    path = f"/q/{new_queue()}/item?id=7"
    admitted = await fill(visitor, path)
    for v in admitted:
        r = admitted[0].history[0] if v is admitted[0] else v.history[0]
        assert 'data-origin="demo"' in r.text  # the origin's page itself
        assert v.cookie and f"|{ADMITTED}|" in v.cookie

    late = visitor()
    r = await late.get(path)
    assert r.status == 302
    loc = urlsplit(r.location or "")
    assert loc.path == WAITING_PAGE and not loc.netloc
    assert parse_qs(loc.query)["return_to"] == [path]
    assert late.cookie and f"|{WAITING}|" in late.cookie
    assert r.headers["Cache-Control"] == "no-store"
    cookie = r.set_cookies[0]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie

    # a waiter opening another page of the queue is sent back to that page later
    other = path.replace("item?id=7", "cart")
    r = await late.get(other)
    assert r.status == 302 and parse_qs(urlsplit(r.location or "").query)["return_to"] == [other]
    assert not r.set_cookies  # same place in line, no new cookie

    # the admitted ones keep going without a new cookie each time
    again = await admitted[0].get(path)
    assert again.status == 200


async def test_positions_follow_join_order(visitor) -> None:
    path = f"/q/{new_queue()}/"
    await fill(visitor, path)
    waiters = [visitor() for _ in range(5)]
    for w in waiters:
        assert (await w.get(path)).status == 302

    async def positions() -> list[int] | None:
        got = [(await w.status())["position"] for w in waiters]
        return got if got == [1, 2, 3, 4, 5] else None

    assert await eventually(positions, within=3)

    async def first():
        s = await waiters[0].status()
        return s if s["in_line"] == 5 else None  # the count comes with the next tick

    s = await eventually(first, within=3)
    assert s["state"] == "waiting" and s["ahead"] == 0


async def test_leave_admits_the_first_waiter(visitor) -> None:
    path = f"/q/{new_queue()}/page"
    admitted = await fill(visitor, path)
    w1, w2 = visitor(), visitor()
    await w1.get(path)
    await w2.get(path)

    r = await admitted[0].post("/_anteroom/leave")
    assert r.status == 200 and r.json() == {"state": "left", "freed": True}
    assert admitted[0].cookies == {}  # cleared

    async def w1_admitted():
        s = await w1.status()
        return s if s["state"] == "admitted" else None

    s = await eventually(w1_admitted, within=3)
    assert s["redirect"] == path
    assert (await w1.get(path)).status == 200
    assert (await w2.status())["position"] == 1  # still waiting, now first
    assert (await w2.get(path)).status == 302


async def test_left_cookie_is_no_pass_even_if_replayed(visitor) -> None:
    """A cookie of an ended session never passes again; it is no dead end either:
    its holder joins the line like anyone else."""
    queue = new_queue()
    path = f"/q/{queue}/"
    a, _ = await fill(visitor, path)
    saved = a.cookie
    await a.post("/_anteroom/leave")
    holder = visitor()  # takes the freed slot: the queue is full again
    assert (await holder.get(path)).status == 200
    replay = visitor()
    replay.hold(queue, saved)
    r = await replay.get(path)
    assert r.status == 302 and replay.cookie != saved  # a new place, at the back
    assert (await replay.status())["state"] == "waiting"


async def test_idle_session_expires_and_frees_its_slot(visitor) -> None:
    path = f"/q/{new_queue()}/"
    await fill(visitor, path)
    w = visitor()
    await w.get(path)
    started = time.monotonic()

    async def admitted():
        return (await w.status())["state"] == "admitted"

    await eventually(admitted, within=10)
    # session TTL is 3s (+ heartbeat slack): not before the TTL ran out
    assert time.monotonic() - started >= 2.5
    assert (await w.get(path)).status == 200


async def test_active_use_keeps_session_alive(visitor) -> None:
    path = f"/q/{new_queue()}/"
    a, b = await fill(visitor, path)
    w = visitor()
    await w.get(path)
    # a and b keep using the site (b through the keepalive endpoint) past the 3s TTL
    for _ in range(12):
        assert (await a.get(path)).status == 200
        assert (await b.post("/_anteroom/keepalive")).json()["state"] == "admitted"
        await asyncio.sleep(0.5)
    assert (await w.status())["state"] == "waiting"


@pytest.mark.parametrize(
    "cookie",
    [
        "garbage",
        "",
        "1|acme|Q|a|1|sid|1|9999999999|%2F|AAAA",  # forged signature
        "TRUNCATED",
        "OTHER_QUEUE",
        "EXPIRED",
        "OTHER_TENANT",
        "WRONG_SECRET",
        "x" * 3000,
    ],
)
async def test_bad_cookies_count_as_no_cookie(visitor, cookie: str) -> None:
    queue = new_queue()
    path = f"/q/{queue}/"
    await fill(visitor, path)
    now = int(time.time())
    good = Signer((SECRET.encode(),))
    crafted = {
        "TRUNCATED": good.dumps(Token("acme", queue, ADMITTED, 1, "s1", now, now + 60))[:-5],
        "OTHER_QUEUE": good.dumps(Token("acme", "other", ADMITTED, 1, "s2", now, now + 60)),
        "EXPIRED": good.dumps(Token("acme", queue, ADMITTED, 1, "s3", now - 100, now - 1)),
        "OTHER_TENANT": good.dumps(Token("evil", queue, ADMITTED, 1, "s4", now, now + 60)),
        "WRONG_SECRET": Signer((b"another-secret-0123456789",)).dumps(
            Token("acme", queue, ADMITTED, 1, "s5", now, now + 60)
        ),
    }
    v = visitor()
    v.hold(queue, crafted.get(cookie, cookie.replace("Q", queue)))
    r = await v.get(path)
    assert r.status == 302  # never admitted past capacity, never a 5xx
    assert v.cookie and f"|{WAITING}|" in v.cookie  # a real place in line instead
    assert (await v.status())["state"] == "waiting"


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/",
        "https://evil.example/",
        "/\\evil.example",
        "/\t/evil.example",
        "\\\\evil.example",
        "javascript:alert(1)",
        "/\r\nSet-Cookie:x=1",
        "/\u00e9vil",
        "",
    ],
)
async def test_return_to_never_leaves_the_site(visitor, target: str) -> None:
    path = f"/q/{new_queue()}/"
    (a,) = await fill(visitor, path, 1)
    s = await a.status(return_to=target)
    assert s["state"] == "admitted" and s["redirect"] == "/"  # the site's home instead
    r = await a.get("/_anteroom/continue?return_to=" + quote(target, safe=""))
    assert r.status == 303 and r.location == "/"
    r = await a.post("/_anteroom/leave?return_to=" + quote(target, safe=""))
    assert r.status == 200 and r.location is None


async def test_safe_return_to_is_honoured(visitor) -> None:
    path = f"/q/{new_queue()}/"
    (a,) = await fill(visitor, path, 1)
    assert (await a.status(return_to="/q/x/cart?step=2"))["redirect"] == "/q/x/cart?step=2"
    r = await a.post("/_anteroom/leave?return_to=/")
    assert r.status == 303 and r.location == "/"


async def test_json_clients_get_429_with_retry_after(visitor) -> None:
    path = f"/q/{new_queue()}/api/stock"
    await fill(visitor, path)
    api = visitor()
    r = await api.get(path, headers={"Accept": "application/json"})
    assert r.status == 429
    assert int(r.headers["Retry-After"]) > 0
    body = r.json()
    assert body["state"] == "waiting" and body["location"].startswith(WAITING_PAGE)
    assert api.cookie  # the place in line is kept for the retry


async def test_no_javascript_path_by_redirects(visitor) -> None:
    path = f"/q/{new_queue()}/"
    a, _ = await fill(visitor, path)
    w = visitor()
    await w.get(path)
    page = await w.get(WAITING_PAGE)
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    assert 'http-equiv="refresh" content="20;url=/_anteroom/continue"' in page.text
    r = await w.get("/_anteroom/continue")
    assert r.status == 303 and (r.location or "").startswith(WAITING_PAGE)
    await a.post("/_anteroom/leave")

    async def sent_in():
        r = await w.get("/_anteroom/continue")
        return r if r.location == path else None

    await eventually(sent_in, within=3)
    assert (await w.get(path)).status == 200


async def test_waiting_page_assets(visitor) -> None:
    v = visitor()
    page = await v.get(WAITING_PAGE)
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "Acme Tickets" in page.text
    css = re.search(r'href="(waiting\.[0-9a-f]{10}\.css)"', page.text)
    js = re.search(r'src="(waiting\.[0-9a-f]{10}\.js)"', page.text)
    assert css and js, page.text
    for name, ctype, cache in [
        (css.group(1), "text/css", "immutable"),
        (js.group(1), "application/javascript", "immutable"),
        ("keepalive.js", "application/javascript", "no-cache"),
    ]:
        r = await v.get(WAITING_PAGE + name)
        assert r.status == 200, name
        assert r.headers["Content-Type"].startswith(ctype), (name, r.headers["Content-Type"])
        assert cache in r.headers["Cache-Control"], (name, r.headers["Cache-Control"])
    assert page.headers["Cache-Control"] == "no-cache"


async def test_many_simultaneous_newcomers(visitor) -> None:
    path = f"/q/{new_queue()}/"
    crowd = [visitor() for _ in range(40)]
    replies = await asyncio.gather(*(v.get(path) for v in crowd))
    assert sorted(r.status for r in replies) == [200] * 2 + [302] * 38

    async def settled():
        got = [
            (await v.status())["position"]
            for v, r in zip(crowd, replies, strict=True)
            if r.status == 302
        ]
        return sorted(got) if sorted(got) == list(range(1, 39)) else None

    assert await eventually(settled, within=3)


async def test_oversized_and_odd_requests_get_clear_answers(visitor) -> None:
    path = f"/q/{new_queue()}/"
    v = visitor()
    r = await v.get(path + "a" * 6000)  # long URI forwarded in X-Original-URI
    assert r.status == 200
    big = visitor()
    r = await big.get(path, headers={"Cookie": "junk=" + "j" * 7000})
    assert r.status in (200, 302)
    huge = visitor()
    r = await huge.get(path, headers={"Cookie": "junk=" + "j" * 20000})
    assert r.status == 400  # nginx's own "header too large", never a 500
    r = await v.get("/_anteroom/auth")
    assert r.status == 404  # internal only
    r = await v.get("/_anteroom/status")
    assert r.status == 200  # nobody is waiting: says so, no error


async def test_unknown_host_is_refused(visitor) -> None:
    v = visitor(host="unknown.example")
    r = await v.get(f"/q/{new_queue()}/")
    assert r.status == 403
    assert (await v.get("/_anteroom/status")).status == 403
    assert (await v.get("/")).status == 200  # ungated pages are not the sidecar's business


async def test_tenants_are_separate_sites(visitor) -> None:
    queue = new_queue()
    path = f"/q/{queue}/"
    acme = await fill(visitor, path)  # acme's line is full
    beta = visitor(host="localhost")
    r = await beta.get(path)
    assert r.status == 200  # beta's queue of the same name is its own
    late = visitor(host="localhost")
    await fill(lambda: visitor(host="localhost"), path, 1)
    r = await late.get(path)
    assert r.status == 302 and (r.location or "").startswith("/_anteroom/waiting/beta/")
    page = await late.get("/_anteroom/waiting/beta/")
    assert '<html lang="fr">' in page.text and "Beta Billets" in page.text
    assert "Vous êtes dans la file" in page.text

    # an acme cookie means nothing at beta: a new place in beta's line instead
    stray = visitor(host="localhost")
    stray.cookies = dict(acme[0].cookies)
    r = await stray.get(path)
    assert r.status == 302 and stray.cookie != acme[0].cookie


async def test_positions_are_right_straight_after_joining(tmp_path) -> None:
    """Positions do not wait for the next refresh: a slow refresher (5 s) makes
    any reliance on it visible."""
    stack = make_stack(tmp_path / "slow", ANTEROOM_REFRESH_INTERVAL="5")
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            path = f"/q/{new_queue()}/"
            for _ in range(2):
                assert (await Visitor(http, stack.url).get(path)).status == 200
            waiters = [Visitor(http, stack.url) for _ in range(3)]
            for w in waiters:
                assert (await w.get(path)).status == 302
            assert [(await w.status())["position"] for w in waiters] == [1, 2, 3]
    finally:
        stack.stop()
