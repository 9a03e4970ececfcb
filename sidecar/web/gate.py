"""The gate: nginx's ``auth_request`` asks it about every queueable request.

Answers nginx understands: 204 = pass; 401 + ``X-Anteroom-Location`` = wait
(nginx turns it into a 302, or a JSON 429 for API clients); 403 = refused.
An admitted cookie is decided locally (HMAC + expiry + revocation list),
with no Redis round trip; Redis is touched only to join or claim.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from dataclasses import replace
from urllib.parse import quote, urlsplit

from aiohttp import web
from redis.exceptions import RedisError

from ..config import NAME_RE, Config, QueueSettings, Tenant
from ..metrics import Metrics
from ..queue.engine import REFUSED, Busy, Claim, Engine, QueueRef, QueueState
from ..queue.refresher import Refresher, TooManyQueues
from . import fastpass
from .tokens import (
    ADMITTED,
    WAITING,
    Signer,
    Token,
    cookie_name,
    cookie_value,
    cookie_values,
    new_session_id,
)

log = logging.getLogger("sidecar.gate")

WAITING_TOKEN_TTL = 12 * 3600  # a place in line outlives the longest sale
# return_to travels %-escaped in the cookie and again in the Location header;
# bounded so both fit nginx's default 4 KB header buffer with room to spare.
MAX_RETURN_TO = 1024
NO_STORE = "no-store"
NO_QUEUE = ("", "")  # metrics label for requests no queue can be named for


def safe_path(value: str | None) -> str | None:
    """``value`` if it is a same-site relative path, else None (no open redirects).

    Refuses scheme-relative (``//host``), backslash tricks (``/\\host``, which
    browsers read as ``//host``), control characters and spaces (browsers drop
    tabs and newlines, turning ``/\\t/host`` into ``//host``) and non-ASCII.
    A path too long to carry is cut to its path, or to ``/``.
    """
    if not value or value[0] != "/" or value.startswith("//"):
        return None
    if "\\" in value or not all(0x21 <= ord(c) <= 0x7E for c in value):
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return None
    if len(quote(value, safe="")) > MAX_RETURN_TO:
        value = parts.path if len(quote(parts.path, safe="")) <= MAX_RETURN_TO else "/"
    return value


class TooManyJoins(Exception):
    """The client's address used its budget of new places this minute."""


# Seconds a refused newcomer is told to wait: the budget is per minute.
JOIN_REFUSED_RETRY = 60


def client_address(request: web.Request) -> str:
    """The address nginx saw (X-Real-IP), as the join budget counts it: an IPv4
    address, or the /64 of an IPv6 one (one subscriber's usual share). "" if
    missing or malformed: no budget applies then."""
    raw = request.headers.get("X-Real-IP", "")
    try:
        ip = ipaddress.ip_address(raw.strip())
    except ValueError:
        return ""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False).network_address) + "/64"
    return str(ip)


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
        self.metrics: Metrics = engine.metrics
        self.refresher = refresher
        self.signer = Signer(config.secrets)
        self._last_down_log = 0.0
        self._warned_http = False
        self.fast_pass = fastpass.from_env(os.environ)  # nginx fast pass, off when None
        self._cookie_attrs = "; Path=/; HttpOnly; SameSite=Lax" + (
            "; Secure" if config.cookie_secure else ""
        )

    # -- shared by gate and status ---------------------------------------

    def tenant(self, request: web.Request) -> Tenant | None:
        return self.config.tenant_for_host(host_name(request.host))

    def verify(self, raw: str | None, tenant: Tenant, now: int) -> Token | None:
        """The token in ``raw`` if valid here and now: forged, malformed, expired,
        other-tenant and revoked tokens all count as no token at all."""
        if raw is None:
            return None
        tok = self.signer.loads(raw)
        if tok is None or tok.tenant != tenant.name or tok.exp <= now:
            return None
        if tok.admitted and tok.sid in self.refresher.revoked:
            return None  # ended (left, revoked): the visitor joins again like anyone
        return tok

    def token(
        self, request: web.Request, tenant: Tenant, now: int, queue: str | None
    ) -> Token | None:
        """The visitor's token for ``queue`` (None: the one place they hold, waiting
        ones first), from their cookies or an ``Authorization: Bearer`` header."""
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            tok = self.verify(auth[7:].strip(), tenant, now)
            if tok is not None and (queue is None or tok.queue == queue):
                return tok
        if queue is not None:
            raw = cookie_value(
                request.headers.get("Cookie", ""), cookie_name(self.config.cookie_name, queue)
            )
            tok = self.verify(raw, tenant, now)
            return tok if tok is not None and tok.queue == queue else None
        held = self.tokens(request, tenant, now)
        return next((t for t in held if not t.admitted), held[0] if held else None)

    def tokens(self, request: web.Request, tenant: Tenant, now: int) -> list[Token]:
        """Every valid place or session the visitor holds on this site."""
        found = []
        for name, raw in cookie_values(request.headers.get("Cookie", ""), self.config.cookie_name):
            tok = self.verify(raw, tenant, now)
            if tok is not None and tok.queue == name:
                found.append(tok)
        return found

    def cookie_header(self, tok: Token, now: int) -> str:
        value = self.signer.dumps(tok)
        name = cookie_name(self.config.cookie_name, tok.queue)
        return f"{name}={value}; Max-Age={tok.exp - now}{self._cookie_attrs}"

    def set_cookie(self, resp: web.StreamResponse, tok: Token, now: int) -> None:
        # added, not replaced: a keepalive may slide several queues' sessions at once
        # (an auth answer sets one cookie at most: nginx passes on the first only)
        resp.headers.add("Set-Cookie", self.cookie_header(tok, now))

    def clear_cookie(self, resp: web.StreamResponse, queue: str) -> None:
        name = cookie_name(self.config.cookie_name, queue)
        resp.headers.add("Set-Cookie", f"{name}=; Max-Age=0{self._cookie_attrs}")

    def waiting_location(self, tenant: Tenant, return_to: str, queue: str) -> str:
        return f"{tenant.waiting_page}?queue={queue}&return_to={quote(return_to, safe='')}"

    def token_for(
        self,
        q: QueueRef,
        s: QueueSettings,
        sid: str,
        ticket: int,
        admitted: bool,
        return_to: str,
        now: int,
        epoch: str,
    ) -> Token:
        if admitted:
            exp = self._expiry(now, now, s)
            return Token(q.tenant, q.queue, ADMITTED, ticket, sid, now, exp, epoch=epoch)
        exp = now + WAITING_TOKEN_TTL
        return Token(q.tenant, q.queue, WAITING, ticket, sid, now, exp, return_to, epoch)

    @staticmethod
    def _expiry(admitted_at: int, now: int, s: QueueSettings) -> int:
        """Sliding idle TTL inside the absolute lifetime."""
        return min(now + s.session_ttl, admitted_at + s.session_max)

    async def join(
        self, q: QueueRef, s: QueueSettings, return_to: str, now: int, address: str = ""
    ) -> Token:
        """A new place; :class:`TooManyJoins` if ``address`` used its budget."""
        sid = new_session_id()
        admitted, ticket, epoch = await self.engine.join(q, sid, s, address)
        if ticket == REFUSED:
            # debug: a minting bot would fill the log (the metric counts them)
            log.debug("join refused", extra={"queue": str(q), "address": address})
            raise TooManyJoins(address)
        self.refresher.note_join(q, ticket, admitted, epoch)
        log.debug("joined", extra={"queue": str(q), "ticket": ticket, "admitted": admitted})
        return self.token_for(q, s, sid, ticket, admitted, return_to, now, epoch)

    @staticmethod
    def must_claim(tok: Token, state: QueueState) -> bool:
        """Whether only Redis can say what a waiting token's place is worth now: its
        turn came (by the cached state), or it is of another epoch than the cached
        one (a place lost in a restart, or a state a moment older than the token)."""
        return state.line(tok.ticket) <= state.serving or tok.epoch != state.epoch

    async def claim(
        self, q: QueueRef, tok: Token, state: QueueState, now: int, address: str = ""
    ) -> Token | None:
        """Claims a waiter's place when their turn came: the admitted token, a new
        waiting one (turn and second chance missed: back of the line), or None."""
        s = state.settings
        result, epoch = await self.engine.claim_place(q, tok.ticket, tok.sid, s, tok.epoch)
        if result is Claim.RESTORED:
            # Redis lost the queue; the token vouched for this place: same ticket, new epoch
            log.info(
                "place restored after redis lost the queue",
                extra={"queue": str(q), "ticket": tok.ticket},
            )
            return replace(tok, epoch=epoch)
        if result is Claim.ADMITTED:
            log.info("admitted", extra={"queue": str(q), "ticket": tok.ticket, "sid": tok.sid})
            return self.token_for(q, s, tok.sid, tok.ticket, True, "/", now, tok.epoch)
        if result is Claim.MISSED:
            log.info("turn missed, rejoining", extra={"queue": str(q), "ticket": tok.ticket})
            return await self.join(q, s, tok.return_to, now, address)
        if result is Claim.STALE:
            # Redis lost the queue (restart without persistence): a new place
            log.info(
                "place from before a redis restart, rejoining",
                extra={"queue": str(q), "ticket": tok.ticket, "epoch": tok.epoch},
            )
            return await self.join(q, s, tok.return_to, now, address)
        return None

    def keep_alive(
        self,
        q: QueueRef,
        tok: Token,
        state: QueueState,
        resp: web.StreamResponse,
        now: int,
        request: web.Request,
    ) -> None:
        """Counts an admitted request as activity (with the client address nginx
        passes, when the queue watches for shared cookies); slides the cookie when
        half used, never past the session's absolute lifetime."""
        s = state.settings
        if s.shared_sessions == "allow":
            self.refresher.touch_session(q, tok.sid)
        else:
            # nginx's $remote_addr; 45 characters hold any IPv6 address
            address = request.headers.get("X-Real-IP", "")[:45]
            self.refresher.touch_session(q, tok.sid, address.replace(",", ""))
        if tok.exp - now <= s.session_ttl / 2:
            exp = self._expiry(tok.iat, now, s)
            if exp > tok.exp:
                self.set_cookie(resp, replace(tok, exp=exp), now)

    # -- the auth_request endpoint ---------------------------------------

    async def auth(self, request: web.Request) -> web.StreamResponse:
        labels, outcome, resp = await self._auth(request)
        self.metrics.decision(labels, outcome)
        return resp

    async def _auth(self, request: web.Request) -> tuple[tuple[str, str], str, web.Response]:
        """The decision: (tenant and queue for metrics, outcome, the answer)."""
        tenant = self.tenant(request)
        if tenant is None:
            log.warning("unknown host", extra={"host": request.host[:200]})
            return NO_QUEUE, "refused", _answer(403)
        queue = request.headers.get("X-Anteroom-Queue", "")
        if not NAME_RE.match(queue):
            log.error(
                "bad queue name from nginx: set $anteroom_queue before including gate.conf",
                extra={"queue": queue[:80], "uri": request.headers.get("X-Original-URI", "")[:200]},
            )
            return (tenant.name, ""), "refused", _answer(403)
        q = QueueRef(tenant.name, queue)
        state = self.refresher.states.get(q)
        try:
            if state is None:
                state = await self.refresher.state(q, tenant.settings_for(queue))
        except TooManyQueues:
            log.error("too many queues; check the nginx config", extra={"queue": str(q)})
            return q, "refused", _answer(403)
        except (RedisError, OSError) as e:
            resp = self._redis_down(tenant, queue, tenant.settings_for(queue), e, request)
            return q, "redis_error", resp
        if state.settings.mode == "off":
            return q, "off", _answer(204)

        now = int(time.time())
        # the cookie this request got a moment ago, before an internal redirect
        # (index, try_files, error_page): one visitor, one decision
        prior = request.headers.get("X-Anteroom-Prior")
        tok = self.verify(_set_cookie_value(prior, self.config.cookie_name, queue), tenant, now)
        if tok is None:
            tok = self.token(request, tenant, now, queue)
        if tok is not None and tok.admitted:
            resp = _answer(204)
            self.keep_alive(q, tok, state, resp, now, request)
            if self.fast_pass is not None:  # renew nginx's pass
                cookies = request.headers.get("Cookie", "")
                scope = f"{queue} {host_name(request.host)}"  # as fastpass.conf hashes it
                self.fast_pass.renew(cookies, tok.sid, scope, now, resp.headers, self._cookie_attrs)
            return q, "admitted", resp

        # where this request wanted to go: the waiting page sends them back there
        return_to = safe_path(request.headers.get("X-Original-URI")) or "/"
        try:
            if tok is not None:
                if tok.epoch == state.epoch:  # another epoch's number is someone else's
                    self.refresher.touch_waiter(q, tok.ticket)
                if not self.must_claim(tok, state):
                    return q, "waiting", self._wait(tenant, queue, return_to)
                new = await self.claim(q, tok, state, now, client_address(request))
                if new is None:
                    return q, "waiting", self._wait(tenant, queue, return_to)
            else:
                method = request.headers.get("X-Original-Method", "GET")
                # previews, checks and CORS preflights take no place (and are never
                # let through: many origins answer OPTIONS with the page itself);
                # nor does a cross-site form post, which would replace the place of
                # a visitor whose SameSite cookie the browser did not send
                cross_site = request.headers.get("Sec-Fetch-Site") == "cross-site"
                if method in ("HEAD", "OPTIONS") or (cross_site and method != "GET"):
                    return q, "waiting", self._wait(tenant, queue, return_to)
                self._check_scheme(request)
                new = await self.join(q, state.settings, return_to, now, client_address(request))
        except TooManyJoins:
            # no place, no cookie: the waiting page comes back later, with backoff
            return q, "over_budget", self._wait(tenant, queue, return_to, JOIN_REFUSED_RETRY)
        except Busy:
            # load, not an outage: wait and come back, never fail open
            return q, "waiting", self._wait(tenant, queue, return_to, 2)
        except (RedisError, OSError) as e:
            if tok is not None:
                return q, "waiting", self._wait(tenant, queue, return_to)
            return q, "redis_error", self._redis_down(tenant, queue, state.settings, e, request)

        if new.admitted:
            resp = _answer(204)
            self.set_cookie(resp, new, now)
            return q, "entered", resp
        resp = self._wait(tenant, queue, return_to)
        self.set_cookie(resp, new, now)
        return q, "waiting", resp

    def _wait(
        self, tenant: Tenant, queue: str, return_to: str, retry_after: int = 5
    ) -> web.Response:
        resp = _answer(401)
        resp.headers["X-Anteroom-Location"] = self.waiting_location(tenant, return_to, queue)
        resp.headers["Retry-After"] = str(retry_after)
        return resp

    def _check_scheme(self, request: web.Request) -> None:
        if (
            not self._warned_http
            and self.config.cookie_secure
            and request.headers.get("X-Forwarded-Proto") == "http"
        ):
            self._warned_http = True
            log.warning(
                "site reached over plain HTTP but cookies are Secure: browsers drop them and "
                "every request takes a new place. Serve HTTPS, or set ANTEROOM_COOKIE_SECURE=0 "
                "for staging over HTTP",
                extra={"host": request.host[:200]},
            )

    def _redis_down(
        self, tenant: Tenant, queue: str, s: QueueSettings, e: Exception, request: web.Request
    ) -> web.Response:
        if time.monotonic() - self._last_down_log > 10:  # one line per 10 s, not per visitor
            self._last_down_log = time.monotonic()
            log.error(
                "redis unavailable for new visitors",
                extra={"error": str(e), "policy": s.on_redis_error},
            )
        if s.on_redis_error == "open":
            return _answer(204)
        return_to = safe_path(request.headers.get("X-Original-URI")) or "/"
        return self._wait(tenant, queue, return_to, 10)


def _answer(status: int) -> web.Response:
    return web.Response(status=status, headers={"Cache-Control": NO_STORE})


def _set_cookie_value(header: str | None, prefix: str, queue: str) -> str | None:
    """The value of our cookie for ``queue`` in a Set-Cookie header value."""
    if not header:
        return None
    name, sep, rest = header.partition("=")
    if not sep or name.strip() != cookie_name(prefix, queue):
        return None
    value = rest.partition(";")[0].strip()
    return value or None
