"""The proof of work's costs, in one run: solve time in headless Chromium (the page's
own worker) and in Python at the default difficulty, and the sidecar's verify
cost beside a trivial aiohttp handler. ``python -m tests.bench_challenge``."""

from __future__ import annotations

import asyncio
import statistics
import time

import aiohttp
from aiohttp import web

from devstack.stack import free_port
from sidecar.config import DIFFICULTY_DEFAULT, QueueSettings, Tenant
from sidecar.pages.themes import render_tenant
from sidecar.web.challenge import Challenges, solve
from tests.browser import Browser

ROUNDS = 8
SECRET = (b"bench-secret-0123456789abcdef",)


async def browser_solves(difficulty: int) -> list[float]:
    files = render_tenant(Tenant("bench", ("*",), QueueSettings()))
    worker = next(v for k, v in files.items() if k.startswith("challenge-worker."))

    async def script(_: web.Request) -> web.Response:
        return web.Response(body=worker, content_type="text/javascript")

    async def blank(_: web.Request) -> web.Response:
        return web.Response(text="<!doctype html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/w.js", script)
    app.router.add_get("/", blank)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    times = []
    try:
        async with Browser() as browser:
            page = await browser.page(1280, 800)
            await page.goto(f"http://127.0.0.1:{port}/")
            c = Challenges(SECRET)
            for _ in range(ROUNDS):
                ch = c.issue("bench", "q", difficulty, int(time.time()))
                took = await page.evaluate(
                    "new Promise(done => { const w = new Worker('/w.js'), t = performance.now();"
                    " w.onmessage = e => { if (e.data.solution) { w.terminate();"
                    " done(performance.now() - t); } };"
                    f" w.postMessage({{seed: '{ch.seed}', bits: {ch.bits}, parts: 16}}); }})",
                    await_promise=True,
                )
                times.append(took / 1000)
    finally:
        await runner.cleanup()
    return times


def python_solves(difficulty: int) -> list[float]:
    c, times = Challenges(SECRET), []
    for _ in range(ROUNDS // 2):
        ch = c.issue("bench", "q", difficulty, int(time.time()))
        t = time.perf_counter()
        solve(ch.seed, ch.bits)
        times.append(time.perf_counter() - t)
    return times


async def verify_vs_trivial(difficulty: int, n: int = 2000) -> tuple[float, float]:
    """Seconds per verify (HMAC + 16 hashes), and per trivial 204 request over loopback."""
    c, now = Challenges(SECRET), int(time.time())
    ch = c.issue("bench", "q", difficulty, now)
    raw, answer = c.dumps(ch), ",".join(map(str, solve(ch.seed, ch.bits)))
    t = time.perf_counter()
    for _ in range(n):
        c.verify(raw, answer, "bench", "q", difficulty, now)
    verify = (time.perf_counter() - t) / n

    async def trivial_handler(_: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/", trivial_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    async with aiohttp.ClientSession() as http:
        t = time.perf_counter()
        for _ in range(n // 4):
            async with http.get(f"http://127.0.0.1:{port}/") as r:
                await r.read()
        trivial = (time.perf_counter() - t) / (n // 4)
    await runner.cleanup()
    return verify, trivial


def summary(xs: list[float]) -> str:
    xs = sorted(xs)
    mean, median = statistics.mean(xs), statistics.median(xs)
    return f"mean {mean:.2f} s, median {median:.2f} s, max {xs[-1]:.2f} s"


async def main() -> None:
    d = DIFFICULTY_DEFAULT
    chromium = await browser_solves(d)
    print(f"difficulty {d}: headless Chromium, {ROUNDS} solves: {summary(chromium)}")
    py = python_solves(d)
    print(f"difficulty {d}: Python hashlib, {len(py)} solves: {summary(py)}")
    verify, trivial = await verify_vs_trivial(d)
    print(
        f"verify {verify * 1e6:.0f} us; trivial aiohttp 204 round trip {trivial * 1e6:.0f} us;"
        f" ratio {verify / trivial:.2f}"
    )
    per_place = statistics.mean(py)
    print(
        f"10,000 places: {per_place * 10_000 / 3600:.1f} CPU-hours in Python,"
        f" {statistics.mean(chromium) * 10_000 / 3600:.1f} in a browser"
    )


if __name__ == "__main__":
    asyncio.run(main())
