"""The aiohttp application: one factory, every resource opened and closed in one place."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler
from redis.asyncio import Redis, RedisCluster

from ..config import Config
from ..logs import Throttled
from ..metrics import Metrics
from ..queue import Engine, Refresher
from ..queue.client import primary_client
from .gate import Gate
from .health import Health
from .status import Status
from .visitors import Visitors

log = logging.getLogger("sidecar.app")


class ServerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger. A request its parser refuses (a control character
    in a header, a bad request line) is the client's fault: a throttled warning
    (logs.Throttled) without the traceback or the client's bytes. Everything else
    (a handler's unexpected error) is logged as aiohttp does."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("aiohttp.server"))
        self.client_log = Throttled(log)

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if not isinstance(exc, HttpProcessingError) or (exc.code or 400) >= 500:
            super().log(level, msg, *args, **kwargs)
            return
        self.client_log.warning("malformed requests refused (400)")

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        return msg, kwargs


# aiohttp's defaults (8 KiB) are below what nginx forwards with its own
# large_client_header_buffers; a refused header would become nginx's 500.
HANDLER_ARGS = {"max_line_size": 65536, "max_field_size": 65536}


def guarded(handler: Handler, observe: Callable[[float], None] | None = None) -> Handler:
    """Public endpoints: an unexpected failure is logged and answered with a JSON 503;
    ``observe`` records how long each took (metrics), whatever its outcome. One
    wrapper for both: the status poll is the busiest public endpoint. (The auth
    endpoint goes without: nginx maps its failures to a 503 itself.)"""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception:
            log.exception("unhandled error", extra={"path": request.path})
            return web.json_response({"error": "unavailable"}, status=503)
        finally:
            if observe is not None:
                observe(time.perf_counter() - started)

    return wrapper


def timed(handler: Handler, observe: Callable[[float], None]) -> Handler:
    """Records how long ``handler`` took (metrics), whatever its outcome."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            return await handler(request)
        finally:
            observe(time.perf_counter() - started)

    return wrapper


# A second listener worker 0 runs beside the site-facing one (the control room's,
# given by the caller: web does not import control): started once the app's
# resources exist, stopped before they close.
Listener = Callable[[Config, Engine, Refresher, Metrics], Awaitable[web.AppRunner]]


def create_app(
    config: Config,
    worker: int = 0,
    metrics_dir: str | None = None,
    admin: Listener | None = None,
) -> web.Application:
    """The site-facing app. Worker 0 also runs ``admin`` (if given and configured), in
    this process and on its own address; ``metrics_dir`` is where workers share figures."""
    app = web.Application(handler_args={**HANDLER_ARGS, "logger": ServerLog()})
    # the client connects lazily, inside the running loop
    redis: Redis | RedisCluster
    # the engine bounds what requests use (pool_size); a few more serve the
    # refresher, so the line keeps moving however busy the gate is
    connections = config.redis_pool + 8
    sentinel = None
    if "+sentinel://" in config.redis_url:  # the client follows the primary by itself
        redis, sentinel = primary_client(
            config.redis_url,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            max_connections=connections,
        )
    elif config.redis_cluster:  # any node's address; the client discovers the rest
        redis = RedisCluster.from_url(
            config.redis_url,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            max_connections=connections,
        )
    else:
        redis = Redis.from_url(
            config.redis_url,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            health_check_interval=30,
            max_connections=connections,
        )
    # purge slack covers heartbeats still waiting in a replica's batch
    metrics = Metrics(metrics_dir, worker)
    engine = Engine(
        redis,
        purge_slack_ms=int(config.heartbeat_interval * 1000) + 1000,
        pool_size=config.redis_pool,
        pool_timeout=config.redis_pool_timeout,
        metrics=metrics,
    )
    refresher = Refresher(engine, config.refresh_interval, config.heartbeat_interval)
    visitors = Visitors(config, engine, refresher)
    gate, status = Gate(visitors), Status(visitors)
    health = Health(redis, engine, refresher)

    app.router.add_get("/_anteroom/auth", timed(gate.auth, metrics.decision_time))
    app.router.add_get("/_anteroom/status", guarded(status.status, metrics.status_time))
    app.router.add_get("/_anteroom/continue", guarded(status.resume))
    app.router.add_post("/_anteroom/join", guarded(status.join))
    app.router.add_get("/_anteroom/challenge", guarded(status.challenge))
    app.router.add_post("/_anteroom/leave", guarded(status.leave))
    app.router.add_post("/_anteroom/keepalive", guarded(status.keepalive))
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/livez", health.livez)
    app.router.add_get("/readyz", health.readyz)

    async def draining(app: web.Application) -> None:
        # SIGTERM: the listener is closed; in-flight requests finish before cleanup
        health.draining = True
        log.info("draining", extra={"timeout": config.shutdown_timeout})

    app.on_shutdown.append(draining)

    async def background(app: web.Application) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(refresher.run(), name="anteroom-refresher"),
            asyncio.create_task(health.load_scripts(), name="anteroom-scripts"),
        ]
        admin_runner = None
        if worker == 0 and config.admin_port and admin is not None:
            admin_runner = await admin(config, engine, refresher, metrics)
        elif metrics_dir:
            tasks.append(asyncio.create_task(share_metrics(metrics), name="anteroom-metrics"))
        yield
        if admin_runner is not None:
            await admin_runner.cleanup()
        for task in tasks:
            task.cancel()
        # bounded: a Redis call cut off mid-way must not hold the exit past the drain
        _, stuck = await asyncio.wait(tasks, timeout=2.0)
        if stuck:
            log.warning("background tasks still running at exit", extra={"tasks": len(stuck)})
        try:  # hand the last heartbeats over before leaving
            await asyncio.wait_for(refresher.flush(), timeout=3.0)
        except Exception as e:
            log.warning("last heartbeats not written", extra={"error": str(e)})
        await redis.aclose()
        if sentinel is not None:
            for node in sentinel.sentinels:
                await node.aclose()
        log.info("stopped")

    app.cleanup_ctx.append(background)
    return app


async def share_metrics(metrics: Metrics, every: float = 1.0) -> None:
    """A worker other than 0 hands its figures to worker 0, which serves /metrics."""
    while True:
        await asyncio.sleep(every)
        try:
            await asyncio.to_thread(metrics.write_snapshot)
        except OSError as e:
            log.warning("metrics not shared", extra={"error": str(e)})
