"""ANTEROOM_WORKERS: several sidecar processes on one port, one fair line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import eventually, make_stack
from tests.visitors import Visitor

pytestmark = pytest.mark.integration


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        # a zombie still answers kill(0): look at its state
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


async def test_workers_share_the_port_and_the_line(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    stack = make_stack(tmp_path / "workers", ANTEROOM_WORKERS="2")
    try:
        parent = stack.procs["sidecar"].pid
        # the parent supervises, the two serve (the second may still be starting)

        async def both() -> list[int] | None:
            found = children(parent)
            return found if len(found) == 2 else None

        workers = await eventually(both)
        path = "/q/workers/"
        crowd = [Visitor(http, stack.url) for _ in range(20)]
        replies = await asyncio.gather(*(v.get(path) for v in crowd))
        assert sorted(r.status for r in replies) == [200] * 2 + [302] * 18
        # every waiter's position is right whichever worker answers
        waiting = sorted(
            (v for v, r in zip(crowd, replies, strict=True) if r.status == 302),
            key=lambda v: int((v.cookie or "").split("|")[4]),
        )

        async def positions() -> bool:
            got = [(await v.status())["position"] for v in waiting]
            return got == list(range(1, 19))

        await eventually(positions, within=3)

        # the parent killed hard: its workers follow instead of lingering
        os.kill(parent, signal.SIGKILL)
        stack.procs["sidecar"].wait()

        async def workers_gone() -> bool:
            return not any(alive(w) for w in workers)

        await eventually(workers_gone, within=15)
    finally:
        stack.stop()


async def test_a_dead_worker_is_reaped_logged_and_replaced(tmp_path: Path) -> None:
    """kill -9 of a worker: the parent reaps it (no zombie), says which worker died
    and how, and starts a new one that serves; then SIGTERM still stops everything."""
    stack = make_stack(tmp_path / "workers", ANTEROOM_WORKERS="2")
    try:
        proc = stack.procs["sidecar"]
        first, second = children(proc.pid)
        os.kill(first, signal.SIGKILL)

        async def replaced() -> list[int] | None:
            now = children(proc.pid)
            return now if len(now) == 2 and first not in now and not alive(first) else None

        replacement = next(p for p in await eventually(replaced, within=10) if p != second)
        log = stack.workdir / "sidecar.log"
        died = [json.loads(x) for x in log.read_text().splitlines() if '"worker died"' in x]
        assert len(died) == 1 and died[0]["pid"] == first, died
        assert died[0]["signal"] == "SIGKILL" and died[0]["level"] == "error", died

        async def serving() -> bool:
            return '"event": "starting"' in log.read_text().split('"worker died"', 1)[1]

        await eventually(serving, within=10)  # the replacement said "starting"
        await asyncio.sleep(1.0)  # and listens
        # the other original dies too: until its own replacement starts (0.5 s later
        # at the soonest), every new connection is the first replacement's to answer
        os.kill(second, signal.SIGKILL)
        url = f"http://127.0.0.1:{stack.sidecar_port}/livez"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            for _ in range(20):
                async with s.get(url) as r:
                    assert r.status == 200
        assert alive(replacement)

        # SIGTERM still drains and ends everything, replacements included
        async def both_back() -> list[int] | None:
            now = children(proc.pid)
            return now if len(now) == 2 and second not in now else None

        workers = await eventually(both_back, within=10)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not any(alive(w) for w in workers)
    finally:
        stack.stop()
