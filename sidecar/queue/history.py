"""The dashboard's last hour: one point per queue every few seconds, kept in Redis.

The queue's ticker writes the points in its tick (lua/history.lua: the first
write of a ``HISTORY_STEP`` bucket wins, and the hash is trimmed to the hour in
the same call); this module reads them back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from redis.asyncio import Redis, RedisCluster

from .client import text
from .engine import QueueRef
from .keys import HISTORY_SECONDS


@dataclass(frozen=True, slots=True)
class Point:
    at: int  # unix seconds, start of the bucket
    waiting: int
    active: int
    admitted_last_minute: int


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
