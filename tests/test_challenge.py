"""Proof of work before a place, and the line that never moves for flagged clients,
in process: ``create_app(config)`` on the real Redis fixture, asked as nginx asks."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from sidecar.config import ConfigError, QueueSettings, load, queue_overrides
from sidecar.web.challenge import PARTS, Challenges, Refused, part_ok, solve
from tests.conftest import FAST, SECRET, AppClient
from tests.test_gate import auth, cookie_of, tickets

HOST = {"Host": "shop.test"}
EASY = {"ANTEROOM_CHALLENGE": "pow", "ANTEROOM_CHALLENGE_DIFFICULTY": "8"}


async def challenge_for(client: AppClient, queue: str) -> dict[str, Any]:
    r = await client.get("/_anteroom/status", params={"queue": queue}, headers=HOST)
    body: dict[str, Any] = await r.json()
    assert body["state"] == "challenge", body
    c: dict[str, Any] = body["challenge"]
    return c


async def join(
    client: AppClient,
    queue: str,
    c: dict[str, Any] | None,
    solution: str = "",
    address: str = "192.0.2.1",
) -> Any:
    params = {"queue": queue}
    if c is not None:
        params |= {"challenge": c["challenge"], "solution": solution}
    return await client.post(
        "/_anteroom/join", params=params, headers={**HOST, "X-Real-IP": address}
    )


def solved(c: dict[str, Any]) -> str:
    return ",".join(map(str, solve(c["seed"], c["bits"], c["parts"])))


async def test_a_newcomer_gets_no_place_until_the_challenge_is_solved(
    app_client, redis: Redis
) -> None:
    client = await app_client(**EASY)
    first = await auth(client, "q1")
    # capacity is free, yet no place: the page must solve first (and no cookie)
    assert first.status == 401
    assert first.headers["X-Anteroom-Location"].endswith("#challenge")
    assert "Set-Cookie" not in first.headers
    assert await tickets(redis, "q1") == 0

    c = await challenge_for(client, "q1")
    assert c["parts"] == PARTS and c["bits"] == 8 - 4 and 0 < c["expires_in"] <= 120
    unsolved = await join(client, "q1", None)
    assert unsolved.status == 403 and "challenge" in await unsolved.json()
    wrong = await join(client, "q1", c, ",".join(["0"] * PARTS))
    # a counter that happens to solve one part is possible; all sixteen is not
    if not all(part_ok(c["seed"], i, "0", c["bits"]) for i in range(PARTS)):
        assert wrong.status == 403 and (await wrong.json())["error"] == "wrong solution"
    assert await tickets(redis, "q1") == 0

    ok = await join(client, "q1", c, solved(c))
    assert ok.status == 200
    body = await ok.json()
    assert body["state"] == "admitted" and body["token"]
    admitted = cookie_of(ok)
    assert (await auth(client, "q1", Cookie=admitted)).status == 204
    assert await tickets(redis, "q1") == 1


async def test_a_solution_is_accepted_once_across_replicas(app_client, redis: Redis) -> None:
    """Two sidecar processes (apps) on one Redis: the same solved challenge sent
    to both at once, and again, gives exactly one place."""
    a = await app_client(**EASY, ANTEROOM_CAPACITY="0")
    b = await app_client(**EASY, ANTEROOM_CAPACITY="0")
    for x in (a, b):  # nginx sent a newcomer to each: both know the queue
        assert (await auth(x, "q2")).status == 401
    c = await challenge_for(a, "q2")
    answer = solved(c)
    replies = await asyncio.gather(*(join(x, "q2", c, answer) for x in (a, b, a, b)))
    assert sorted(r.status for r in replies) == [200, 403, 403, 403]
    errors = [(await r.json())["error"] for r in replies if r.status == 403]
    assert errors == ["challenge already used"] * 3
    assert await tickets(redis, "q2") == 1


async def test_forged_expired_other_queue_and_easier_challenges_are_refused() -> None:
    ours, theirs = Challenges((SECRET.encode(),)), Challenges((b"another-secret-0123456789",))
    now = int(time.time())
    c = ours.issue("shop", "q1", 8, now)
    answer = ",".join(map(str, solve(c.seed, c.bits)))
    raw = ours.dumps(c)
    assert ours.verify(raw, answer, "shop", "q1", 8, now) == c

    def refused(
        raw: str, solution: str = answer, queue: str = "q1", d: int = 8, at: int = now
    ) -> str:
        with pytest.raises(Refused) as e:
            ours.verify(raw, solution, "shop", queue, d, at)
        return str(e.value)

    assert refused(theirs.dumps(c)) == "challenge not issued here"
    assert refused(raw.replace(".8.", ".4.", 1)) == "challenge not issued here"
    assert refused(raw, queue="q9") == "challenge of another queue"
    assert refused(raw, at=c.exp) == "challenge expired"
    assert refused(raw, d=12) == "challenge easier than the queue asks now"
    assert refused(raw, "1,2,3").startswith("solution:")
    assert refused(raw, answer + "0" * 20).startswith("solution:")
    for bad in ("", "x" * 400, "1.a.b", "é" * 10, raw + ".x"):
        assert refused(bad) in ("malformed challenge", "challenge not issued here")


def test_challenge_settings_are_checked_by_the_one_validator(tmp_path) -> None:
    env = {**FAST, "ANTEROOM_ADMIN_LISTEN": "off"}
    s = load({**env, "ANTEROOM_CHALLENGE": "pow", "ANTEROOM_FLAGGED": "infinite"}).tenants[0]
    assert (s.queue_defaults.challenge, s.queue_defaults.flagged) == ("pow", "infinite")
    assert s.queue_defaults.challenge_difficulty == 21
    for var, value in (
        ("ANTEROOM_CHALLENGE", "captcha"),
        ("ANTEROOM_CHALLENGE_DIFFICULTY", "40"),
        ("ANTEROOM_CHALLENGE_DIFFICULTY", "easy"),
        ("ANTEROOM_FLAGGED", "ban"),
    ):
        with pytest.raises(ConfigError, match=var):
            load({**env, var: value})
    toml = tmp_path / "a.toml"
    toml.write_text('[tenants.t]\nhosts=["*"]\n[tenants.t.queues.q]\nchallenge_difficulty = 7\n')
    with pytest.raises(ConfigError, match=r"tenants.t.queues.q.challenge_difficulty"):
        load({**env, "ANTEROOM_CONFIG": str(toml)})
    # an operator override too, by the same rules
    assert queue_overrides(
        {"challenge": "pow", "challenge_difficulty": "12", "flagged": "infinite"}, QueueSettings()
    ) == {"challenge": "pow", "challenge_difficulty": 12, "flagged": "infinite"}
    for key, bad in (("challenge", "captcha"), ("challenge_difficulty", 33), ("flagged", "ban")):
        with pytest.raises(ConfigError, match=key):
            queue_overrides({key: bad}, QueueSettings())


async def test_over_the_budget_with_flagged_infinite_a_normal_page_that_never_moves(
    app_client, redis: Redis
) -> None:
    client = await app_client(ANTEROOM_FLAGGED="infinite", ANTEROOM_MODE="queue-all")
    ip = {"X-Real-IP": "198.51.100.7"}
    first = await auth(client, "budget", **ip)  # joins_per_address = 1 in APP_TOML
    assert first.status == 401 and "|w|" in cookie_of(first)
    before = await tickets(redis, "budget")
    over = await auth(client, "budget", **ip)
    # looks like any waiter: the waiting page, a cookie, no Retry-After of 60
    assert over.status == 401 and over.headers["Retry-After"] == "5"
    flagged = cookie_of(over)
    assert "|f|" in flagged
    assert await tickets(redis, "budget") == before  # no place taken

    calls = await redis.info("commandstats")
    polls = []
    for _ in range(5):
        r = await client.get(
            "/_anteroom/status", params={"queue": "budget"}, headers={**HOST, "Cookie": flagged}
        )
        polls.append(await r.json())
        again = await auth(client, "budget", Cookie=flagged, **ip)
        assert again.status == 401 and "Set-Cookie" not in again.headers
    after = await redis.info("commandstats")
    # the refresher ticks meanwhile; the polls and gated requests add nothing
    assert after.get("cmdstat_set", {}).get("calls", 0) == calls.get("cmdstat_set", {}).get(
        "calls", 0
    )
    assert await tickets(redis, "budget") == before
    for body in polls:
        assert body["state"] == "waiting" and body["position"] >= 3 and body["eta_seconds"] > 0
        assert set(body) >= {"ticket", "ahead", "eta_range", "poll_after", "in_line"}
    # leaving costs nothing either, and the cookie goes
    left = await client.post("/_anteroom/leave", headers={**HOST, "Cookie": flagged})
    assert left.status == 200


async def test_flagged_refuse_keeps_todays_answer(app_client) -> None:
    client = await app_client(ANTEROOM_MODE="queue-all")
    ip = {"X-Real-IP": "198.51.100.8"}
    await auth(client, "budget", **ip)
    over = await auth(client, "budget", **ip)
    assert over.status == 401 and over.headers["Retry-After"] == "60"
    assert "Set-Cookie" not in over.headers
