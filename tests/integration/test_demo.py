"""``make demo``: Redis is supervised (restarted with a backoff), other failures stop
the demo with a message, Ctrl-C stops cleanly and a new demo starts cleanly after.
Run on free ports: the real demo's 8080 is never bound here."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from devstack.demo import Supervisor, demo_stack
from devstack.stack import ROOT, free_port, port_in_use
from tests.conftest import eventually
from tests.visitors import Visitor

pytestmark = pytest.mark.integration


def free_ports() -> dict[str, int]:
    return {name: free_port() for name in ("site", "sidecar", "origin", "redis")}


def watch(sup: Supervisor, until: str, within: float) -> str | None:
    """Runs the supervisor until it says ``until`` (a new line) or gives a reason to stop."""
    deadline, start = time.monotonic() + within, len(said)
    while time.monotonic() < deadline:
        failed = sup.check()
        if failed or any(until in line for line in said[start:]):
            return failed
        time.sleep(0.1)
    raise AssertionError(f"{until!r} not said within {within}s: {said}")


said: list[str] = []


async def test_redis_is_restarted_while_the_site_stays_up(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    said.clear()
    with demo_stack(tmp_path, free_ports()) as stack:
        sup = Supervisor(stack, tmp_path, said.append)
        others = {n: p.pid for n, p in stack.procs.items() if n != "redis"}
        admitted = Visitor(http, stack.url)
        assert (await admitted.get("/shop/")).status == 200
        for delay in ("1s", "2s"):  # a second failure waits longer
            old = stack.procs["redis"].pid
            os.kill(old, signal.SIGKILL)
            stack.procs["redis"].wait()
            assert sup.check() is None
            assert said[-1].startswith(f"anteroom: redis exited (status -9); restarting in {delay}")
            # meanwhile: the site answers, the admitted visitor keeps going
            assert (await Visitor(http, stack.url).get("/")).status == 200
            assert (await admitted.get("/shop/")).status == 200
            assert watch(sup, "redis is back", within=10) is None
            assert stack.procs["redis"].pid != old and port_in_use(stack.redis_port)
        assert {n: p.pid for n, p in stack.procs.items() if n != "redis"} == others
        assert str(stack.procs["redis"].pid) in (tmp_path / "pids").read_text().split()

        async def newcomer_gets_a_place() -> bool:
            r = await Visitor(http, stack.url).get("/shop/")
            return r.status in (200, 302) and bool(r.set_cookies)

        await eventually(newcomer_gets_a_place, within=10)

        # anything else dying stops the demo, with the reason
        os.kill(stack.procs["origin"].pid, signal.SIGKILL)
        stack.procs["origin"].wait()
        failed = sup.check()
        assert failed and failed.startswith("origin exited (status -9)")


def test_ctrl_c_stops_cleanly_and_the_demo_starts_again(tmp_path: Path) -> None:
    ports = free_ports()
    code = (
        "import sys; from pathlib import Path; from devstack.demo import run_demo; "
        f"run_demo({ports!r}, Path({str(tmp_path)!r}))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTEROOM_")}
    for _ in range(2):
        demo = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert demo.stdout is not None
            for line in demo.stdout:  # the banner is printed once everything runs
                if "Press Ctrl-C to stop" in line:
                    break
            pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
            assert len(pids) == 4 and port_in_use(ports["site"])
            demo.send_signal(signal.SIGINT)  # Ctrl-C
            out, _ = demo.communicate(timeout=30)
        finally:
            if demo.poll() is None:
                demo.kill()
                demo.communicate()
        assert demo.returncode == 0, out
        assert "Stopping" in out
        assert "Traceback" not in out
        assert not (tmp_path / "pids").exists()
        assert not any(port_in_use(p) for p in ports.values())
        for pid in pids:  # every child ended (and was reaped by the demo)
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
