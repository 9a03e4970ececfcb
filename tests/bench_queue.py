"""Queue-side figures measured in one run (``make bench`` runs it after ``tests.bench``).

1. Joins: newcomers per second through the sidecar's ``/_anteroom/auth``
   (coalesced: one script call per batch) vs an aiohttp handler that runs one
   EVALSHA per newcomer against the same Redis, both driven by wrk.
2. Status polls: ``/_anteroom/status`` of a waiter vs a trivial 204 handler.
3. Bursts: N simultaneous newcomers through nginx (1 and 2 sidecar processes):
   answers by status, 5xx, admitted without a valid cookie, tickets minted vs
   newcomers, p50/p99 time to answer.
4. Redis bytes per waiter with 100k and 1M people in line.

Only ratios (and per-waiter bytes) are meaningful: everything shares two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import aiohttp
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from devstack.stack import Stack, free_port, wait_for_port
from sidecar.config import QueueSettings
from sidecar.queue.engine import Engine, QueueRef
from tests.bench import CONNECTIONS, DURATION, ROUNDS

KNOWN_QUEUES = 1_000  # the status ratio again once the process knows this many
MANY_WAITERS = int(os.environ.get("BENCH_WAITERS", "1000"))  # ... polled by this many in turn

ONE_CALL_JOIN = """
local t = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], -1, t)
return t
"""


def one_evalsha_per_join(port: int, redis_url: str) -> None:
    """The ceiling coalescing removes: a handler that takes a ticket with one
    EVALSHA per request (what each join cost before), with the sidecar's own
    connection discipline (64 calls at once, the rest wait), so neither side
    answers errors quickly under load."""
    import uvloop
    from aiohttp import web

    async def make() -> web.Application:
        redis = Redis.from_url(redis_url, max_connections=72)
        script = redis.register_script(ONE_CALL_JOIN)
        keys = ["aq:{bench:single}:tickets", "aq:{bench:single}:waiting"]
        slots = asyncio.Semaphore(64)

        async def handle(request: web.Request) -> web.Response:
            async with slots:
                await script(keys=keys)
            return web.Response(status=401)

        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        return app

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(make(), host="127.0.0.1", port=port, print=None, access_log=None)


def wrk_any(url: str, headers: dict[str, str], script: Path | None = None) -> float:
    """wrk's requests/s; non-2xx answers (401 "wait") are what is measured here."""
    args = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{DURATION}s"]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    if script is not None:
        args += ["-s", str(script)]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m is None or "Socket errors" in out:
        raise RuntimeError(f"wrk run failed or saw errors:\n{out}")
    return float(m.group(1))


async def burst(url: str, n: int) -> dict[str, object]:
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timings: list[float] = []
    statuses: list[int] = []
    cookies: list[str | None] = []

    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(60)
    ) as http:

        async def one() -> None:
            t = time.monotonic()
            try:
                async with http.get(url + "/shop/", allow_redirects=False) as r:
                    await r.read()
                    statuses.append(r.status)
                    cookies.append(r.headers.get("Set-Cookie"))
            except aiohttp.ClientError:
                statuses.append(0)
                cookies.append(None)
            timings.append(time.monotonic() - t)

        await asyncio.gather(*(one() for _ in range(n)))
    counts = Counter(statuses)
    tickets = {c.split("|")[4] for c in cookies if c}
    no_cookie_admitted = sum(
        1 for s, c in zip(statuses, cookies, strict=True) if s == 200 and not c
    )
    timings.sort()
    return {
        "answers": dict(sorted(counts.items())),
        "5xx": sum(v for k, v in counts.items() if k >= 500 or k == 0),
        "admitted_without_cookie": no_cookie_admitted,
        "tickets": len(tickets),
        "p50": statistics.median(timings),
        "p99": timings[int(len(timings) * 0.99) - 1],
    }


async def bytes_per_session(redis_url: str, n: int) -> float:
    """Redis bytes per admitted session (everyone admitted at once)."""
    redis = Redis.from_url(redis_url)
    engine = Engine(redis)
    q = QueueRef("bench", f"sessions{n}")
    s = QueueSettings(capacity=n + 1)
    await engine.join_many(q, ["first"], s)
    before = int((await redis.info("memory"))["used_memory"])
    for i in range(0, n, 500):
        await engine.join_many(q, [f"{j:016d}" for j in range(i, min(n, i + 500))], s)
    after = int((await redis.info("memory"))["used_memory"])
    await redis.flushall()
    await redis.aclose()
    return (after - before) / n


async def bytes_per_waiter(redis_url: str, n: int) -> float:
    redis = Redis.from_url(redis_url)
    engine = Engine(redis)
    q = QueueRef("bench", f"mem{n}")
    s = QueueSettings(capacity=1)
    await engine.join_many(q, ["holder"], s)
    before = int((await redis.info("memory"))["used_memory"])
    for i in range(0, n, 5000):
        await engine.join_many(q, [f"s{j}" for j in range(i, min(n, i + 5000))], s)
    after = int((await redis.info("memory"))["used_memory"])
    await redis.flushall()
    await redis.aclose()
    return (after - before) / n


ENV = {
    "ANTEROOM_CAPACITY": "3",
    "ANTEROOM_SESSION_TTL": "600",
    "ANTEROOM_GRACE": "600",  # the admitted sessions hold their slots for the whole run
    "ANTEROOM_LOG_LEVEL": "warning",
}
if os.environ.get("BENCH_BACKLOG"):  # with net.core.somaxconn raised as much
    ENV["ANTEROOM_BACKLOG"] = os.environ["BENCH_BACKLOG"]
HERE = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}


# what the waiting page polls (theme_assets/default/waiting.js.j2)
POLL = "/_anteroom/status?queue=shop&return_to=%2Fshop%2F&lang=en"


def _cookie(url: str) -> str:
    """The cookie nginx sets on a newcomer to ``url``."""
    r = subprocess.run(
        ["curl", "-s", "-D", "-", "-o", "/dev/null", url],
        capture_output=True,
        text=True,
        check=True,
    )
    return next(
        line.split(":", 1)[1].strip().split(";")[0]
        for line in r.stdout.splitlines()
        if line.lower().startswith("set-cookie:")
    )


# wrk sends each request with the next of many waiters' cookies
EACH_WAITER = """
local cookies = {}
for line in io.lines("%s") do cookies[#cookies + 1] = line end
local i = 0
request = function()
  i = i %% #cookies + 1
  return wrk.format(nil, nil, {["Cookie"] = cookies[i]})
end
"""


def _waiters(sidecar: str, queue: str, n: int, work: Path) -> Path:
    """A wrk script polling as ``n`` waiters of ``queue`` in turn (their places taken
    by the sidecar's auth endpoint, as nginx asks it)."""
    cookies = []
    for _ in range(n):
        ask = urllib.request.Request(
            sidecar + "/_anteroom/auth", headers={"X-Anteroom-Queue": queue, "X-Original-URI": "/"}
        )
        try:
            urllib.request.urlopen(ask).close()
        except urllib.error.HTTPError as e:  # 401: wait (the cookie is set all the same)
            cookies.append(e.headers["Set-Cookie"].split(";", 1)[0])
    (work / "cookies.txt").write_text("\n".join(cookies) + "\n")
    script = work / "each_waiter.lua"
    script.write_text(EACH_WAITER % (work / "cookies.txt"))
    return script


def ratios(work: Path) -> list[tuple[str, str, str]]:
    """Joins vs one EVALSHA each; status polls vs a trivial handler (interleaved rounds)."""
    stack = Stack(workdir=work / "ratios", env=ENV, inherit_env=False).start()
    port, trivial_port = free_port(), free_port()
    argv = [sys.executable, "-m", "tests.bench_queue", "single", "--port", str(port)]
    single = subprocess.Popen([*argv, "--redis", stack.redis_url], env=HERE)
    trivial = subprocess.Popen(
        [sys.executable, "-m", "tests.bench", "trivial", "--port", str(trivial_port)], env=HERE
    )
    try:
        wait_for_port(port, single, "one-EVALSHA handler", work / "none.log")
        wait_for_port(trivial_port, trivial, "trivial handler", work / "none.log")
        for _ in range(3):  # fill the capacity: the next newcomer waits
            _cookie(stack.url + "/shop/")
        waiter = _cookie(stack.url + "/shop/")
        sidecar = f"http://127.0.0.1:{stack.sidecar_port}"
        runs = {
            # what nginx sends on a newcomer's auth subrequest: a join each
            "joins": (
                sidecar + "/_anteroom/auth",
                {"X-Anteroom-Queue": "bench", "X-Original-URI": "/shop/"},
            ),
            "single": (f"http://127.0.0.1:{port}/", {}),
            "status": (sidecar + POLL, {"Cookie": waiter}),
            "status_nginx": (stack.url + POLL, {"Cookie": waiter}),
            "plain": (f"http://127.0.0.1:{trivial_port}/", {}),
        }
        # the same poll by 1,000 waiters in turn: positions 1 to 1,000, each token
        # verified once, the page's URL read once
        many = _waiters(sidecar, "shop", MANY_WAITERS, work)
        best: dict[str, float] = {}
        redis = SyncRedis.from_url(stack.redis_url)
        cpu, joins = 0.0, 0  # Redis CPU seconds spent during the sidecar's join runs
        for _ in range(ROUNDS):
            for name, (url, headers) in runs.items():
                before = _redis_cpu(redis), int(redis.get("aq:{default:bench}:tickets") or 0)
                best[name] = max(best.get(name, 0.0), wrk_any(url, headers))
                if name == "joins":
                    cpu += _redis_cpu(redis) - before[0]
                    joins += int(redis.get("aq:{default:bench}:tickets") or 0) - before[1]
            url, _ = runs["status"]
            best["status_many"] = max(best.get("status_many", 0.0), wrk_any(url, {}, many))
        # the same poll once the process knows 1,000 queues (a ticker each, spread
        # over the processes that hold their leases: here all in this one)
        for i in range(KNOWN_QUEUES):
            urllib.request.urlopen(
                urllib.request.Request(
                    sidecar + "/_anteroom/auth",
                    headers={"X-Anteroom-Queue": f"known{i}", "X-Original-URI": "/"},
                )
            ).close()
        for _ in range(ROUNDS):
            for name in ("status", "plain"):
                url, headers = runs[name]
                best[name + "_known"] = max(best.get(name + "_known", 0.0), wrk_any(url, headers))
        redis.close()
    finally:
        for proc in (single, trivial):
            proc.terminate()
            proc.wait()
        stack.stop()
    return [
        ("one EVALSHA per newcomer (aiohttp handler)", f"{best['single']:,.0f}", "1.00"),
        (
            "coalesced joins, sidecar `/_anteroom/auth`",
            f"{best['joins']:,.0f}",
            f"{best['joins'] / best['single']:.2f}",
        ),
        ("trivial aiohttp 204 handler", f"{best['plain']:,.0f}", "1.00"),
        (
            "status poll of a waiter, sidecar",
            f"{best['status']:,.0f}",
            f"{best['status'] / best['plain']:.2f}",
        ),
        (
            f"status polls of {MANY_WAITERS:,} waiters in turn, sidecar",
            f"{best['status_many']:,.0f}",
            f"{best['status_many'] / best['plain']:.2f}",
        ),
        (
            f"status poll of a waiter, sidecar, {KNOWN_QUEUES:,} queues known",
            f"{best['status_known']:,.0f}",
            f"{best['status_known'] / best['plain_known']:.2f}",
        ),
        (
            "status poll of a waiter, through nginx",
            f"{best['status_nginx']:,.0f}",
            f"{best['status_nginx'] / best['plain']:.2f}",
        ),
        (
            "Redis CPU per 1,000 joins/s (coalesced)",
            f"{100 * cpu / max(joins, 1) * 1000:.1f} % of a core",
            f"{joins:,} joins",
        ),
    ]


def _redis_cpu(redis: SyncRedis) -> float:
    info = redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def bursts(work: Path) -> list[tuple[int, int, dict[str, object]]]:
    done = []
    sizes = [int(n) for n in os.environ.get("BENCH_BURSTS", "1000,5000,10000").split(",")]
    for workers in (1, 2):
        for n in sizes:
            s = Stack(
                workdir=work / f"burst-{workers}-{n}",
                env={**ENV, "ANTEROOM_WORKERS": str(workers)},
                inherit_env=False,
                nginx_workers=2,
            ).start()
            try:
                time.sleep(0.5)
                done.append((workers, n, asyncio.run(burst(s.url, n))))
            finally:
                s.stop()
    return done


def memory(work: Path) -> dict[int, float]:
    mem = Stack(workdir=work / "mem", inherit_env=False)
    mem.workdir.mkdir(parents=True, exist_ok=True)
    mem.start_redis()
    try:
        sizes = {n: asyncio.run(bytes_per_waiter(mem.redis_url, n)) for n in (100_000, 1_000_000)}
        sizes[-10_000] = asyncio.run(bytes_per_session(mem.redis_url, 10_000))
        return sizes
    finally:
        mem.stop()


def _machine() -> str:
    somaxconn = Path("/proc/sys/net/core/somaxconn").read_text().strip()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} cores, load average {load}, net.core.somaxconn {somaxconn}"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench_queue")
    parser.add_argument(
        "what", nargs="?", default="all", choices=["all", "ratios", "bursts", "memory", "single"]
    )
    parser.add_argument("--port", type=int)
    parser.add_argument("--redis")
    args = parser.parse_args()
    if args.what == "single":
        one_evalsha_per_join(args.port, args.redis)
        return
    if shutil.which("wrk") is None:
        raise SystemExit("bench: wrk not found; apt-get install -y wrk")
    work = Path(tempfile.mkdtemp(prefix="anteroom-bench-queue-"))
    print(f"start: {_machine()}")
    try:
        rows = ratios(work) if args.what in ("all", "ratios") else []
        burst_rows = bursts(work) if args.what in ("all", "bursts") else []
        per_waiter = memory(work) if args.what in ("all", "memory") else {}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"end: {_machine()}\n")

    if rows:
        print(f"wrk -t1 -c{CONNECTIONS} -d{DURATION}s, best of {ROUNDS} interleaved rounds\n")
        print("| what | requests/s | ratio |")
        print("|---|---:|---:|")
        for label, rps, ratio in rows:
            print(f"| {label} | {rps} | {ratio} |")
    if burst_rows:
        print(
            "\n| sidecar processes | newcomers at once | answers | 5xx or no answer"
            " | admitted without cookie | tickets minted | p50 | p99 |"
        )
        print("|---:|---:|---|---:|---:|---:|---:|---:|")
        for workers, n, b in burst_rows:
            answers = ", ".join(f"{k}: {v:,}" for k, v in b["answers"].items())  # type: ignore[attr-defined]
            print(
                f"| {workers} | {n:,} | {answers} | {b['5xx']} | {b['admitted_without_cookie']} |"
                f" {b['tickets']:,} | {b['p50']:.2f} s | {b['p99']:.2f} s |"
            )
    if per_waiter:
        print("\n| in Redis | bytes each |")
        print("|---|---:|")
        for n, size in per_waiter.items():
            what = f"{n:,} people in line" if n > 0 else f"{-n:,} admitted sessions"
            print(f"| {what} | {size:.0f} |")


if __name__ == "__main__":
    main()
