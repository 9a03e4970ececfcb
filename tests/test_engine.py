"""The queue engine against a real redis-server. Several Engine instances with
their own connections stand in for sidecar replicas."""

from __future__ import annotations

import asyncio
import random

from redis.asyncio import Redis

from sidecar.config import QueueSettings
from sidecar.queue.engine import Claim, Engine, QueueRef, QueueState
from sidecar.queue.keys import LIVE_BLOCK, RECOVERY_TICKET_SLACK
from sidecar.queue.refresher import Refresher
from tests.conftest import ticket_members

Q = QueueRef("acme", "checkout")


async def tick(e: Engine, s: QueueSettings, q: QueueRef = Q) -> QueueState:
    (st,) = await e.tick([(q, s)])
    return st


async def join(e: Engine, sid: str, s: QueueSettings, q: QueueRef = Q) -> tuple[bool, int]:
    """A visitor joins and, sent to wait, opens the waiting page (polls once)."""
    admitted, ticket, _ = await e.join(q, sid, s)
    if not admitted:
        await seen(e, s, ticket, q=q)
    return admitted, ticket


async def seen(e: Engine, s: QueueSettings, *tickets: int, q: QueueRef = Q) -> None:
    await e.heartbeat({q: ([], list(tickets), s)})


async def occupancy(redis: Redis, q: QueueRef = Q) -> int:
    return int(await redis.zcard(q.keys.active)) + int(await redis.zcard(q.keys.invited))


async def test_tickets_in_order_and_immediate_admission(replicas: list[Engine]) -> None:
    e = replicas[0]
    s = QueueSettings(capacity=2)
    results = [await join(e, f"s{i}", s) for i in range(5)]
    assert results == [(True, 1), (True, 2), (False, 3), (False, 4), (False, 5)]
    st = await tick(e, s)
    assert (st.tickets, st.serving, st.active, st.waiting) == (5, 2, 2, 3)


async def test_newcomer_waits_behind_people_in_line(replicas: list[Engine]) -> None:
    e = replicas[0]
    s = QueueSettings(capacity=1)
    assert await join(e, "a", s) == (True, 1)
    assert await join(e, "b", s) == (False, 2)
    await e.leave(Q, 1, "a", 0)
    # capacity is free, but b is ahead: the newcomer must not jump the line
    assert await join(e, "c", s) == (False, 3)
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
    tickets = sorted(t for _, t, _ in joined)
    assert tickets == list(range(1, 201))  # every ticket handed out once
    sid_of = {t: f"sid{i}" for i, (_, t, _) in enumerate(joined)}
    admitted_order: list[int] = [t for admitted, t, _ in joined if admitted]
    assert len(admitted_order) == capacity
    active = set(admitted_order)
    rng = random.Random(7)

    waiting = [t for admitted, t, _ in joined if not admitted]
    while len(admitted_order) < 200:
        await seen(replicas[0], s, *waiting)  # everyone waiting keeps polling
        states = await asyncio.gather(*(tick(e, s) for e in replicas))
        assert await occupancy(redis) <= capacity
        serving = max(st.serving for st in states)
        invited = [t for t in range(1, serving + 1) if t not in admitted_order]
        claims = await asyncio.gather(*(replicas[t % 3].claim(Q, t, sid_of[t], s) for t in invited))
        for t, c in zip(invited, claims, strict=True):
            assert c is Claim.ADMITTED
            admitted_order.append(t)
            active.add(t)
            waiting.remove(t)
        assert await occupancy(redis) <= capacity
        leaving = rng.sample(sorted(active), k=min(len(active), rng.randint(1, 4)))
        await asyncio.gather(*(replicas[t % 3].leave(Q, t, sid_of[t], 0) for t in leaving))
        active -= set(leaving)

    assert admitted_order[capacity:] == sorted(admitted_order[capacity:])  # FIFO
    assert sorted(admitted_order) == list(range(1, 201))  # nobody lost, nobody twice


async def test_advance_is_idempotent_across_replicas(replicas: list[Engine], redis: Redis) -> None:
    s = QueueSettings(capacity=5)
    for i in range(20):
        await join(replicas[0], f"s{i}", s)  # 5 admitted at once, 15 wait
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
    joined = [await join(replicas[0], f"s{i}", s) for i in range(10)]
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
    joined = [await join(replicas[0], f"s{i}", s) for i in range(6)]
    assert [a for a, _ in joined] == [True, True, False, False, False, False]
    st = await tick(replicas[1], s)
    assert st.invited == 0 and st.active == 2


async def test_idle_sessions_expire_and_heartbeats_keep_them(replicas: list[Engine]) -> None:
    e = replicas[0]
    s = QueueSettings(capacity=2, session_ttl=1)
    await join(e, "idle", s)
    await join(e, "busy", s)
    for _ in range(3):
        await asyncio.sleep(0.5)
        await e.heartbeat({Q: (["busy"], [], s)})
    st = await tick(e, s)
    assert st.active == 1 and st.expired == 1


async def test_unclaimed_invitation_lapses_and_the_slot_returns(replicas: list[Engine]) -> None:
    e = replicas[0]
    s = QueueSettings(capacity=1, grace=1)
    await join(e, "a", s)
    await join(e, "b", s)
    await join(e, "c", s)
    await e.leave(Q, 1, "a", 0)
    st = await tick(e, s)
    assert st.newly_invited == 1 and st.serving == 2  # b invited
    await asyncio.sleep(1.1)
    await seen(e, s, 3)  # c is still polling
    st = await tick(e, s)
    assert st.lapsed == 1 and st.serving == 3 and st.invited == 1  # b's slot went to c
    # b comes back within one grace period: c holds the only slot, so b is
    # recalled, first for the next free one (ahead of d, who waits in line)
    await join(e, "d", s)
    assert await e.claim(Q, 2, "b", s) is Claim.NOT_YET
    assert await e.claim(Q, 3, "c", s) is Claim.ADMITTED
    await e.leave(Q, 3, "c", 0)
    await seen(e, s, 4)
    st = await tick(e, s)
    assert st.serving == 3 and st.invited == 1 and st.recalled == 0
    assert await e.claim(Q, 2, "b", s) is Claim.ADMITTED
    assert await e.claim(Q, 4, "d", s) is Claim.NOT_YET


async def test_a_ticket_admits_once_and_a_second_chance_is_used_once(
    replicas: list[Engine],
) -> None:
    """A waiting cookie kept after its turn (a bot replaying it) is no pass to the
    front: one second chance within one grace period, then the back of the line."""
    e = replicas[0]
    s = QueueSettings(capacity=1, grace=1)
    await join(e, "holder", s)
    await join(e, "bot", s)  # ticket 2
    await join(e, "late", s)  # ticket 3
    await join(e, "slow", s)  # ticket 4
    await e.leave(Q, 1, "holder", 0)
    await tick(e, s)  # bot invited
    assert await e.claim(Q, 2, "bot", s) is Claim.ADMITTED
    await e.leave(Q, 2, "bot", 0)  # the session ends...
    assert await e.claim(Q, 2, "bot", s) is Claim.MISSED  # ...and the ticket is spent
    # lapsed: the second chance is one grace period long, and used once
    await tick(e, s)  # late invited
    await asyncio.sleep(1.1)
    await tick(e, s)  # lapses; slow is invited (polling)
    await e.claim(Q, 4, "slow", s)
    assert await e.claim(Q, 3, "late", s) is Claim.NOT_YET  # recalled: slow holds the slot
    await e.leave(Q, 4, "slow", 0)
    await tick(e, s)  # late invited again, from the recall
    await asyncio.sleep(1.1)
    await tick(e, s)  # and lapses again: no third chance
    assert await e.claim(Q, 3, "late", s) is Claim.MISSED


async def test_bots_that_never_poll_cost_no_capacity(replicas: list[Engine]) -> None:
    """Places taken by clients that never open the waiting page are passed over at
    once, so the first real waiter behind them is invited on the next tick."""
    e = replicas[0]
    s = QueueSettings(capacity=1, grace=10)
    await join(e, "holder", s)
    for i in range(300):
        await e.join(Q, f"bot{i}", s)
    _, real = await join(e, "real", s)
    await e.leave(Q, 1, "holder", 0)
    st = await tick(e, s)
    assert st.serving == real and st.invited == 1 and st.skipped == 300
    assert await e.claim(Q, real, "real", s) is Claim.ADMITTED


async def test_a_visitor_whose_turn_came_before_their_first_poll_gets_it(
    replicas: list[Engine],
) -> None:
    e = replicas[0]
    s = QueueSettings(capacity=1)
    await join(e, "holder", s)
    _, t, _ = await e.join(Q, "quick", s)  # still loading the waiting page
    await e.leave(Q, 1, "holder", 0)
    await tick(e, s)  # passed over: not seen yet
    _, after = await join(e, "next", s)
    await tick(e, s)  # the free slot goes to the next present waiter
    assert await e.claim(Q, t, "quick", s) is Claim.NOT_YET  # recalled, first in line
    await e.leave(Q, after, "next", 0)
    await tick(e, s)
    assert await e.claim(Q, t, "quick", s) is Claim.ADMITTED


async def test_ghosts_are_passed_quickly(replicas: list[Engine], redis: Redis) -> None:
    """100k places that were never used do not stall the line."""
    e = replicas[0]
    s = QueueSettings(capacity=1)
    await join(e, "holder", s)
    # 100k ghosts in a few batched calls (as coalesced joins would send them)
    for i in range(0, 100_000, 5000):
        await e.join_many(Q, [f"g{j}" for j in range(i, i + 5000)], s)
    _, real = await join(e, "real", s)
    await e.leave(Q, 1, "holder", 0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    ticks = 0
    while (await tick(e, s)).invited == 0:
        ticks += 1
        assert ticks < 20
    elapsed = loop.time() - started
    print(f"100k ghosts passed in {ticks + 1} ticks, {elapsed:.2f}s")
    assert await e.claim(Q, real, "real", s) is Claim.ADMITTED


async def test_late_claim_with_room_is_admitted(replicas: list[Engine]) -> None:
    e = replicas[0]
    s = QueueSettings(capacity=1, grace=1)
    await join(e, "a", s)
    await join(e, "b", s)
    await e.leave(Q, 1, "a", 0)
    await tick(e, s)
    await asyncio.sleep(1.1)
    st = await tick(e, s)
    assert st.lapsed == 1 and st.invited == 0
    assert await e.claim(Q, 2, "b", s) is Claim.ADMITTED


async def test_waiters_who_stop_polling_are_skipped(replicas: list[Engine]) -> None:
    e = replicas[0]
    s = QueueSettings(capacity=1, abandon_after=1)
    await join(e, "a", s)
    await e.join(Q, "gone", s)  # never opens the waiting page
    await asyncio.sleep(0.6)
    await join(e, "here", s)
    await asyncio.sleep(0.6)
    await e.heartbeat({Q: ([], [3], s)})
    await e.leave(Q, 1, "a", 0)
    st = await tick(e, s)
    assert st.skipped == 1 and st.newly_invited == 1 and st.serving == 3
    assert await e.claim(Q, 3, "here", s) is Claim.ADMITTED


async def test_leave_frees_at_once_and_is_published(replicas: list[Engine]) -> None:
    e = replicas[0]
    s = QueueSettings(capacity=1)
    await join(e, "a", s)
    await join(e, "b", s)
    assert await e.leave(Q, 1, "a", 2_000_000_000) is True
    st = await tick(replicas[1], s)
    assert st.invited == 1  # the slot went to b on the next advance
    ((entries, behind),) = await replicas[1].ended([(Q, "0-0")])
    assert [(sid, until) for _, sid, until, _ in entries] == [("a", 2_000_000_000)]
    assert not behind
    # a heartbeat still in some replica's batch must not bring the session back
    await replicas[2].heartbeat({Q: (["a"], [], s)})
    assert (await tick(e, s)).active == 0


async def test_operator_overrides_in_redis_win(replicas: list[Engine], redis: Redis) -> None:
    e = replicas[0]
    s = QueueSettings(capacity=1)
    await join(e, "a", s)
    await join(e, "b", s)
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
    assert (await join(e, "a", s))[0] is True
    assert (await e.join(other, "b", s))[0] is True
    assert other.keys.active.startswith("aq:{acme:other}:")


async def test_large_heartbeat_batches_are_applied(replicas: list[Engine]) -> None:
    e = replicas[0]
    s = QueueSettings(capacity=0, session_ttl=1)
    sids = [f"s{i}" for i in range(1200)]  # more than one chunk
    for sid in sids:
        await join(e, sid, s)
    await asyncio.sleep(0.6)
    await e.heartbeat({Q: (sids[:1100], [], s)})
    await asyncio.sleep(0.6)
    st = await tick(e, s)
    assert st.expired == 100 and st.active == 1100


async def test_claim_racing_the_grace_deadline(replicas: list[Engine], redis: Redis) -> None:
    """A claim sent just before, at or after the invitation's deadline while two
    replicas advance the line: exactly one of the two visitors holds the one slot."""
    s = QueueSettings(capacity=1, grace=1)
    for i in range(6):
        q = QueueRef("acme", f"race{i}")
        await join(replicas[0], "holder", s, q)
        await join(replicas[0], "a", s, q)  # ticket 2
        await join(replicas[0], "b", s, q)  # ticket 3
        await replicas[0].leave(q, 1, "holder", 0)
        await tick(replicas[0], s, q)  # a invited, deadline in 1 s
        await asyncio.sleep(0.9 + i * 0.04)  # from well before to just after the deadline
        await replicas[0].heartbeat({q: ([], [3], s)})  # b still polling
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
    await join(e, "a", s)
    await redis.script_flush()  # as after a restart or failover
    (st,) = await e.tick([(Q, s)])  # the pipelined path
    assert st.tickets == 1
    await redis.script_flush()
    assert await join(e, "b", s) == (False, 2)  # the single-call path
    await redis.script_flush()
    await e.heartbeat({Q: (["a"], [2], s)})
    assert (await tick(e, s)).active == 1


async def test_concurrent_joins_are_coalesced_in_arrival_order(
    replicas: list[Engine], redis: Redis
) -> None:
    """1,000 joins at once through 3 replicas: a handful of script calls, tickets in
    each replica's arrival order, capacity held."""

    async def evalsha_calls() -> int:
        stats = await redis.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

    s = QueueSettings(capacity=5)
    await redis.config_resetstat()
    before = await evalsha_calls()
    joined = await asyncio.gather(*(replicas[i % 3].join(Q, f"s{i}", s) for i in range(1000)))
    calls = await evalsha_calls() - before
    assert calls <= 30, calls  # one call per replica per event-loop turn, not 1,000
    tickets = [t for _, t, _ in joined]
    assert sorted(tickets) == list(range(1, 1001))
    for r in range(3):  # each replica's joins got tickets in the order they arrived
        mine = tickets[r::3]
        assert mine == sorted(mine)
    assert sum(a for a, _, _ in joined) == 5
    admitted = sorted(t for a, t, _ in joined if a)
    assert admitted == list(range(1, 6))  # the first five in line, nobody else
    assert await occupancy(redis) == 5


async def test_a_new_or_lagging_replica_refuses_every_ended_session(
    replicas: list[Engine],
) -> None:
    """Revocations survive the capped stream: a replica starting after 15,000 leaves
    (more than the stream keeps) still learns every one in force."""
    e = replicas[0]
    s = QueueSettings(capacity=0)
    until = 2_000_000_000
    sids = [f"s{i}" for i in range(15_000)]
    for i in range(0, len(sids), 5000):
        await e.join_many(Q, sids[i : i + 5000], s)
    for i in range(0, len(sids), 500):
        await asyncio.gather(
            *(e.leave(Q, j + 1, sids[j], until) for j in range(i, min(i + 500, len(sids))))
        )
    fresh = Refresher(replicas[1], 0.25, 1.0)
    await fresh.state(Q, s)  # first sight: every revocation in force, a slice per call
    assert all(sid in fresh.revoked for sid in sids)
    # one that read a little and then fell behind the cap is told so (and reloads)
    ((_, behind),) = await replicas[2].ended([(Q, "1-0")])
    assert behind
    # and one that is up to date reads only what is new
    await e.leave(Q, 0, "late", until)
    await fresh.refresh()  # the leave moved the queue's version: the stream is read
    assert "late" in fresh.revoked
    ((entries, behind),) = await replicas[1].ended([(Q, fresh._tracked[Q].last_ended)])
    assert entries == [] and not behind


async def test_a_place_in_line_that_leaves_costs_no_revocation(
    replicas: list[Engine], redis: Redis
) -> None:
    e = replicas[0]
    s = QueueSettings(capacity=1)
    await join(e, "holder", s)
    for i in range(100):
        _, t = await join(e, f"w{i}", s)
        await e.leave(Q, t, f"w{i}", 0)
    assert await redis.zcard(Q.keys.revoked) == 0
    assert not await redis.exists(Q.keys.ended)
    assert (await tick(e, s)).waiting == 0


async def test_sessions_redis_lost_come_back_only_if_there_is_room(
    replicas: list[Engine], redis: Redis
) -> None:
    """After Redis lost its data (restart without persistence), admitted cookies
    still arrive; heartbeats re-count them up to capacity and end the rest."""
    e = replicas[0]
    s = QueueSettings(capacity=2)
    for sid in ("a", "b", "c"):
        await redis.zadd(Q.keys.active, {sid: 0})  # placeholders, purged below
    await redis.delete(Q.keys.active)
    beats = await e.heartbeat({Q: (["a", "b", "c", "d"], [], s)})
    assert beats.ended == 2
    st = await tick(e, s)
    assert st.active == 2
    ((entries, _),) = await e.ended([(Q, "0-0")])
    assert {(x.sid, x.why) for x in entries} == {("c", "lost"), ("d", "lost")}


async def test_live_position_counts_only_people_still_in_line(replicas: list[Engine]) -> None:
    """10 waiters; 4 leave and 2 stop polling: the last one is 4th, not 10th."""
    e = replicas[0]
    s = QueueSettings(capacity=1, abandon_after=1)
    await join(e, "holder", s)
    tickets = [(await join(e, f"w{i}", s))[1] for i in range(10)]
    for t in tickets[1:5]:
        await e.leave(Q, t, f"w{t}", 0)
    await asyncio.sleep(1.2)  # two stop polling; the other four keep going
    await seen(e, s, tickets[0], *tickets[7:])
    st = await tick(e, s)
    assert st.waiting == 4
    assert [st.position(t) for t in (tickets[0], *tickets[7:])] == [1, 2, 3, 4]


async def test_live_positions_far_back_are_close_and_never_go_up(
    replicas: list[Engine],
) -> None:
    """Beyond the exact front window, positions are at most LIVE_BLOCK - 1 too high,
    and they only go down while the line moves and people leave."""
    e = replicas[0]
    s = QueueSettings(capacity=5)
    rng = random.Random(3)
    joined = await e.join_many(Q, [f"s{i}" for i in range(5000)], s)
    line = [t for admitted, t, _ in joined if not admitted]
    await seen(e, s, *line)
    watched = line[2000::300]
    last = {t: 10**9 for t in watched}
    worst = 0
    for _ in range(8):
        for t in rng.sample([t for t in line if t not in watched], 300):
            await e.leave(Q, t, f"s{t - 1}", 0)
            line.remove(t)
        await e.join_many(Q, [f"n{rng.random()}" for _ in range(100)], s)  # more behind
        await seen(e, s, *line)
        st = await tick(e, s)
        for t in watched:
            true = sum(1 for x in line if st.serving < x < t) + 1
            got = st.position(t)
            assert true <= got <= true + LIVE_BLOCK - 1, (t, true, got)
            assert got <= last[t]
            last[t] = got
            worst = max(worst, got - true)
    print(f"far-back positions at most {worst} too high (bound {LIVE_BLOCK - 1})")


async def test_a_restart_without_persistence_rebuilds_the_line_from_tokens(
    replicas: list[Engine], redis: Redis
) -> None:
    """Redis lost everything while a replica remembered the queue: the new epoch
    numbers newcomers after every place from before; for the recovery window the
    line stands still, sessions from before are counted again first, and old
    waiting tokens put their own ticket back in line, once each. Then the line
    moves in ticket order: old places first, newcomers behind."""
    e = replicas[0]
    e.recovery_ms = 400  # the window; a heartbeat interval + 4 s in a sidecar
    s = QueueSettings(capacity=2, grace=30)
    old = [await e.join(Q, f"old{i}", s) for i in range(6)]  # old0, old1 inside; 3..6 wait
    await seen(e, s, 3, 4, 5, 6)
    before = (await tick(e, s)).epoch
    assert before and {j.epoch for j in old} == {before}

    await redis.flushall()  # a restart without persistence
    st = await tick(e, s)
    last = 6 + RECOVERY_TICKET_SLACK
    assert st.epoch and st.epoch != before and (st.tickets, st.serving) == (last, 2)
    # a newcomer queues behind every old place, though two slots are free
    newcomer = await e.join(Q, "new0", s)
    assert (newcomer.admitted, newcomer.ticket) == (False, last + 1)
    await seen(e, s, last + 1)
    # an admitted cookie coming back is counted first
    assert (await e.heartbeat({Q: (["old0"], [], s)})).ended == 0
    # old waiting tokens: their ticket back once (again for the same session: two tabs)
    assert await e.claim_place(Q, 3, "old2", s, before) == (Claim.RESTORED, st.epoch)
    assert await e.claim_place(Q, 3, "old2", s, before) == (Claim.RESTORED, st.epoch)
    assert await e.claim(Q, 3, "copy", s, before) is Claim.STALE  # a replay, other session
    assert await e.claim(Q, 5, "old4", s, before) is Claim.RESTORED
    assert await e.claim(Q, 2, "old1", s, before) is Claim.STALE  # its turn had passed
    assert await e.claim(Q, last + 1, "x", s, before) is Claim.STALE  # never handed out
    assert await e.claim(Q, 3, "old2", s, "other-epoch") is Claim.STALE
    st = await tick(e, s)
    assert (st.invited, st.active, st.waiting) == (0, 1, 3)  # the line stands still
    assert [st.position(t) for t in (3, 5, last + 1)] == [1, 2, 3]

    await asyncio.sleep(0.45)  # the window ends: the line moves in ticket order
    st = await tick(e, s)
    assert await ticket_members(redis, Q.keys.invited) == [3]
    assert await e.claim(Q, 3, "old2", s, st.epoch) is Claim.ADMITTED
    await e.leave(Q, 3, "old2", 0, st.epoch)
    await tick(e, s)
    assert await ticket_members(redis, Q.keys.invited) == [5]  # 4 never came back
    assert await e.claim(Q, 4, "old3", s, before) is Claim.STALE  # passed: join again
    # after the window a session from before comes back only with room and nobody waiting
    assert (await e.heartbeat({Q: (["old1"], [], s)})).ended == 1
    assert await occupancy(redis) == 2

    # a replica that never saw the queue starts an epoch with nothing to rebuild
    await redis.flushall()
    fresh = replicas[2]
    st = await tick(fresh, s)
    assert (st.tickets, st.serving) == (0, 0)
    assert await fresh.claim(Q, 6, "old5", s, before) is Claim.STALE
    assert (await fresh.join(Q, "new1", s)).admitted


async def test_the_epoch_survives_when_redis_keeps_its_data(
    replicas: list[Engine], redis: Redis
) -> None:
    e = replicas[0]
    s = QueueSettings(capacity=1)
    first = await e.join(Q, "a", s)
    second = await e.join(Q, "b", s)
    await redis.delete(Q.keys.active)  # the session idled out; nothing else changed
    assert (await tick(e, s)).epoch == first.epoch == second.epoch
    assert await e.claim(Q, 2, "b", s, second.epoch) is Claim.ADMITTED


async def test_a_waiter_whose_first_poll_may_still_be_batched_is_not_overtaken(
    redis: Redis,
) -> None:
    """A waiter who joined a moment ago may have polled already, the mark still in a
    replica's heartbeat batch (the engine's slack): the line waits for them rather
    than pass them over and let a newcomer walk in first. Past the slack a place
    never seen is passed over as before (a bot, or a page still loading)."""
    e = Engine(redis, purge_slack_ms=1000)
    s = QueueSettings(capacity=1)
    await join(e, "holder", s)
    _, waiter, _ = await e.join(Q, "waiter", s)  # polled; the mark not written yet
    await e.leave(Q, 1, "holder", 0)
    st = await tick(e, s)
    assert st.serving < waiter and st.skipped == 0 and st.invited == 0
    walked_in, newcomer, _ = await e.join(Q, "newcomer", s)
    assert not walked_in  # behind the waiter
    await seen(e, s, waiter)  # the batch arrives
    await tick(e, s)
    assert await e.claim(Q, waiter, "waiter", s) is Claim.ADMITTED
    await e.leave(Q, waiter, "waiter", 0)
    await asyncio.sleep(1.1)  # the newcomer never polled: past the slack, passed over
    st = await tick(e, s)
    assert st.serving == newcomer and st.skipped == 1 and st.invited == 0
