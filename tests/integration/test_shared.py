"""Shared admitted cookies: one session used from 20 client addresses at once
(client sockets bound to 127.0.0.2..21; Linux routes all of 127/8 to loopback),
handled per the queue's shared_sessions setting, set through the admin API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from devstack.stack import Stack
from tests.conftest import ADMIN_TOKEN, make_stack
from tests.visitors import Visitor, clients_from

pytestmark = pytest.mark.integration

ADDRESSES = [f"127.0.0.{i}" for i in range(2, 22)]
MAX_ADDRESSES = 4


@pytest.fixture(scope="module")
def shared_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # sessions outlive the test: the shared cookie is never renewed by its users
    s = make_stack(
        tmp_path_factory.mktemp("shared"), ANTEROOM_CAPACITY="5", ANTEROOM_SESSION_TTL="60"
    )
    yield s
    s.stop()


@pytest.fixture
async def crowd() -> AsyncIterator[list[aiohttp.ClientSession]]:
    """One HTTP client per address."""
    async with clients_from(ADDRESSES) as sessions:
        yield sessions


async def use_everywhere(
    stack: Stack, crowd: list[aiohttp.ClientSession], queue: str, token: str
) -> list[int]:
    """The same cookie, one request from each address at once: the statuses."""

    async def one(http: aiohttp.ClientSession) -> int:
        headers = {"Host": "127.0.0.1", "Cookie": f"anteroom_{queue}={token}"}
        async with http.get(f"{stack.url}/q/{queue}/", headers=headers, allow_redirects=False) as r:
            return r.status

    return list(await asyncio.gather(*(one(h) for h in crowd)))


@pytest.mark.parametrize("policy", ["allow", "flag", "revoke"])
async def test_a_cookie_used_from_20_addresses(
    shared_stack: Stack,
    crowd: list[aiohttp.ClientSession],
    http: aiohttp.ClientSession,
    policy: str,
) -> None:
    queue = f"shared-{policy}"
    owner = Visitor(http, shared_stack.url)
    assert (await owner.get(f"/q/{queue}/")).status == 200
    token = owner.cookie
    assert token
    sid = token.split("|")[5]
    async with http.patch(
        f"{shared_stack.admin_url}/api/queues/acme/{queue}",
        json={"shared_sessions": policy, "max_addresses": MAX_ADDRESSES},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as r:
        assert r.status == 200, await r.text()
    await asyncio.sleep(0.3)  # every process has the setting (ticks every 50 ms)

    started = time.monotonic()
    refused_after = None
    rounds = []
    while time.monotonic() - started < 3.0:
        codes = await use_everywhere(shared_stack, crowd, queue, token)
        rounds.append(codes)
        assert set(codes) <= {200, 302}, codes  # never an error
        if refused_after is None and set(codes) == {302}:
            refused_after = time.monotonic() - started
        await asyncio.sleep(0.25)

    log = (shared_stack.workdir / "sidecar.log").read_text()
    flagged = [line for line in log.splitlines() if "session shared" in line and sid in line]
    if policy == "allow":
        assert all(set(codes) == {200} for codes in rounds), [set(c) for c in rounds]
        assert not flagged
    elif policy == "flag":
        assert all(set(codes) == {200} for codes in rounds), [set(c) for c in rounds]
        assert flagged and "flagged" in flagged[0]
    else:
        assert refused_after is not None and refused_after <= 2.5, rounds
        assert set(rounds[-1]) == {302}
        assert (await owner.get(f"/q/{queue}/")).status == 302  # ended for everyone: rejoin
        assert flagged and "revoked" in flagged[0]
        print(f"\nshared cookie refused everywhere {refused_after:.2f}s after first use")
