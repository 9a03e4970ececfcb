"""The public endpoints' decision tables, in process (``create_app(config)`` on the
real Redis fixture): status, continue, join, leave, keepalive; each outcome."""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

from redis.asyncio import Redis
from yarl import URL

from devstack.stack import free_port
from sidecar.web.status import MAX_PAGE_KEY, MAX_PAGES
from sidecar.web.tokens import WAITING, Signer, Token
from tests.conftest import SECRET, AppClient, eventually
from tests.test_gate import auth, cookie_of

SITE = {"Host": "shop.test"}


async def status(client: AppClient, cookie: str = "", query: str = "") -> dict[str, Any]:
    r = await client.session.get(as_sent(client, query), headers={**SITE, "Cookie": cookie})
    assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
    assert r.content_type == "application/json"
    body: dict[str, Any] = await r.json()
    return body


def as_sent(client: AppClient, query: str) -> URL:
    """The status URL with ``query`` exactly as written (escapes kept)."""
    return URL(f"http://{client.host}:{client.port}/_anteroom/status{query}", encoded=True)


async def test_status_none_waiting_admitted_and_turn_come(app_client) -> None:
    client = await app_client()
    assert await status(client, query="?return_to=/shop/") == {
        "state": "none",
        "redirect": "/shop/",
    }
    holder = cookie_of(await auth(client, "s"))
    waiter = cookie_of(await auth(client, "s"))
    assert await status(client, holder, "?queue=s&return_to=/cart") == {
        "state": "admitted",
        "queue": "s",
        "redirect": "/cart",
    }
    body = await status(client, waiter)
    assert body["state"] == "waiting" and body["queue"] == "s" and body["redirect"] is None
    assert (body["position"], body["ahead"], body["in_line"], body["poll_after"]) == (1, 0, 1, 3)
    assert body["ticket"] == 2 and body["mode"] == "on" and body["opens_at"] is None
    assert isinstance(body["updated"], int)

    # the holder leaves: the waiter's next poll claims the place
    await client.post("/_anteroom/leave?queue=s", headers={**SITE, "Cookie": holder})

    async def admitted() -> dict[str, Any] | None:
        r = await client.get("/_anteroom/status?queue=s", headers={**SITE, "Cookie": waiter})
        body = await r.json()
        return {**body, "cookie": cookie_of(r)} if body["state"] == "admitted" else None

    body = await eventually(admitted)
    assert body["redirect"] == "/shop/item?id=7"  # where the waiter was going
    assert "|a|" in body["cookie"]


async def test_status_with_a_measured_rate_gives_an_eta_range(app_client) -> None:
    """The waiting JSON built per queue state and per poll parses as before, ETA included."""
    client = await app_client()
    holder = cookie_of(await auth(client, "eta"))
    waiters = [cookie_of(await auth(client, "eta")) for _ in range(3)]
    await client.post("/_anteroom/leave?queue=eta", headers={**SITE, "Cookie": holder})

    async def with_eta() -> dict[str, Any] | None:
        body = await status(client, waiters[2])
        return body if body.get("eta_seconds") else None

    body = await eventually(with_eta)  # one admission in the last minute: a rate
    assert body["position"] >= 1 and body["ahead"] == body["position"] - 1
    low, high = body["eta_range"]
    assert isinstance(body["eta_seconds"], float) and low <= body["eta_seconds"] <= high


async def test_status_before_a_scheduled_opening_has_no_place_yet(app_client) -> None:
    client = await app_client(ANTEROOM_CAPACITY="5")
    r = await auth(client, "later")
    assert r.status == 401
    body = await status(client, cookie_of(r))
    assert body["notice"] == "opens_later" and body["opens_at"] == 4000000000
    assert body["position"] is None and body["ahead"] is None and body["eta_range"] is None
    assert body["opens_in"] > 0 and 1 <= body["poll_after"] <= 20
    assert body["state"] == "waiting" and body["ticket"] >= 1


async def test_status_unknown_site_is_refused_and_redis_down_degrades(app_client) -> None:
    client = await app_client()
    r = await client.get("/_anteroom/status", headers={"Host": "other.test"})
    assert r.status == 403
    now = int(time.time())
    waiting = Signer((SECRET.encode(),)).dumps(
        Token("shop", "q", WAITING, 3, "sid-degraded", now, now + 60, "/", "e")
    )
    down = await app_client(ANTEROOM_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    body = await status(down, f"anteroom_q={waiting}")
    assert body["degraded"] is True and body["state"] == "waiting" and body["poll_after"] == 10


async def test_continue_redirects_by_state(app_client) -> None:
    client = await app_client()
    holder = cookie_of(await auth(client, "c"))
    waiter = cookie_of(await auth(client, "c"))
    cases = [
        ("", "/back"),  # no place: back to the page, which joins
        (holder, "/back"),  # admitted: on to where they were going
    ]
    for cookie, location in cases:
        r = await client.get(
            "/_anteroom/continue?return_to=/back",
            headers={**SITE, "Cookie": cookie},
            allow_redirects=False,
        )
        assert (r.status, r.headers["Location"]) == (303, location)
    r = await client.get(
        "/_anteroom/continue?return_to=/back",
        headers={**SITE, "Cookie": waiter},
        allow_redirects=False,
    )
    assert r.status == 303
    assert r.headers["Location"] == "/_anteroom/waiting/shop/?queue=c&return_to=%2Fback"


async def test_join_by_api(app_client, redis: Redis) -> None:
    client = await app_client()
    post = client.post
    r = await post("/_anteroom/join?queue=api", headers=SITE)
    assert r.status == 404  # neither configured nor sent visitors by nginx
    assert (await post("/_anteroom/join?queue=a/b", headers=SITE)).status == 400
    r = await post("/_anteroom/join?queue=all", headers={**SITE, "Sec-Fetch-Site": "cross-site"})
    assert r.status == 403
    r = await post("/_anteroom/join?queue=off", headers=SITE)
    assert await r.json() == {
        "state": "admitted",
        "queue": "off",
        "token": None,
        "poll_after": None,
    }

    r = await post("/_anteroom/join?queue=budget", headers={**SITE, "X-Real-IP": "192.0.2.1"})
    entered = await r.json()
    assert entered["state"] == "admitted" and entered["position"] == 0 and entered["token"]
    r = await post("/_anteroom/join?queue=budget", headers={**SITE, "X-Real-IP": "192.0.2.2"})
    waiting = await r.json()
    assert waiting["state"] == "waiting" and waiting["position"] == 1 and waiting["poll_after"]
    assert cookie_of(r) == f"anteroom_budget={waiting['token']}"
    # the same token as a Bearer: the same place, not a new one
    again = await post(
        "/_anteroom/join?queue=budget",
        headers={**SITE, "Authorization": f"Bearer {waiting['token']}"},
    )
    assert (await again.json())["ticket"] == waiting["ticket"]
    r = await post("/_anteroom/join?queue=budget", headers={**SITE, "X-Real-IP": "192.0.2.2"})
    assert r.status == 429 and r.headers["Retry-After"] == "60"
    assert int(await redis.get("aq:{shop:budget}:tickets") or 0) == 2


async def test_leave_frees_clears_and_redirects(app_client) -> None:
    client = await app_client()
    holder = cookie_of(await auth(client, "l"))
    r = await client.post("/_anteroom/leave?queue=l", headers={**SITE, "Cookie": holder})
    assert await r.json() == {"state": "left", "freed": True}
    cleared = r.headers["Set-Cookie"]
    assert cleared.startswith("anteroom_l=;") and "Max-Age=0" in cleared
    r = await client.post("/_anteroom/leave", headers=SITE)  # nothing held
    assert await r.json() == {"state": "left", "freed": False}
    r = await client.post("/_anteroom/leave?return_to=/bye", headers=SITE, allow_redirects=False)
    assert (r.status, r.headers["Location"]) == (303, "/bye")
    r = await client.post(
        "/_anteroom/leave?return_to=//evil.example", headers=SITE, allow_redirects=False
    )
    assert r.status == 200  # never an open redirect


async def test_keepalive_slides_sessions_only(app_client) -> None:
    client = await app_client()
    holder = cookie_of(await auth(client, "k"))
    waiter = cookie_of(await auth(client, "k"))
    r = await client.post("/_anteroom/keepalive", headers={**SITE, "Cookie": holder})
    body = await r.json()
    assert body["state"] == "admitted" and 0 < body["expires_in"] <= 3  # FAST session TTL
    r = await client.post("/_anteroom/keepalive", headers={**SITE, "Cookie": waiter})
    assert await r.json() == {"state": "none"}
    r = await client.post("/_anteroom/keepalive?queue=other", headers={**SITE, "Cookie": holder})
    assert await r.json() == {"state": "none"}


async def test_a_cached_waiting_token_stops_counting_when_it_expires(app_client) -> None:
    """Polls skip the HMAC of a token already verified, never the expiry check."""
    client = await app_client()
    cookie_of(await auth(client, "exp"))  # capacity taken
    waiter = cookie_of(await auth(client, "exp"))
    raw = waiter.split("=", 1)[1]
    tok = Signer((SECRET.encode(),)).loads(raw)
    assert tok is not None
    soon = Signer((SECRET.encode(),)).dumps(
        Token(
            tok.tenant,
            tok.queue,
            WAITING,
            tok.ticket,
            tok.sid,
            tok.iat,
            int(time.time()) + 2,
            tok.return_to,
            tok.epoch,
        )
    )
    for query in ("", "?queue=exp"):  # the decision, and the poll's short way
        assert (await status(client, f"anteroom_exp={soon}", query))["state"] == "waiting"
    await asyncio.sleep(2.1)
    for query in ("", "?queue=exp"):
        assert (await status(client, f"anteroom_exp={soon}", query))["state"] == "none"


async def test_a_poll_answers_alike_by_cookie_and_by_bearer(app_client) -> None:
    """A waiter's poll by cookie takes the short way (Status._poll); the same token
    as a Bearer takes the whole decision. Both answer alike, whatever the queue's
    order, opening or message and however the page's URL is written."""
    client = await app_client(ANTEROOM_CAPACITY="1")
    waiters = {}
    for queue in ("s", "later", "draw", "hello"):
        await auth(client, queue)  # the one place (a pre-queue takes nobody: two waiters)
        waiters[queue] = cookie_of(await auth(client, queue))
    queries = {  # the URL: whether the answer is in French
        "?queue={q}": False,
        "?queue={q}&return_to=%2Fshop%2F&lang=en": False,
        "?return_to=/cart&lang=fr&queue={q}": True,
        "?queue={q}&lang=%66r": True,  # "fr", escaped: only the full parse reads it
        "?queue={q}&lang=fr&lang=de": True,
        "?queue={q}&lang=english": False,
        "?queue={q}&lang=fr%0A": False,  # no language ends in a newline
        "?queue={q}#lang=fr": False,
        "?queue={q}&return_to=%2F" + "a" * 600: False,  # too long to keep: read each time
    }

    async def alike(cookie: str, query: str) -> dict[str, Any] | None:
        by_cookie = await status(client, cookie, query)
        r = await client.session.get(
            as_sent(client, query),
            headers={**SITE, "Authorization": "Bearer " + cookie.split("=", 1)[1]},
        )
        by_bearer = await r.json()
        # a tick between the two moves the clock: ask again
        return by_cookie if by_cookie == by_bearer else None

    for queue, cookie in waiters.items():
        for query, french in queries.items():
            url = query.format(q=queue)
            body = await eventually(functools.partial(alike, cookie, url), within=5)
            assert body["state"] == "waiting" and body["queue"] == queue, (queue, query)
            if queue == "hello":
                assert body["message"] == ("Bonjour" if french else "Hello"), query

    # the same URL on a site Anteroom does not serve is refused, never read as the last
    cookie = waiters["s"]
    r = await client.get("/_anteroom/status?queue=s", headers={"Host": "x.test", "Cookie": cookie})
    assert r.status == 403


async def test_the_poll_urls_read_once_are_bounded(app_client) -> None:
    """What a poll's Host and URL say is kept per URL for the next poll: never more
    than MAX_PAGES of them, none longer than MAX_PAGE_KEY (an attacker varying URLs
    costs a reading each, not the process's memory)."""
    client = await app_client()
    await auth(client, "s")
    waiter = cookie_of(await auth(client, "s"))
    status_route = next(
        r
        for r in client.app.router.routes()
        if r.method == "GET"
        and r.resource is not None
        and r.resource.canonical == "/_anteroom/status"
    )
    kept = status_route.handler.__wrapped__.__self__._pages
    for batch in range(0, MAX_PAGES + 100, 500):
        queries = [f"?queue=s&n={i}" for i in range(batch, batch + 500)]
        queries.append("?queue=s&long=" + "x" * MAX_PAGE_KEY)
        bodies = await asyncio.gather(*(status(client, waiter, q) for q in queries))
        assert all(b["state"] == "waiting" for b in bodies)
        assert len(kept) <= MAX_PAGES
        assert all(len(host) + len(url) <= MAX_PAGE_KEY for host, url in kept)
