"""Starts a local stack on free loopback ports and runs the Locust suite against it,
headless and bounded in time. ``python -m loadtest.run [--users N] [--seconds S]``."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from sidecar.stack import Stack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.run")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--spawn-rate", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--capacity", type=int, default=20)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="anteroom-load-"))
    stack = Stack(
        workdir=work,
        env={
            "ANTEROOM_CAPACITY": str(args.capacity),
            "ANTEROOM_SESSION_TTL": "10",
            "ANTEROOM_GRACE": "10",
            "ANTEROOM_LOG_LEVEL": "warning",
        },
        inherit_env=False,
        nginx_workers=2,
    ).start()
    env = {
        **os.environ,
        "ANTEROOM_CAPACITY": str(args.capacity),
        "LOADTEST_REDIS_URL": stack.redis_url,
        "LOADTEST_QUEUE_TAG": "default:shop",
    }
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
                "-u",
                str(args.users),
                "-r",
                str(args.spawn_rate),
                "-t",
                f"{args.seconds}s",
                "--stop-timeout",
                "5",
                "--only-summary",
                "--loglevel",
                "WARNING",
            ],
            env=env,
            timeout=args.seconds + 60,
        ).returncode
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
