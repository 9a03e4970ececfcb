"""Sidecar lifecycle for orchestrators: liveness, readiness and a SIGTERM drain."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from devstack.stack import Stack
from sidecar.queue.engine import Engine
from sidecar.queue.keys import queue_keys
from sidecar.queue.refresher import Refresher
from sidecar.web.health import Health
from tests.conftest import eventually, make_stack
from tests.visitors import COOKIE, Visitor

pytestmark = pytest.mark.integration

SHUTDOWN_TIMEOUT = 4.0
# Heartbeats are only written by the periodic flush (every 30 s here) or by the
# drain: a session's expiry moving forward within the test proves the drain wrote it.
SLOW_FLUSH: dict[str, Any] = {
    "ANTEROOM_HEARTBEAT_INTERVAL": "30",
    "ANTEROOM_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT),
    "ANTEROOM_CAPACITY": "5",
    "ANTEROOM_SESSION_TTL": "60",
}


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, object]]:
    async with http.get(url) as r:
        return r.status, await r.json()


def sidecar_url(stack: Stack, port: int | None = None) -> str:
    return f"http://127.0.0.1:{port or stack.sidecar_port}"


async def ask_gate(http: aiohttp.ClientSession, stack: Stack, queue: str, cookie: str | None):
    """One auth request straight to the first sidecar, as nginx would send it."""
    headers = {"Host": "127.0.0.1", "X-Anteroom-Queue": queue, "X-Original-URI": f"/q/{queue}/"}
    if cookie:
        headers["Cookie"] = f"{COOKIE}_{queue}={cookie}"
    async with http.get(sidecar_url(stack) + "/_anteroom/auth", headers=headers) as r:
        return r.status, r.headers.get("Set-Cookie", "")


async def test_liveness_and_readiness_follow_redis(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    stack = make_stack(tmp_path / "ready")
    try:
        base = sidecar_url(stack)
        assert await get_json(http, base + "/livez") == (200, {"alive": True})
        status, body = await get_json(http, base + "/readyz")
        assert (status, body) == (200, {"ready": True, "scripts": True, "redis": True})
        assert (await get_json(http, base + "/healthz"))[0] == 200

        stack.stop_one("redis")
        status, body = await get_json(http, base + "/readyz")
        assert status == 503 and body["redis"] is False
        assert (await get_json(http, base + "/livez"))[0] == 200  # alive: do not restart it

        # a sidecar started while Redis is away is alive but not ready
        stack.stop_one("sidecar")
        stack.start_sidecar()
        status, body = await get_json(http, base + "/readyz")
        assert status == 503 and body["scripts"] is False
        assert (await get_json(http, base + "/livez"))[0] == 200

        stack.start_redis()

        async def ready() -> bool:
            return (await get_json(http, base + "/readyz"))[0] == 200

        await eventually(ready, within=15)
    finally:
        stack.stop()


async def test_sigterm_drains_in_flight_requests_and_writes_heartbeats(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    queue = "drain"
    stack = make_stack(tmp_path / "drain", replicas=1, **SLOW_FLUSH)
    redis = Redis.from_url(stack.redis_url)
    try:
        keys = queue_keys("acme", queue)
        admitted = [Visitor(http, stack.url) for _ in range(3)]
        for v in admitted:
            assert (await v.get(f"/q/{queue}/")).status == 200
        sids = [(v.cookie or "").split("|")[5] for v in admitted]
        before = [await redis.zscore(keys.active, sid) for sid in sids]
        assert all(before)
        await asyncio.sleep(1.2)
        for v in admitted:  # used again: a heartbeat is now buffered in this sidecar only
            assert (await ask_gate(http, stack, queue, v.cookie))[0] == 204

        # a stream of visitors through nginx the whole time
        stop_stream = asyncio.Event()
        answers: list[int] = []

        async def stream() -> None:
            while not stop_stream.is_set():
                replies = await asyncio.gather(
                    admitted[0].get(f"/q/{queue}/"), Visitor(http, stack.url).get(f"/q/{queue}/")
                )
                answers.extend(r.status for r in replies)
                await asyncio.sleep(0.02)

        streaming = asyncio.create_task(stream())
        await asyncio.sleep(0.3)
        # joins held inside the sidecar by a paused Redis: in flight when SIGTERM lands
        await redis.client_pause(1500, all=False)  # writes (scripts) wait 1.5 s
        held = [asyncio.create_task(ask_gate(http, stack, queue, None)) for _ in range(8)]
        await asyncio.sleep(0.3)
        proc = stack.procs["sidecar"]
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        in_flight = await asyncio.gather(*held)
        await asyncio.to_thread(proc.wait, SHUTDOWN_TIMEOUT + 5)
        took = time.monotonic() - sent
        await asyncio.sleep(0.5)
        stop_stream.set()
        await streaming

        assert proc.returncode == 0, f"exit status {proc.returncode}"
        assert took < SHUTDOWN_TIMEOUT + 3, took
        # every request held inside the sidecar got its real answer: a place in line
        # (capacity 5 is taken by the three admitted and the stream's first newcomers)
        assert [s for s, _ in in_flight] == [401] * 8, in_flight
        assert all(f"{COOKIE}_" in c for _, c in in_flight)
        # the other replica took the stream over: nobody saw an error
        assert answers and set(answers) <= {200, 302}, sorted(set(answers))
        after = [await redis.zscore(keys.active, sid) for sid in sids]
        assert all(a and b and a > b for a, b in zip(after, before, strict=True)), (before, after)
        log = (stack.workdir / "sidecar.log").read_text()
        assert '"draining"' in log and '"stopped"' in log
    finally:
        stack.procs.pop("sidecar", None)
        await redis.aclose()
        stack.stop()


async def test_sigterm_to_the_parent_drains_every_worker(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    stack = make_stack(tmp_path / "workers", ANTEROOM_WORKERS="2", **SLOW_FLUSH)
    redis = Redis.from_url(stack.redis_url)
    try:
        proc = stack.procs["sidecar"]
        await redis.client_pause(1500, all=False)  # writes (scripts) wait 1.5 s
        # fresh connections: the kernel spreads them over both processes
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            held = [asyncio.create_task(ask_gate(s, stack, "workers", None)) for _ in range(12)]
            await asyncio.sleep(0.3)
            sent = time.monotonic()
            os.kill(proc.pid, signal.SIGTERM)  # the parent only, as an orchestrator does
            in_flight = await asyncio.gather(*held)
        proc.wait(timeout=SHUTDOWN_TIMEOUT + 10)
        took = time.monotonic() - sent
        # each held request got its real answer: a place (admitted or in line) and a cookie
        assert {s for s, _ in in_flight} <= {204, 401} and len(in_flight) == 12, in_flight
        assert all(f"{COOKIE}_" in c for _, c in in_flight)
        assert took < SHUTDOWN_TIMEOUT + 3, took
        assert proc.returncode == 0
        # no worker left behind on the port
        log = (stack.workdir / "sidecar.log").read_text()
        assert log.count('"stopped"') == 2, log[-2000:]
    finally:
        await redis.aclose()
        stack.stop()


async def test_an_evicting_redis_is_named_at_start(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    engine = Engine(redis)
    health = Health(redis, engine, Refresher(engine, 1.0, 1.0))
    assert await health.check_eviction_policy() == "noeviction"
    assert "maxmemory-policy" not in caplog.text
    await redis.config_set("maxmemory-policy", "allkeys-lru")
    try:
        await health.load_scripts()
        assert health.scripts_loaded
        assert "set maxmemory-policy noeviction" in caplog.text
    finally:
        await redis.config_set("maxmemory-policy", "noeviction")
