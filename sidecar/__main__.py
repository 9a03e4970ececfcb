"""``python -m sidecar`` serves; ``python -m sidecar build-pages --out DIR`` renders themes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time

from aiohttp import web

from . import logs
from .app import create_app
from .config import Config, ConfigError

log = logging.getLogger("sidecar")

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def serve(config: Config) -> None:
    """Runs ``config.workers`` processes on one port (SO_REUSEPORT): each has its own
    event loop, Redis pool and refresher, and the kernel spreads connections."""
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # uvloop is optional: faster, not required
        pass
    parent = os.getpid()
    children = []
    for worker in range(1, config.workers):
        pid = os.fork()  # before any loop or connection exists
        if pid == 0:
            code = 1
            try:
                _die_with(parent)
                _run(config, worker)
                code = 0
            except BaseException:
                log.exception("worker failed", extra={"worker": worker})
            finally:
                os._exit(code)  # never run the parent's cleanup in a child
        children.append(pid)
    try:
        _run(config, 0, children)
    finally:
        _stop_workers(children, config.shutdown_timeout + 5)


_signalled: set[int] = set()


def _forward_sigterm(children: list[int]) -> None:
    # once only: a second SIGTERM would cut a worker's drain short (aiohttp exits on it)
    for pid in set(children) - _signalled:
        _signalled.add(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def _stop_workers(children: list[int], bound: float) -> None:
    """Workers drain as the parent does; one still running after ``bound`` is killed."""
    _forward_sigterm(children)
    deadline = time.monotonic() + bound
    pending = set(children)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    continue
            pending.discard(pid)
        time.sleep(0.05)
    if pending:
        log.error("workers did not stop in time; killing them", extra={"pids": sorted(pending)})
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _run(config: Config, worker: int, children: list[int] | None = None) -> None:
    log.info(
        "starting",
        extra={
            "listen": f"{config.listen_host}:{config.listen_port}",
            "tenants": [t.name for t in config.tenants],
            "worker": worker,
            "workers": config.workers,
            "demo": config.demo,
        },
    )
    app = create_app(config)
    if children:

        async def drain_workers(app: web.Application) -> None:
            _forward_sigterm(children)  # they drain at the same time as this process

        app.on_shutdown.append(drain_workers)
    # SIGTERM or SIGINT: stop listening, let in-flight requests finish for up to
    # shutdown_timeout, then the app's cleanup writes the last heartbeats
    web.run_app(
        app,
        host=config.listen_host,
        port=config.listen_port,
        reuse_port=config.workers > 1,
        backlog=config.backlog,
        shutdown_timeout=config.shutdown_timeout,
        access_log=None,
        print=None,
        handler_cancellation=True,
    )


def _die_with(parent: int) -> None:
    """A worker ends when the process that started it is gone, even killed hard."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anteroom", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the sidecar (default)")
    build = sub.add_parser("build-pages", help="render every tenant's waiting page")
    build.add_argument("--out", required=True, help="output folder (served as /_anteroom/waiting/)")
    args = parser.parse_args(argv)
    try:
        config = Config.from_env(serving=args.command != "build-pages")
        logs.setup(config.log_level, config.log_format, os.environ)
    except ConfigError as e:
        print(f"anteroom: invalid configuration: {e}", file=sys.stderr)
        return 2
    if args.command == "build-pages":
        from .themes import build_pages

        for path in build_pages(config, args.out):
            print(path)
        return 0
    serve(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
