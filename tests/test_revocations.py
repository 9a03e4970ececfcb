"""Revocations fail closed (issue 16.3): with 250,000 sessions ended, more than a
process keeps exactly, the first ended cookie is still refused on a replica that
has run all along and on a fresh one, and so is any other ended session's; the
sidecar runs in-process (``create_app``) on the real Redis fixture."""

from __future__ import annotations

import dataclasses
import time

import pytest
from aiohttp import ClientResponse
from redis.asyncio import Redis

import sidecar.queue.revocations as revocations
from sidecar.queue import Engine, QueueRef
from sidecar.queue.keys import ENDED_STREAM_MAXLEN, TICKERS_KEY
from sidecar.queue.revocations import Known, Revocations
from sidecar.web.tokens import Signer
from tests.conftest import SECRET, AppClient, eventually

QUEUE = "ended"
Q = QueueRef("shop", QUEUE)
ENDED = 250_000
AUTH = {"Host": "shop.test", "X-Anteroom-Queue": QUEUE, "X-Original-URI": "/shop/"}


def cookie_of(resp: ClientResponse) -> str:
    (header,) = resp.headers.getall("Set-Cookie")
    return header.split(";", 1)[0].split("=", 1)[1]


async def auth(client: AppClient, cookie: str | None = None) -> ClientResponse:
    headers = {**AUTH, "Cookie": f"anteroom_{QUEUE}={cookie}"} if cookie else AUTH
    return await client.get("/_anteroom/auth", headers=headers)


async def end_many(redis: Redis, count: int, until: int) -> list[str]:
    """``count`` sessions ended as leave.lua ends them (revoked set + capped ended
    stream), and the queue's version moved so every replica reads them."""
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


async def test_the_first_of_250k_ended_sessions_stays_refused(app_client, redis: Redis) -> None:
    env = {"ANTEROOM_SESSION_TTL": "600", "ANTEROOM_GRACE": "60"}
    long_running = await app_client(**env)
    # the first visitor is let in, then leaves: their cookie is revoked
    r = await auth(long_running)
    assert r.status == 204
    first = cookie_of(r)
    left = await long_running.post(
        f"/_anteroom/leave?queue={QUEUE}",
        headers={"Host": "shop.test", "Cookie": f"anteroom_{QUEUE}={first}"},
    )
    assert left.status == 200
    r = await auth(long_running)  # the next one fills the only place
    assert r.status == 204
    inside = cookie_of(r)
    assert (await auth(long_running, first)).status == 401  # refused: joins the line

    # 250,000 more sessions end (shorter-lived than the first one's cookie, so a
    # reload that kept the soonest-expiring would leave the first one out)
    sids = await end_many(redis, ENDED, int(time.time()) + 300)
    # cookies for some of them (the signed token of the one inside, another session id)
    signer = Signer((SECRET.encode(),))
    tok = signer.loads(inside)
    assert tok is not None
    ended = [signer.dumps(dataclasses.replace(tok, sid=s)) for s in sids[:: ENDED // 40]]

    statuses: list[int] = []  # the last answers, to say why if they never all refuse

    async def all_refused(client: AppClient) -> bool:
        statuses[:] = [(await auth(client, c)).status for c in [first, *ended]]
        return all(s == 401 for s in statuses)

    try:
        await eventually(lambda: all_refused(long_running), within=90)  # 250 chunks to read
    except AssertionError as e:
        raise AssertionError(f"{e}; the first, then every 6,250th: {statuses}") from None
    assert (await auth(long_running, inside)).status == 204  # the one inside still passes

    fresh = await app_client(**env)  # loads every revocation in force, a slice per call
    assert await all_refused(fresh)
    assert (await auth(fresh, inside)).status == 204


async def test_memory_is_bounded_and_what_is_dropped_is_asked_of_redis(redis: Redis) -> None:
    engine = Engine(redis)
    until = int(time.time()) + 600
    sids = [f"s{i}" for i in range(5_000)]
    await redis.zadd(Q.keys.revoked, dict.fromkeys(sids, until))
    memory = Revocations(engine, max_kept=1_000)
    for sid in sids:
        memory.add(sid, until)
    assert len(memory.kept) <= 1_000
    assert memory.known("s0") is Known.UNSURE  # dropped: not passed on memory alone
    assert await memory.confirm(Q, "s0") is True
    assert memory.known("s0") is Known.REVOKED and memory.asked == 1  # the answer is cached
    assert memory.known(sids[-1]) is Known.REVOKED  # the newest are kept exactly
    # an id never revoked: clear, or (a rare false positive) asked and then cleared
    if memory.known("never") is Known.UNSURE:
        assert await memory.confirm(Q, "never") is False
    assert memory.known("never") is Known.CLEAR


class Clock:
    """The revocations module's clock, moved by the test (hours of churn in a second)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


def test_the_filter_holds_what_is_in_force_over_hours_of_steady_churn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bounded structure stays bounded in what it costs, not only in memory: under
    steady churn (more revocations in force than are kept exactly) the dropped ones
    leave the filter as they expire, so the share of honest sessions asked of Redis
    (false positives) stays flat over hours instead of climbing with uptime."""
    clock = Clock()
    monkeypatch.setattr(revocations, "time", clock)
    kept, rate, ttl, capacity = 100, 2, 300, 2_000  # 600 in force, 100 kept exactly
    r = Revocations(engine=None, max_kept=kept, filter_capacity=capacity)  # type: ignore[arg-type]
    shares = []
    for second in range(1, 4 * 3_600 + 1):
        for i in range(rate):
            r.add(f"s{second}-{i}", int(clock.now) + ttl)
        clock.now += 1
        if second % 10 == 0:
            r.prune()
        if second % 1_800 == 0:
            honest = [f"h{second}-{i}" for i in range(2_000)]
            shares.append(sum(r.known(h) is Known.UNSURE for h in honest) / len(honest))
            # what the filters hold follows what is in force (± a window or two)
            in_force = rate * ttl
            assert r.dropped.count <= 2 * in_force, (second, r.dropped.count, in_force)
            assert len(r.dropped.filters) <= revocations.GENERATIONS
    assert max(shares) < 0.01, shares
    # and what is revoked stays refused: the newest exactly, the dropped by the filter
    assert r.known(f"s{4 * 3_600}-0") is Known.REVOKED
    assert r.known(f"s{4 * 3_600 - ttl // 2}-0") is not Known.CLEAR


def test_revocations_expiring_far_apart_stay_refused_when_filters_are_merged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """More expiry windows than filters: neighbours are merged, nothing is forgotten
    before it expires."""
    clock = Clock()
    monkeypatch.setattr(revocations, "time", clock)
    r = Revocations(engine=None, max_kept=10, filter_capacity=1_000)  # type: ignore[arg-type]
    now = int(clock.now)
    untils = {f"far{i}": now + 60 * (i + 1) * 7 for i in range(100)}  # 100 windows
    for sid, until in untils.items():
        r.add(sid, until)
    assert len(r.dropped.filters) <= revocations.GENERATIONS
    for step in range(0, 100 * 7 * 60, 60):
        clock.now = now + step
        r.prune()
        for sid, until in untils.items():
            if until > clock.now and sid not in r.kept:
                assert r.known(sid) is not Known.CLEAR, (step, sid)
    clock.now = now + 101 * 7 * 60
    r.prune()
    assert not r.dropped.filters
