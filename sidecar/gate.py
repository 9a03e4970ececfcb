"""The gate: nginx's ``auth_request`` asks it about every queueable request.

Answers nginx understands: 204 = pass; 401 + ``X-Anteroom-Location`` = wait
(nginx turns it into a 302, or a JSON 429 for API clients); 403 = refused.
An admitted cookie is decided locally (HMAC + expiry + revocation list),
with no Redis round trip; Redis is touched only to join or claim.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from urllib.parse import quote, urlsplit

from aiohttp import web
from redis.exceptions import RedisError

from . import fastpass
from .config import NAME_RE, Config, QueueSettings, Tenant
from .engine import Claim, Engine, QueueRef, QueueState
from .refresher import Refresher, TooManyQueues
from .tokens import ADMITTED, WAITING, Signer, Token, cookie_value, new_session_id

log = logging.getLogger("sidecar.gate")

WAITING_TOKEN_TTL = 12 * 3600  # a place in line outlives the longest sale
MAX_RETURN_TO = 2048


def safe_path(value: str | None) -> str | None:
    """``value`` if it is a same-site relative path, else None (no open redirects).

    Refuses scheme-relative (``//host``), backslash tricks (``/\\host``, which
    browsers read as ``//host``), control characters and spaces (browsers drop
    tabs and newlines, turning ``/\\t/host`` into ``//host``) and non-ASCII.
    """
    if not value or len(value) > MAX_RETURN_TO or value[0] != "/" or value.startswith("//"):
        return None
    if "\\" in value or not all(0x21 <= ord(c) <= 0x7E for c in value):
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return None
    return value


def host_name(host: str) -> str:
    """Host header without port, lower-case (``[::1]:8080`` -> ``[::1]``)."""
    host = host.lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.partition(":")[0].rstrip(".")  # "shop.example." is "shop.example"


class Gate:
    def __init__(self, config: Config, engine: Engine, refresher: Refresher) -> None:
        self.config = config
        self.engine = engine
        self.refresher = refresher
        self.signer = Signer(config.secrets)
        self._last_down_log = 0.0
        self.fast_pass = fastpass.from_env(os.environ)  # nginx fast pass, off when None
        self._cookie_attrs = "; Path=/; HttpOnly; SameSite=Lax" + (
            "; Secure" if config.cookie_secure else ""
        )

    # -- shared by gate and status ---------------------------------------

    def tenant(self, request: web.Request) -> Tenant | None:
        return self.config.tenant_for_host(host_name(request.host))

    def token(self, request: web.Request, tenant: Tenant, now: int) -> Token | None:
        """The visitor's verified token, or None: forged, expired and other-tenant
        tokens count as no token at all. Revocation is the caller's to check."""
        raw = cookie_value(request.headers.get("Cookie", ""), self.config.cookie_name)
        if raw is None:
            auth = request.headers.get("Authorization", "")
            if not auth.startswith("Bearer "):
                return None
            raw = auth[7:].strip()
        tok = self.signer.loads(raw)
        if tok is None or tok.tenant != tenant.name or tok.exp <= now:
            return None
        return tok

    def set_cookie(self, resp: web.StreamResponse, tok: Token, now: int) -> None:
        value = self.signer.dumps(tok)
        resp.headers["Set-Cookie"] = (
            f"{self.config.cookie_name}={value}; Max-Age={tok.exp - now}{self._cookie_attrs}"
        )

    def clear_cookie(self, resp: web.StreamResponse) -> None:
        resp.headers["Set-Cookie"] = f"{self.config.cookie_name}=; Max-Age=0{self._cookie_attrs}"

    def waiting_location(self, tenant: Tenant, return_to: str) -> str:
        return f"{tenant.waiting_page}?return_to={quote(return_to, safe='')}"

    async def join(self, q: QueueRef, s: QueueSettings, return_to: str, now: int) -> Token:
        sid = new_session_id()
        admitted, ticket = await self.engine.join(q, sid, s)
        self.refresher.note_join(q, ticket, admitted)
        state, ttl = (ADMITTED, s.session_ttl) if admitted else (WAITING, WAITING_TOKEN_TTL)
        return Token(q.tenant, q.queue, state, ticket, sid, now, now + ttl, return_to)

    async def claim(self, q: QueueRef, tok: Token, state: QueueState, now: int) -> Token | None:
        """Claims an invited waiter's place: the admitted token, a new waiting one
        (turn missed, back of the line), or None (not invited yet)."""
        s = state.settings
        result = await self.engine.claim(q, tok.ticket, tok.sid, s)
        if result is Claim.ADMITTED:
            log.info("admitted", extra={"queue": str(q), "ticket": tok.ticket})
            return replace(tok, state=ADMITTED, iat=now, exp=now + s.session_ttl)
        if result is Claim.MISSED:
            log.info("turn missed, rejoining", extra={"queue": str(q), "ticket": tok.ticket})
            return await self.join(q, s, tok.return_to, now)
        return None

    def keep_alive(
        self, q: QueueRef, tok: Token, state: QueueState, resp: web.StreamResponse, now: int
    ) -> None:
        """Counts an admitted request as activity; slides the cookie when half used."""
        self.refresher.touch_session(q, tok.sid)
        ttl = state.settings.session_ttl
        if tok.exp - now <= ttl / 2:
            self.set_cookie(resp, replace(tok, iat=now, exp=now + ttl), now)

    # -- the auth_request endpoint ---------------------------------------

    async def auth(self, request: web.Request) -> web.StreamResponse:
        tenant = self.tenant(request)
        if tenant is None:
            log.warning("unknown host", extra={"host": request.host})
            return web.Response(status=403)
        queue = request.headers.get("X-Anteroom-Queue", "")
        if not NAME_RE.match(queue):
            log.error(
                "bad queue name from nginx: set $anteroom_queue before including gate.conf",
                extra={"queue": queue[:80], "uri": request.headers.get("X-Original-URI", "")[:200]},
            )
            return web.Response(status=403)
        q = QueueRef(tenant.name, queue)
        state = self.refresher.states.get(q)
        try:
            if state is None:
                state = await self.refresher.state(q, tenant.settings_for(queue))
        except TooManyQueues:
            log.error("too many queues; check the nginx config", extra={"queue": str(q)})
            return web.Response(status=403)
        except (RedisError, OSError) as e:
            return self._redis_down(tenant, tenant.settings_for(queue), e, request)
        if state.settings.mode == "off":
            return web.Response(status=204)

        now = int(time.time())
        tok = self.token(request, tenant, now)
        if tok is not None and tok.queue != queue:
            tok = None  # a place in another queue does not count here
        if tok is not None and tok.sid in self.refresher.revoked:
            # ended (left, revoked) yet presented again: a replay, refused
            log.info("revoked session refused", extra={"queue": str(q), "ticket": tok.ticket})
            return web.Response(status=403)
        if tok is not None and tok.state == ADMITTED:
            resp = web.Response(status=204)
            self.keep_alive(q, tok, state, resp, now)
            if self.fast_pass is not None:  # fast pass hook: renew nginx's pass
                cookies = request.headers.get("Cookie", "")
                self.fast_pass.renew(cookies, tok.sid, queue, now, resp.headers, self._cookie_attrs)
            return resp

        # where this request wanted to go: the waiting page sends them back there
        return_to = safe_path(request.headers.get("X-Original-URI")) or "/"
        try:
            if tok is not None:
                self.refresher.touch_waiter(q, tok.ticket)
                if tok.ticket > state.serving:
                    return self._wait(tenant, return_to)
                new = await self.claim(q, tok, state, now)
                if new is None:
                    return self._wait(tenant, return_to)
            else:
                new = await self.join(q, state.settings, return_to, now)
                log.debug(
                    "joined",
                    extra={"queue": str(q), "ticket": new.ticket, "admitted": new.admitted},
                )
        except (RedisError, OSError) as e:
            if tok is not None:
                return self._wait(tenant, return_to)
            return self._redis_down(tenant, state.settings, e, request)

        if new.admitted:
            resp = web.Response(status=204)
            self.set_cookie(resp, new, now)
            return resp
        resp = self._wait(tenant, return_to)
        self.set_cookie(resp, new, now)
        return resp

    def _wait(self, tenant: Tenant, return_to: str, retry_after: int = 5) -> web.Response:
        resp = web.Response(status=401)
        resp.headers["X-Anteroom-Location"] = self.waiting_location(tenant, return_to)
        resp.headers["Retry-After"] = str(retry_after)
        return resp

    def _redis_down(
        self, tenant: Tenant, s: QueueSettings, e: Exception, request: web.Request
    ) -> web.Response:
        if time.monotonic() - self._last_down_log > 10:  # one line per 10 s, not per visitor
            self._last_down_log = time.monotonic()
            log.error(
                "redis unavailable for new visitors",
                extra={"error": str(e), "policy": s.on_redis_error},
            )
        if s.on_redis_error == "open":
            return web.Response(status=204)
        return self._wait(tenant, safe_path(request.headers.get("X-Original-URI")) or "/", 10)
