"""The Locust suite against a local stack, short and bounded: no 5xx, capacity
never exceeded, FIFO kept (the suite's own invariant checks decide the exit code)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from devstack.stack import ROOT

pytestmark = pytest.mark.integration


def test_locust_suite_holds_the_invariants() -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest.run",
            "--users",
            "60",
            "--spawn-rate",
            "30",
            "--seconds",
            "15",
            "--capacity",
            "8",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    summary = [line for line in r.stdout.splitlines() if line.startswith("loadtest:")]
    assert r.returncode == 0, "\n".join(summary) + r.stderr[-3000:]
    assert summary and "0 failures" in summary[0] and "0 invariant violations" in summary[0]
    assert "peak occupied 8 " in summary[0]  # the line really filled up


def test_flash_crowd_shape_holds_the_invariants() -> None:
    """Everyone within two seconds, then a plateau: the launch second in small."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest.run",
            "--shape",
            "flash",
            "--users",
            "400",
            "--ramp",
            "2",
            "--seconds",
            "15",
            "--capacity",
            "10",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    summary = [line for line in r.stdout.splitlines() if line.startswith("loadtest:")]
    assert r.returncode == 0, "\n".join(summary) + r.stderr[-3000:]
    assert summary and "0 failures" in summary[0] and "0 invariant violations" in summary[0]
    assert "peak occupied 10 " in summary[0]
    assert any(line.startswith("loadtest: 400 users running") for line in summary)
