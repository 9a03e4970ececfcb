"""The fast pass is bound to the client address and the exact session cookie
(issue 16 items 1 and 2): used anywhere else it sends the request to the sidecar,
which sees it. Attacks through real nginx + sidecar + Redis; other client
addresses are loopback source addresses (127.0.0.2...), which Linux routes to lo."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from devstack.stack import Stack
from tests.conftest import ADMIN_TOKEN, make_stack
from tests.visitors import Visitor, clients_from

pytestmark = pytest.mark.integration

PASS_SECRET = "fast-pass-secret-0123456789"
PASS_TTL = 4
SHARERS = [f"127.0.0.{i}" for i in range(2, 10)]  # eight other addresses


@pytest.fixture(scope="module")
def fast_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = make_stack(
        tmp_path_factory.mktemp("fastpass"),
        fast_pass=True,
        access_log=True,
        extra_http="    log_subrequest on;",
        ANTEROOM_FAST_PASS_SECRET=PASS_SECRET,
        ANTEROOM_FAST_PASS_TTL=str(PASS_TTL),
        ANTEROOM_CAPACITY="20",
        ANTEROOM_SESSION_TTL="60",
    )
    yield s
    s.stop()


@pytest.fixture
async def crowd() -> AsyncIterator[list[aiohttp.ClientSession]]:
    async with clients_from(SHARERS) as sessions:
        yield sessions


def sidecar_asks(stack: Stack) -> int:
    """Auth subrequests nginx sent to the sidecar so far (not answered itself)."""
    log = stack.workdir / "nginx" / "access.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return sum(1 for line in lines if "uri=/_anteroom/auth " in line and "upstream=- " not in line)


def pass_of(reply_cookies: list[str]) -> str | None:
    for c in reply_cookies:
        if c.startswith("anteroom__pass="):
            return c.split(";", 1)[0].split("=", 1)[1]
    return None


async def admitted_with_pass(http: aiohttp.ClientSession, stack: Stack, path: str):
    v = Visitor(http, stack.url)
    assert (await v.get(path)).status == 200  # joins, admitted at once
    r = await v.get(path)  # an admitted session reaches the sidecar: a pass
    fast = pass_of(r.set_cookies)
    assert r.status == 200 and fast, r.set_cookies
    return v, fast


async def test_a_pass_shared_with_eight_addresses_is_seen_and_revoked(
    fast_stack: Stack, crowd: list[aiohttp.ClientSession], http: aiohttp.ClientSession
) -> None:
    queue = "fp" + uuid.uuid4().hex[:8]
    path = f"/q/{queue}/"
    async with http.patch(
        f"{fast_stack.admin_url}/api/queues/acme/{queue}",
        json={"shared_sessions": "revoke", "max_addresses": 4, "create": True},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as r:
        assert r.status == 201, await r.text()  # made before its first visitor
    await asyncio.sleep(0.3)  # every process has the setting
    owner, fast = await admitted_with_pass(http, fast_stack, path)
    session = f"{owner.last}={owner.cookie}"
    sid = (owner.cookie or "").split("|")[5]
    # each sharer keeps whatever pass it is given, as a careful attacker would
    passes = dict.fromkeys(SHARERS, fast)

    async def use(addr: str, client: aiohttp.ClientSession) -> int:
        headers = {"Host": "127.0.0.1", "Cookie": f"{session}; anteroom__pass={passes[addr]}"}
        async with client.get(fast_stack.url + path, headers=headers, allow_redirects=False) as r:
            got = pass_of(r.headers.getall("Set-Cookie", []))
            if got:
                passes[addr] = got
            return r.status

    async def owner_renews() -> None:
        nonlocal fast
        while True:  # the owner keeps its session and pass alive from its address
            r = await owner.get(path, headers={"Cookie": f"{session}; anteroom__pass={fast}"})
            fast = pass_of(r.set_cookies) or fast
            await asyncio.sleep(1.0)

    renewing = asyncio.create_task(owner_renews())
    asked_before = sidecar_asks(fast_stack)
    started = time.monotonic()
    refused_after = None
    try:
        while time.monotonic() - started < PASS_TTL + 6:
            codes = await asyncio.gather(*(use(a, c) for a, c in zip(SHARERS, crowd, strict=True)))
            assert set(codes) <= {200, 302}, codes  # never an error
            if set(codes) == {302}:
                refused_after = time.monotonic() - started
                break
            await asyncio.sleep(0.25)
    finally:
        renewing.cancel()
    assert sidecar_asks(fast_stack) - asked_before >= len(SHARERS), "nginx hid the sharers"
    log = (fast_stack.workdir / "sidecar.log").read_text()
    assert any(
        "session shared" in line and sid in line and "revoked" in line for line in log.splitlines()
    )
    # revoked at once, then nginx lets a pass through at most its lifetime
    assert refused_after is not None and refused_after <= PASS_TTL + 3, refused_after


@pytest.mark.parametrize("kind", ["fake-session", "wrong-signature", "renamed-cookie"])
async def test_a_pass_beside_anything_but_its_session_cookie_asks_the_sidecar(
    fast_stack: Stack, http: aiohttp.ClientSession, kind: str
) -> None:
    queue = "fp" + uuid.uuid4().hex[:8]
    path = f"/q/{queue}/"
    v, fast = await admitted_with_pass(http, fast_stack, path)
    token = v.cookie or ""
    sid = token.split("|")[5]
    if kind == "fake-session":  # the old regex took any "|a|<digits>|<sid>|"
        cookie = f"anteroom__pass={fast}; x=|a|1|{sid}|"
    elif kind == "wrong-signature":
        payload, _, sig = token.rpartition("|")
        forged = payload + "|" + ("A" if sig[0] != "A" else "B") + sig[1:]
        cookie = f"{v.last}={forged}; anteroom__pass={fast}"
    else:  # the exact value, under another name: not what the sidecar reads
        cookie = f"x={token}; anteroom__pass={fast}"
    # the genuine pair is admitted by nginx alone...
    before = sidecar_asks(fast_stack)
    genuine = await v.get(path, headers={"Cookie": f"{v.last}={token}; anteroom__pass={fast}"})
    assert genuine.status == 200 and sidecar_asks(fast_stack) == before
    # ...the pass beside anything else is not
    r = await Visitor(http, fast_stack.url).get(path, headers={"Cookie": cookie})
    assert sidecar_asks(fast_stack) == before + 1, "nginx admitted the pass by itself"
    # the sidecar sees a newcomer: a new session of its own, never the pass's one
    new = [c for c in r.set_cookies if c.startswith(f"anteroom_{queue}=")]
    assert new and f"|{sid}|" not in new[0], r.set_cookies
    assert pass_of(r.set_cookies) is None  # and a newcomer gets no pass on that answer


async def test_a_pass_from_another_address_asks_the_sidecar_which_renews_it_there(
    fast_stack: Stack, crowd: list[aiohttp.ClientSession], http: aiohttp.ClientSession
) -> None:
    """An honest visitor whose address changed pays one sidecar request, then
    has a pass for the new address."""
    path = f"/q/fp{uuid.uuid4().hex[:8]}/"
    v, fast = await admitted_with_pass(http, fast_stack, path)
    moved = Visitor(crowd[0], fast_stack.url)
    cookie = f"{v.last}={v.cookie}; anteroom__pass={fast}"
    before = sidecar_asks(fast_stack)
    r = await moved.get(path, headers={"Cookie": cookie})
    assert r.status == 200 and sidecar_asks(fast_stack) == before + 1
    renewed = pass_of(r.set_cookies)
    assert renewed and renewed != fast
    r = await moved.get(path, headers={"Cookie": f"{v.last}={v.cookie}; anteroom__pass={renewed}"})
    assert r.status == 200 and sidecar_asks(fast_stack) == before + 1
