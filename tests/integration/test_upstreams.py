"""nginx in front of several sidecars: a dead one is retried on the next, and with
none left the public endpoints answer like the gate (503 + Retry-After)."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import make_stack
from tests.visitors import Visitor

pytestmark = pytest.mark.integration


async def test_sigkill_of_one_sidecar_under_load_gives_no_5xx(tmp_path: Path) -> None:
    stack = make_stack(tmp_path, replicas=1, ANTEROOM_CAPACITY="100000")
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            q = "k" + uuid.uuid4().hex[:8]
            admitted = [Visitor(http, stack.url) for _ in range(8)]
            for v in admitted:
                assert (await v.get(f"/q/{q}/")).status == 200
            statuses: Counter[int] = Counter()
            loop = asyncio.get_running_loop()
            end = loop.time() + 3.0

            async def client(i: int) -> None:
                while loop.time() < end:
                    if i % 3 == 0:  # a newcomer: a join through the gate
                        r = await Visitor(http, stack.url).get(f"/q/{q}/new")
                    elif i % 3 == 1:  # an admitted visitor: a decision from the cookie
                        r = await admitted[i % len(admitted)].get(f"/q/{q}/page")
                    else:  # a status poll on the public endpoint
                        r = await admitted[i % len(admitted)].get("/_anteroom/status")
                    statuses[r.status] += 1
                    await asyncio.sleep(0.03)

            async def killer() -> None:
                await asyncio.sleep(1.0)
                os.killpg(stack.procs["sidecar"].pid, signal.SIGKILL)

            await asyncio.gather(killer(), *(client(i) for i in range(9)))
            total = sum(statuses.values())
            assert total >= 200, statuses  # a real load, not a handful
            assert not [s for s in statuses if s >= 500], statuses
            assert statuses[200] == total, statuses

            # no sidecar left: the endpoints say so like the gate does, in JSON
            os.killpg(stack.procs["sidecar1"].pid, signal.SIGKILL)
            await asyncio.sleep(0.2)
            waiter = admitted[0]
            r = await waiter.get("/_anteroom/status")
            assert r.status == 503 and r.headers.get("Retry-After")
            assert r.json()["state"] == "unavailable"
            r = await Visitor(http, stack.url).get(f"/q/{q}/")
            assert r.status == 503 and r.headers.get("Retry-After")
    finally:
        stack.stop()
