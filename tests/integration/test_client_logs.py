"""Log lines a client's requests can cause at will are throttled: at most one a
minute per kind (with a count), echoing no more of the client's bytes than a short,
printable excerpt (sidecar/logs.py's Throttled), through real nginx."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest

from devstack.stack import Stack
from tests.conftest import eventually, make_stack
from tests.visitors import Visitor

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def plain_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = make_stack(tmp_path_factory.mktemp("client-logs"))
    yield s
    s.stop()


@pytest.mark.parametrize(
    ("what", "path", "host", "line"),
    [
        # tenants without a "*" host: every other Host is refused (403)
        ("unknown host", "/q/shop/", "evil-{i}.example", "unknown host"),
        # a name the location's regex takes but the sidecar refuses (over 64 characters)
        ("long queue name", "/q/" + "q" * 70 + "/x{i}", "127.0.0.1", "bad queue name"),
    ],
)
async def test_requests_a_client_shapes_never_log_one_line_each(
    plain_stack: Stack, http: aiohttp.ClientSession, what: str, path: str, host: str, line: str
) -> None:
    """Whatever part of the request is bad, 50 of them are one line at most, and the
    line quotes the client's text only in a short excerpt."""
    log = plain_stack.workdir / "sidecar.log"
    before = log.read_text().count(line)
    size = len(log.read_text())
    for i in range(50):
        r = await Visitor(http, plain_stack.url, host=host.format(i=i)).get(path.format(i=i))
        assert r.status == 403, (what, r.status)
    await asyncio.sleep(0.5)
    logged = log.read_text().count(line) - before
    assert logged <= 1, f"{what}: {logged} log lines for 50 requests"
    new = log.read_text()[size:]
    assert "q" * 41 not in new and "evil-1.example" not in new


async def test_polls_while_redis_is_down_log_one_claim_failure(
    tmp_path_factory: pytest.TempPathFactory, http: aiohttp.ClientSession
) -> None:
    """A waiter whose turn came polls while Redis is down: every poll tries to claim
    and fails; the log says so once, not once per poll."""
    s = make_stack(tmp_path_factory.mktemp("client-logs-down"), ANTEROOM_CAPACITY="1")
    try:
        holder, waiter = Visitor(http, s.url), Visitor(http, s.url)
        assert (await holder.get("/q/shop/")).status == 200
        assert (await waiter.get("/q/shop/")).status == 302
        assert (await waiter.status())["state"] == "waiting"
        assert (await holder.post("/_anteroom/leave")).status in (200, 204, 303)
        await asyncio.sleep(1.0)  # the line moves: the waiter's turn, not yet claimed
        s.stop_one("redis")
        log = s.workdir / "sidecar.log"
        before = log.read_text().count("claim failed")
        for _ in range(20):
            r = await waiter.get("/_anteroom/status")
            assert r.status in (200, 503), r.status

        async def failed() -> bool:
            return log.read_text().count("claim failed") > before

        await eventually(failed, within=5)
        await asyncio.sleep(0.3)
        assert log.read_text().count("claim failed") - before == 1
    finally:
        s.stop()
