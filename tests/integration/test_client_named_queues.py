"""Queue names a client chooses (a location taking the name from the URL, as the
test site's /q/<name>/ does) leave no state in Redis forever."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import aiohttp
import pytest
from redis.asyncio import Redis

from devstack.stack import Stack
from tests.conftest import make_stack
from tests.visitors import Visitor

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def plain_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = make_stack(tmp_path_factory.mktemp("client-named"))
    yield s
    s.stop()


async def test_a_queue_name_from_a_location_regex_leaves_nothing_forever_in_redis(
    plain_stack: Stack, http: aiohttp.ClientSession
) -> None:
    """Each name visited once used to leave ~8 keys (~3 KB) with no expiry, listed in
    the control room until an operator forgot them one by one: now every key
    expires unless the queue's ticker keeps running."""
    names = ["junk" + uuid.uuid4().hex[:8] for _ in range(5)]
    for name in names:
        assert (await Visitor(http, plain_stack.url).get(f"/q/{name}/")).status == 200
    redis = Redis.from_url(plain_stack.redis_url)
    forever: list[str] = []
    try:
        for _ in range(50):  # the tick that follows the join sets the expiry
            forever = []
            for name in names:
                keys = [k async for k in redis.scan_iter(match=f"aq:{{acme:{name}}}:*")]
                assert keys
                forever += sorted([k.decode() for k in keys if await redis.ttl(k) == -1])
            if not forever:
                break
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()
    assert not forever, f"kept with no expiry: {forever}"
