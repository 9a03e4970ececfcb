"""The dashboard's history in Redis: written by the queue's tick (its ticker), one
point per 5 s bucket whoever ticks, trimmed to the hour in the same script."""

from __future__ import annotations

from redis.asyncio import Redis

from sidecar.config import QueueSettings
from sidecar.queue import history
from sidecar.queue.engine import Engine, QueueRef
from sidecar.queue.history import read
from sidecar.queue.keys import HISTORY_SECONDS, HISTORY_STEP, MINUTES_KEPT


async def test_ticks_in_one_bucket_keep_one_point(redis: Redis) -> None:
    q = QueueRef("acme", "history")
    s = QueueSettings(capacity=0)
    one, other = Engine(redis), Engine(redis)
    (first,) = await one.tick([(q, s)])
    await one.join_many(q, ["a", "b"], s)  # two waiting now
    (later,) = await other.tick([(q, s)])  # same bucket (most likely), another process
    now = later.redis_time_ms // 1000
    points = await read(redis, q, now)
    assert points and points[0].waiting == 0  # the first write of a bucket wins
    if first.redis_time_ms // 1000 // HISTORY_STEP == now // HISTORY_STEP:
        assert len(points) == 1
    assert points[-1].at % HISTORY_STEP == 0 and now - HISTORY_STEP < points[-1].at <= now
    assert await read(redis, q, now + HISTORY_SECONDS + 10) == []
    ttl = await redis.ttl(q.keys.history)
    assert 0 < ttl <= HISTORY_SECONDS + 60  # the whole hash goes if nobody ticks


async def test_history_is_trimmed_to_an_hour_by_the_tick(redis: Redis) -> None:
    q = QueueRef("acme", "trimmed")
    e = Engine(redis)
    (st,) = await e.tick([(q, QueueSettings())])
    bucket = st.redis_time_ms // 1000 // HISTORY_STEP * HISTORY_STEP
    # points from before the hour: the one that just left it, and a backlog left by
    # ticks that stopped for a while (more than an hour of points)
    just_out = bucket - HISTORY_SECONDS - HISTORY_STEP
    await redis.hset(q.keys.history, str(just_out), "1,1,1")
    await redis.hdel(q.keys.history, str(bucket))  # the next tick writes a bucket again
    await e.tick([(q, QueueSettings())])
    fields = {int(f) for f in await redis.hkeys(q.keys.history)}
    assert just_out not in fields and fields
    backlog = {
        str(bucket - HISTORY_SECONDS - 10_000 - i * HISTORY_STEP): "1,1,1" for i in range(800)
    }
    await redis.hset(q.keys.history, mapping=backlog)  # type: ignore[arg-type]
    await redis.hdel(q.keys.history, *[str(b) for b in fields])
    await e.tick([(q, QueueSettings())])
    fields = {int(f) for f in await redis.hkeys(q.keys.history)}
    assert fields and all(f >= bucket - HISTORY_SECONDS for f in fields), sorted(fields)[:3]


# -- how the sale went: the minute records ------------------------------------


async def test_a_scripted_minute_counts_joins_waits_and_who_gave_up(redis: Redis) -> None:
    """Walk-ins, admissions after a wait, a leave, a prune: the open minute as the
    tally has it, and each first admission counted once (a second tab adds nothing)."""
    q = QueueRef("acme", "sale")
    s = QueueSettings(capacity=2, abandon_after=90, grace=60)
    e = Engine(redis)
    (st,) = await e.tick([(q, s)])
    now_s = st.redis_time_ms // 1000
    places = await e.join_many(q, ["a", "b", "c", "d", "f"], s)
    assert [p.admitted for p in places] == [True, True, False, False, False]
    await e.heartbeat({q: ([], [3, 4, 5], s)})  # the three in line polled
    assert await e.leave(q, 5, "f", 0) is False  # one gives up its place
    await e.leave(q, 1, "a", now_s + 600)  # one inside is done: a slot frees
    await e.tick([(q, s)], {q: 120.0})  # c invited; newcomers are told 2 min
    # c joined 200 s ago (its token says so), d a moment ago
    joined = now_s - 200
    assert (await e.claim_place(q, 3, "c", s, joined=joined))[0].name == "ADMITTED"
    assert (await e.claim_place(q, 3, "c", s, joined=joined))[0].name == "ADMITTED"  # 2nd tab
    records = await history.minutes(redis, q, now_s - 120, now_s + 120, line=1, active=2)
    total = history.summary(records)
    assert total["joins"] == 5 and total["admitted"] == 3  # two walk-ins, then c
    assert total["left"] == 1 and total["gave_up"] == 1
    assert records[-1].line == 1 and records[-1].active == 2
    # waits: 0, 0 and about 200 s (bucket 120..300)
    assert sorted(b for b, n in enumerate(total_waits(records)) for _ in range(n)) == [0, 0, 6]
    assert total["wait_p50"] is not None and total["wait_p50"] <= 1
    assert 120 < total["wait_p99"] <= 300


def total_waits(records: list[history.Minute]) -> list[int]:
    out = [0] * len(records[0].waits)
    for r in records:
        out = [a + b for a, b in zip(out, r.waits, strict=True)]
    return out


async def test_the_tick_closes_past_minutes_into_records_and_keeps_a_week(
    redis: Redis,
) -> None:
    q = QueueRef("acme", "week")
    s = QueueSettings(capacity=0)
    e = Engine(redis)
    (st,) = await e.tick([(q, s)])
    now_min = st.redis_time_ms // 60_000
    # what join, claim and leave tallied two minutes ago (an estimate of 100 s given),
    # and a record that just left the week
    past = now_min - 2
    await redis.hset(
        q.keys.tally,
        mapping={f"{past}.j": 7, f"{past}.w1": 2, f"{past}.w7": 3, f"{past}.l": 1,
                 f"{past}.e3": 3, f"{past}.eta": 100},
    )  # fmt: skip
    old = now_min - 1 - MINUTES_KEPT
    await redis.hset(q.keys.minutes, str(old), "1,1,0,0,0,0,0,-1;1:1;")
    await redis.hset(q.keys.minutes, str(old - 500), "1,1,0,0,0,0,0,-1;1:1;")  # a backlog
    await redis.hdel(q.keys.tally, "closed")
    await e.tick([(q, s)])
    raw = await redis.hget(q.keys.minutes, str(past))
    assert raw is not None
    m = history.parse_minute(past, raw.decode() if isinstance(raw, bytes) else raw)
    assert m is not None
    assert (m.joins, m.admitted, m.left, m.estimate) == (7, 5, 1, 100)
    assert m.waits[0] == 2 and m.waits[6] == 3 and m.accuracy[2] == 3
    left = [k for k in await redis.hkeys(q.keys.tally) if str(k).startswith(f"b'{past}.")]
    assert not left
    # the week's end: the record that just left it goes at the next close; the sweep
    # (hourly, or when the hash outgrew the week) takes any backlog
    assert await redis.hget(q.keys.minutes, str(old)) is None
    assert 0 < await redis.ttl(q.keys.minutes) <= MINUTES_KEPT * 60 + 3600
    # a minute with nothing to tell writes nothing; an idle queue keeps no keys
    idle = QueueRef("acme", "idle")
    await e.tick([(idle, s)])
    await redis.hset(idle.keys.tally, "closed", str(now_min - 5))
    await e.tick([(idle, s)])
    assert await redis.hlen(idle.keys.minutes) == 0


async def test_a_busy_week_of_records_costs_under_two_megabytes(redis: Redis) -> None:
    """What history costs per queue: a week of busy minutes (every one with waits,
    people who gave up and an estimate), as Redis counts it."""
    q = QueueRef("acme", "memory")
    record = "1250,1180,48211,5000,35,120,12,1840;3:40,6:300,7:600,8:200,9:40;2:90,3:700,4:120"
    async with redis.pipeline(transaction=False) as pipe:
        for m in range(29_000_000, 29_000_000 + MINUTES_KEPT):
            pipe.hset(q.keys.minutes, str(m), record)
        await pipe.execute()
    used = await redis.memory_usage(q.keys.minutes)
    print(f"\nminutes hash, {MINUTES_KEPT} busy records: {used} bytes")
    assert used is not None and used < 2_000_000
