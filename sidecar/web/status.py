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

from ..config import NAME_RE, Tenant
from ..queue.engine import Busy, QueueRef, QueueState
from ..queue.refresher import TooManyQueues
from .gate import JOIN_REFUSED_RETRY, Gate, TooManyJoins, client_address, safe_path
from .tokens import Token

log = logging.getLogger("sidecar.status")

NO_STORE = {"Cache-Control": "no-store"}


def _json(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/json",
        headers={**NO_STORE, **(headers or {})},
    )


# (position up to, seconds between polls): quick near the front, gentle further
# back. Every interval is also capped at a third of abandon_after, so a waiter
# who keeps polling is never taken for gone. See docs/performance.md for what
# a million waiters cost.
POLL_BANDS = ((10, 3), (100, 5), (1_000, 10), (10_000, 20))
POLL_FAR = 45


def poll_after(position: int, abandon_after: int) -> int:
    """Seconds until the next poll (the page adds jitter)."""
    every = next((secs for upto, secs in POLL_BANDS if position <= upto), POLL_FAR)
    return max(1, min(every, abandon_after // 3))


# The final countdown: answers before an opening send each waiter back at a
# second of their own within OPENING_SPREAD seconds after it (spread by ticket),
# so a pre-queue of N lands at about N / OPENING_SPREAD polls a second, not all
# in the first (docs/performance.md has the model).
OPENING_SPREAD = 20


def opening_poll_after(opens_in: int, ticket: int, abandon_after: int) -> int:
    """Seconds until the next poll of a waiter in a pre-queue."""
    # often enough to count as present, whatever the spread
    limit = max(1, min(20, abandon_after // 3))
    if opens_in + 1 > limit:
        return limit
    # the spread stays inside the abandon window: a waiter is never taken for gone
    spread = max(0, min(OPENING_SPREAD, abandon_after // 2 - opens_in - 1))
    return opens_in + 1 + (ticket * 2654435761 % 2**32) * (spread + 1) // 2**32


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


def _queue_param(request: web.Request) -> str | None:
    queue = request.query.get("queue")
    return queue if queue and NAME_RE.match(queue) else None


class Status:
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def _tenant(self, request: web.Request) -> Tenant:
        tenant = self.gate.tenant(request)
        if tenant is None:
            raise web.HTTPForbidden(text="unknown site", headers=NO_STORE)
        return tenant

    async def _state(self, q: QueueRef, tenant: Tenant) -> QueueState | None:
        with contextlib.suppress(RedisError, OSError, TooManyQueues):
            return await self.gate.refresher.state(q, tenant.settings_for(q.queue))
        return None

    async def _visit(self, request: web.Request) -> Visit:
        tenant = self._tenant(request)
        v = Visit(tenant, int(time.time()))
        tok = self.gate.token(request, tenant, v.now, _queue_param(request))
        if tok is None or not NAME_RE.match(tok.queue):
            return v
        v.tok, v.q = tok, QueueRef(tenant.name, tok.queue)
        v.state = await self._state(v.q, tenant)
        return v

    def _return_to(self, request: web.Request, tok: Token | None) -> str:
        return safe_path(request.query.get("return_to")) or (tok.return_to if tok else "/")

    def _waiting(self, tok: Token, state: QueueState) -> dict[str, Any]:
        body: dict[str, Any] = {
            "state": "waiting",
            "queue": tok.queue,
            "ticket": tok.ticket,
            "in_line": state.waiting,
            "mode": state.settings.mode,
            "opens_at": state.settings.opens_at or None,
            "updated": state.redis_time_ms,
            "redirect": None,
        }
        if state.closed:
            # a pre-queue: the order is drawn at the opening, so no place yet
            opens_in = max(0, state.settings.opens_at - state.redis_time_ms // 1000)
            body.update(
                position=None,
                ahead=None,
                eta_seconds=None,
                eta_range=None,
                opens_in=opens_in,
                notice="opens_later",
                poll_after=opening_poll_after(opens_in, tok.ticket, state.settings.abandon_after),
            )
            return body
        if state.opening:
            # the order is being written: places are known in a moment, each
            # waiter asks again at a second of their own
            body.update(
                position=None,
                ahead=None,
                eta_seconds=None,
                eta_range=None,
                opens_in=0,
                notice="opening",
                poll_after=opening_poll_after(0, tok.ticket, state.settings.abandon_after),
            )
            return body
        position = state.position(tok.ticket)
        eta, eta_range = estimate(position, state)
        body.update(
            position=position,
            ahead=position - 1,
            eta_seconds=eta,
            eta_range=eta_range,
            poll_after=poll_after(position, state.settings.abandon_after),
        )
        return body

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
                "queue": tok.queue,
                "position": None,
                "eta_seconds": None,
                "poll_after": 10,
                "redirect": None,
                "degraded": True,
            }
            return body, v, resp
        if tok.admitted:
            self.gate.keep_alive(q, tok, state, resp, v.now, request)
            return {"state": "admitted", "queue": tok.queue, "redirect": return_to}, v, resp

        if tok.epoch == state.epoch:  # another epoch's number is someone else's
            self.gate.refresher.touch_waiter(q, tok.ticket)
        if self.gate.must_claim(tok, state):
            try:
                new = await self.gate.claim(q, tok, state, v.now, client_address(request))
            except (RedisError, OSError, Busy, TooManyJoins) as e:
                log.warning("claim failed", extra={"queue": str(q), "error": repr(e)})
                new = None
            if new is not None:
                self.gate.set_cookie(resp, new, v.now)
                v.tok = tok = new
                if new.admitted:  # let in from the waiting page: count it with the gate's
                    self.gate.metrics.decision(q, "entered")
                    return {"state": "admitted", "queue": tok.queue, "redirect": return_to}, v, resp
        return self._waiting(tok, state), v, resp

    async def status(self, request: web.Request) -> web.Response:
        body, _, resp = await self._decide(request)
        resp.content_type = "application/json"
        resp.text = json.dumps(body)
        return resp

    async def resume(self, request: web.Request) -> web.Response:
        """No-JavaScript path: the waiting page's meta refresh lands here."""
        body, v, resp = await self._decide(request)
        if body["state"] == "waiting" and v.tok is not None:
            return_to = self._return_to(request, v.tok)
            location = self.gate.waiting_location(v.tenant, return_to, v.tok.queue)
        else:
            location = body["redirect"]
        resp.set_status(303)
        resp.headers["Location"] = location
        return resp

    async def join(self, request: web.Request) -> web.Response:
        """API clients: a place in a queue as JSON, the token to send as a Bearer."""
        tenant = self._tenant(request)
        if request.headers.get("Sec-Fetch-Site") == "cross-site":
            # a page of another site posting here would replace the visitor's place
            return _json({"error": "cross-site request"}, 403)
        queue = _queue_param(request)
        if queue is None:
            return _json({"error": "queue: letters, digits, '_' or '-' (at most 64)"}, 400)
        # only queues the configuration names or nginx has sent visitors to
        known = queue in tenant.queues or QueueRef(tenant.name, queue) in self.gate.refresher.states
        if not known:
            return _json({"error": "unknown queue"}, 404)
        now = int(time.time())
        q = QueueRef(tenant.name, queue)
        state = await self._state(q, tenant)
        if state is None:
            return _json({"error": "unavailable"}, 503, {"Retry-After": "10"})
        if state.settings.mode == "off":
            return _json({"state": "admitted", "queue": queue, "token": None, "poll_after": None})
        tok = self.gate.token(request, tenant, now, queue)
        try:
            if tok is None:
                tok = await self.gate.join(q, state.settings, "/", now, client_address(request))
            elif not tok.admitted and self.gate.must_claim(tok, state):
                tok = await self.gate.claim(q, tok, state, now, client_address(request)) or tok
        except TooManyJoins:
            retry = {"Retry-After": str(JOIN_REFUSED_RETRY)}
            return _json({"error": "too many new places from this address"}, 429, retry)
        except Busy:
            return _json({"error": "busy"}, 503, {"Retry-After": "2"})
        except (RedisError, OSError):
            return _json({"error": "unavailable"}, 503, {"Retry-After": "10"})
        if tok.admitted:
            body: dict[str, Any] = {
                "state": "admitted",
                "queue": queue,
                "position": 0,
                "eta_seconds": 0,
                "poll_after": None,
            }
        else:
            self.gate.refresher.touch_waiter(q, tok.ticket)
            body = self._waiting(tok, self.gate.refresher.states.get(q, state))
        body["token"] = self.gate.signer.dumps(tok)
        resp = _json(body)
        self.gate.set_cookie(resp, tok, now)
        return resp

    async def leave(self, request: web.Request) -> web.Response:
        """Ends the place or session in ``?queue=`` (or every one the visitor holds)."""
        tenant = self._tenant(request)
        now = int(time.time())
        queue = _queue_param(request)
        held = self.gate.tokens(request, tenant, now)
        bearer = self.gate.token(request, tenant, now, queue)
        if bearer is not None and bearer not in held:
            held.append(bearer)
        if queue is not None:
            held = [t for t in held if t.queue == queue]
        freed = False
        for tok in held:
            q = QueueRef(tenant.name, tok.queue)
            until = tok.exp if tok.admitted else 0
            if tok.admitted:
                self.gate.refresher.revoke(tok.sid, until)
            try:
                left = await self.gate.engine.leave(q, tok.ticket, tok.sid, until, tok.epoch)
                freed = left or freed
            except (RedisError, OSError, Busy) as e:
                # this replica refuses the cookie already; the session idles out elsewhere
                log.warning("leave not recorded", extra={"queue": str(q), "error": repr(e)})
            log.info("left", extra={"queue": str(q), "ticket": tok.ticket, "sid": tok.sid})
        return_to = safe_path(request.query.get("return_to"))
        if return_to is not None:
            resp = web.Response(status=303, headers={"Location": return_to, **NO_STORE})
        else:
            resp = _json({"state": "left", "freed": freed})
        for tok in held:
            self.gate.clear_cookie(resp, tok.queue)
        return resp

    async def keepalive(self, request: web.Request) -> web.Response:
        """The site-page script's "still here", for every session the visitor holds."""
        tenant = self._tenant(request)
        now = int(time.time())
        queue = _queue_param(request)
        sessions = [t for t in self.gate.tokens(request, tenant, now) if t.admitted]
        if queue is not None:
            sessions = [t for t in sessions if t.queue == queue]
        if not sessions:
            return _json({"state": "none"})
        resp = _json({"state": "admitted", "expires_in": min(t.exp for t in sessions) - now})
        for tok in sessions:
            q = QueueRef(tenant.name, tok.queue)
            state = await self._state(q, tenant)
            if state is not None:
                self.gate.keep_alive(q, tok, state, resp, now, request)
        return resp
