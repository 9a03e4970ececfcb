"""Work that grows with the line, done in short calls: a big opening written in
chunks from the drawn seed, the line summary read as changes since a version,
pruning and the revocation reload capped per call. The engine against a real
redis-server: every chunked result equals what one long call would give."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from redis.asyncio import Redis

from sidecar.config import QueueSettings
from sidecar.queue.engine import Engine, QueueRef, QueueState, drawn_order
from sidecar.queue.keys import LIVE_BLOCK, OPEN_INLINE_MAX, PRUNE_MAX
from sidecar.queue.refresher import Refresher
from sidecar.queue.scripts import TICK
from tests.conftest import ticket_members

Q = QueueRef("acme", "drop")
FAR = 4_000_000_000
CLOSED = QueueSettings(capacity=0, mode="paused", opens_at=FAR)
BIG = OPEN_INLINE_MAX + 1_500  # drawn by the sidecar, in chunks


async def tick(e: Engine, s: QueueSettings, q: QueueRef = Q) -> QueueState:
    (st,) = await e.tick([(q, s)])
    return st


async def fill(e: Engine, n: int, s: QueueSettings, q: QueueRef = Q) -> list[int]:
    tickets: list[int] = []
    for i in range(0, n, 500):
        joined = await e.join_many(q, [f"v{j}" for j in range(i, min(i + 500, n))], s)
        tickets += [t for _, t, _ in joined]
    await e.heartbeat({q: ([], tickets, s)})
    return tickets


async def live_counts(redis: Redis, q: QueueRef = Q) -> dict[int, int]:
    raw = await redis.hgetall(q.keys.live)
    return {int(k): int(v) for k, v in raw.items() if int(v)}


async def recounted(redis: Redis, line_of: dict[int, int], q: QueueRef = Q) -> dict[int, int]:
    """The block counts computed from scratch: who is in line, at their line number."""
    counts: dict[int, int] = {}
    for t in await ticket_members(redis, q.keys.waiting):
        block = line_of.get(t, t) // LIVE_BLOCK
        counts[block] = counts.get(block, 0) + 1
    return counts


async def opened(e: Engine, s: QueueSettings) -> QueueState:
    for _ in range(500):
        st = await tick(e, s)
        if not st.opening:
            return st
        await asyncio.sleep(0.01)
    raise AssertionError("the opening never finished")


async def test_a_big_opening_is_written_in_chunks_as_the_seed_replays(
    replicas: list[Engine], redis: Redis
) -> None:
    e = replicas[0]
    e.open_write_chunk, e.open_move_chunk = 300, 170  # many short calls
    tickets = await fill(e, BIG, CLOSED)
    for t in tickets[::7]:  # some left before the opening
        await e.leave(Q, t, f"gone{t}", 0)
    in_line = await redis.zcard(Q.keys.waiting)
    st = await tick(e, replace(CLOSED, opens_at=1))
    assert st.opened and st.opening and st.order is None and st.newly_invited == 0
    st = await opened(e, replace(CLOSED, opens_at=1))
    assert st.order is not None and not st.closed
    # every place written once, as the logged seed replays it
    order, rank = drawn_order(st.order.seed, BIG)
    assert await redis.get(Q.keys.order) == order and await redis.get(Q.keys.rank) == rank
    # the live counts moved to the drawn places, nobody lost or counted twice
    line_of = {t: st.line(t) for t in tickets}
    assert sorted(line_of.values()) == tickets  # a permutation of the pre-queue
    assert await live_counts(redis) == await recounted(redis, line_of)
    assert st.waiting == in_line
    # positions: exact and distinct in the front window, in drawn order
    waiting = set(await ticket_members(redis, Q.keys.waiting))
    present = sorted((st.line(t), t) for t in tickets if t in waiting)
    front = [st.position(t) for _, t in present[:500]]
    assert front == list(range(1, 501))


async def test_racing_replicas_open_in_chunks_once(replicas: list[Engine], redis: Redis) -> None:
    for e in replicas:
        e.open_write_chunk, e.open_move_chunk = 256, 128
    tickets = await fill(replicas[0], BIG, CLOSED)
    opening = replace(CLOSED, opens_at=1)
    states = await asyncio.gather(*(tick(e, opening) for e in replicas for _ in range(3)))
    assert sum(st.opened for st in states) == 1
    # every replica writes and counts chunks until done; the cursors let each place in once
    done = await asyncio.gather(*(opened(e, opening) for e in replicas))
    seeds = {st.order.seed for st in done if st.order is not None}
    assert len(seeds) == 1 and all(st.order is not None for st in done)
    (seed,) = seeds
    order, rank = drawn_order(seed, BIG)
    assert await redis.get(Q.keys.order) == order and await redis.get(Q.keys.rank) == rank
    line_of = {t: done[0].line(t) for t in tickets}
    assert await live_counts(redis) == await recounted(redis, line_of)
    assert sum((await live_counts(redis)).values()) == BIG


async def test_nobody_is_admitted_while_the_order_is_written(
    replicas: list[Engine], redis: Redis
) -> None:
    e = replicas[0]
    e.open_write_chunk, e.open_move_chunk = 128, 64
    await fill(e, BIG, replace(CLOSED, capacity=5, mode="on"))
    opening = replace(CLOSED, capacity=5, mode="on", opens_at=1)
    st = await tick(e, opening)
    assert st.opening
    # a newcomer during the opening queues behind the pre-queue; nobody is invited
    admitted, late, _ = (await e.join_many(Q, ["late"], opening))[0]
    assert not admitted and late == BIG + 1
    while (st := await tick(e, opening)).opening:
        assert st.newly_invited == 0 and st.invited == 0 and st.active == 0
        await asyncio.sleep(0.005)
    assert st.newly_invited == 5  # then the drawn order is served
    invited = await ticket_members(redis, Q.keys.invited)
    assert all(st.order is not None and st.order.line(t) <= 5 for t in invited)


async def test_pruning_is_capped_per_tick_and_carries_on(
    replicas: list[Engine], redis: Redis
) -> None:
    e = replicas[0]
    s = QueueSettings(capacity=0, mode="paused", abandon_after=1)
    n = 2 * PRUNE_MAX + 300
    await fill(e, n, s)
    await asyncio.sleep(1.1)  # nobody polled since: every one of them stopped
    pruned = []
    while (st := await tick(e, s)).waiting:
        pruned.append(st.waiting)
        assert st.more or st.waiting == 0
    assert pruned == [n - PRUNE_MAX, n - 2 * PRUNE_MAX]
    assert await live_counts(redis) == {}


async def test_a_quiet_tick_ships_no_summary_and_a_busy_one_only_what_changed(
    replicas: list[Engine], redis: Redis
) -> None:
    e, fresh = replicas[0], replicas[1]
    s = QueueSettings(capacity=0, mode="paused")
    tickets = await fill(e, 20 * LIVE_BLOCK, s)
    await tick(e, s)
    summary = e._summaries[Q]
    args: dict[str, object] = {a: getattr(s, a) for a in TICK.args if hasattr(s, a)}
    args.update(purge_slack_ms=0, draw_seed="1", eta=-1)
    args.update(line_version=summary.version, line_epoch=summary.epoch, **e._known_args(Q))
    await e.load_scripts()
    keys = Q.keys.all()

    async def raw() -> dict[str, Any]:
        sha = e._sha["tick"]
        return TICK.decode(await redis.evalsha(sha, len(keys), *keys, *TICK.argv(args)))

    quiet = await raw()
    assert quiet["line_same"] == 1 and quiet["blocks"] == [] and quiet["front"] == b""
    # one leave far back: one block changes, one block is shipped
    await e.leave(Q, tickets[-1], "x", 0)
    busy = await raw()
    assert busy["line_same"] == 0 and busy["blocks"][::2] == [
        str(tickets[-1] // LIVE_BLOCK).encode()
    ]
    # positions from the incremental copy equal those of a process reading it afresh
    for t in tickets[::37]:
        await e.leave(Q, t, "y", 0)
    mine, theirs = await tick(e, s), await tick(fresh, s)
    assert mine.live.counts == theirs.live.counts and mine.live.front == theirs.live.front
    assert [mine.position(t) for t in tickets] == [theirs.position(t) for t in tickets]


async def test_a_new_replica_reloads_many_revocations_in_chunks(
    replicas: list[Engine], redis: Redis
) -> None:
    e = replicas[0]
    s = QueueSettings(capacity=0)
    await tick(e, s)
    n = 2_600
    for i in range(0, n, 500):
        await asyncio.gather(
            *(e.leave(Q, 0, f"sid{j}", 4_000_000_000) for j in range(i, min(i + 500, n)))
        )
    calls = []
    fresh = Refresher(replicas[1], 0.25, 1.0)
    chunk = replicas[1].revoked_chunk

    async def counted(q: QueueRef, after: str) -> tuple[str, list[tuple[str, int]]]:
        calls.append(after)
        return await chunk(q, after)

    replicas[1].revoked_chunk = counted  # type: ignore[method-assign]
    await fresh.state(Q, s)  # a new replica: every revocation before its first state
    assert all(f"sid{j}" in fresh.revoked for j in range(n))
    assert len(calls) == 3  # 1,000 a call
    # the stream is then read on from where it stood before the reload
    newest = (await redis.xinfo_stream(Q.keys.ended))["last-generated-id"]
    assert fresh._tracked[Q].last_ended == newest.decode()
