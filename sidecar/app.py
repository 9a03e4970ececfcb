"""The aiohttp application: one factory, every resource opened and closed in one place."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from redis.asyncio import Redis, RedisCluster

from .config import Config
from .engine import Engine
from .gate import Gate
from .health import Health
from .refresher import Refresher
from .sentinel import primary_client
from .status import Status

log = logging.getLogger("sidecar.app")

CONFIG = web.AppKey("config", Config)
REFRESHER = web.AppKey("refresher", Refresher)
GATE = web.AppKey("gate", Gate)
HEALTH = web.AppKey("health", Health)

# aiohttp's defaults (8 KiB) are below what nginx forwards with its own
# large_client_header_buffers; a refused header would become nginx's 500.
HANDLER_ARGS = {"max_line_size": 65536, "max_field_size": 65536}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def guarded(handler: Handler) -> Handler:
    """Public endpoints: an unexpected failure is logged and answered with a JSON 503.
    (The auth endpoint goes without: nginx maps its failures to a 503 itself, and
    it is the hot path.)"""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception:
            log.exception("unhandled error", extra={"path": request.path})
            return web.json_response({"error": "unavailable"}, status=503)

    return wrapper


def create_app(config: Config) -> web.Application:
    app = web.Application(handler_args=HANDLER_ARGS)
    # the client connects lazily, inside the running loop
    redis: Redis | RedisCluster
    sentinel = None
    if "+sentinel://" in config.redis_url:  # the client follows the primary by itself
        redis, sentinel = primary_client(
            config.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0
        )
    elif config.redis_cluster:  # any node's address; the client discovers the rest
        redis = RedisCluster.from_url(
            config.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0
        )
    else:
        redis = Redis.from_url(
            config.redis_url,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            health_check_interval=30,
        )
    # purge slack covers heartbeats still waiting in a replica's batch
    engine = Engine(redis, purge_slack_ms=int(config.heartbeat_interval * 1000) + 1000)
    refresher = Refresher(engine, config.refresh_interval, config.heartbeat_interval)
    gate = Gate(config, engine, refresher)
    status = Status(gate)
    health = Health(redis, engine, refresher)
    app[CONFIG], app[REFRESHER], app[GATE], app[HEALTH] = config, refresher, gate, health

    app.router.add_get("/_anteroom/auth", gate.auth)
    app.router.add_get("/_anteroom/status", guarded(status.status))
    app.router.add_get("/_anteroom/continue", guarded(status.resume))
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
        yield
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
