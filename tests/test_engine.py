"""The queue engine against a real redis-server. Several Engine instances with
their own connections stand in for sidecar replicas."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from sidecar.config import QueueSettings
from sidecar.engine import Claim, Engine, QueueRef, QueueState
from tests.conftest import ticket_members

Q = QueueRef("acme", "checkout")


@pytest.fixture
async def replicas(redis: Redis, redis_url: str) -> AsyncIterator[list[Engine]]:
    """Three replicas, each with its own Redis client; no purge slack, for exact timing."""
    clients = [Redis.from_url(redis_url) for _ in range(3)]
    yield [Engine(c, purge_slack_ms=0) for c in clients]
    for c in clients:
        await c.aclose()


async def tick(e: Engine, s: QueueSettings, q: QueueRef = Q) -> QueueState:
    (st,) = await e.tick([(q, s, "0-0")])
    return st


async def occupancy(redis: Redis, q: QueueRef = Q) -> int:
    return int(await redis.zcard(q.keys.active)) + int(await redis.zcard(q.keys.invited))


async def test_tickets_in_order_and_immediate_admission(replicas: list[Engine]) -> None:
    e = replicas[0]
    s = QueueSettings(capacity=2)
    results = [await e.join(Q, f"s{i}", s) for i in range(5)]
    assert results == [(True, 1), (True, 2), (False, 3), (False, 4), (False, 5)]
    st = await tick(e, s)
    assert (st.tickets, st.serving, st.active, st.waiting) == (5, 2, 2, 3)


async def test_newcomer_waits_behind_people_in_line(replicas: list[Engine]) -> None:
    e = replicas[0]
    s = QueueSettings(capacity=1)
    assert await e.join(Q, "a", s) == (True, 1)
    assert await e.join(Q, "b", s) == (False, 2)
    await e.leave(Q, 1, "a", 0)
    # capacity is free, but b is ahead: the newcomer must not jump the line
    assert await e.join(Q, "c", s) == (False, 3)
    st = await tick(e, s)
    assert st.serving == 2 and st.invited == 1
    assert await e.claim(Q, 2, "b", s) is Claim.ADMITTED
    assert await e.claim(Q, 3, "c", s) is Claim.NOT_YET


async def test_capacity_never_exceeded_with_replicas_racing(
    replicas: list[Engine], redis: Redis
) -> None:
    """200 visitors join through 3 replicas at once; the replicas advance, visitors
    claim and leave concurrently. At every step active + invited <= capacity, each
    ticket is admitted once, and admission follows ticket order."""
    capacity = 7
    s = QueueSettings(capacity=capacity, grace=30)
    joined = await asyncio.gather(*(replicas[i % 3].join(Q, f"sid{i}", s) for i in range(200)))
    tickets = sorted(t for _, t in joined)
    assert tickets == list(range(1, 201))  # every ticket handed out once
    sid_of = {t: f"sid{i}" for i, (_, t) in enumerate(joined)}
    admitted_order: list[int] = [t for admitted, t in joined if admitted]
    assert len(admitted_order) == capacity
    active = set(admitted_order)
    rng = random.Random(7)

    while len(admitted_order) < 200:
        states = await asyncio.gather(*(tick(e, s) for e in replicas))
        assert await occupancy(redis) <= capacity
        serving = max(st.serving for st in states)
        invited = [t for t in range(1, serving + 1) if t not in admitted_order]
        claims = await asyncio.gather(*(replicas[t % 3].claim(Q, t, sid_of[t], s) for t in invited))
        for t, c in zip(invited, claims, strict=True):
            assert c is Claim.ADMITTED
            admitted_order.append(t)
            active.add(t)
        assert await occupancy(redis) <= capacity
        leaving = rng.sample(sorted(active), k=min(len(active), rng.randint(1, 4)))
        await asyncio.gather(*(replicas[t % 3].leave(Q, t, sid_of[t], 0) for t in leaving))
        active -= set(leaving)

    assert admitted_order[capacity:] == sorted(admitted_order[capacity:])  # FIFO
    assert sorted(admitted_order) == list(range(1, 201))  # nobody lost, nobody twice


async def test_advance_is_idempotent_across_replicas(replicas: list[Engine], redis: Redis) -> None:
    s = QueueSettings(capacity=5)
    for i in range(20):
        await replicas[0].join(Q, f"s{i}", s)  # 5 admitted at once, 15 wait
    for i in range(3):
        await replicas[0].leave(Q, i + 1, f"s{i}", 0)  # 3 slots free
    states = await asyncio.gather(*(tick(e, s) for e in replicas), *(tick(e, s) for e in replicas))
    assert sum(st.newly_invited for st in states) == 3
    assert {st.serving for st in states} >= {8}
    invited = await ticket_members(redis, Q.keys.invited)
    assert sorted(invited) == [6, 7, 8]
    assert await occupancy(redis) == 5


async def test_per_minute_limit(replicas: list[Engine], redis: Redis) -> None:
    """At most M admissions per rolling minute, spread at ceil(M/60) a second."""
    s = QueueSettings(capacity=0, admit_per_minute=3)
    joined = [await replicas[0].join(Q, f"s{i}", s) for i in range(10)]
    # one a second: a burst of joins gets one in (two if it straddles a second)
    assert 1 <= sum(admitted for admitted, _ in joined) <= 2
    for _ in range(40):  # ~4 seconds of replicas ticking
        await asyncio.gather(*(tick(e, s) for e in replicas))
        await asyncio.sleep(0.1)
    st = await tick(replicas[0], s)
    assert st.admitted_last_minute == 3
    assert st.serving == 3 and st.active + st.invited == 3  # then the minute is used up
    buckets = {int(k): int(v) for k, v in (await redis.hgetall(Q.keys.rate)).items()}
    assert sum(buckets.values()) == 3 and max(buckets.values()) == 1


async def test_both_policies_hold_at_once(replicas: list[Engine]) -> None:
    s = QueueSettings(capacity=2, admit_per_minute=600)  # 10 a second, but only 2 at a time
    joined = [await replicas[0].join(Q, f"s{i}", s) for i in range(6)]
    assert [a for a, _ in joined] == [True, True, False, False, False, False]
    st = await tick(replicas[1], s)
    assert st.invited == 0 and st.active == 2


async def test_idle_sessions_expire_and_heartbeats_keep_them(replicas: list[Engine]) -> None:
    e = replicas[0]
    s = QueueSettings(capacity=2, session_ttl=1)
    await e.join(Q, "idle", s)
    await e.join(Q, "busy", s)
    for _ in range(3):
        await asyncio.sleep(0.5)
        await e.heartbeat({Q: (["busy"], [], s.session_ttl)})
    st = await tick(e, s)
    assert st.active == 1 and st.expired == 1


async def test_unclaimed_invitation_lapses_and_the_slot_returns(replicas: list[Engine]) -> None:
    e = replicas[0]
    s = QueueSettings(capacity=1, grace=1)
    await e.join(Q, "a", s)
    await e.join(Q, "b", s)
    await e.join(Q, "c", s)
    await e.leave(Q, 1, "a", 0)
    st = await tick(e, s)
    assert st.newly_invited == 1 and st.serving == 2  # b invited
    await asyncio.sleep(1.1)
    await e.heartbeat({Q: ([], [3], s.session_ttl)})  # c is still polling
    st = await tick(e, s)
    assert st.lapsed == 1 and st.serving == 3 and st.invited == 1  # b's slot went to c
    # b comes back late: c holds the only slot, so b must join again
    assert await e.claim(Q, 2, "b", s) is Claim.MISSED
    assert await e.claim(Q, 3, "c", s) is Claim.ADMITTED


async def test_late_claim_with_room_is_admitted(replicas: list[Engine]) -> None:
    e = replicas[0]
    s = QueueSettings(capacity=1, grace=1)
    await e.join(Q, "a", s)
    await e.join(Q, "b", s)
    await e.leave(Q, 1, "a", 0)
    await tick(e, s)
    await asyncio.sleep(1.1)
    st = await tick(e, s)
    assert st.lapsed == 1 and st.invited == 0
    assert await e.claim(Q, 2, "b", s) is Claim.ADMITTED


async def test_waiters_who_stop_polling_are_skipped(replicas: list[Engine]) -> None:
    e = replicas[0]
    s = QueueSettings(capacity=1, abandon_after=1)
    await e.join(Q, "a", s)
    await e.join(Q, "gone", s)
    await asyncio.sleep(0.6)
    await e.join(Q, "here", s)
    await asyncio.sleep(0.6)
    await e.heartbeat({Q: ([], [3], s.session_ttl)})
    await e.leave(Q, 1, "a", 0)
    st = await tick(e, s)
    assert st.skipped == 1 and st.newly_invited == 1 and st.serving == 3
    assert await e.claim(Q, 3, "here", s) is Claim.ADMITTED


async def test_leave_frees_at_once_and_is_published(replicas: list[Engine]) -> None:
    e = replicas[0]
    s = QueueSettings(capacity=1)
    await e.join(Q, "a", s)
    await e.join(Q, "b", s)
    assert await e.leave(Q, 1, "a", 2_000_000_000) is True
    st = await tick(replicas[1], s)
    assert st.invited == 1  # the slot went to b on the next advance
    assert [(sid, until) for _, sid, until in st.ended] == [("a", 2_000_000_000)]
    # a heartbeat still in some replica's batch must not bring the session back
    await replicas[2].heartbeat({Q: (["a"], [], s.session_ttl)})
    assert (await tick(e, s)).active == 0


async def test_operator_overrides_in_redis_win(replicas: list[Engine], redis: Redis) -> None:
    e = replicas[0]
    s = QueueSettings(capacity=1)
    await e.join(Q, "a", s)
    await e.join(Q, "b", s)
    await redis.hset(Q.keys.settings, mapping={"mode": "paused", "capacity": "5"})
    await e.leave(Q, 1, "a", 0)
    st = await tick(e, s)
    assert st.settings.mode == "paused" and st.settings.capacity == 5
    assert st.invited == 0  # paused: nobody new is admitted
    await redis.hset(
        Q.keys.settings, mapping={"mode": "queue_all", "capacity": "many", "session_ttl": "-3"}
    )
    st = await tick(e, s)  # typos are ignored: configured values apply
    assert st.settings.mode == "on" and st.settings.capacity == 1 and st.invited == 1
    assert st.settings.session_ttl == s.session_ttl


async def test_queues_are_independent(replicas: list[Engine]) -> None:
    e = replicas[0]
    s = QueueSettings(capacity=1)
    other = QueueRef("acme", "other")
    assert (await e.join(Q, "a", s))[0] is True
    assert (await e.join(other, "b", s))[0] is True
    assert other.keys.active.startswith("aq:{acme:other}:")


async def test_large_heartbeat_batches_are_applied(replicas: list[Engine]) -> None:
    e = replicas[0]
    s = QueueSettings(capacity=0, session_ttl=1)
    sids = [f"s{i}" for i in range(1200)]  # more than one chunk
    for sid in sids:
        await e.join(Q, sid, s)
    await asyncio.sleep(0.6)
    await e.heartbeat({Q: (sids[:1100], [], 5)})
    await asyncio.sleep(0.6)
    st = await tick(e, s)
    assert st.expired == 100 and st.active == 1100


async def test_claim_racing_the_grace_deadline(replicas: list[Engine], redis: Redis) -> None:
    """A claim sent just before, at or after the invitation's deadline while two
    replicas advance the line: exactly one of the two visitors holds the one slot."""
    s = QueueSettings(capacity=1, grace=1)
    for i in range(6):
        q = QueueRef("acme", f"race{i}")
        await replicas[0].join(q, "holder", s)
        await replicas[0].join(q, "a", s)  # ticket 2
        await replicas[0].join(q, "b", s)  # ticket 3
        await replicas[0].leave(q, 1, "holder", 0)
        await tick(replicas[0], s, q)  # a invited, deadline in 1 s
        await asyncio.sleep(0.9 + i * 0.04)  # from well before to just after the deadline
        await replicas[0].heartbeat({q: ([], [3], s.session_ttl)})  # b still polling
        a_claim, *_ = await asyncio.gather(
            replicas[2].claim(q, 2, "a", s), tick(replicas[0], s, q), tick(replicas[1], s, q)
        )
        st = await tick(replicas[1], s, q)
        assert st.active + st.invited == 1
        b_invited = st.invited == 1
        assert (a_claim is Claim.ADMITTED) != b_invited, (i, a_claim, st)


async def test_scripts_reload_after_redis_forgets_them(
    replicas: list[Engine], redis: Redis
) -> None:
    e = replicas[0]
    s = QueueSettings(capacity=1)
    await e.join(Q, "a", s)
    await redis.script_flush()  # as after a restart or failover
    (st,) = await e.tick([(Q, s, "0-0")])  # the pipelined path
    assert st.tickets == 1
    await redis.script_flush()
    assert await e.join(Q, "b", s) == (False, 2)  # the single-call path
    await redis.script_flush()
    await e.heartbeat({Q: (["a"], [2], s.session_ttl)})
    assert (await tick(e, s)).active == 1
