"""Scheduled openings and the per-address join budget: the engine against a real
redis-server, then the whole stack through nginx.

Before ``opens_at`` visitors take tickets but nobody is admitted; the first tick
after it (on any replica, exactly once) puts that pre-queue in a uniformly
random order, ahead of everyone who arrives later (FIFO)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from devstack.stack import Stack
from sidecar.config import QueueSettings
from sidecar.queue.engine import REFUSED, Claim, Engine, QueueRef, QueueState, shuffled_order
from sidecar.queue.keys import PLACE_TTL
from tests.conftest import ADMIN_TOKEN, eventually, make_stack, ticket_members
from tests.visitors import Visitor, client_from

Q = QueueRef("acme", "sale")
FAR = 4_000_000_000  # an opening far in the future (year 2096): the queue is closed
PAST = 1  # an opening long gone: the next tick opens the queue


async def tick(e: Engine, s: QueueSettings, q: QueueRef = Q) -> QueueState:
    (st,) = await e.tick([(q, s)])
    return st


async def pre_queue(e: Engine, q: QueueRef, n: int, s: QueueSettings) -> list[int]:
    """n visitors join before the opening and open the waiting page (one poll)."""
    joined = await e.join_many(q, [f"v{i}" for i in range(n)], s)
    assert all(not admitted for admitted, *_ in joined)
    tickets = [t for _, t, *_ in joined]
    await e.heartbeat({q: ([], tickets, s)})
    return tickets


async def test_pre_queue_order_is_a_permutation_replayed_from_the_seed(
    replicas: list[Engine], redis: Redis
) -> None:
    e = replicas[0]
    closed = QueueSettings(capacity=0, mode="paused", opens_at=FAR)
    tickets = await pre_queue(e, Q, 40, closed)
    st = await tick(e, closed)
    assert st.closed and st.order is None and st.serving == 0

    st = await tick(e, replace(closed, opens_at=PAST))
    assert st.opened and not st.closed and st.order is not None
    lines = sorted(st.line(t) for t in tickets)
    assert lines == tickets  # every place 1..40 taken once
    assert sorted(st.position(t) for t in tickets) == list(range(1, 41))
    assert [st.line(t) for t in tickets] != tickets  # shuffled (1 in 40! to fail)
    # the logged seed replays the order Redis stored
    stored: bytes = await redis.get(Q.keys.order)  # type: ignore[assignment]
    order = [int.from_bytes(stored[i : i + 4], "big") for i in range(0, len(stored), 4)]
    assert order == shuffled_order(st.order.seed, 40)
    assert int((await redis.hget(Q.keys.opening, "seed")) or 0) == st.order.seed


async def test_each_arrival_lands_anywhere_with_equal_chance(replicas: list[Engine]) -> None:
    """300 openings of 6 visitors: for each arrival (1st .. 6th to join), how often
    it ends at each place. Chi-square per arrival, 5 degrees of freedom, must stay
    under 35.9 (p = 1e-6 for a truly uniform shuffle: a false alarm about once in
    170,000 runs; a biased draw, e.g. early arrivals favoured, lands in the hundreds)."""
    e = replicas[0]
    runs, n = 300, 6
    counts = [[0] * n for _ in range(n)]
    closed = QueueSettings(capacity=0, mode="paused", opens_at=FAR)
    for run in range(runs):
        q = QueueRef("acme", f"u{run}")
        tickets = await pre_queue(e, q, n, closed)
        st = await tick(e, replace(closed, opens_at=PAST), q)
        for arrival, t in enumerate(tickets):
            counts[arrival][st.position(t) - 1] += 1
    expected = runs / n
    for arrival, row in enumerate(counts):
        chi2 = sum((c - expected) ** 2 / expected for c in row)
        assert chi2 < 35.9, f"arrival {arrival + 1}: places {row}, chi-square {chi2:.1f}"


async def test_exactly_one_shuffle_with_replicas_racing(
    replicas: list[Engine], redis: Redis
) -> None:
    closed = QueueSettings(capacity=0, mode="paused", opens_at=FAR)
    tickets = await pre_queue(replicas[0], Q, 50, closed)
    opened = replace(closed, opens_at=PAST)
    for _ in range(5):  # each replica ticks 5 times, all at once
        states = await asyncio.gather(*(tick(e, opened) for e in replicas))
        seeds = {st.order.seed for st in states if st.order is not None}
        assert len(seeds) == 1
    # one replica drew the order; every later tick reads the same one
    stored = await redis.hgetall(Q.keys.opening)
    assert set(stored) == {b"first", b"last", b"seed", b"at"}
    st = await tick(replicas[1], opened)
    assert sorted(st.position(t) for t in tickets) == list(range(1, 51))


async def test_opened_by_exactly_one_of_three_replicas(replicas: list[Engine]) -> None:
    closed = QueueSettings(capacity=0, mode="paused", opens_at=FAR)
    await pre_queue(replicas[0], Q, 10, closed)
    opened = replace(closed, opens_at=PAST)
    states = await asyncio.gather(*(tick(e, opened) for e in replicas for _ in range(3)))
    assert sum(st.opened for st in states) == 1


async def test_shuffled_first_then_fifo_in_admission_order(replicas: list[Engine]) -> None:
    """Admission follows the drawn order for the pre-queue, then ticket order for
    everyone who arrived after the opening."""
    e = replicas[0]
    closed = QueueSettings(capacity=1, opens_at=FAR)
    early = await pre_queue(e, Q, 8, closed)
    opened = replace(closed, opens_at=PAST)
    st = await tick(e, opened)
    drawn = sorted(early, key=st.line)
    late = []
    for i in range(4):
        admitted, t, _ = await e.join(Q, f"late{i}", opened)
        assert not admitted  # the pre-queue is ahead
        late.append(t)
    await e.heartbeat({Q: ([], late, opened)})
    assert all(st.line(t) == t and t > max(early) for t in late)

    admitted_order = []
    for _ in range(len(early) + len(late)):
        st = await tick(e, opened)
        (invited,) = await ticket_members(e.redis, Q.keys.invited)  # type: ignore[arg-type]
        assert st.line(invited) <= st.serving
        sid = f"v{early.index(invited)}" if invited in early else f"late{late.index(invited)}"
        assert await e.claim(Q, invited, sid, opened) is Claim.ADMITTED
        admitted_order.append(invited)
        await e.leave(Q, invited, sid, 0)
        # everyone still waiting keeps polling
        rest = [t for t in early + late if t not in admitted_order]
        if rest:
            await e.heartbeat({Q: ([], rest, opened)})
    assert admitted_order == drawn + late


async def test_nobody_admitted_before_the_opening(replicas: list[Engine], redis: Redis) -> None:
    """A real opening two seconds ahead (Redis' clock), with free capacity all along:
    no newcomer, invitation or second chance lets anyone in before it."""
    e = replicas[0]
    now = int((await redis.time())[0])
    s = QueueSettings(capacity=100, opens_at=now + 2)
    joined = await e.join_many(Q, ["a", "b", "c"], s)
    assert [a for a, *_ in joined] == [False, False, False]
    tickets = [t for _, t, *_ in joined]
    admitted_at = None
    while admitted_at is None:
        await e.heartbeat({Q: ([], tickets, s)})
        st = await tick(e, s)
        clock = await redis.time()
        if st.closed:
            assert st.serving == 0 and st.invited == 0 and st.active == 0
            assert await e.claim(Q, tickets[0], "a", s) is Claim.NOT_YET
            if len(tickets) == 3:
                admitted, t, _ = await e.join(Q, "d", s)
                assert not admitted
                tickets.append(t)
        elif st.invited:
            admitted_at = clock[0] + clock[1] / 1e6
        await asyncio.sleep(0.1)
    assert admitted_at >= now + 2
    # everyone who joined before the opening (d too) is invited at once
    assert st.invited == 4 and st.order is not None and (st.order.first, st.order.last) == (1, 4)


async def test_operator_schedules_and_cancels_an_opening(
    replicas: list[Engine], redis: Redis
) -> None:
    """The admin override (settings hash) wins over the configuration: a queue with
    no opening configured closes; setting 0 opens it again at once."""
    e = replicas[0]
    s = QueueSettings(capacity=5)
    await redis.hset(Q.keys.settings, "opens_at", FAR)
    st = await tick(e, s)
    assert st.closed and st.settings.opens_at == FAR
    tickets = await pre_queue(e, Q, 3, s)
    assert (await tick(e, s)).invited == 0
    await redis.hset(Q.keys.settings, "opens_at", 0)
    st = await tick(e, s)
    assert not st.closed and st.opened and st.invited == 3
    assert sorted(st.line(t) for t in tickets) == tickets


async def test_pre_queue_visitors_who_stopped_polling_are_skipped(replicas: list[Engine]) -> None:
    """Three of six stop polling before the opening (abandon_after 1 s here): the
    line skips their places and invites the other three, in the drawn order."""
    e = replicas[0]
    closed = QueueSettings(capacity=0, abandon_after=1, opens_at=FAR)
    tickets = await pre_queue(e, Q, 6, closed)
    await asyncio.sleep(1.2)
    staying = tickets[::2]
    await e.heartbeat({Q: ([], staying, closed)})
    st = await tick(e, replace(closed, opens_at=PAST))
    assert st.opened and st.skipped == 3 and st.invited == 3
    invited = sorted(await ticket_members(e.redis, Q.keys.invited))  # type: ignore[arg-type]
    assert invited == staying


async def test_a_second_closure_keeps_the_first_draw(replicas: list[Engine]) -> None:
    """Closed again while people of the first pre-queue still wait: their drawn order
    stays, and the new closure's arrivals queue in arrival order behind them."""
    e = replicas[0]
    closed = QueueSettings(capacity=0, mode="paused", opens_at=FAR)
    first_wave = await pre_queue(e, Q, 5, closed)
    st = await tick(e, replace(closed, opens_at=PAST))
    drawn = sorted(first_wave, key=st.line)
    joined = await e.join_many(Q, ["w0", "w1", "w2"], closed)  # closed again
    second_wave = [t for _, t, *_ in joined]
    await e.heartbeat({Q: ([], first_wave + second_wave, closed)})
    st = await tick(e, QueueSettings(capacity=0, opens_at=PAST))
    assert not st.opened and st.order is not None and st.order.last == 5
    invited = await ticket_members(e.redis, Q.keys.invited)  # type: ignore[arg-type]
    assert sorted(invited) == sorted(first_wave + second_wave)
    assert [st.line(t) for t in drawn] == [1, 2, 3, 4, 5]
    assert [st.line(t) for t in second_wave] == second_wave


# -- the per-address join budget ----------------------------------------------


async def test_join_budget_per_address(replicas: list[Engine], redis: Redis) -> None:
    e = replicas[0]
    s = QueueSettings(capacity=0, mode="queue-all", joins_per_address=3)
    sids = [f"s{i}" for i in range(7)]
    addrs = ["10.0.0.1"] * 5 + ["10.0.0.2"] * 2
    joined = await e.join_many(Q, sids, s, addrs)
    assert [t for _, t, *_ in joined] == [1, 2, 3, REFUSED, REFUSED, 4, 5]
    # refused joins took no ticket; the next one continues the numbering
    assert (await e.join(Q, "x", s, "10.0.0.3"))[:2] == (False, 6)
    assert (await e.join(Q, "y", s, "10.0.0.1"))[:2] == (False, REFUSED)
    # unknown address: no budget applies
    assert [t for _, t, _ in await e.join_many(Q, ["u1", "u2", "u3", "u4"], s)] == [7, 8, 9, 10]
    keys = [k.decode() async for k in redis.scan_iter("aq:{acme:sale}:addr:*")]
    assert sorted(k.rsplit(":", 1)[0] for k in keys) == [
        "aq:{acme:sale}:addr:10.0.0.1",
        "aq:{acme:sale}:addr:10.0.0.2",
        "aq:{acme:sale}:addr:10.0.0.3",
    ]
    ttls = [await redis.ttl(k) for k in keys]
    assert all(0 < ttl <= 120 for ttl in ttls)


async def test_join_budget_caps_the_places_an_address_holds(
    replicas: list[Engine], redis: Redis
) -> None:
    """The budget is also a cap on places held in line at once: a new minute gives an
    address new joins but no more places while it holds its budget; a place that
    leaves the line (left, invited, dropped) makes room for one more."""
    e = replicas[0]
    s = QueueSettings(capacity=3, mode="on", joins_per_address=2, opens_at=FAR)
    a, b = await e.join(Q, "a", s, "10.0.0.1"), await e.join(Q, "b", s, "10.0.0.1")
    assert (a.ticket, b.ticket) == (1, 2)

    async def next_minute() -> None:  # what the counters' expiry does a minute later
        async for k in redis.scan_iter("aq:{acme:sale}:addr:*"):
            await redis.delete(k)

    await next_minute()
    assert (await e.join(Q, "c", s, "10.0.0.1")).ticket == REFUSED
    assert (await e.join(Q, "d", s, "10.0.0.2")).ticket == 3  # another address: its own
    await e.leave(Q, a.ticket, "a", 0)
    assert (await e.join(Q, "e", s, "10.0.0.1")).ticket == 4  # room for one again
    assert (await e.join(Q, "f", s, "10.0.0.1")).ticket == REFUSED
    held = "aq:{acme:sale}:held:10.0.0.1"
    assert sorted(int(t) for t in await redis.smembers(held)) == [2, 4]
    assert 0 < await redis.ttl(held) <= PLACE_TTL
    # the opening: places invited or admitted no longer count as held
    opened = replace(s, opens_at=PAST)
    await e.heartbeat({Q: ([], [2, 3, 4], opened)})
    await tick(e, opened)
    await next_minute()
    assert await ticket_members(redis, Q.keys.invited) == [2, 3, 4]
    g, h = await e.join(Q, "g", opened, "10.0.0.1"), await e.join(Q, "h", opened, "10.0.0.1")
    assert (g.ticket, h.ticket) == (5, 6)


async def test_join_budget_is_per_queue_and_off_by_default(replicas: list[Engine]) -> None:
    e = replicas[0]
    s = QueueSettings(capacity=0, mode="queue-all", joins_per_address=1)
    other = QueueRef("acme", "other")
    assert (await e.join(Q, "a", s, "10.0.0.1"))[1] == 1
    assert (await e.join(Q, "b", s, "10.0.0.1"))[1] == REFUSED
    assert (await e.join(other, "c", s, "10.0.0.1"))[1] == 1  # another queue, its own budget
    unlimited = replace(s, joins_per_address=0)
    assert [t for _, t, _ in await e.join_many(Q, ["d", "e"], unlimited, ["10.0.0.1"] * 2)] == [
        2,
        3,
    ]


# -- through nginx: two sidecar processes, real nginx and Redis ------------------

BUDGET = 20  # joins per address per minute on the stack below


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = make_stack(
        tmp_path_factory.mktemp("scheduled"),
        replicas=1,
        ANTEROOM_CAPACITY="5",
        ANTEROOM_SESSION_TTL="5",
        ANTEROOM_JOINS_PER_ADDRESS=str(BUDGET),
        ANTEROOM_LOG_LEVEL="info",
    )
    yield s
    s.stop()


async def admin_patch(http: aiohttp.ClientSession, site: Stack, queue: str, **changes: Any) -> Any:
    async with http.patch(
        f"{site.admin_url}/api/queues/acme/{queue}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        json={"create": True, **changes},  # some are set before the first visitor
    ) as r:
        assert r.status in (200, 201), await r.text()
        return await r.json()


@pytest.mark.integration
async def test_scheduled_sale_through_nginx(site: Stack, http: aiohttp.ClientSession) -> None:
    """An operator schedules the opening 4 s ahead (admin API, ISO-8601). Visitors
    arriving before it wait with a countdown and no place; nobody passes before
    it; afterwards all are admitted, and a later arrival comes after all of them."""
    queue = "sale"
    opens_at = int(time.time()) + 4
    when = datetime.fromtimestamp(opens_at, UTC).isoformat().replace("+00:00", "Z")
    view = await admin_patch(http, site, queue, opens_at=when)
    assert view["settings"]["opens_at"] == opens_at
    await asyncio.sleep(0.3)  # every process has ticked since (refresh: 50 ms here)

    early = [Visitor(http, site.url) for _ in range(8)]
    for v in early:
        r = await v.get(f"/q/{queue}/")
        assert r.status == 302 and v.cookie, r.status  # capacity is free, yet they wait
    for v in early:
        body = await v.status()
        assert body["state"] == "waiting" and body["position"] is None, body
        assert body["opens_at"] == opens_at and 0 < body["opens_in"] <= 4
        assert body["notice"] == "opens_later"

    # just after the opening: a newcomer queues behind the whole pre-queue
    await asyncio.sleep(opens_at + 0.3 - time.time())
    late = Visitor(http, site.url)
    assert (await late.get(f"/q/{queue}/")).status == 302
    body = await late.status()
    assert body["position"] is not None and body["position"] > 3, body  # 8 ahead, 5 invited

    admitted_at: dict[int, float] = {}
    deadline = time.time() + 40
    while len(early) not in admitted_at and time.time() < deadline:
        for i, v in enumerate([*early, late]):
            if i in admitted_at:
                continue
            body = await v.status()
            if body["state"] == "admitted":
                admitted_at[i] = time.time()
                assert (await v.get(f"/q/{queue}/")).status == 200
                if v is not late:  # the late one keeps its slot: see below
                    await v.post(f"/_anteroom/leave?queue={queue}")
                else:
                    break
            else:
                assert body["position"] is not None and body.get("notice") is None
        await asyncio.sleep(0.2)
    assert len(early) in admitted_at, "the late visitor was admitted"
    assert min(admitted_at.values()) >= opens_at

    # Everyone from the pre-queue still out was invited before the late visitor (their
    # slots are reserved): they get in now, though nobody leaves any more.
    async def all_early_admitted() -> bool:
        for i, v in enumerate(early):
            if i not in admitted_at and (await v.status())["state"] == "admitted":
                admitted_at[i] = time.time()
        return len(admitted_at) == len(early) + 1

    await eventually(all_early_admitted, within=2.0, interval=0.1)
    log = "".join(p.read_text() for p in site.workdir.glob("sidecar*.log"))
    assert log.count("pre-queue shuffled") == 1, "exactly one replica drew the order"


@pytest.mark.integration
async def test_minting_client_gets_its_budget_while_real_visitors_wait(
    site: Stack, http: aiohttp.ClientSession
) -> None:
    """One client (127.0.0.1) sends 10,000 cookieless requests, 32 at a time, while
    50 real visitors from 127.0.0.2 .. 127.0.0.51 join and wait. The client gets at
    most BUDGET places per minute; each real visitor is at most BUDGET * minutes + 49
    from the front when joining, and all of them are admitted within 40 s."""
    queue = "mint"
    path = f"/q/{queue}/"
    places, refused, statuses = 0, 0, Counter[int]()
    minutes: set[int] = set()
    sent = 0

    async def mint() -> None:
        nonlocal places, refused, sent
        while sent < 10_000:
            sent += 1
            minutes.add(int(time.time()) // 60)
            async with http.get(site.url + path, allow_redirects=False) as r:
                statuses[r.status] += 1
                if "Set-Cookie" in r.headers:
                    places += 1
                elif r.status == 302:
                    refused += 1
                    assert r.headers.get("Retry-After") == "60"

    async def real(n: int) -> tuple[int, float]:
        async with client_from(f"127.0.0.{n}") as own:
            v = Visitor(own, site.url)
            await asyncio.sleep(n * 0.05)  # arriving among the bot's requests
            started = time.time()
            r = await v.get(path)
            assert r.status in (200, 302) and v.cookie, (r.status, r.headers)
            first = 0
            if r.status == 302:
                body = await v.status()
                first = body["position"]
                while body["state"] != "admitted":
                    assert time.time() - started < 40, body
                    await asyncio.sleep(0.2)
                    body = await v.status()
            await v.post(f"/_anteroom/leave?queue={queue}")
            return first, time.time() - started

    bots = [asyncio.create_task(mint()) for _ in range(32)]
    results = await asyncio.gather(*(real(n) for n in range(2, 52)))
    await asyncio.gather(*bots)
    assert sent >= 10_000 and statuses[302] + statuses[200] == sum(statuses.values())
    assert places <= BUDGET * len(minutes), (places, minutes)
    assert refused >= 10_000 - BUDGET * len(minutes)
    positions = [p for p, _ in results]
    waits = [w for _, w in results]
    assert max(positions) <= BUDGET * len(minutes) + 49, positions
    assert max(waits) < 40
    print(
        f"\nminting client: {sent} requests, {places} places, {refused} refused; "
        f"real visitors: worst first position {max(positions)}, "
        f"worst wait {max(waits):.1f} s, mean {sum(waits) / len(waits):.1f} s"
    )
