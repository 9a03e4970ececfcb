"""A queue's occupancy (admitted sessions + unclaimed invitations) sampled while a
test drives the stack: what "capacity never exceeded" is asserted on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sidecar.queue.keys import queue_keys


@dataclass
class Occupancy:
    """active + invited of one queue every ``every`` seconds, read in one round trip;
    a sample Redis cannot answer (down, restarting) is skipped."""

    redis: Redis
    tenant: str
    queue: str
    every: float = 0.05
    samples: list[int] = field(default_factory=list)

    async def run(self) -> None:
        keys = queue_keys(self.tenant, self.queue)
        while True:
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.zcard(keys.active)
                    pipe.zcard(keys.invited)
                    active, invited = await pipe.execute()
                self.samples.append(int(active) + int(invited))
            except (RedisError, OSError):
                pass
            await asyncio.sleep(self.every)


@asynccontextmanager
async def sampling(
    redis_url: str, tenant: str, queue: str, every: float = 0.05
) -> AsyncIterator[Occupancy]:
    """An :class:`Occupancy` sampling in the background for the ``with`` block."""
    redis = Redis.from_url(redis_url)
    occupancy = Occupancy(redis, tenant, queue, every)
    task = asyncio.create_task(occupancy.run())
    try:
        yield occupancy
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await redis.aclose()
