"""Fixtures: a real redis-server, and whole stacks (nginx + sidecar + origin + Redis)
on free loopback ports, built with the same code as ``make demo``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from devstack.stack import S3Server, Stack, free_port
from sidecar.config import load
from sidecar.queue.engine import Engine
from sidecar.web.app import create_app
from tests.visitors import Visitor

SECRET = "test-secret-0123456789abcdef"
ADMIN_TOKEN = "admin-token-0123456789abcdef"

# Test queues are named by the URL, so each test gets a fresh queue on one stack.
QUEUE_LOCATIONS = """
        location ~ ^/q/(?<test_queue>[a-z0-9-]+)/ {
            set $anteroom_queue $test_queue;
            include anteroom/gate.conf;
            proxy_pass http://origin;
        }
"""

SITE_TOML = """
[tenants.acme]
hosts = ["127.0.0.1"]
title = "Acme Tickets"

[tenants.beta]
hosts = ["localhost"]
title = "Beta Billets"
language = "fr"
"""

# Short times so expiry is observable in a test; the refresher runs fast too.
FAST = {
    "ANTEROOM_SECRETS": SECRET,
    "ANTEROOM_ADMIN_TOKEN": f"ops:{ADMIN_TOKEN}",
    "ANTEROOM_DEMO": "0",
    "ANTEROOM_COOKIE_SECURE": "0",
    "ANTEROOM_CAPACITY": "2",
    "ANTEROOM_SESSION_TTL": "3",
    "ANTEROOM_GRACE": "3",
    "ANTEROOM_ABANDON_AFTER": "90",
    "ANTEROOM_REFRESH_INTERVAL": "0.05",
    "ANTEROOM_HEARTBEAT_INTERVAL": "0.2",
    "ANTEROOM_LOG_LEVEL": "debug",
}


def make_stack(
    workdir: Path,
    replicas: int = 0,
    redis_cluster: bool = False,
    cluster_replicas: int = 0,
    redis_aof: bool = False,
    fast_pass: bool = False,
    extra_http: str = "",
    access_log: bool = False,
    site_toml: str = SITE_TOML,
    extra_locations: str = "",
    s3: S3Server | None = None,
    **env: str,
) -> Stack:
    """A started stack on free ports: ``site_toml`` as its configuration, the queued
    locations of QUEUE_LOCATIONS (+ ``extra_locations``), FAST timings + ``env``."""
    toml = workdir / "anteroom.toml"
    workdir.mkdir(parents=True, exist_ok=True)
    toml.write_text(site_toml)
    return Stack(
        workdir=workdir,
        env={**FAST, "ANTEROOM_CONFIG": str(toml), **env},
        extra_locations=QUEUE_LOCATIONS + extra_locations,
        inherit_env=False,
        s3=s3,
        replica_ports=[free_port() for _ in range(replicas)],
        redis_cluster=redis_cluster,
        cluster_replicas=cluster_replicas,
        redis_aof=redis_aof,
        fast_pass=fast_pass,
        extra_http=extra_http,
        access_log=access_log,
    ).start()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    stack = Stack(workdir=tmp_path_factory.mktemp("redis"))
    stack.workdir.mkdir(parents=True, exist_ok=True)
    stack.start_redis()
    yield stack.redis_url
    stack.stop()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
async def replicas(redis: Redis, redis_url: str) -> AsyncIterator[list[Engine]]:
    """Three engines with their own Redis clients, standing in for sidecar replicas;
    no purge slack, for exact timing."""
    clients = [Redis.from_url(redis_url) for _ in range(3)]
    yield [Engine(c, purge_slack_ms=0) for c in clients]
    for c in clients:
        await c.aclose()


# In-process apps: one tenant on shop.test; queues named for what a test needs.
APP_TOML = """
[tenants.shop]
hosts = ["shop.test"]

[tenants.shop.queues.off]
mode = "off"

[tenants.shop.queues.all]
mode = "queue-all"

[tenants.shop.queues.paused]
mode = "paused"

[tenants.shop.queues.budget]
joins_per_address = 1

[tenants.shop.queues.open]
on_redis_error = "open"

[tenants.shop.queues.later]
opens_at = 4000000000

[tenants.shop.queues.draw]
order = "random"

[tenants.shop.queues.hello]
message = "Hello"
message_fr = "Bonjour"

[tenants.shop.queues.soldout]
closes_at = 1000000000
message = "Sold out <i>for good</i>"
message_fr = "Épuisé"
closed_link = "https://tickets.example/next"
"""

AppClient = TestClient[web.Request, web.Application]


@pytest.fixture
def app_client(redis: Redis, redis_url: str, tmp_path: Path, aiohttp_client):
    """``create_app(config)`` in this process on the real Redis fixture (flushed),
    driven over loopback HTTP without nginx: what nginx would send, sent by hand.
    Cookies are passed explicitly (no jar)."""
    toml = tmp_path / "anteroom.toml"
    toml.write_text(APP_TOML)

    async def make(**env: str) -> AppClient:
        config = load(
            {
                **FAST,
                "ANTEROOM_REDIS_URL": redis_url,
                "ANTEROOM_CONFIG": str(toml),
                "ANTEROOM_ADMIN_LISTEN": "off",
                "ANTEROOM_CAPACITY": "1",
                **env,
            }
        )
        client: AppClient = await aiohttp_client(
            create_app(config), cookie_jar=aiohttp.DummyCookieJar()
        )
        return client

    return make


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = make_stack(tmp_path_factory.mktemp("stack"))
    yield s
    s.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # cookies are handled by each Visitor, explicitly
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


@pytest.fixture
def visitor(stack: Stack, http: aiohttp.ClientSession):
    def make(host: str = "127.0.0.1") -> Visitor:
        return Visitor(http, stack.url, host)

    return make


async def eventually(check, within: float = 10.0, interval: float = 0.1):
    """Polls ``check`` (async, returns a truthy value when done) until it succeeds."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within}s (last: {result!r})")
        await asyncio.sleep(interval)


async def ticket_members(redis: Redis, key: str) -> list[int]:
    """Members of a ticket sorted set, as numbers."""
    raw: list[bytes] = await redis.zrange(key, 0, -1)  # type: ignore[assignment]
    return [int(t) for t in raw]
