"""The wait a waiting page and the control room show, and where "Leave the line" goes:
decision tables on the estimate, and the public endpoints in process on the real Redis."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from redis.asyncio import Redis

from sidecar.config import QueueSettings
from sidecar.queue import QueueState
from sidecar.queue.estimate import newcomer_wait, wait, walks_in
from tests.conftest import AppClient, eventually
from tests.test_gate import auth, cookie_of
from tests.test_status import SITE, status

EMPTY = QueueState(
    tickets=0,
    serving=0,
    waiting=0,
    active=0,
    invited=0,
    admitted_last_minute=0,
    redis_time_ms=0,
    settings=QueueSettings(capacity=10, session_ttl=600),
)


def state(settings: dict[str, Any] | None = None, **figures: Any) -> QueueState:
    return replace(EMPTY, settings=replace(EMPTY.settings, **(settings or {})), **figures)


@pytest.mark.parametrize(
    ("st", "expected"),
    [
        (state(), 0.0),  # nobody in line, room: walks in
        (state(active=9, invited=0), 0.0),
        (state(settings={"capacity": 0}, active=500), 0.0),  # no limit
        # full house, nobody let in for a minute: half a session for the first turn
        (state(active=10), 300.0),
        (state(active=6, invited=4), 300.0),
        # someone in line already: not the newcomer's turn, though there is room
        (state(active=3, waiting=1), 300.0),
        (state(active=3, recalled=1), 300.0),
        # the rate limit used up: the newcomer waits for the next minute's rate
        (state(settings={"admit_per_minute": 60}, admitted_last_minute=60), 1.0),
        # measured admissions: from them, as before
        (state(active=10, waiting=29, admitted_last_minute=60), 30.0),
        # everyone new waits in queue-all, even with room
        (state(settings={"mode": "queue-all"}), 300.0),
        (state(settings={"mode": "paused"}), None),
        (state(settings={"mode": "off"}), None),
        (state(closed=True), None),  # before a scheduled opening: the countdown says it
    ],
)
def test_wait_for_a_newcomer(st: QueueState, expected: float | None) -> None:
    assert newcomer_wait(st) == expected
    assert walks_in(st) == (expected == 0.0)


def test_the_guess_from_capacity_is_a_wider_range_by_turns() -> None:
    full = state(active=10)
    assert wait(1, full) == (300.0, [150, 600])  # "About 3-10 minutes"
    assert wait(10, full) == (300.0, [150, 600])  # the same turn of the house
    assert wait(11, full) == (900.0, [450, 1800])  # the next one
    # a rate limit slower than the house: the slower one bounds the wait
    slow = state(settings={"admit_per_minute": 2}, active=10)
    assert wait(10, slow) == (300.0, [150, 600])
    slower = state(settings={"admit_per_minute": 1}, active=10)
    assert wait(10, slower) == (600.0, [300, 1200])
    assert wait(5, state(settings={"capacity": 0})) == (None, None)  # nothing bounds it


async def test_nobody_admitted_for_a_minute_the_page_still_gets_a_range(
    app_client, redis: Redis
) -> None:
    client: AppClient = await app_client(ANTEROOM_SESSION_TTL="600", ANTEROOM_SESSION_MAX="7200")
    cookie_of(await auth(client, "still"))  # the one slot, taken
    waiters = [cookie_of(await auth(client, "still")) for _ in range(2)]
    body = await status(client, waiters[1])
    assert body["position"] == 2 and body["eta_range"] is not None  # from the walk-in's rate
    await redis.delete("aq:{shop:still}:rate")  # a minute later: no admission in the last one

    async def guessed() -> dict[str, Any] | None:
        body = await status(client, waiters[1])
        return body if body["eta_seconds"] == 900.0 else None

    body = await eventually(guessed)  # position 2, capacity 1: the house turns twice
    assert body["eta_range"] == [450, 1800]
    paused = await status(client, "anteroom_paused=x")
    assert paused["state"] == "none"


async def test_leave_from_the_waiting_page_goes_where_the_operator_chose(
    app_client, redis: Redis
) -> None:
    client: AppClient = await app_client(ANTEROOM_LEAVE_TO="/thanks")
    cookie_of(await auth(client, "lv"))  # the one slot, taken

    async def leave(query: str) -> str:
        waiter = cookie_of(await auth(client, "lv"))
        r = await client.post(
            f"/_anteroom/leave{query}",
            headers={**SITE, "Cookie": waiter},
            allow_redirects=False,
        )
        assert r.status == 303 and "Max-Age=0" in r.headers["Set-Cookie"]
        return r.headers["Location"]

    assert await leave("?via=page&queue=lv") == "/thanks"  # configured
    assert await leave("?via=page") == "/thanks"  # no JavaScript: the one place held
    assert await leave("?via=page&return_to=/cart") == "/cart"  # an explicit one wins
    await redis.hset("aq:{shop:lv}:settings", "leave_to", "/shop/closed")  # an operator's
    assert await leave("?via=page&queue=lv") == "/shop/closed"
    # a value the configuration would refuse is never followed
    await redis.hset("aq:{shop:lv}:settings", "leave_to", "//evil.example/")
    assert await leave("?via=page&queue=lv") == "/thanks"
    other: AppClient = await app_client()
    waiter = cookie_of(await auth(other, "lv2"))
    r = await other.post(
        "/_anteroom/leave?via=page", headers={**SITE, "Cookie": waiter}, allow_redirects=False
    )
    assert (r.status, r.headers["Location"]) == (303, "/")  # the default
