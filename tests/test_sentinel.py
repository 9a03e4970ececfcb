"""Redis Sentinel: ``ANTEROOM_REDIS_URL=redis+sentinel://...`` finds the primary."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from devstack.stack import Stack, free_port, require, wait_for_port
from sidecar.config import load
from sidecar.queue.client import SentinelURLError, parse
from sidecar.web.app import create_app
from tests.conftest import FAST


@pytest.fixture
def sentinel_url(tmp_path: Path) -> Iterator[str]:
    stack = Stack(workdir=tmp_path)
    stack.start_redis()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor shop 127.0.0.1 {stack.redis_port} 1\n"
    )
    argv = [require("redis-server", "redis-server"), str(conf), "--sentinel"]
    stack.procs["sentinel"] = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_port(port, stack.procs["sentinel"], "sentinel", tmp_path / "sentinel.log")
    yield f"redis+sentinel://127.0.0.1:{port}/shop/0"
    stack.procs["sentinel"].terminate()
    stack.procs.pop("sentinel").wait()
    stack.stop()


def test_url_forms() -> None:
    u = parse("rediss+sentinel://:pw@a:26379,[::1]:26380,b/mymaster/2")
    assert u.sentinels == (("a", 26379), ("::1", 26380), ("b", 26379))
    assert (u.service, u.db, u.password, u.username, u.tls) == ("mymaster", 2, "pw", None, True)
    for bad in ("redis+sentinel://a:1", "redis+sentinel://a:x/m", "redis+sentinel://a/m/db"):
        with pytest.raises(SentinelURLError):
            parse(bad)


async def test_sidecar_serves_through_sentinel(sentinel_url: str, aiohttp_client) -> None:
    config = load({**FAST, "ANTEROOM_REDIS_URL": sentinel_url, "ANTEROOM_CAPACITY": "1"})
    client: TestClient[web.Request, web.Application] = await aiohttp_client(create_app(config))
    headers = {"Host": "127.0.0.1", "X-Anteroom-Queue": "sentinel", "X-Original-URI": "/q/s/"}
    first = await client.get("/_anteroom/auth", headers=headers)
    client.session.cookie_jar.clear()  # a second visitor
    second = await client.get("/_anteroom/auth", headers=headers)
    assert (first.status, second.status) == (204, 401)  # capacity 1 held in the primary
    ready = await client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["redis"] is True
