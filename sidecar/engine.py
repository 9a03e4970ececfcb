"""The queue engine: typed wrappers around one Lua script per operation.

Each public method is one EVALSHA (one round trip); ``tick`` and
``heartbeat`` batch several queues. Scripts share ``lua/prelude.lua``,
prepended at load time, and are called by SHA, loaded again on NOSCRIPT.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, NamedTuple

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import NoScriptError, RedisError

from .config import QueueSettings
from .keys import (
    ADVANCE_MAX_STEPS,
    ENDED_STREAM_MAXLEN,
    HEARTBEAT_CHUNK,
    QueueKeys,
    queue_keys,
)
from .metrics import Metrics


class QueueRef(NamedTuple):
    """A tenant's queue. A tuple: it is hashed on every request (C-speed)."""

    tenant: str
    queue: str

    @property
    def keys(self) -> QueueKeys:
        return queue_keys(self.tenant, self.queue)

    def __str__(self) -> str:
        return f"{self.tenant}:{self.queue}"


@dataclass(frozen=True, slots=True)
class QueueState:
    """A queue as one tick saw it; shared by every request in the process."""

    tickets: int  # last ticket handed out
    serving: int  # tickets up to this one have been invited (or skipped)
    waiting: int  # people in line (including some who stopped polling)
    active: int  # admitted sessions
    invited: int  # invitations not yet claimed
    admitted_last_minute: int
    redis_time_ms: int
    settings: QueueSettings  # effective: configuration plus operator overrides
    expired: int = 0  # sessions purged by this tick
    lapsed: int = 0  # invitations that ran out by this tick
    newly_invited: int = 0
    skipped: int = 0
    ended: tuple[tuple[str, str, int], ...] = field(default=())  # (stream id, sid, until)

    @property
    def admissions_per_second(self) -> float:
        return self.admitted_last_minute / 60.0


class Claim(enum.Enum):
    ADMITTED = 1
    NOT_YET = 0
    MISSED = -1  # the turn passed and there is no room now: join again


SCRIPTS = ("join", "claim", "leave", "heartbeat", "tick")

# A call of one script: (name, keys, args)
Call = tuple[str, list[str], list[Any]]


def _source(name: str) -> str:
    lua = resources.files("sidecar.lua")
    return lua.joinpath("prelude.lua").read_text() + "\n" + lua.joinpath(f"{name}.lua").read_text()


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class Engine:
    """Works with one Redis (batches are pipelined) or a Redis Cluster (batches run
    concurrently: EVALSHA cannot be pipelined across slots; each queue is one slot)."""

    def __init__(
        self,
        redis: Redis | RedisCluster,
        purge_slack_ms: int = 2000,
        metrics: Metrics | None = None,
    ) -> None:
        self.redis = redis
        self.metrics = metrics or Metrics()
        self.purge_slack_ms = purge_slack_ms
        self._cluster = isinstance(redis, RedisCluster)
        self._sources = {name: _source(name) for name in SCRIPTS}
        self._sha = {n: hashlib.sha1(src.encode()).hexdigest() for n, src in self._sources.items()}

    async def load_scripts(self) -> None:
        """SCRIPT LOAD on the server (every primary of a cluster); done again by
        itself whenever Redis answers NOSCRIPT (restart, failover, flush)."""
        for src in self._sources.values():
            await self.redis.script_load(src)

    async def _call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        started = time.perf_counter()  # metrics: latency and errors by operation
        try:
            return await self.redis.evalsha(self._sha[name], len(keys), *keys, *args)
        except NoScriptError:
            await self.load_scripts()
            return await self.redis.evalsha(self._sha[name], len(keys), *keys, *args)
        except (RedisError, OSError):
            self.metrics.redis_error(name)
            raise
        finally:
            self.metrics.redis_call(name, time.perf_counter() - started)

    async def _batch(self, calls: Sequence[Call]) -> list[Any]:
        """Several calls in one round trip (one per shard on a cluster)."""
        if self._cluster:
            return list(await asyncio.gather(*(self._call(*c) for c in calls)))
        started = time.perf_counter()  # metrics: latency and errors by operation
        try:
            return await self._batch_pipelined(calls)
        except (RedisError, OSError):
            self.metrics.redis_error(calls[0][0])
            raise
        finally:
            self.metrics.redis_call(calls[0][0], time.perf_counter() - started)

    async def _batch_pipelined(self, calls: Sequence[Call]) -> list[Any]:
        replies = await self._pipeline(calls)
        if any(isinstance(r, NoScriptError) for r in replies):
            await self.load_scripts()
            replies = await self._pipeline(calls)
        for r in replies:
            if isinstance(r, Exception):
                raise r
        return replies

    async def _pipeline(self, calls: Sequence[Call]) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for name, keys, args in calls:
                pipe.evalsha(self._sha[name], len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))

    def _admission(self, s: QueueSettings) -> list[str | int]:
        """The ARGV tail of the scripts that may admit: the policy to enforce."""
        return [s.mode, s.capacity, s.admit_per_minute, s.session_ttl * 1000, self.purge_slack_ms]

    async def join(self, q: QueueRef, sid: str, s: QueueSettings) -> tuple[bool, int]:
        """Takes a ticket; returns (admitted at once, ticket)."""
        admitted, ticket = await self._call("join", q.keys.all(), [sid, *self._admission(s)])
        return bool(admitted), int(ticket)

    async def claim(self, q: QueueRef, ticket: int, sid: str, s: QueueSettings) -> Claim:
        (result,) = await self._call("claim", q.keys.all(), [ticket, sid, *self._admission(s)])
        return Claim(int(result))

    async def leave(self, q: QueueRef, ticket: int, sid: str, revoke_until: int) -> bool:
        """Ends the visitor's place or session; True if it freed capacity."""
        freed = await self._call(
            "leave", q.keys.all(), [ticket, sid, revoke_until, ENDED_STREAM_MAXLEN]
        )
        return bool(freed)

    async def heartbeat(
        self, batch: Mapping[QueueRef, tuple[Sequence[str], Sequence[int], int]]
    ) -> None:
        """Extends sessions and marks waiters seen: {queue: (sids, tickets, ttl seconds)}."""
        if not batch:
            return
        calls: list[Call] = []
        for q, (sids, tickets, ttl) in batch.items():
            # chunks keep each script call short, whatever the crowd
            for i in range(0, max(len(sids), len(tickets)), HEARTBEAT_CHUNK):
                some_sids = sids[i : i + HEARTBEAT_CHUNK]
                some_tickets = tickets[i : i + HEARTBEAT_CHUNK]
                args = [ttl * 1000, len(some_sids), *some_sids, *some_tickets]
                calls.append(("heartbeat", q.keys.all(), args))
        self.metrics.heartbeat_batch(sum(len(s) + len(t) for s, t, _ in batch.values()))
        await self._batch(calls)

    async def tick(self, queues: Sequence[tuple[QueueRef, QueueSettings, str]]) -> list[QueueState]:
        """Purges, advances and reads each queue: [(queue, configured settings, last ended id)]."""
        if not queues:
            return []
        replies = await self._batch(
            [
                (
                    "tick",
                    q.keys.all(),
                    [
                        s.capacity,
                        s.admit_per_minute,
                        s.session_ttl,
                        s.grace,
                        s.abandon_after,
                        s.mode,
                        self.purge_slack_ms,
                        last_ended,
                        ADVANCE_MAX_STEPS,
                    ],
                )
                for q, s, last_ended in queues
            ]
        )
        return [_state(r, s) for r, (_, s, _) in zip(replies, queues, strict=True)]


def _state(r: list[Any], configured: QueueSettings) -> QueueState:
    ended = r[17]
    settings = QueueSettings(
        capacity=int(r[8]),
        admit_per_minute=int(r[9]),
        session_ttl=int(r[10]),
        grace=int(r[11]),
        abandon_after=int(r[12]),
        mode=_s(r[7]),
        on_redis_error=configured.on_redis_error,
    )
    return QueueState(
        tickets=int(r[0]),
        serving=int(r[1]),
        waiting=int(r[2]),
        active=int(r[3]),
        invited=int(r[4]),
        admitted_last_minute=int(r[5]),
        redis_time_ms=int(r[6]),
        settings=settings if settings != configured else configured,
        expired=int(r[13]),
        lapsed=int(r[14]),
        newly_invited=int(r[15]),
        skipped=int(r[16]),
        ended=tuple(
            (_s(ended[i]), _s(ended[i + 1]), int(ended[i + 2])) for i in range(0, len(ended), 3)
        ),
    )
