"""A queue's keys expire when nobody follows it any more (names a client chooses
leave nothing forever), and that expiry is never taken for Redis losing the queue;
in-process, on the real Redis fixture."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

import sidecar.queue.refresher as refresher_module
from sidecar.config import QueueSettings
from sidecar.queue.engine import Engine, QueueRef
from sidecar.queue.keys import PLACE_TTL, QUEUE_KEEP_MARGIN, queue_keep
from sidecar.queue.refresher import Refresher

Q = QueueRef("shop", "junk42")


async def ttls(redis: Redis, q: QueueRef) -> dict[str, int]:
    prefix = q.keys.tickets[: -len("tickets")]
    return {k.decode(): await redis.ttl(k) async for k in redis.scan_iter(match=prefix + "*")}


async def test_every_key_of_a_visited_queue_expires_after_its_last_tick(
    replicas: list[Engine], redis: Redis
) -> None:
    e = replicas[0]
    s = QueueSettings(capacity=1, session_max=7_200, session_ttl=600)
    await e.tick([(Q, s)])
    for i in range(3):  # one admitted at once, two in line
        await e.join(Q, f"s{i}", s, address=f"10.0.0.{i}")
    await e.tick([(Q, s)])
    found = await ttls(redis, Q)
    assert Q.keys.tickets in found and Q.keys.waiting in found and Q.keys.active in found
    forever = sorted(k for k, ttl in found.items() if ttl == -1)
    assert not forever, forever
    # long enough for every token that may name the epoch: a waiting token's life
    keep = queue_keep(s.session_max, s.session_ttl)
    assert keep == PLACE_TTL + QUEUE_KEEP_MARGIN
    assert keep - 5 <= found[Q.keys.epoch] <= keep


async def test_a_longer_session_max_keeps_the_keys_longer(
    replicas: list[Engine], redis: Redis
) -> None:
    e = replicas[0]
    s = QueueSettings(session_max=PLACE_TTL * 2)
    await e.join(Q, "s", s)
    await e.tick([(Q, s)])
    assert await redis.ttl(Q.keys.tickets) > PLACE_TTL * 2


async def test_an_expired_queue_is_a_new_line_not_a_recovery(
    replicas: list[Engine], redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that followed the queue and stopped (quiet) holds no memory of its
    epoch: when the keys expire and a visitor comes back, the queue starts afresh
    (ticket 1, nobody held back) instead of a recovery (tickets + 10,000, the line
    standing still)."""
    e = replicas[0]
    s = QueueSettings(capacity=5)
    r = Refresher(e, 0.25, 1.0)
    await r.state(Q, s)
    assert (await e.join(Q, "before", s)).ticket == 1
    monkeypatch.setattr(refresher_module, "FORGET_AFTER", -1.0)
    await r.refresh()  # quiet: forgotten
    assert Q not in r.states
    for key in await ttls(redis, Q):  # the keys expire (hours later)
        await redis.delete(key)
    monkeypatch.setattr(refresher_module, "FORGET_AFTER", 300.0)
    await r.state(Q, s)
    joined = await e.join(Q, "after", s)
    assert (joined.admitted, joined.ticket) == (True, 1)
    assert not await redis.exists(Q.keys.recovery)
