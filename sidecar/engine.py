"""The queue engine: typed wrappers around one Lua script per operation.

Each public method is one EVALSHA (one round trip); ``tick`` and
``heartbeat`` batch several queues into one pipeline. Scripts share
``lua/prelude.lua``, prepended at load time.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from .config import QueueSettings
from .keys import (
    ADVANCE_MAX_STEPS,
    ENDED_STREAM_MAXLEN,
    HEARTBEAT_CHUNK,
    QueueKeys,
    queue_keys,
)


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


def _load(name: str, prelude: str) -> str:
    return prelude + "\n" + resources.files("sidecar.lua").joinpath(name).read_text()


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class Engine:
    def __init__(self, redis: Redis, purge_slack_ms: int = 2000) -> None:
        self.redis = redis
        self.purge_slack_ms = purge_slack_ms
        prelude = resources.files("sidecar.lua").joinpath("prelude.lua").read_text()
        self._join: AsyncScript = redis.register_script(_load("join.lua", prelude))
        self._claim: AsyncScript = redis.register_script(_load("claim.lua", prelude))
        self._leave: AsyncScript = redis.register_script(_load("leave.lua", prelude))
        self._heartbeat: AsyncScript = redis.register_script(_load("heartbeat.lua", prelude))
        self._tick: AsyncScript = redis.register_script(_load("tick.lua", prelude))

    def _admission(self, s: QueueSettings) -> list[str | int]:
        """The ARGV tail of the scripts that may admit: the policy to enforce."""
        return [s.mode, s.capacity, s.admit_per_minute, s.session_ttl * 1000, self.purge_slack_ms]

    async def join(self, q: QueueRef, sid: str, s: QueueSettings) -> tuple[bool, int]:
        """Takes a ticket; returns (admitted at once, ticket)."""
        admitted, ticket = await self._join(keys=q.keys.all(), args=[sid, *self._admission(s)])
        return bool(admitted), int(ticket)

    async def claim(self, q: QueueRef, ticket: int, sid: str, s: QueueSettings) -> Claim:
        (result,) = await self._claim(keys=q.keys.all(), args=[ticket, sid, *self._admission(s)])
        return Claim(int(result))

    async def leave(self, q: QueueRef, ticket: int, sid: str, revoke_until: int) -> bool:
        """Ends the visitor's place or session; True if it freed capacity."""
        freed = await self._leave(
            keys=q.keys.all(), args=[ticket, sid, revoke_until, ENDED_STREAM_MAXLEN]
        )
        return bool(freed)

    async def heartbeat(
        self, batch: Mapping[QueueRef, tuple[Sequence[str], Sequence[int], int]]
    ) -> None:
        """Extends sessions and marks waiters seen: {queue: (sids, tickets, ttl seconds)}."""
        if not batch:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for q, (sids, tickets, ttl) in batch.items():
                # chunks keep each script call short, whatever the crowd
                for i in range(0, max(len(sids), len(tickets)), HEARTBEAT_CHUNK):
                    some_sids = sids[i : i + HEARTBEAT_CHUNK]
                    some_tickets = tickets[i : i + HEARTBEAT_CHUNK]
                    await self._heartbeat(
                        keys=q.keys.all(),
                        args=[ttl * 1000, len(some_sids), *some_sids, *some_tickets],
                        client=pipe,
                    )
            await pipe.execute()

    async def tick(self, queues: Sequence[tuple[QueueRef, QueueSettings, str]]) -> list[QueueState]:
        """Purges, advances and reads each queue: [(queue, configured settings, last ended id)]."""
        if not queues:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for q, s, last_ended in queues:
                await self._tick(
                    keys=q.keys.all(),
                    args=[
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
                    client=pipe,
                )
            replies = await pipe.execute()
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
