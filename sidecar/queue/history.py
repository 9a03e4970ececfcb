"""The dashboard's last hour: one point per queue every few seconds, kept in Redis.

Each process records after its tick, at most once per ``HISTORY_STEP`` bucket and
queue. The bucket number is the field of a hash written with HSETNX, so replicas
writing the same bucket agree on one point (the first), and the hash stays
bounded: fields older than an hour are dropped every few minutes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from redis.asyncio import Redis, RedisCluster

from .client import StorageError, text
from .engine import QueueRef, QueueState
from .keys import HISTORY_SECONDS, HISTORY_STEP

log = logging.getLogger("sidecar.history")

TRIM_EVERY = 300  # seconds between trims of one queue's history


@dataclass(frozen=True, slots=True)
class Point:
    at: int  # unix seconds, start of the bucket
    waiting: int
    active: int
    admitted_last_minute: int


class History:
    def __init__(self, redis: Redis | RedisCluster, step: int = HISTORY_STEP) -> None:
        self.redis = redis
        self.step = step
        self._recorded: dict[QueueRef, int] = {}  # queue -> last bucket written
        self._trimmed: dict[QueueRef, int] = {}

    async def record(self, states: Mapping[QueueRef, QueueState]) -> None:
        """Called after every tick; writes only queues whose bucket has moved on."""
        due: list[tuple[QueueRef, int, QueueState]] = []
        for q, st in states.items():
            bucket = st.redis_time_ms // 1000 // self.step * self.step  # Redis' clock: agreed
            if self._recorded.get(q, -1) < bucket:
                due.append((q, bucket, st))
        if not due:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for q, bucket, st in due:
                    key = q.keys.history
                    pipe.hsetnx(
                        key, str(bucket), f"{st.waiting},{st.active},{st.admitted_last_minute}"
                    )
                    pipe.expire(key, HISTORY_SECONDS + 60)
                await pipe.execute()
            for q, bucket, _ in due:
                self._recorded[q] = bucket
                if bucket - self._trimmed.get(q, 0) >= TRIM_EVERY:
                    await self._trim(q, bucket)
        except StorageError as e:  # the refresher reports Redis outages itself
            log.debug("history not recorded", extra={"error": str(e)})

    async def _trim(self, q: QueueRef, now: int) -> None:
        fields = [
            f for f in await self.redis.hkeys(q.keys.history) if int(f) < now - HISTORY_SECONDS
        ]
        if fields:
            await self.redis.hdel(q.keys.history, *fields)
        self._trimmed[q] = now


async def read(redis: Redis | RedisCluster, q: QueueRef, now: int) -> list[Point]:
    """The last hour of ``q``, oldest first."""
    (points,) = await read_many(redis, [q], now)
    return points


async def read_many(
    redis: Redis | RedisCluster, queues: list[QueueRef], now: int
) -> list[list[Point]]:
    """The last hour of each queue, in one round trip (one per shard on a cluster)."""
    if not queues:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for q in queues:
            pipe.hgetall(q.keys.history)
        replies = await pipe.execute()
    return [_points(raw, now) for raw in replies]


def _points(raw: Mapping[bytes | str, bytes | str], now: int) -> list[Point]:
    points = []
    for at, value in raw.items():
        try:
            w, a, m = (int(v) for v in text(value).split(","))
            t = int(at)
        except ValueError:
            continue
        if t >= now - HISTORY_SECONDS:
            points.append(Point(t, w, a, m))
    return sorted(points, key=lambda p: p.at)
