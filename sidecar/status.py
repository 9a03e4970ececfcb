"""Public endpoints under ``/_anteroom/`` on the site's own origin.

``status`` is what the waiting page polls. It answers from the process's
cached queue state; only a waiter whose turn has come costs a Redis call
(the claim). ``continue`` is the same decision for browsers without
JavaScript, as redirects. ``leave`` ends a place or session at once;
``keepalive`` is the site-page script's "still here".
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from .config import NAME_RE, Tenant
from .engine import QueueRef, QueueState
from .gate import Gate, safe_path
from .refresher import TooManyQueues
from .tokens import Token

log = logging.getLogger("sidecar.status")

NO_STORE = {"Cache-Control": "no-store"}


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", headers=NO_STORE
    )


def poll_after(position: int) -> int:
    """Seconds until the next poll: quick near the front, gentle further back."""
    if position <= 10:
        return 3
    if position <= 200:
        return 5
    return 10


def estimate(position: int, state: QueueState) -> tuple[float | None, list[int] | None]:
    """ETA in seconds from the admission rate measured over the last minute."""
    rate = state.admissions_per_second
    if state.settings.mode == "paused" or rate <= 0:
        return None, None
    eta = position / rate
    return round(eta, 1), [math.floor(eta * 0.75), math.ceil(eta * 1.5)]


@dataclass(slots=True)
class Visit:
    """Who is asking: their tenant, verified token, queue and its cached state."""

    tenant: Tenant
    now: int
    tok: Token | None = None
    q: QueueRef | None = None
    state: QueueState | None = None  # None when Redis could not be asked


class Status:
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def _visit(self, request: web.Request) -> Visit:
        tenant = self.gate.tenant(request)
        if tenant is None:
            raise web.HTTPForbidden(text="unknown site")
        v = Visit(tenant, int(time.time()))
        tok = self.gate.token(request, tenant, v.now)
        if tok is None or tok.sid in self.gate.refresher.revoked or not NAME_RE.match(tok.queue):
            return v
        v.tok, v.q = tok, QueueRef(tenant.name, tok.queue)
        with contextlib.suppress(RedisError, OSError, TooManyQueues):
            v.state = await self.gate.refresher.state(v.q, tenant.settings_for(tok.queue))
        return v

    def _return_to(self, request: web.Request, tok: Token | None) -> str:
        return safe_path(request.query.get("return_to")) or (tok.return_to if tok else "/")

    async def _decide(self, request: web.Request) -> tuple[dict[str, Any], Visit, web.Response]:
        """The visitor's state as JSON-ready data; claims the place when it is their turn.
        Cookies to set are already on the returned response."""
        v = await self._visit(request)
        resp = web.Response(headers=NO_STORE)
        return_to = self._return_to(request, v.tok)
        tok, q, state = v.tok, v.q, v.state
        if tok is None or q is None:
            # no place in line: going back to the page joins it
            return {"state": "none", "redirect": return_to}, v, resp
        if state is None:
            body: dict[str, Any] = {
                "state": "waiting",
                "position": None,
                "eta_seconds": None,
                "poll_after": 10,
                "redirect": None,
                "degraded": True,
            }
            return body, v, resp
        if tok.admitted:
            self.gate.keep_alive(q, tok, state, resp, v.now)
            return {"state": "admitted", "redirect": return_to}, v, resp

        self.gate.refresher.touch_waiter(q, tok.ticket)
        if tok.ticket <= state.serving:
            try:
                new = await self.gate.claim(q, tok, state, v.now)
            except (RedisError, OSError) as e:
                log.warning("claim failed", extra={"queue": str(q), "error": str(e)})
                new = None
            if new is not None:
                self.gate.set_cookie(resp, new, v.now)
                v.tok = tok = new
                if new.admitted:
                    return {"state": "admitted", "redirect": return_to}, v, resp
        position = max(1, tok.ticket - state.serving)
        eta, eta_range = estimate(position, state)
        body = {
            "state": "waiting",
            "position": position,
            "ahead": position - 1,
            "in_line": state.waiting,
            "eta_seconds": eta,
            "eta_range": eta_range,
            "mode": state.settings.mode,
            "updated": state.redis_time_ms,
            "poll_after": poll_after(position),
            "redirect": None,
        }
        return body, v, resp

    async def status(self, request: web.Request) -> web.Response:
        body, _, resp = await self._decide(request)
        resp.content_type = "application/json"
        resp.text = json.dumps(body)
        return resp

    async def resume(self, request: web.Request) -> web.Response:
        """No-JavaScript path: the waiting page's meta refresh lands here."""
        body, v, resp = await self._decide(request)
        if body["state"] == "waiting" and v.tok is not None:
            location = self.gate.waiting_location(v.tenant, self._return_to(request, v.tok))
        else:
            location = body["redirect"]
        resp.set_status(303)
        resp.headers["Location"] = location
        return resp

    async def leave(self, request: web.Request) -> web.Response:
        v = await self._visit(request)
        freed = False
        if v.tok is not None and v.q is not None:
            self.gate.refresher.revoke(v.tok.sid, v.tok.exp)
            try:
                freed = await self.gate.engine.leave(v.q, v.tok.ticket, v.tok.sid, v.tok.exp)
            except (RedisError, OSError) as e:
                # this replica refuses the cookie already; the session idles out elsewhere
                log.warning("leave not recorded", extra={"queue": str(v.q), "error": str(e)})
            log.info("left", extra={"queue": str(v.q), "ticket": v.tok.ticket, "freed": freed})
        return_to = safe_path(request.query.get("return_to"))
        if return_to is not None:
            resp = web.Response(status=303, headers={"Location": return_to, **NO_STORE})
        else:
            resp = _json({"state": "left", "freed": freed})
        self.gate.clear_cookie(resp)
        return resp

    async def keepalive(self, request: web.Request) -> web.Response:
        v = await self._visit(request)
        if v.tok is None or v.q is None or not v.tok.admitted:
            return _json({"state": "none"})
        resp = _json({"state": "admitted", "expires_in": v.tok.exp - v.now})
        if v.state is not None:
            self.gate.keep_alive(v.q, v.tok, v.state, resp, v.now)
        return resp
