"""Starts a local stack on free loopback ports and runs the Locust suite against it,
headless and bounded in time.

    python -m loadtest.run [--users N] [--spawn-rate R] [--seconds S]
    python -m loadtest.run --shape flash [--users 2000] [--ramp 4] [--seconds 45]

The flash shape brings ``--users`` visitors within ``--ramp`` seconds (the launch
second), then keeps them there (a plateau) until ``--seconds``."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from devstack.stack import Stack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.run")
    parser.add_argument("--shape", choices=["steady", "flash"], default="steady")
    parser.add_argument("--users", type=int, help="default: 200 (steady), 2000 (flash)")
    parser.add_argument("--spawn-rate", type=int, default=50, help="steady: arrivals per second")
    parser.add_argument("--ramp", type=float, default=4.0, help="flash: seconds to bring all")
    parser.add_argument("--seconds", type=int, help="default: 60 (steady), 45 (flash)")
    parser.add_argument("--capacity", type=int, help="default: 20 (steady), 50 (flash)")
    args = parser.parse_args(argv)
    flash = args.shape == "flash"
    users = args.users or (2000 if flash else 200)
    seconds = args.seconds or (45 if flash else 60)
    capacity = args.capacity or (50 if flash else 20)

    work = Path(tempfile.mkdtemp(prefix="anteroom-load-"))
    stack = Stack(
        workdir=work,
        env={
            "ANTEROOM_CAPACITY": str(capacity),
            "ANTEROOM_SESSION_TTL": "10",
            "ANTEROOM_GRACE": "10",
            "ANTEROOM_LOG_LEVEL": "warning",
        },
        inherit_env=False,
        nginx_workers=2,
    ).start()
    env = {
        **os.environ,
        "ANTEROOM_CAPACITY": str(capacity),
        "LOADTEST_REDIS_URL": stack.redis_url,
        "LOADTEST_QUEUE_TAG": "default:shop",
        "LOADTEST_SHAPE": args.shape,
        "LOADTEST_USERS": str(users),
        "LOADTEST_RAMP": str(args.ramp),
        "LOADTEST_SECONDS": str(seconds),
    }
    # the flash shape decides users and time itself (and stops the run)
    steady = ["-u", str(users), "-r", str(args.spawn_rate), "-t", f"{seconds}s"]
    locustfile = Path(__file__).with_name("locustfile.py")
    try:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(locustfile),
                "--headless",
                "--host",
                stack.url,
                *([] if flash else steady),
                "--stop-timeout",
                "5",
                "--only-summary",
                "--loglevel",
                "WARNING",
            ],
            env=env,
            timeout=seconds + 60,
        ).returncode
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
