"""What the deployment costs Redis before a visitor arrives (``make bench``'s scale part).

P sidecar processes (each a real :class:`Refresher` with its own Redis client, in
its own OS process) know Q idle queues each; Redis' own counters (``INFO cpu``,
``INFO stats``/``commandstats`` deltas over the same window) say what that costs:
Redis CPU in % of one core and commands per second, and 4 processes over 1. The
counters are Redis', so machine noise does not distort them.

    python -m tests.bench_scale [--queues 200] [--seconds 10] [--processes 1 4]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

from redis import Redis as SyncRedis
from redis.asyncio import Redis

from devstack.stack import Stack
from sidecar.config import QueueSettings
from sidecar.queue.engine import Engine, QueueRef

REFRESH = 0.25  # the default ANTEROOM_REFRESH_INTERVAL
HEARTBEAT = 1.0


def process(redis_url: str, queues: int, ready: multiprocessing.synchronize.Event) -> None:
    """One sidecar process's queue side: knows ``queues`` queues, refreshes them."""
    from sidecar.queue.refresher import Refresher

    async def run() -> None:
        redis = Redis.from_url(redis_url)
        refresher = Refresher(Engine(redis), REFRESH, HEARTBEAT)
        for i in range(queues):
            await refresher.state(QueueRef("bench", f"q{i}"), QueueSettings())
        ready.set()
        await refresher.run()

    asyncio.run(run())


def _counters(redis: SyncRedis) -> tuple[float, int, Counter[str]]:
    cpu = redis.info("cpu")
    stats = redis.info("stats")
    calls: Counter[str] = Counter()
    for name, v in redis.info("commandstats").items():
        calls[name.removeprefix("cmdstat_")] = int(v["calls"])
    used = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    return used, int(stats["total_commands_processed"]), calls


def measure(redis_url: str, processes: int, queues: int, seconds: float) -> dict[str, float | str]:
    redis = SyncRedis.from_url(redis_url)
    redis.flushall()
    ctx = multiprocessing.get_context("spawn")
    events = [ctx.Event() for _ in range(processes)]
    procs = [ctx.Process(target=process, args=(redis_url, queues, e)) for e in events]
    for p in procs:
        p.start()
    try:
        for e in events:
            if not e.wait(60):
                raise SystemExit("bench_scale: a process did not start")
        time.sleep(3.0)  # leases settle, first-sight ticks are over
        cpu0, cmds0, calls0 = _counters(redis)
        t0 = time.monotonic()
        time.sleep(seconds)
        cpu1, cmds1, calls1 = _counters(redis)
        wall = time.monotonic() - t0
    finally:
        for p in procs:
            p.kill()
            p.join()
        redis.close()
    calls1.subtract(calls0)
    top = ", ".join(f"{n} {c / wall:,.0f}/s" for n, c in calls1.most_common(3) if c > 0)
    return {
        "cpu": 100.0 * (cpu1 - cpu0) / wall,
        "commands": (cmds1 - cmds0) / wall,
        "top": top,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench_scale")
    parser.add_argument("--queues", type=int, nargs="+", default=[200])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="anteroom-bench-scale-"))
    stack = Stack(workdir=work, inherit_env=False)
    stack.start_redis()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"start: {os.cpu_count()} cores, load average {load}\n")
    rows = []
    try:
        for q in args.queues:
            base = None
            for p in args.processes:
                r = measure(stack.redis_url, p, q, args.seconds)
                base = base or r
                ratio = float(r["commands"]) / max(1e-9, float(base["commands"]))
                rows.append((p, q, r, ratio))
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"idle queues, refresh {REFRESH} s, {args.seconds:.0f} s window, Redis INFO deltas\n")
    print("| processes | idle queues | Redis CPU (% of a core) | commands/s | vs 1 | most called |")
    print("|---:|---:|---:|---:|---:|---|")
    for p, q, r, ratio in rows:
        print(
            f"| {p} | {q:,} | {float(r['cpu']):.2f} % | {float(r['commands']):,.0f} |"
            f" {ratio:.2f}x | {r['top']} |"
        )


if __name__ == "__main__":
    main()
