"""The dashboard's history in Redis: written by the queue's tick (its ticker), one
point per 5 s bucket whoever ticks, trimmed to the hour in the same script."""

from __future__ import annotations

from redis.asyncio import Redis

from sidecar.config import QueueSettings
from sidecar.queue.engine import Engine, QueueRef
from sidecar.queue.history import read
from sidecar.queue.keys import HISTORY_SECONDS, HISTORY_STEP


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
