"""Throughput ratios measured in one run (``make bench``; needs wrk).

1. Through nginx: an admitted visitor on the gated ``/shop/`` vs the ungated
   ``/``; both end at the same demo origin, so the difference is the gate.
2. The sidecar's ``/_anteroom/auth`` for an admitted cookie vs a trivial
   aiohttp handler answering 204, both hit directly, same event loop policy.
3. With the nginx fast pass on (a second stack): a static file behind the gate
   for a visitor holding a valid pass vs the same file ungated, in one run.

Only ratios are meaningful: the machine, wrk and every server share its cores.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from devstack.stack import Stack, free_port, wait_for_port

DURATION = int(os.environ.get("BENCH_SECONDS", "5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))


# the same small file served by nginx itself, with and without the gate
STATIC_LOCATION = """
        location ^~ /bench/open/ {{ alias {work}/pages/_anteroom/waiting/default/; }}
        location ^~ /bench/gated/ {{
            set $anteroom_queue shop;
            include anteroom/gate.conf;
            alias {work}/pages/_anteroom/waiting/default/;
        }}
"""


def wrk(url: str, headers: dict[str, str]) -> float:
    args = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{DURATION}s", "--latency"]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m is None or non2xx:
        raise RuntimeError(f"wrk run failed or saw errors:\n{out}")
    return float(m.group(1))


def admitted_cookie(url: str) -> str:
    with urllib.request.urlopen(url) as r:  # capacity is ample: admitted at once
        raw = r.headers["Set-Cookie"]
    return str(raw.split(";", 1)[0])


def with_fast_pass(url: str, cookie: str) -> str:
    """``cookie`` plus the pass the sidecar issues on an admitted request."""
    request = urllib.request.Request(url, headers={"Cookie": cookie})
    with urllib.request.urlopen(request) as r:
        passes = [
            c for c in r.headers.get_all("Set-Cookie") or [] if c.startswith("anteroom__pass=")
        ]
    if not passes:
        raise RuntimeError("no fast pass issued")
    return f"{cookie}; {passes[0].split(';', 1)[0]}"


def fast_pass_ratio(static_location: str) -> dict[str, float]:
    """Ungated static vs gated static with a valid fast pass, on one stack."""
    work = Path(tempfile.mkdtemp(prefix="anteroom-bench-fast-"))
    stack = Stack(
        workdir=work,
        env={
            "ANTEROOM_CAPACITY": "100000",
            "ANTEROOM_LOG_LEVEL": "warning",
            "ANTEROOM_FAST_PASS_SECRET": "bench-fast-pass-secret-0123456789",
            "ANTEROOM_FAST_PASS_TTL": "300",  # outlives the runs: wrk sends one cookie
        },
        inherit_env=False,
        nginx_workers=1,
        fast_pass=True,
        extra_locations=static_location.format(work=work),
    ).start()
    try:
        cookie = with_fast_pass(
            stack.url + "/bench/gated/keepalive.js",
            admitted_cookie(stack.url + "/bench/gated/keepalive.js"),
        )
        runs = {
            "fast_static": (stack.url + "/bench/open/keepalive.js", {}),
            "fast_gated": (stack.url + "/bench/gated/keepalive.js", {"Cookie": cookie}),
        }
        time.sleep(1)
        best: dict[str, float] = {}
        for _ in range(ROUNDS):
            for name, (url, headers) in runs.items():
                best[name] = max(best.get(name, 0.0), wrk(url, headers))
        return best
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)


def trivial(port: int) -> None:
    import asyncio

    import uvloop
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        return web.Response(status=204)

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", nargs="?", default="all")
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    if args.what == "trivial":
        trivial(args.port)
        return
    if shutil.which("wrk") is None:
        raise SystemExit("bench: wrk not found; apt-get install -y wrk")
    if args.what == "fastpass":  # the fast pass part only
        for name, rate in fast_pass_ratio(STATIC_LOCATION).items():
            print(f"{name}: {rate:.0f} req/s")
        return

    work = Path(tempfile.mkdtemp(prefix="anteroom-bench-"))
    static_location = STATIC_LOCATION
    stack = Stack(
        workdir=work,
        env={
            "ANTEROOM_CAPACITY": "100000",
            "ANTEROOM_LOG_LEVEL": "warning",
            "ANTEROOM_WORKERS": os.environ.get("BENCH_WORKERS", "1"),
        },
        inherit_env=False,
        nginx_workers=1,
        extra_locations=static_location.format(work=work),
    ).start()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    baseline = subprocess.Popen(
        [sys.executable, "-m", "tests.bench", "trivial", "--port", str(port)], env=env
    )
    try:
        wait_for_port(port, baseline, "trivial aiohttp", work / "none.log")
        cookie = admitted_cookie(stack.url + "/shop/")
        # what nginx sends, to both: header parsing costs the same
        auth_headers = {"Cookie": cookie, "X-Anteroom-Queue": "shop", "X-Original-URI": "/shop/"}
        runs = {
            "ungated": (stack.url + "/", {}),
            "gated": (stack.url + "/shop/", {"Cookie": cookie}),
            "static": (stack.url + "/bench/open/keepalive.js", {}),
            "static_gated": (stack.url + "/bench/gated/keepalive.js", {"Cookie": cookie}),
            "plain": (f"http://127.0.0.1:{port}/_anteroom/auth", auth_headers),
            "sidecar": (f"http://127.0.0.1:{stack.sidecar_port}/_anteroom/auth", auth_headers),
        }
        time.sleep(1)
        # two interleaved rounds, best of each: the machine's noise hits both sides
        best: dict[str, float] = {}
        for _ in range(ROUNDS):
            for name, (url, headers) in runs.items():
                best[name] = max(best.get(name, 0.0), wrk(url, headers))
    finally:
        baseline.terminate()
        baseline.wait()
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)
    best.update(fast_pass_ratio(static_location))

    rows = [
        ("ungated `/` (aiohttp origin)", "ungated", "ungated"),
        ("gated `/shop/`, admitted cookie", "gated", "ungated"),
        ("ungated static file served by nginx", "static", "static"),
        ("gated static file, admitted cookie", "static_gated", "static"),
        ("trivial aiohttp 204 handler", "plain", "plain"),
        ("sidecar `/_anteroom/auth`, admitted", "sidecar", "plain"),
        ("ungated static file (fast pass stack)", "fast_static", "fast_static"),
        ("gated static file, valid fast pass", "fast_gated", "fast_static"),
    ]
    workers = os.environ.get("BENCH_WORKERS", "1")
    print(
        f"wrk -t1 -c{CONNECTIONS} -d{DURATION}s, {os.cpu_count()} cores, best of {ROUNDS},"
        f" sidecar workers {workers}\n"
    )
    print("| what | requests/s | ratio |")
    print("|---|---:|---:|")
    for label, name, base in rows:
        print(f"| {label} | {best[name]:,.0f} | {best[name] / best[base]:.2f} |")


if __name__ == "__main__":
    main()
