"""The auth endpoint's decision table, in process: ``create_app(config)`` on the real
Redis fixture, asked as nginx's ``auth_request`` asks (Host, X-Anteroom-Queue,
X-Original-URI, X-Original-Method, X-Real-IP, Cookie). Every outcome nginx can
act on: 204 pass, 401 + X-Anteroom-Location wait, 403 refused."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

from aiohttp import ClientResponse
from redis.asyncio import Redis

from devstack.stack import free_port
from sidecar.web.tokens import ADMITTED, WAITING, Signer, Token
from tests.conftest import SECRET, AppClient, eventually


def ask(queue: str, uri: str = "/shop/item?id=7", **headers: str) -> dict[str, str]:
    """The headers nginx sends on an auth subrequest."""
    return {"Host": "shop.test", "X-Anteroom-Queue": queue, "X-Original-URI": uri, **headers}


def cookie_of(resp: ClientResponse) -> str:
    """``name=value`` of the one cookie the answer sets."""
    (header,) = resp.headers.getall("Set-Cookie")
    return header.split(";", 1)[0]


async def auth(client: AppClient, queue: str, **headers: str) -> ClientResponse:
    return await client.get("/_anteroom/auth", headers=ask(queue, **headers))


async def tickets(redis: Redis, queue: str) -> int:
    return int(await redis.get(f"aq:{{shop:{queue}}}:tickets") or 0)


async def test_newcomer_enters_then_passes_by_cookie_and_the_next_waits(
    app_client, redis: Redis
) -> None:
    client = await app_client()
    first = await auth(client, "q1")
    assert first.status == 204  # entered: free capacity, no waiting-page round trip
    assert "X-Anteroom-Location" not in first.headers
    admitted = cookie_of(first)
    assert admitted.startswith("anteroom_q1=") and "|a|" in admitted
    assert first.headers["Cache-Control"] == "no-store"

    again = await auth(client, "q1", Cookie=admitted)
    assert again.status == 204 and "Set-Cookie" not in again.headers  # admitted by cookie
    assert await tickets(redis, "q1") == 1  # no second place

    second = await auth(client, "q1")
    assert second.status == 401  # capacity 1 is taken: wait
    location = urlsplit(second.headers["X-Anteroom-Location"])
    assert location.path == "/_anteroom/waiting/shop/"
    assert parse_qs(location.query) == {"queue": ["q1"], "return_to": ["/shop/item?id=7"]}
    assert second.headers["Retry-After"] == "5"
    waiting = cookie_of(second)
    assert "|w|" in waiting

    # the waiter's next request is decided from its cookie: no new place
    third = await auth(client, "q1", Cookie=waiting)
    assert third.status == 401 and "Set-Cookie" not in third.headers
    assert await tickets(redis, "q1") == 2


async def test_a_waiter_whose_turn_came_is_admitted_by_the_gate(app_client) -> None:
    client = await app_client()
    holder = cookie_of(await auth(client, "turn"))
    waiter = cookie_of(await auth(client, "turn"))
    left = await client.post(
        "/_anteroom/leave?queue=turn", headers={"Host": "shop.test", "Cookie": holder}
    )
    assert left.status == 200

    async def entered() -> ClientResponse | None:
        r = await auth(client, "turn", Cookie=waiter)
        return r if r.status == 204 else None

    r = await eventually(entered)
    assert "|a|" in cookie_of(r)  # the claim swapped the place for a session


async def test_unknown_host_and_bad_queue_name_are_refused(app_client) -> None:
    client = await app_client()
    r = await client.get("/_anteroom/auth", headers={**ask("q"), "Host": "other.test"})
    assert r.status == 403 and "Set-Cookie" not in r.headers
    for bad in ("", "-x", "a" * 65, "a/b"):
        r = await auth(client, bad)
        assert r.status == 403 and "Set-Cookie" not in r.headers


async def test_mode_off_passes_everyone_without_a_place(app_client, redis: Redis) -> None:
    client = await app_client()
    for _ in range(3):
        r = await auth(client, "off")
        assert r.status == 204 and "Set-Cookie" not in r.headers
    assert await tickets(redis, "off") == 0


async def test_queue_all_and_paused_make_newcomers_wait_despite_free_capacity(
    app_client,
) -> None:
    client = await app_client()
    for queue in ("all", "paused"):
        r = await auth(client, queue)
        assert r.status == 401 and "X-Anteroom-Location" in r.headers, queue
        assert "|w|" in cookie_of(r)


async def test_join_budget_spent_waits_without_a_place(app_client, redis: Redis) -> None:
    client = await app_client()
    first = await auth(client, "budget", **{"X-Real-IP": "203.0.113.9"})
    assert first.status == 204
    refused = await auth(client, "budget", **{"X-Real-IP": "203.0.113.9"})
    assert refused.status == 401 and refused.headers["Retry-After"] == "60"
    assert "Set-Cookie" not in refused.headers  # over budget: no place, no cookie
    assert await tickets(redis, "budget") == 1
    other = await auth(client, "budget", **{"X-Real-IP": "203.0.113.10"})
    assert other.status == 401 and "Set-Cookie" in other.headers  # another address: a place


async def test_previews_preflights_and_cross_site_posts_take_no_place(
    app_client, redis: Redis
) -> None:
    client = await app_client()
    await auth(client, "pre")  # capacity taken
    for headers in (
        {"X-Original-Method": "HEAD"},
        {"X-Original-Method": "OPTIONS"},
        {"X-Original-Method": "POST", "Sec-Fetch-Site": "cross-site"},
    ):
        r = await auth(client, "pre", **headers)
        assert r.status == 401 and "Set-Cookie" not in r.headers, headers
    assert await tickets(redis, "pre") == 1


async def test_forged_expired_truncated_and_other_tenant_cookies_are_no_cookie(
    app_client, redis: Redis
) -> None:
    client = await app_client()
    now = int(time.time())
    good, other_key = Signer((SECRET.encode(),)), Signer((b"another-secret-0123456789",))
    admitted = Token("shop", "forged", ADMITTED, 1, "sid-forged-0001", now, now + 600, epoch="e")
    bad = [
        other_key.dumps(admitted),  # forged: signed with another key
        good.dumps(Token("shop", "forged", ADMITTED, 1, "sid-expired", now - 99, now - 1)),
        good.dumps(admitted)[:-5],  # truncated
        good.dumps(Token("beta", "forged", ADMITTED, 1, "sid-beta", now, now + 600)),
        "garbage|é",
    ]
    await auth(client, "forged")  # capacity taken: a real cookie would pass, none waits
    for n, raw in enumerate(bad, start=2):
        r = await auth(client, "forged", Cookie=f"anteroom_forged={raw}")
        assert r.status == 401, raw  # treated as a newcomer: a place in line
        assert "|w|" in cookie_of(r)
        assert await tickets(redis, "forged") == n


async def test_bearer_token_passes_like_the_cookie(app_client) -> None:
    client = await app_client()
    admitted = cookie_of(await auth(client, "api")).split("=", 1)[1]
    r = await auth(client, "api", Authorization=f"Bearer {admitted}")
    assert r.status == 204 and "Set-Cookie" not in r.headers
    waiting = Signer((SECRET.encode(),)).dumps(
        Token("shop", "api", WAITING, 99, "sid-bearer", 1, int(time.time()) + 60, "/", "e")
    )
    r = await auth(client, "api", Authorization=f"Bearer {waiting}")
    assert r.status == 401  # a waiting bearer of another epoch: its claim fails, it waits


async def test_redis_down_follows_the_queues_policy(app_client) -> None:
    client = await app_client(ANTEROOM_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    wait = await auth(client, "q")
    assert wait.status == 401 and wait.headers["Retry-After"] == "10"
    assert "X-Anteroom-Location" in wait.headers and "Set-Cookie" not in wait.headers
    fail_open = await auth(client, "open")
    assert fail_open.status == 204 and "Set-Cookie" not in fail_open.headers


async def test_a_left_session_no_longer_passes(app_client) -> None:
    client = await app_client()
    admitted = cookie_of(await auth(client, "gone"))
    r = await client.post("/_anteroom/leave", headers={"Host": "shop.test", "Cookie": admitted})
    assert r.status == 200 and (await r.json())["freed"] is True
    again = await auth(client, "gone", Cookie=admitted)
    assert again.status == 204  # the slot was freed: a newcomer enters ...
    assert cookie_of(again) != admitted  # ... with a new session, not the revoked one


async def close(client: AppClient, redis: Redis, queue: str, **settings: str) -> None:
    """What the admin API stores for a change, then the poke that spreads it."""
    await redis.hset(f"aq:{{shop:{queue}}}:settings", "mode", "closed")
    for key, value in settings.items():
        await redis.hset(f"aq:{{shop:{queue}}}:settings", key, value)
    await redis.hincrby("aq:tickers", f"v:shop:{queue}", 1)

    async def closed() -> bool:  # asked without taking a place
        r = await client.get(f"/_anteroom/status?queue={queue}", headers={"Host": "shop.test"})
        return bool((await r.json())["state"] == "closed")

    await eventually(closed, within=3)


async def test_closed_queue_turns_newcomers_and_waiters_away_and_sessions_go_on(
    app_client, redis: Redis
) -> None:
    client = await app_client()
    admitted = cookie_of(await auth(client, "shut"))  # capacity 1
    waiting = cookie_of(await auth(client, "shut"))
    await close(client, redis, "shut", message="Back <b>soon</b>")

    for cookie in ("", waiting):
        r = await auth(client, "shut", Cookie=cookie)
        assert r.status == 401 and r.headers["X-Anteroom-State"] == "closed"
        assert r.headers["X-Anteroom-Location"].endswith("#closed")
        assert "Set-Cookie" not in r.headers and "Retry-After" not in r.headers
    assert (await auth(client, "shut", Cookie=admitted)).status == 204  # goes on
    assert await tickets(redis, "shut") == 2  # no place taken while closed

    # the waiter's page: the closed answer with the message, and no claim
    host = {"Host": "shop.test"}
    r = await client.get("/_anteroom/status?queue=shut", headers={**host, "Cookie": waiting})
    body = await r.json()
    assert body["state"] == "closed" and body["message"] == "Back <b>soon</b>"
    assert body["poll_after"] is None and body["link"] is None
    # without JavaScript: the page's closed view
    r = await client.get(
        "/_anteroom/continue?queue=shut",
        headers={**host, "Cookie": waiting},
        allow_redirects=False,
    )
    assert r.status == 303 and r.headers["Location"].endswith("#closed")
    # an API client: 410 and no place
    r = await client.post("/_anteroom/join?queue=shut", headers=host)
    assert r.status == 410 and (await r.json())["state"] == "closed"
    assert await tickets(redis, "shut") == 2


async def test_closes_at_from_the_configuration_closes_with_its_message(
    app_client, redis: Redis
) -> None:
    """tenants.shop.queues.soldout: closes_at long past, a message in two languages."""
    client = await app_client()
    r = await auth(client, "soldout")
    assert r.status == 401 and r.headers["X-Anteroom-State"] == "closed"
    assert await tickets(redis, "soldout") == 0
    for lang, text in (
        ("en", "Sold out <i>for good</i>"),
        ("fr", "Épuisé"),
        ("xx-", "Sold out <i>for good</i>"),
    ):
        r = await client.get(
            f"/_anteroom/status?queue=soldout&lang={lang}", headers={"Host": "shop.test"}
        )
        body = await r.json()
        assert body["state"] == "closed" and body["message"] == text, lang
        assert body["link"] == "https://tickets.example/next" and body["closes_at"] == 10**9
