"""Access codes: one-time links that skip a queue's line (and the only way into an
invite-only queue).

A code is 128 random bits (``secrets.token_urlsafe(16)``). Redis keeps only its
SHA-256, under the queue's hash tag, in a sorted set scored by expiry (unix
seconds) beside a hash of labels; the code itself is shown once, to the operator
who made it. It is spent inside redeem.lua, atomically: once across every replica.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import Counter
from dataclasses import dataclass

from redis.asyncio import Redis, RedisCluster

from .client import text
from .engine import QueueRef
from .keys import CODES_MAX, CODES_SWEEP

LABEL_MAX = 64  # characters


def digest(code: str) -> str:
    """What Redis keeps of a code: its SHA-256, hex."""
    return hashlib.sha256(code.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Unused:
    count: int  # codes not used and not expired
    by_label: dict[str, int]  # the same, per label ("" = none)
    next_expiry: int  # unix seconds of the soonest expiry (0 = none left)


async def make(
    redis: Redis | RedisCluster, q: QueueRef, count: int, expires_at: int, label: str = ""
) -> list[str]:
    """``count`` new codes for ``q`` valid until ``expires_at`` (unix seconds)."""
    if not 1 <= count <= CODES_MAX:
        raise ValueError(f"count: 1 to {CODES_MAX}")
    codes = [secrets.token_urlsafe(16) for _ in range(count)]
    digests = [digest(c) for c in codes]
    await sweep(redis, q)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zadd(q.keys.codes, dict.fromkeys(digests, expires_at))
        if label:
            pipe.hset(q.keys.code_labels, mapping=dict.fromkeys(digests, label))
        await pipe.execute()
    return codes


async def sweep(redis: Redis | RedisCluster, q: QueueRef) -> int:
    """Drops up to CODES_SWEEP expired codes (and their labels); how many went."""
    now = int(time.time())
    gone: list[bytes] = await redis.zrangebyscore(  # type: ignore[assignment]
        q.keys.codes, "-inf", now, start=0, num=CODES_SWEEP
    )
    if gone:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.zrem(q.keys.codes, *gone)
            pipe.hdel(q.keys.code_labels, *gone)
            await pipe.execute()
    return len(gone)


async def unused(redis: Redis | RedisCluster, q: QueueRef) -> Unused:
    """The codes of ``q`` still valid, counted per label."""
    await sweep(redis, q)
    now = int(time.time())
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcount(q.keys.codes, f"({now}", "+inf")
        pipe.zrangebyscore(q.keys.codes, f"({now}", "+inf", start=0, num=1, withscores=True)
        pipe.hgetall(q.keys.code_labels)
        count, first, labels = await pipe.execute()
    by_label = Counter(text(v) for v in labels.values())
    labelled = sum(by_label.values())
    if count > labelled:
        by_label[""] += count - labelled
    return Unused(int(count), dict(by_label), int(first[0][1]) if first else 0)


async def withdraw(redis: Redis | RedisCluster, q: QueueRef, label: str | None) -> int:
    """Withdraws the unused codes of ``q`` (only those labelled ``label`` if given)."""
    if label is None:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.zcard(q.keys.codes)
            pipe.delete(q.keys.codes, q.keys.code_labels)
            count, _ = await pipe.execute()
        return int(count)
    labels = await redis.hgetall(q.keys.code_labels)
    mine = [k for k, v in labels.items() if text(v) == label]
    if not mine:
        return 0
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zrem(q.keys.codes, *mine)
        pipe.hdel(q.keys.code_labels, *mine)
        removed, _ = await pipe.execute()
    return int(removed)
