"""Health endpoints for nginx, load balancers and orchestrators.

``/livez``: the process answers (restart it if not). ``/readyz``: send it
traffic; 200 only once the scripts are loaded and Redis answers, 503 while
starting, while Redis is away and once shutdown has begun. ``/healthz`` (kept
for existing checks) says whether the last queue refresh reached Redis.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from redis.asyncio import Redis, RedisCluster

from ..queue import Engine, Refresher, StorageError
from .http import NO_STORE

log = logging.getLogger("sidecar.health")

PING_TIMEOUT = 1.0  # well inside the usual 3-5 s probe timeout


class Health:
    def __init__(self, redis: Redis | RedisCluster, engine: Engine, refresher: Refresher) -> None:
        self.redis = redis
        self.engine = engine
        self.refresher = refresher
        self.scripts_loaded = False
        self.draining = False

    async def load_scripts(self) -> None:
        """Loads the scripts at start-up, retrying with a backoff until Redis answers."""
        delay = 0.1
        while not self.scripts_loaded:
            try:
                await self.engine.load_scripts()
                self.scripts_loaded = True
            except StorageError as e:
                log.warning("scripts not loaded yet", extra={"error": str(e), "retry_in": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        await self.check_eviction_policy()

    async def check_eviction_policy(self) -> str | None:
        """Warns unless Redis is set to refuse writes when full: an evicted counter
        or rate key would break the line. Managed Redis may forbid CONFIG: then
        nothing is said (the runbook asks the operator to check)."""
        try:
            reply: dict[Any, Any] = await self.redis.config_get("maxmemory-policy")
        except StorageError:
            return None
        raw = reply.get("maxmemory-policy", reply.get(b"maxmemory-policy"))
        policy = raw.decode() if isinstance(raw, bytes) else raw
        if policy is not None and policy != "noeviction":
            log.warning(
                "redis may evict keys: set maxmemory-policy noeviction",
                extra={"maxmemory_policy": policy},
            )
        return policy

    @staticmethod
    def _json(body: dict[str, Any], ok: bool) -> web.Response:
        return web.json_response(body, status=200 if ok else 503, headers=NO_STORE)

    async def livez(self, request: web.Request) -> web.Response:
        return self._json({"alive": True}, True)

    async def readyz(self, request: web.Request) -> web.Response:
        redis_ok = False
        if self.scripts_loaded and not self.draining:
            try:
                redis_ok = bool(await asyncio.wait_for(self.redis.ping(), PING_TIMEOUT))
            except StorageError:  # TimeoutError is an OSError
                redis_ok = False
        ok = self.scripts_loaded and redis_ok and not self.draining
        body = {"ready": ok, "scripts": self.scripts_loaded, "redis": redis_ok}
        if self.draining:
            body["draining"] = True
        return self._json(body, ok)

    async def healthz(self, request: web.Request) -> web.Response:
        ok = self.refresher.redis_ok
        return self._json({"redis": ok}, ok)
