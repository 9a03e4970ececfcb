"""Locust suite: visitors arrive at the queued shop, wait their turn on the
waiting page's status endpoint, shop for a while and leave (or walk away).

Invariants checked while it runs (the run fails if any breaks):
- no 5xx from nginx or the sidecar;
- active + invited sessions never exceed ANTEROOM_CAPACITY (sampled in Redis);
- nobody is let in ahead of a ticket still waiting (FIFO).

Run it against a local stack with ``make loadtest`` (``python -m loadtest.run``);
``LOADTEST_SHAPE=flash`` (``make loadtest SHAPE=flash``) replaces the steady arrival
with a flash crowd: LOADTEST_USERS visitors within LOADTEST_RAMP seconds, then a
plateau until LOADTEST_SECONDS.
"""

from __future__ import annotations

import os
import random
import time

import gevent
from locust import HttpUser, LoadTestShape, between, events, task
from locust.env import Environment
from redis import Redis

QUEUE_PATH = os.environ.get("LOADTEST_PATH", "/shop/")
CAPACITY = int(os.environ.get("ANTEROOM_CAPACITY", "0"))
REDIS_URL = os.environ.get("LOADTEST_REDIS_URL", "")
KEYS_TAG = os.environ.get("LOADTEST_QUEUE_TAG", "default:shop")
QUEUE = KEYS_TAG.split(":", 1)[1]
COOKIE = f"anteroom_{QUEUE}"  # one cookie per queue
POLL_SCALE = float(os.environ.get("LOADTEST_POLL_SCALE", "0.2"))  # polls faster than browsers
SHAPE = os.environ.get("LOADTEST_SHAPE", "steady")

violations: list[str] = []
peak = {"occupied": 0}
spawned: dict[str, float] = {}  # when the test started, when every user was running


def ticket_of(cookie: str | None) -> int | None:
    try:
        return int((cookie or "").split("|")[4])
    except (IndexError, ValueError):
        return None


class Visitor(HttpUser):
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        self.admitted = False

    @task
    def visit(self) -> None:
        if not self.admitted:
            self.arrive()
            return
        # shopping: a few pages, then done (leave) or walk away (idle out)
        with self.client.get(
            f"{QUEUE_PATH}item/{random.randint(1, 50)}",
            allow_redirects=False,
            name="shop page",
            catch_response=True,
        ) as r:
            if r.status_code == 302:
                r.success()  # session ended (idled out): back in line next time
                self.admitted = False
            elif r.status_code != 200:
                r.failure(f"admitted page answered {r.status_code}")
        if random.random() < 0.15:
            self.client.post(f"/_anteroom/leave?queue={QUEUE}", name="leave")
            self.admitted = False
            self.client.cookies.clear()
        elif random.random() < 0.05:
            self.admitted = False
            self.client.cookies.clear()  # walks away: the slot idles out

    def arrive(self) -> None:
        r = self.client.get(QUEUE_PATH, allow_redirects=False, name="gated arrival")
        if r.status_code == 200:
            self.admitted = True
            return
        if r.status_code != 302:
            return  # counted as a failure by locust if 5xx
        ticket = ticket_of(self.client.cookies.get(COOKIE))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            s = self.client.get(f"/_anteroom/status?queue={QUEUE}", name="status poll")
            if s.status_code != 200:
                gevent.sleep(1)
                continue
            body = s.json()
            if body["state"] == "admitted":
                check_fifo(ticket)
                page = self.client.get(body["redirect"], allow_redirects=False, name="after wait")
                self.admitted = page.status_code == 200
                return
            if body["state"] == "none":
                return
            gevent.sleep(float(body.get("poll_after") or 3) * POLL_SCALE)


def check_fifo(ticket: int | None) -> None:
    """When a visitor is let in, nobody with an earlier ticket who showed up lately
    may still be in line (invited does not count: they were let in at the same
    time; never-seen places, with negative scores, are skipped by design)."""
    if not REDIS_URL or ticket is None:
        return
    redis = _redis()
    key = f"aq:{{{KEYS_TAG}}}:waiting"
    # scores are "last seen" times in Redis' clock (ms); this machine's is the same
    recent = time.time() * 1000 - 30_000
    present: list[bytes] = redis.zrangebyscore(key, recent, "+inf")  # type: ignore[assignment]
    earlier = [t for t in map(int, present) if t < ticket]
    if earlier:
        violations.append(f"ticket {ticket} admitted while {min(earlier)} waits")


_client: list[Redis] = []


def _redis() -> Redis:
    if not _client:
        _client.append(Redis.from_url(REDIS_URL))
    return _client[0]


def watch_capacity() -> None:
    while True:
        # one MULTI/EXEC: a session moving from invited to active between two
        # separate reads would be counted twice
        with _redis().pipeline(transaction=True) as pipe:
            pipe.zcard(f"aq:{{{KEYS_TAG}}}:active")
            pipe.zcard(f"aq:{{{KEYS_TAG}}}:invited")
            active, invited = pipe.execute()
        occupied = int(active) + int(invited)
        peak["occupied"] = max(peak["occupied"], occupied)
        if CAPACITY and occupied > CAPACITY:
            violations.append(f"{occupied} sessions for capacity {CAPACITY}")
        gevent.sleep(0.2)


if SHAPE == "flash":

    class FlashCrowd(LoadTestShape):
        """Everyone at once (the launch second), then a plateau: the same crowd
        waits, shops and comes back until the time is up."""

        users = int(os.environ.get("LOADTEST_USERS", "2000"))
        ramp = float(os.environ.get("LOADTEST_RAMP", "4"))
        seconds = float(os.environ.get("LOADTEST_SECONDS", "45"))

        def tick(self) -> tuple[int, float] | None:
            if self.get_run_time() >= self.seconds:  # type: ignore[no-untyped-call]
                return None  # the run ends by itself
            return self.users, self.users / self.ramp


@events.test_start.add_listener  # type: ignore[untyped-decorator]
def on_test_start(environment: Environment, **_: object) -> None:
    spawned["start"] = time.monotonic()
    if REDIS_URL:
        gevent.spawn(watch_capacity)


@events.spawning_complete.add_listener  # type: ignore[untyped-decorator]
def on_spawned(user_count: int, **_: object) -> None:
    if "all" not in spawned and "start" in spawned:
        spawned["all"] = time.monotonic() - spawned["start"]
        spawned["users"] = user_count


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def on_quitting(environment: Environment, **_: object) -> None:
    stats = environment.stats.total
    server_errors = sum(n for (_, _, err), n in _errors(environment).items() if "50" in err)
    print(
        f"loadtest: {stats.num_requests} requests, {stats.num_failures} failures, "
        f"peak occupied {peak['occupied']} (capacity {CAPACITY or 'unlimited'}), "
        f"{len(violations)} invariant violations"
    )
    if "all" in spawned:
        users, after = spawned["users"], spawned["all"]
        print(f"loadtest: {users:.0f} users running {after:.1f} s after the start")
    for v in violations[:10]:
        print(f"loadtest: VIOLATION {v}")
    if violations or stats.num_failures or server_errors:
        environment.process_exit_code = 1


def _errors(environment: Environment) -> dict[tuple[str, str, str], int]:
    return {
        (e.method or "", e.name or "", str(e.error)): e.occurrences
        for e in environment.stats.errors.values()
    }
