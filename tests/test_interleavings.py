"""Random interleavings of what visitors and replicas do, against a real Redis.

Three engines (replicas) share one queue. Hypothesis draws sequences of joins,
polls, claims, leaves, replays of old cookies, ticks and pauses; after every
step the invariants a waiting room promises are checked:

- active + invited never exceeds the capacity;
- a ticket admits at most once (a replayed cookie of an ended session never
  gets back in);
- invitations follow ticket order among waiters who were present (polled
  before their turn came and did not leave); in random order (order = random)
  only present waiters are drawn;
- nobody who keeps polling starves: once newcomers stop and sessions end, every
  waiter still polling gets in.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from sidecar.config import QueueSettings
from sidecar.queue.engine import Claim, Engine, QueueRef

Q = QueueRef("acme", "interleave")
S = QueueSettings(capacity=2, grace=1, session_ttl=30, abandon_after=90)

actions = st.lists(
    st.one_of(
        st.tuples(st.just("join"), st.integers(0, 2)),
        st.tuples(st.just("poll"), st.integers(0, 30)),
        st.tuples(st.just("claim"), st.integers(0, 30)),
        st.tuples(st.just("leave"), st.integers(0, 30)),
        st.tuples(st.just("replay"), st.integers(0, 30)),
        st.tuples(st.just("tick"), st.integers(0, 2)),
        st.tuples(st.just("pause"), st.just(0)),
    ),
    min_size=5,
    max_size=40,
)


@dataclass
class Visitor:
    ticket: int
    sid: str
    seen: bool = False  # polled at least once (its poll reached Redis)
    skipped: bool = False  # its turn came before it was seen: not owed an in-order invite
    invited: bool = False
    admitted: bool = False
    left: bool = False


@dataclass
class Model:
    engines: list[Engine]
    redis: Redis
    s: QueueSettings = S
    visitors: dict[int, Visitor] = field(default_factory=dict)
    serving: int = 0
    joined: int = 0

    def by_index(self, i: int) -> Visitor | None:
        if not self.visitors:
            return None
        keys = sorted(self.visitors)
        return self.visitors[keys[i % len(keys)]]

    async def occupancy(self) -> int:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zcard(Q.keys.active)
            pipe.zcard(Q.keys.invited)
            active, invited = await pipe.execute()
        return int(active) + int(invited)

    async def join(self, engine: int) -> None:
        self.joined += 1
        sid = f"s{self.joined}"
        admitted, ticket, _ = await self.engines[engine].join(Q, sid, self.s)
        v = Visitor(ticket, sid, admitted=admitted, invited=admitted)
        self.visitors[ticket] = v
        if admitted:
            self.serving = max(self.serving, ticket)

    async def poll(self, v: Visitor) -> None:
        if v.left or v.admitted:
            return
        if not v.seen and v.ticket <= self.serving:
            v.skipped = True  # passed over before it ever showed up
        v.seen = True
        await self.engines[v.ticket % 3].heartbeat({Q: ([], [v.ticket], self.s)})

    async def claim(self, v: Visitor) -> None:
        if v.left:
            return
        result = await self.engines[v.ticket % 3].claim(Q, v.ticket, v.sid, self.s)
        if result is Claim.ADMITTED:
            v.admitted = v.invited = True
        elif result is Claim.MISSED:
            v.left = True  # the gate would give it a new place at the back

    async def leave(self, v: Visitor) -> None:
        until = 2_000_000_000 if v.admitted else 0
        await self.engines[v.ticket % 3].leave(Q, v.ticket, v.sid, until)
        v.left = True

    async def replay(self, v: Visitor) -> None:
        """An ended session's old waiting cookie, claimed again: never admitted."""
        if not v.left or (v.ticket > self.serving and self.s.order == "fifo"):
            return
        result = await self.engines[0].claim(Q, v.ticket, v.sid, self.s)
        assert result is not Claim.ADMITTED, f"ticket {v.ticket} admitted again after it ended"

    async def tick(self, engine: int) -> None:
        (st_,) = await self.engines[engine].tick([(Q, self.s)])
        passed = range(self.serving + 1, st_.serving + 1)
        for t in passed:
            w = self.visitors.get(t)
            if w is not None and not w.seen:
                w.skipped = True
        self.serving = max(self.serving, st_.serving)
        raw: list[bytes] = await self.redis.zrange(Q.keys.invited, 0, -1)  # type: ignore[assignment]
        invited = {int(t) for t in raw}
        for t in sorted(invited):
            v = self.visitors[t]
            if v.invited:
                continue
            if self.s.order == "random":
                # drawn: only among present waiters, each ticket once
                assert v.seen and not v.left, f"ticket {t} drawn but not present"
                v.invited = True
                continue
            # in order: no present waiter with a lower ticket was passed over
            owed = [
                u.ticket
                for u in self.visitors.values()
                if u.ticket < t and u.seen and not (u.skipped or u.left or u.invited)
            ]
            assert not owed, f"ticket {t} invited before present waiters {owed}"
            v.invited = True

    async def step(self, name: str, arg: int) -> None:
        if name == "join":
            await self.join(arg)
        elif name == "tick":
            await self.tick(arg)
        elif name == "pause":
            await asyncio.sleep(0.35)  # invitations lapse after 1 s
        else:
            v = self.by_index(arg)
            if v is not None:
                await getattr(self, name)(v)
        assert await self.occupancy() <= self.s.capacity

    async def drain(self) -> None:
        """Newcomers stop; sessions end; every waiter who keeps polling gets in."""
        for _ in range(60):
            for v in list(self.visitors.values()):
                if v.admitted and not v.left:
                    await self.leave(v)
                elif not v.left:
                    await self.poll(v)
            await self.tick(0)
            for v in list(self.visitors.values()):
                if not v.left and not v.admitted:
                    await self.claim(v)
            assert await self.occupancy() <= self.s.capacity
            if all(v.left or v.admitted for v in self.visitors.values()):
                return
            await asyncio.sleep(0.05)
        waiting = [v.ticket for v in self.visitors.values() if not (v.left or v.admitted)]
        raise AssertionError(f"waiters who kept polling starved: {waiting}")


@pytest.mark.parametrize("order", ["fifo", "random"])
def test_random_interleavings_keep_the_promises(redis_url: str, order: str) -> None:
    examples = 0

    @settings(
        max_examples=60,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(actions)
    def run(steps: list[tuple[str, int]]) -> None:
        nonlocal examples
        examples += 1

        async def go() -> None:
            redis = Redis.from_url(redis_url)
            fresh = [Engine(Redis.from_url(redis_url), purge_slack_ms=0) for _ in range(3)]
            try:
                await redis.flushall()
                model = Model(fresh, redis, replace(S, order=order))
                for name, arg in steps:
                    await model.step(name, arg)
                await model.drain()
            finally:
                for e in fresh:
                    await e.redis.aclose()
                await redis.aclose()

        asyncio.run(go())

    run()
    print(f"interleavings ({order}): {examples} sequences, every invariant held after every step")
