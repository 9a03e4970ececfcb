"""Random order (order = random) and access codes, on the engine against a real
redis-server, with three engines standing in for sidecar replicas.

Random order: each admission draws one present waiter uniformly at random;
newcomers not seen yet and waiters gone quiet are not in the draw. A code is
used once across every replica and its holder is next in, before the line,
capacity never exceeded."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from redis.asyncio import Redis

from sidecar.config import QueueSettings
from sidecar.queue import codes
from sidecar.queue.engine import Claim, Engine, QueueRef, Redeemed

Q = QueueRef("acme", "draw")
RANDOM = QueueSettings(capacity=1, grace=30, abandon_after=90, order="random")
# chi-square critical value for 9 degrees of freedom at p = 0.001: a fair draw
# fails this test once in a thousand runs (the false-alarm rate)
CHI2_9_P001 = 27.88


async def line_of(e: Engine, q: QueueRef, n: int, s: QueueSettings, seen: bool = True) -> list[int]:
    joined = await e.join_many(q, [f"v{i}" for i in range(n)], s)
    tickets = [t for _, t, _ in joined]
    if seen:
        await e.heartbeat({q: ([], tickets, s)})
    return tickets


async def invited(redis: Redis, q: QueueRef) -> set[int]:
    raw: list[bytes] = await redis.zrange(q.keys.invited, 0, -1)  # type: ignore[assignment]
    return {int(t) for t in raw}


async def occupancy(redis: Redis, q: QueueRef) -> int:
    return int(await redis.zcard(q.keys.active)) + int(await redis.zcard(q.keys.invited))


async def test_each_present_waiter_is_drawn_with_equal_chance(
    replicas: list[Engine], redis: Redis
) -> None:
    """2,000 draws of one among 10 present waiters (plus a newcomer not seen yet and
    a waiter gone quiet, never drawn): counts per arrival pass a chi-square test."""
    runs, n = 2_000, 10
    counts = [0] * n
    for run in range(runs):
        q = QueueRef("acme", f"u{run}")
        blocker = await replicas[0].join_many(q, ["inside"], replace(RANDOM, capacity=0))
        assert blocker[0].admitted
        tickets = await line_of(replicas[run % 3], q, n, RANDOM)
        quiet, *_ = await line_of(replicas[0], q, 1, RANDOM)  # seen 100 s ago
        await redis.zadd(q.keys.waiting, {str(quiet): int(time.time() * 1000) - 100_000})
        await line_of(replicas[0], q, 1, RANDOM, seen=False)  # not polled yet
        await redis.zrem(q.keys.active, "inside")
        (st,) = await replicas[(run + 1) % 3].tick([(q, RANDOM)])
        assert st.newly_invited == 1 and st.settings.order == "random"
        (drawn,) = await invited(redis, q)
        counts[tickets.index(drawn)] += 1  # ValueError: someone outside the draw
    expected = runs / n
    chi2 = sum((c - expected) ** 2 / expected for c in counts)
    print(f"draw: {runs} draws among {n}: counts {counts}, chi-square {chi2:.2f} (9 df)")
    assert chi2 < CHI2_9_P001, f"counts {counts}, chi-square {chi2:.1f}"


async def test_in_draw_counts_present_waiters_and_serving_passes_the_drawn(
    replicas: list[Engine], redis: Redis
) -> None:
    s = replace(RANDOM, capacity=3)
    await redis.hset(Q.keys.settings, "mode", "paused")  # nobody in yet
    tickets = await line_of(replicas[0], Q, 5, replace(s, mode="paused"))
    await line_of(replicas[1], Q, 2, replace(s, mode="paused"), seen=False)
    (st,) = await replicas[2].tick([(Q, s)])
    assert (st.in_draw, st.waiting, st.newly_invited) == (5, 7, 0)
    await redis.hdel(Q.keys.settings, "mode")
    (st,) = await replicas[2].tick([(Q, s)])
    assert st.newly_invited == 3 and st.in_draw == 2
    drawn = await invited(redis, Q)
    assert drawn <= set(tickets)
    # serving stops at the first ticket still in line: nobody before it waits
    first_left = min(set(tickets) - drawn)
    assert st.serving == first_left - 1


async def test_a_drawn_waiter_learns_it_from_its_heartbeat_and_claims(
    replicas: list[Engine], redis: Redis
) -> None:
    tickets = await line_of(replicas[0], Q, 6, replace(RANDOM, mode="queue-all"))
    await replicas[1].tick([(Q, RANDOM)])
    (drawn,) = await invited(redis, Q)
    beats = await replicas[2].heartbeat({Q: ([], tickets, RANDOM)})
    assert beats.gone == {Q: [drawn]}
    for t in tickets:
        expected = Claim.ADMITTED if t == drawn else Claim.NOT_YET
        assert await replicas[t % 3].claim(Q, t, f"v{tickets.index(t)}", RANDOM) is expected
    # a waiter who left is told at once: no place to wait for
    other = next(t for t in tickets if t != drawn)
    await replicas[0].leave(Q, other, "x", 0)
    assert await replicas[0].claim(Q, other, "x", RANDOM) is Claim.MISSED


async def test_a_newcomer_walks_in_when_nobody_is_in_the_draw(
    replicas: list[Engine], redis: Redis
) -> None:
    s = replace(RANDOM, capacity=2)
    tickets = await line_of(replicas[0], Q, 2, replace(s, mode="queue-all"))
    (st,) = await replicas[0].tick([(Q, s)])
    assert st.newly_invited == 2 and st.serving == st.tickets  # the line is empty
    for i, t in enumerate(tickets):
        assert await replicas[1].claim(Q, t, f"v{i}", s) is Claim.ADMITTED
    await redis.zrem(Q.keys.active, "v0")
    (joined,) = await replicas[2].join_many(Q, ["new"], s)
    assert joined.admitted


async def test_a_code_is_used_once_across_replicas(replicas: list[Engine], redis: Redis) -> None:
    """60 clients racing one code over three replicas: exactly one place."""
    (code,) = await codes.make(redis, Q, 1, int(time.time()) + 600, "press")
    digest = codes.digest(code)
    assert code not in str(await redis.zrange(Q.keys.codes, 0, -1))  # kept hashed
    s = QueueSettings(capacity=5)
    results = await asyncio.gather(
        *(replicas[i % 3].redeem(Q, digest, f"c{i}", s) for i in range(60))
    )
    used = [r for r in results if r.result is not Redeemed.INVALID]
    print(f"codes: 60 clients racing one code on 3 replicas: {len(used)} place")
    assert len(used) == 1 and used[0].label == "press"
    assert (await codes.unused(redis, Q)).count == 0


async def test_code_holders_are_next_in_and_capacity_holds(
    replicas: list[Engine], redis: Redis
) -> None:
    """Five wait in line; six codes: three walk in (room), three are next in, before
    the line; capacity holds throughout."""
    s = QueueSettings(capacity=3, grace=30)
    made = await codes.make(redis, Q, 6, int(time.time()) + 600)
    in_line = await line_of(replicas[0], Q, 5, replace(s, mode="queue-all"))
    results = await asyncio.gather(
        *(replicas[i % 3].redeem(Q, codes.digest(c), f"k{i}", s) for i, c in enumerate(made))
    )
    assert await occupancy(redis, Q) == s.capacity
    sid = {r.ticket: f"k{i}" for i, r in enumerate(results)}
    admitted = [r for r in results if r.result is Redeemed.ADMITTED]
    nxt = sorted(r.ticket for r in results if r.result is Redeemed.NEXT)
    assert (len(admitted), len(nxt)) == (3, 3)
    (st,) = await replicas[1].tick([(Q, s)])
    assert st.newly_invited == 0 and st.recalled == 3  # full: they wait, first in line
    # while waiting, a code holder's claim says "not yet"
    assert await replicas[2].claim(Q, nxt[0], sid[nxt[0]], s) is Claim.NOT_YET
    await redis.zrem(Q.keys.active, *(sid[r.ticket] for r in admitted[:2]))  # two end
    (st,) = await replicas[1].tick([(Q, s)])
    assert await invited(redis, Q) == set(nxt[:2])  # before anyone in line
    assert await occupancy(redis, Q) == s.capacity
    for t in nxt[:2]:
        assert await replicas[2].claim(Q, t, sid[t], s) is Claim.ADMITTED
    await redis.delete(Q.keys.active)
    await replicas[0].tick([(Q, s)])
    assert await invited(redis, Q) == {nxt[2], in_line[0], in_line[1]}


async def test_expired_and_unknown_codes_give_nothing(replicas: list[Engine], redis: Redis) -> None:
    s = QueueSettings(capacity=5)
    (old,) = await codes.make(redis, Q, 1, int(time.time()) - 1)
    r = await replicas[0].redeem(Q, codes.digest(old), "a", s)
    assert r.result is Redeemed.INVALID
    r = await replicas[0].redeem(Q, codes.digest("never-made-0123456789"), "b", s)
    assert r.result is Redeemed.INVALID
    assert await occupancy(redis, Q) == 0
    await codes.make(redis, Q, 3, int(time.time()) + 60, "vip")
    await codes.make(redis, Q, 2, int(time.time()) + 60)
    left = await codes.unused(redis, Q)
    assert (left.count, left.by_label) == (5, {"vip": 3, "": 2})
    assert await codes.withdraw(redis, Q, "vip") == 3
    assert (await codes.unused(redis, Q)).count == 2


async def test_a_code_takes_the_holders_old_place_out_of_line(
    replicas: list[Engine], redis: Redis
) -> None:
    s = QueueSettings(capacity=1)
    (inside,) = await replicas[0].join_many(Q, ["in"], s)
    (waiter,) = await replicas[0].join_many(Q, ["w"], s)
    (code,) = await codes.make(redis, Q, 1, int(time.time()) + 60)
    r = await replicas[1].redeem(Q, codes.digest(code), "w2", s, waiter.ticket, waiter.epoch)
    assert r.result is Redeemed.NEXT and inside.admitted
    assert await redis.zscore(Q.keys.waiting, waiter.ticket) is None
