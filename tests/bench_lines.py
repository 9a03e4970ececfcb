"""Long lines measured by Redis CPU (``make bench`` runs it; ``python -m
tests.bench_lines``). Sidecar processes are stood for by refreshers, each with
its own Redis client, ticking as a process would (the real Refresher and
Engine); waiters are filled with the real join and heartbeat scripts.

1. One queue of 1M waiters, 4 processes: Redis CPU with nobody moving.
2. 100 queues x 10k waiters, 2 processes: Redis CPU.
3. Opening a pre-queue of 1M with 4 processes: the longest single Redis command
   (SLOWLOG), another queue's join latency meanwhile, and what ``/readyz`` would
   say (a PING with its timeout every 50 ms).
4. ``draw``: one tick admitting DRAW_MAX from a line of 1M, in line order and in
   random order (order = random), in one run: the tick's time in Redis (SLOWLOG).

Redis CPU is ``INFO cpu`` deltas over the window: machine noise does not enter.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import sys
import tempfile
import time
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

from redis.asyncio import Redis

from devstack.stack import Stack
from sidecar.config import QueueSettings
from sidecar.queue.engine import Engine, QueueRef
from sidecar.queue.keys import DRAW_MAX
from sidecar.queue.refresher import Refresher
from sidecar.web.health import PING_TIMEOUT

WINDOW = 10.0  # seconds measured per figure
REFRESH = 0.25  # the default refresh interval
STILL = QueueSettings(capacity=1, abandon_after=3_600)  # the line does not move


async def fill(redis: Redis, q: QueueRef, n: int, s: QueueSettings) -> None:
    """n waiters, joined and seen (so none is pruned while measured)."""
    e = Engine(redis)
    await e.join_many(q, ["holder"], s)
    for i in range(0, n, 5_000):
        joined = await e.join_many(q, [f"w{j}" for j in range(i, min(n, i + 5_000))], s)
        await e.heartbeat({q: ([], [t for _, t, _ in joined], s)})


async def cpu(redis: Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@contextlib.asynccontextmanager
async def processes(
    url: str, p: int, queues: list[QueueRef], s: QueueSettings
) -> AsyncIterator[list[Refresher]]:
    clients = [Redis.from_url(url) for _ in range(p)]
    refreshers = [Refresher(Engine(c), REFRESH, 1.0) for c in clients]
    for r in refreshers:
        for q in queues:
            await r.state(q, s)
    tasks = [asyncio.create_task(r.run()) for r in refreshers]
    try:
        yield refreshers
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in clients:
            await c.aclose()


async def redis_cpu(url: str, p: int, queues: list[QueueRef], s: QueueSettings) -> float:
    """Share of one Redis core while p processes tick the queues for WINDOW seconds."""
    redis = Redis.from_url(url)
    async with processes(url, p, queues, s):
        await asyncio.sleep(2 * REFRESH)  # every process caught up with the summary
        before, started = await cpu(redis), time.monotonic()
        await asyncio.sleep(WINDOW)
        used = (await cpu(redis) - before) / (time.monotonic() - started)
    await redis.aclose()
    return used


async def one_long_line(url: str, n: int, p: int) -> float:
    redis = Redis.from_url(url)
    await redis.flushall()
    q = QueueRef("bench", "long")
    await fill(redis, q, n, STILL)
    await redis.aclose()
    return await redis_cpu(url, p, [q], STILL)


async def many_lines(url: str, queues: int, n: int, p: int) -> float:
    redis = Redis.from_url(url)
    await redis.flushall()
    qs = [QueueRef("bench", f"line{i}") for i in range(queues)]
    for q in qs:
        await fill(redis, q, n, STILL)
    await redis.aclose()
    return await redis_cpu(url, p, qs, STILL)


async def opening(url: str, n: int, p: int) -> dict[str, float]:
    """A pre-queue of n opens while p processes tick it and another queue takes joins."""
    redis = Redis.from_url(url)
    await redis.flushall()
    q = QueueRef("bench", "drop")
    closed = QueueSettings(capacity=100, abandon_after=3_600, opens_at=4_000_000_000)
    e = Engine(redis)
    for i in range(0, n, 5_000):
        joined = await e.join_many(q, [f"w{j}" for j in range(i, min(n, i + 5_000))], closed)
        await e.heartbeat({q: ([], [t for _, t, _ in joined], closed)})
    # the probes run in a process of their own: what they see is Redis, not this
    # process's event loop busy replaying the order
    probe = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.bench_lines", "probe", "--redis", url, stdout=PIPE
    )
    async with processes(url, p, [q], closed) as refreshers:
        await redis.config_set("slowlog-log-slower-than", 1_000)  # microseconds
        await redis.config_set("slowlog-max-len", 10_000)
        await redis.slowlog_reset()
        await asyncio.sleep(1.0)
        started = time.monotonic()
        await redis.hset(q.keys.settings, "opens_at", int(time.time()))  # the operator opens it
        while True:
            await asyncio.sleep(0.1)
            states = [r.states.get(q) for r in refreshers]
            if all(st is not None and st.order is not None for st in states):
                break
            if time.monotonic() - started > 120:
                raise SystemExit("bench: the opening did not finish in 120 s")
        took = time.monotonic() - started
        await asyncio.sleep(1.0)
        probe.send_signal(signal.SIGINT)
        out, _ = await asyncio.wait_for(probe.communicate(), 30)
        found = json.loads(out)
        slow = await redis.slowlog_get(10_000)
    await redis.aclose()
    worst = max(slow, key=lambda entry: entry["duration"], default=None)
    joins = sorted(found["joins"])
    return {
        "took": took,
        "longest_ms": worst["duration"] / 1000 if worst else 0.0,
        "longest": str(worst["command"][:60]) if worst else "",
        "join_worst_ms": joins[-1] * 1000,
        "join_p99_ms": joins[int(len(joins) * 0.99)] * 1000,
        "pings": found["sent"],
        "ping_failed": found["failed"],
    }


async def draw(url: str, n: int) -> dict[str, float]:
    """Microseconds of one tick admitting DRAW_MAX of n present waiters, per order."""
    redis = Redis.from_url(url)
    out: dict[str, float] = {}
    for order in ("fifo", "random"):
        q = QueueRef("bench", f"draw-{order}")
        s = replace(STILL, order=order)
        await fill(redis, q, n, s)
        e = Engine(redis)
        await e.tick([(q, s)])  # settle: nothing moves at capacity 1
        await redis.config_set("slowlog-log-slower-than", 0)
        await redis.slowlog_reset()
        await e.tick([(q, replace(s, capacity=DRAW_MAX + 1))])
        await redis.config_set("slowlog-log-slower-than", 10_000)
        log = await redis.slowlog_get(128)
        out[order] = max(int(entry["duration"]) for entry in log)
    await redis.aclose()
    return out


async def probe(url: str) -> None:
    """Until SIGINT: another queue's joins every 10 ms, and /readyz's PING every 50 ms;
    then prints what they saw (JSON)."""
    redis = Redis.from_url(url)
    e = Engine(redis)
    other, busy = QueueRef("bench", "other"), QueueSettings(capacity=0)
    joins: list[float] = []
    pings = {"sent": 0, "failed": 0}
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)

    async def join_probe() -> None:
        i = 0
        while not stop.is_set():
            started = time.perf_counter()
            await e.join(other, f"p{i}", busy)
            joins.append(time.perf_counter() - started)
            i += 1
            await asyncio.sleep(0.01)

    async def ready_probe() -> None:
        while not stop.is_set():
            pings["sent"] += 1
            try:
                await asyncio.wait_for(redis.ping(), PING_TIMEOUT)
            except Exception:
                pings["failed"] += 1
            await asyncio.sleep(0.05)

    await asyncio.gather(join_probe(), ready_probe())
    await redis.aclose()
    print(json.dumps({"joins": joins, **pings}))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench_lines")
    choices = ["all", "opening", "probe", "draw"]
    parser.add_argument("what", nargs="?", default="all", choices=choices)
    parser.add_argument("--waiters", type=int, default=1_000_000)
    parser.add_argument("--redis")
    args = parser.parse_args()
    if args.what == "probe":
        asyncio.run(probe(args.redis))
        return
    n = args.waiters
    work = Path(tempfile.mkdtemp(prefix="anteroom-bench-lines-"))
    stack = Stack(workdir=work, inherit_env=False)
    work.mkdir(parents=True, exist_ok=True)
    stack.start_redis()
    try:
        if args.what == "draw":
            us = asyncio.run(draw(stack.redis_url, n))
            print(f"| one tick admitting {DRAW_MAX:,} of {n:,} present waiters | Redis time |")
            print("|---|---:|")
            print(f"| line order (fifo) | {us['fifo'] / 1000:.1f} ms |")
            ratio = us["random"] / us["fifo"]
            print(f"| random order (draw) | {us['random'] / 1000:.1f} ms ({ratio:.2f}x) |")
            return
        if args.what == "all":
            long_cpu = asyncio.run(one_long_line(stack.redis_url, n, 4))
            many_cpu = asyncio.run(many_lines(stack.redis_url, 100, n // 100, 2))
        opened = asyncio.run(opening(stack.redis_url, n, 4))
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.what == "all":
        print("| what | Redis CPU (share of one core) |")
        print("|---|---:|")
        print(f"| one queue of {n:,} waiters, 4 processes | {long_cpu:.1%} |")
        print(f"| 100 queues x {n // 100:,} waiters, 2 processes | {many_cpu:.1%} |")
    print(f"\nOpening a pre-queue of {n:,} with 4 processes (done in {opened['took']:.1f} s):\n")
    print("| what | measured |")
    print("|---|---:|")
    print(
        f"| longest single Redis command (SLOWLOG) | {opened['longest_ms']:.1f} ms"
        f" ({opened['longest']}) |"
    )
    print(
        f"| another queue's joins meanwhile: worst / p99 | {opened['join_worst_ms']:.0f} ms"
        f" / {opened['join_p99_ms']:.0f} ms |"
    )
    print(f"| /readyz pings failed (every 50 ms) | {opened['ping_failed']} of {opened['pings']} |")


if __name__ == "__main__":
    main()
