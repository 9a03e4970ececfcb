"""Issue 18 through real nginx, two sidecar replicas and Redis: the proof of work and
the endless line switched on by an operator during an attack, a cookie revoked for
sharing flagged on every replica, and how the sale went (report, metrics, CLI)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack.stack import ROOT, Stack
from tests.conftest import ADMIN_TOKEN, eventually, make_stack
from tests.visitors import Visitor, clients_from

pytestmark = pytest.mark.integration

VIEWER = "viewer-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ADDRESSES = [f"127.0.0.{i}" for i in range(2, 10)]


@pytest.fixture(scope="module")
def sale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = make_stack(
        tmp_path_factory.mktemp("sale"),
        replicas=1,
        ANTEROOM_SESSION_TTL="60",
        ANTEROOM_GRACE="30",
        ANTEROOM_ADMIN_TOKEN=f"ops:{ADMIN_TOKEN},watch:viewer:{VIEWER}",
    )
    yield s
    s.stop()


def sidecars(stack: Stack) -> list[str]:
    return [f"http://127.0.0.1:{p}" for p in (stack.sidecar_port, *stack.replica_ports)]


async def patch(http: aiohttp.ClientSession, stack: Stack, queue: str, **changes: object) -> None:
    url = f"{stack.admin_url}/api/queues/acme/{queue}"
    async with http.patch(url, json=changes, headers=ADMIN) as r:
        assert r.status in (200, 201), await r.text()


async def newcomer(http: aiohttp.ClientSession, base: str, queue: str) -> tuple[int, str, str]:
    """A first request straight to one replica's auth endpoint, as nginx sends it:
    (status, where the waiting page is, the cookie set)."""
    headers = {"Host": "127.0.0.1", "X-Anteroom-Queue": queue, "X-Original-URI": f"/q/{queue}/"}
    async with http.get(f"{base}/_anteroom/auth", headers=headers) as r:
        return r.status, r.headers.get("X-Anteroom-Location", ""), r.headers.get("Set-Cookie", "")


async def test_an_operator_switches_the_proof_of_work_on_for_every_replica(
    sale: Stack, http: aiohttp.ClientSession
) -> None:
    queue = "attack"
    await patch(http, sale, queue, create=True, capacity=0)
    for base in sidecars(sale):  # no challenge yet: a newcomer walks in
        status, _, cookie = await newcomer(http, base, queue)
        assert status == 204 and cookie
    started = time.monotonic()
    await patch(http, sale, queue, challenge="pow", challenge_difficulty=12, flagged="infinite")

    async def challenged_everywhere() -> bool:
        answers = [await newcomer(http, base, queue) for base in sidecars(sale)]
        return all(s == 401 and where.endswith("#challenge") for s, where, _ in answers)

    await eventually(challenged_everywhere, within=3.0, interval=0.05)
    took = time.monotonic() - started
    assert took < 1.0, took
    # the challenge asked for is the operator's difficulty, on the public endpoint too
    async with http.get(
        f"{sale.url}/_anteroom/challenge?queue={queue}", headers={"Host": "127.0.0.1"}
    ) as r:
        assert r.status == 200
        assert (await r.json())["bits"] == 12 - 4  # 16 parts of 8 bits: 2**12 in all
    async with http.get(f"{sale.admin_url}/api/queues/acme/{queue}", headers=ADMIN) as r:
        view = await r.json()
    assert view["overrides"]["challenge"] == "pow" and view["settings"]["flagged"] == "infinite"
    # a bad value is refused by the same rule as the configuration's
    url = f"{sale.admin_url}/api/queues/acme/{queue}"
    async with http.patch(url, json={"challenge_difficulty": 40}, headers=ADMIN) as r:
        assert r.status == 400 and "challenge_difficulty" in (await r.json())["fields"]
    await patch(http, sale, queue, challenge="none")

    async def walk_in_everywhere() -> bool:  # and off again
        return all([(await newcomer(http, b, queue))[0] == 204 for b in sidecars(sale)])

    await eventually(walk_in_everywhere, within=3.0, interval=0.05)


@pytest.fixture
async def crowd() -> AsyncIterator[list[aiohttp.ClientSession]]:
    """One HTTP client per loopback address."""
    async with clients_from(ADDRESSES) as sessions:
        yield sessions


async def test_a_cookie_revoked_for_sharing_is_an_endless_line_on_every_replica(
    sale: Stack, http: aiohttp.ClientSession, crowd: list[aiohttp.ClientSession]
) -> None:
    queue = "sharing"
    await patch(
        http, sale, queue, create=True, shared_sessions="revoke", max_addresses=2,
        flagged="infinite",
    )  # fmt: skip
    owner = Visitor(http, sale.url)
    assert (await owner.get(f"/q/{queue}/")).status == 200
    token = owner.cookie
    assert token

    async def use(h: aiohttp.ClientSession) -> int:
        headers = {"Host": "127.0.0.1", "Cookie": f"anteroom_{queue}={token}"}
        async with h.get(f"{sale.url}/q/{queue}/", headers=headers, allow_redirects=False) as r:
            return r.status

    async def flagged_everywhere() -> bool:
        await asyncio.gather(*(use(h) for h in crowd))  # through nginx: both replicas
        states = []
        for base in sidecars(sale):
            headers = {
                "Host": "127.0.0.1",
                "X-Anteroom-Queue": queue,
                "X-Original-URI": f"/q/{queue}/",
                "Cookie": f"anteroom_{queue}={token}",
            }
            async with http.get(f"{base}/_anteroom/auth", headers=headers) as r:
                cookie = r.headers.get("Set-Cookie", "")
                states.append((r.status, cookie.split("|")[3] if "|" in cookie else ""))
        # the endless line: "wait", and a flagged place ("f"), never a new real one
        return all(s == (401, "f") for s in states)

    await eventually(flagged_everywhere, within=5.0, interval=0.2)


async def test_the_report_tells_the_sale_as_it_was_made(
    sale: Stack, http: aiohttp.ClientSession
) -> None:
    """A scripted sale: 2 walk in, 4 wait, 1 of them leaves, 2 are admitted after a
    measured wait; the report, /metrics and the CLI say so."""
    queue = "report"
    await patch(http, sale, queue, create=True, capacity=2)
    inside = [Visitor(http, sale.url) for _ in range(2)]
    for v in inside:
        assert (await v.get(f"/q/{queue}/")).status == 200
    line = [Visitor(http, sale.url) for _ in range(4)]
    for v in line:
        assert (await v.get(f"/q/{queue}/")).status == 302
        assert (await v.status())["state"] == "waiting"
    joined = time.time()
    assert (await line[3].post("/_anteroom/leave")).status in (200, 204, 303)
    await asyncio.sleep(2.0)  # a wait worth measuring
    for v in inside:  # the two inside are done: two slots free
        await v.post("/_anteroom/leave")

    async def admitted() -> bool:
        return [(await v.status())["state"] for v in line[:2]] == ["admitted"] * 2

    await eventually(admitted, within=10.0, interval=0.2)
    waited = time.time() - joined

    async with http.get(f"{sale.admin_url}/api/queues/acme/{queue}/report", headers=ADMIN) as r:
        assert r.status == 200
        body = await r.json()
    total = body["summary"]
    assert (total["joins"], total["admitted"], total["left"]) == (6, 4, 1)
    assert total["gave_up"] == 1 and total["abandonment"] == round(1 / 5, 4)
    # waits: two of 0 (walked in), two of about `waited` seconds (bucket 1..5 s)
    assert total["wait_p50"] is not None and total["wait_p50"] <= 5
    assert 1 < total["wait_p99"] <= 5 and 1 < waited <= 5
    assert sum(m["joins"] for m in body["minutes"]) == 6

    # the Prometheus figures, summed over both replicas
    waits = gone = 0.0
    for base in (sale.admin_url,):
        async with http.get(f"{base}/metrics", headers=ADMIN) as r:
            families = {f.name: f for f in text_string_to_metric_families(await r.text())}
        for s in families["anteroom_queue_wait_seconds"].samples:
            if s.name.endswith("_count") and s.labels.get("queue") == queue:
                waits += s.value
        for s in families["anteroom_queue_gone"].samples:
            if s.labels.get("queue") == queue and s.labels.get("reason") == "left":
                gone += s.value
    assert "anteroom_queue_wait_estimate_ratio" in families
    # this replica's share (nginx spreads the requests): never more than happened
    assert 0 < waits <= 4 and gone <= 1

    # the CLI, with a viewer's token: CSV with one row per minute
    done = cli(sale, "report", "acme", queue, "--format", "csv", token=VIEWER)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert sum(int(row["joins"]) for row in rows) == 6
    assert sum(int(row["admitted"]) for row in rows) == 4
    done = cli(sale, "report", "acme", queue, "--format", "json", "--since", "0", token=VIEWER)
    assert done.returncode == 0 and json.loads(done.stdout)["summary"]["left"] == 1
    done = cli(sale, "report", "acme", queue, "--since", "yesterday", token=VIEWER)
    assert done.returncode == 2 and "since" in done.stderr


def cli(stack: Stack, *args: str, token: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "ANTEROOM_ADMIN_URL": stack.admin_url,
        "ANTEROOM_ADMIN_TOKEN": token,
    }
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "queues", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
