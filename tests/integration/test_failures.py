"""Failure modes: the sidecar or Redis goes away and comes back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from devstack.stack import Stack
from tests.conftest import eventually, make_stack
from tests.visitors import Visitor

pytestmark = pytest.mark.integration


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[Stack]:
    s = make_stack(tmp_path / "stack")
    yield s
    s.stop()


async def test_sidecar_down_is_a_503_not_a_500(
    own_stack: Stack, http: aiohttp.ClientSession
) -> None:
    v = Visitor(http, own_stack.url)
    assert (await v.get("/q/down/")).status == 200
    own_stack.stop_one("sidecar")
    for accept in ("text/html", "application/json"):
        r = await Visitor(http, own_stack.url).get("/q/down/", headers={"Accept": accept})
        assert r.status == 503 and r.headers["Retry-After"] == "10"
    # ungated locations never ask the sidecar
    assert (await v.get("/")).status == 200
    assert (await v.get("/_anteroom/waiting/acme/")).status == 200
    own_stack.start_sidecar()
    assert (await v.get("/q/down/")).status == 200


async def test_redis_down_admitted_keep_going_newcomers_wait(
    own_stack: Stack, http: aiohttp.ClientSession
) -> None:
    path = "/q/redis/"
    admitted = Visitor(http, own_stack.url)
    assert (await admitted.get(path)).status == 200
    own_stack.stop_one("redis")

    assert (await admitted.get(path)).status == 200  # decided from the cookie alone
    newcomer = Visitor(http, own_stack.url)
    r = await newcomer.get(path)
    assert r.status == 302 and (r.location or "").startswith("/_anteroom/waiting/acme/")
    s = await newcomer.status()
    assert s["state"] == "none"  # no place could be given; the page retries by going back

    own_stack.start_redis()

    async def back() -> bool:
        return (await Visitor(http, own_stack.url).get(path)).status in (200, 302)

    await eventually(back, within=10)
    assert (await admitted.get(path)).status == 200


async def test_redis_down_fail_open_policy(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    stack = make_stack(tmp_path / "open", ANTEROOM_ON_REDIS_ERROR="open")
    try:
        await Visitor(http, stack.url).get("/q/open/")  # the queue is known to the sidecar
        stack.stop_one("redis")
        r = await Visitor(http, stack.url).get("/q/open/")
        assert r.status == 200  # the operator chose availability over protection
        r = await Visitor(http, stack.url).get("/q/never-seen/")
        assert r.status == 200
    finally:
        stack.stop()
