"""ANTEROOM_WORKERS: several sidecar processes on one port, one fair line."""

from __future__ import annotations

import asyncio
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
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0): look at its state
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


async def test_workers_share_the_port_and_the_line(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    stack = make_stack(tmp_path / "workers", ANTEROOM_WORKERS="2")
    try:
        parent = stack.procs["sidecar"].pid
        (worker,) = children(parent)
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

        # the parent killed hard: its worker follows instead of lingering
        os.kill(parent, signal.SIGKILL)
        stack.procs["sidecar"].wait()

        async def worker_gone() -> bool:
            return not alive(worker)

        await eventually(worker_gone, within=15)
    finally:
        stack.stop()
