"""The dashboard's history in Redis: one point per 5 s bucket, whoever writes it."""

from __future__ import annotations

import time
from dataclasses import replace

from redis.asyncio import Redis

from sidecar.config import QueueSettings
from sidecar.queue.engine import Engine, QueueRef
from sidecar.queue.history import History, read
from sidecar.queue.keys import HISTORY_SECONDS


async def test_replicas_writing_one_bucket_keep_one_point(redis: Redis) -> None:
    q = QueueRef("acme", "history")
    (state,) = await Engine(redis).tick([(q, QueueSettings(), "0-0")])
    one, other = History(redis), History(redis)
    await one.record({q: replace(state, waiting=7, active=2)})
    await other.record({q: replace(state, waiting=9, active=3)})  # same bucket, later
    await one.record({q: replace(state, waiting=8)})  # already written: nothing
    now = state.redis_time_ms // 1000
    (point,) = await read(redis, q, now)
    assert (point.waiting, point.active) == (7, 2)
    assert point.at % 5 == 0 and now - 5 < point.at <= now

    # the next bucket is a new point; points older than an hour are not read back
    later = replace(state, redis_time_ms=state.redis_time_ms + 5000, waiting=4)
    await other.record({q: later})
    assert [p.waiting for p in await read(redis, q, now + 5)] == [7, 4]
    assert await read(redis, q, now + HISTORY_SECONDS + 10) == []
    ttl = await redis.ttl(q.keys.history)
    assert 0 < ttl <= HISTORY_SECONDS + 60  # the whole hash goes if nobody writes


async def test_history_is_trimmed_to_an_hour(redis: Redis) -> None:
    q = QueueRef("acme", "trimmed")
    (state,) = await Engine(redis).tick([(q, QueueSettings(), "0-0")])
    h = History(redis)
    start = int(time.time()) // 5 * 5
    old = replace(state, redis_time_ms=(start - HISTORY_SECONDS - 600) * 1000)
    await h.record({q: old})
    await h.record({q: replace(state, redis_time_ms=start * 1000)})  # trims what is older
    fields = await redis.hkeys(q.keys.history)
    assert [int(f) for f in fields] == [start]
