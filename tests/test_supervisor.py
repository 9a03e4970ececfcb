"""The supervisor of ANTEROOM_WORKERS > 1 (sidecar/supervisor.py), run in a child
Python with workers that die at once: it backs off, then gives up with exit 1."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

SCRIPT = textwrap.dedent(
    """
    import os, sys
    from sidecar import logs, supervisor
    logs.setup("info", "json")
    supervisor.RESTART_FIRST = 0.05  # the backoff's shape, ten times faster
    def serve(worker):
        os._exit(3) if worker == 1 else os.kill(os.getpid(), 9)
    sys.exit(supervisor.Supervisor(2, serve, stop_within=5).run())
    """
)


def test_a_worker_dying_at_start_backs_off_then_stops_the_service() -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert time.monotonic() - started < 10
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    died = [e for e in events if e["event"] == "worker died"]
    # how each died, and a backoff that doubles
    by_exit = [e["restart_in"] for e in died if e.get("exit_code") == 3]
    by_kill = [e for e in died if e.get("signal") == "SIGKILL"]
    assert by_exit[:4] == [0.05, 0.1, 0.2, 0.4], died
    assert by_kill and all(e["level"] == "error" for e in died)
    assert any(e["event"] == "worker keeps dying at start; stopping" for e in events)
