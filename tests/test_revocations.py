"""Revocations fail closed (issue 16.3): with 250,000 sessions ended, more than a
process keeps exactly, the first ended cookie is still refused on a replica that
has run all along and on a fresh one; and the gate never lets a dropped id pass
unchecked. The sidecar runs in-process (the app factory) on the real Redis."""

from __future__ import annotations

import dataclasses
import time

from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from sidecar.config import load
from sidecar.queue.engine import QueueRef
from sidecar.queue.keys import ENDED_STREAM_MAXLEN, TICKERS_KEY
from sidecar.queue.revocations import MAX_KEPT, Known
from sidecar.web.app import GATE, REFRESHER, create_app
from tests.conftest import FAST, eventually

QUEUE = "ended"
Q = QueueRef("default", QUEUE)  # no TOML: one tenant for every host
ENDED = 250_000
AUTH = {"Host": "127.0.0.1", "X-Anteroom-Queue": QUEUE, "X-Original-URI": "/shop/"}


def cookie_of(resp: ClientResponse) -> str:
    raw = resp.headers.getall("Set-Cookie")
    (value,) = [c.split(";")[0].split("=", 1)[1] for c in raw if c.startswith(f"anteroom_{QUEUE}=")]
    return str(value)


async def auth(client: TestClient[web.Request, web.Application], cookie: str) -> int:
    headers = {**AUTH, "Cookie": f"anteroom_{QUEUE}={cookie}"}
    client.session.cookie_jar.clear()
    async with client.get("/_anteroom/auth", headers=headers) as r:
        return r.status


async def end_many(redis: Redis, count: int, until: int) -> list[str]:
    """``count`` sessions ended as leave.lua ends them (revoked set + capped ended stream)."""
    sids = [f"ended{i:06d}" for i in range(count)]
    for i in range(0, count, 10_000):
        async with redis.pipeline(transaction=False) as pipe:
            pipe.zadd(Q.keys.revoked, dict.fromkeys(sids[i : i + 10_000], until))
            for sid in sids[i : i + 10_000]:
                pipe.xadd(
                    Q.keys.ended,
                    {"sid": sid, "until": until},
                    maxlen=ENDED_STREAM_MAXLEN,
                    approximate=True,
                )
            pipe.hincrby(TICKERS_KEY, f"v:{Q}", 1)
            await pipe.execute()
    return sids


async def test_the_first_of_250k_ended_sessions_stays_refused(
    redis: Redis, redis_url: str, aiohttp_client
) -> None:
    env = {
        **FAST,
        "ANTEROOM_REDIS_URL": redis_url,
        "ANTEROOM_CAPACITY": "1",
        "ANTEROOM_SESSION_TTL": "600",
        "ANTEROOM_GRACE": "60",
        "ANTEROOM_ADMIN_LISTEN": "off",
    }
    config = load(env)
    long_running: TestClient[web.Request, web.Application] = await aiohttp_client(
        create_app(config)
    )
    client = long_running
    # the first visitor is let in, then leaves: their cookie is revoked
    client.session.cookie_jar.clear()
    async with client.get("/_anteroom/auth", headers=AUTH) as r:
        assert r.status == 204
        first = cookie_of(r)
    async with client.post(
        f"/_anteroom/leave?queue={QUEUE}",
        headers={"Host": "127.0.0.1", "Cookie": f"anteroom_{QUEUE}={first}"},
    ) as r:
        assert r.status == 200
    client.session.cookie_jar.clear()
    async with client.get("/_anteroom/auth", headers=AUTH) as r:  # the next one fills it
        assert r.status == 204
        inside = cookie_of(r)
    assert await auth(client, first) == 401  # refused: joins the line like anyone

    # 250,000 more sessions end (shorter-lived than the first one's cookie)
    sids = await end_many(redis, ENDED, int(time.time()) + 300)
    refresher = client.app[REFRESHER]

    async def absorbed() -> bool:
        return f"ended{ENDED - 1:06d}" in refresher.revoked.kept or (
            refresher.revoked.known(f"ended{ENDED - 1:06d}") is not Known.CLEAR
        )

    await eventually(absorbed, within=30)
    assert len(refresher.revoked.kept) <= MAX_KEPT  # memory stays bounded
    assert await auth(client, first) == 401  # still refused after all of them
    assert await auth(client, inside) == 204  # and the session inside still passes

    # a dropped id is asked of Redis, not let through: forge a cookie for one
    gate = client.app[GATE]
    dropped = next(s for s in sids if s not in refresher.revoked.kept)
    tok = gate.signer.loads(inside)
    assert tok is not None
    forged = gate.signer.dumps(dataclasses.replace(tok, sid=dropped))
    assert await auth(client, forged) == 401

    # a fresh process: loads every revocation in force, a slice per call
    fresh: TestClient[web.Request, web.Application] = await aiohttp_client(create_app(config))
    assert await auth(fresh, first) == 401
    assert await auth(fresh, forged) == 401
    assert await auth(fresh, inside) == 204
    assert len(fresh.app[REFRESHER].revoked.kept) <= MAX_KEPT
