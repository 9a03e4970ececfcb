"""The gate: nginx's ``auth_request`` asks it about every queueable request.

Answers nginx understands: 204 = pass; 401 + ``X-Anteroom-Location`` = wait
(nginx turns it into a 302, or a JSON 429 for API clients); 403 = refused.
An admitted cookie is decided locally (HMAC + expiry + revocation list),
with no Redis round trip; Redis is touched only to join or claim.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web

from ..config import NAME_RE, QueueSettings, Tenant
from ..logs import Throttled, excerpt
from ..metrics import Metrics
from ..queue import Busy, QueueRef, StorageError, TooManyQueues
from . import fastpass
from .http import access_code, answer, client_address, host_name, original_path
from .tokens import Token
from .visitors import JOIN_REFUSED_RETRY, NoSuchCode, TooManyJoins, Visitors

log = logging.getLogger("sidecar.gate")

NO_QUEUE = ("", "")  # metrics label for requests no queue can be named for


class Gate:
    def __init__(self, visitors: Visitors) -> None:
        self.visitors = visitors
        self.metrics: Metrics = visitors.metrics
        self.fast_pass = fastpass.from_config(visitors.config)  # nginx fast pass, off when None
        self._cookie_secure = visitors.config.cookie_secure
        self.client_log = Throttled(log)  # lines a client's requests can cause at will
        self._warned_http = False

    async def auth(self, request: web.Request) -> web.StreamResponse:
        labels, outcome, resp = await self._auth(request)
        self.metrics.decision(labels, outcome)
        return resp

    async def _auth(self, request: web.Request) -> tuple[tuple[str, str], str, web.Response]:
        """The decision: (tenant and queue for metrics, outcome, the answer)."""
        v = self.visitors
        tenant = v.tenant(request)
        if tenant is None:
            self.client_log.warning("unknown host", {"host": excerpt(request.host)})
            return NO_QUEUE, "refused", answer(403)
        queue = request.headers.get("X-Anteroom-Queue", "")
        if not NAME_RE.match(queue):
            # a location regex may take the name from the URL: the client chooses it
            self.client_log.error(
                "bad queue name from nginx: set $anteroom_queue before including gate.conf",
                {
                    "queue": excerpt(queue),
                    "uri": excerpt(request.headers.get("X-Original-URI", "")),
                },
            )
            return (tenant.name, ""), "refused", answer(403)
        q = QueueRef(tenant.name, queue)
        try:
            state = await v.state(q, tenant)
        except TooManyQueues:  # cannot be tracked now: wait, never pass unchecked
            return q, "waiting", self._wait(tenant, queue, original_path(request), 2)
        except StorageError as e:
            resp = self._redis_down(tenant, queue, tenant.settings_for(queue), e, request)
            return q, "redis_error", resp
        if state.settings.mode == "off":
            return q, "off", answer(204)

        now = int(time.time())
        # one visitor, one decision: the cookie set a moment ago, before an internal redirect
        tok = v.prior_token(request, tenant, queue, now) or v.token(request, tenant, now, queue)
        if tok is not None and tok.admitted and v.unsure(tok):
            # an ended session this process keeps only in its filter may be this one
            try:
                if await v.revoked(q, tok):
                    tok = None
            except StorageError:  # cannot tell: wait, never pass unchecked
                return q, "waiting", self._wait(tenant, queue, original_path(request), 2)
        if state.shut and (tok is None or not tok.admitted or tok.flagged):
            # closed: no place taken, none claimed; admitted sessions go on
            return q, "closed", self._closed(tenant, queue, original_path(request))
        if tok is not None and tok.flagged:
            # a line that never moves: the waiting page, answered from memory
            resp = self._wait(tenant, queue, original_path(request))
            if v.newly_flagged(request, tok):  # just flagged (a shared cookie revoked): keep it
                v.set_cookie(resp, tok, now)
            return q, "flagged", resp
        if tok is not None and tok.admitted:
            resp = answer(204)
            v.keep_alive(q, tok, state, resp, now, request)
            if self.fast_pass is not None:
                self._renew_pass(request, tenant, queue, tok, resp, now)
            return q, "admitted", resp

        # where this request wanted to go (an access code left out): the waiting
        # page sends them back there
        return_to = original_path(request)
        code = access_code(request)
        invite_only = state.settings.access == "invite"
        try:
            if code is not None and (tok is None or not tok.priority):
                new = await self._redeem(request, q, state.settings, code, tok, return_to, now)
                if new is not None:
                    resp = answer(204) if new.admitted else self._wait(tenant, queue, return_to)
                    v.set_cookie(resp, new, now)
                    return q, "code_used", resp
                if tok is None and invite_only:
                    return q, "invite_needed", self._invite(tenant, queue, return_to, code)
            if tok is None and invite_only:
                return q, "invite_needed", self._invite(tenant, queue, return_to, None)
            if tok is not None:
                v.seen(q, tok, state)
                if not v.must_claim(q, tok, state):
                    return q, "waiting", self._wait(tenant, queue, return_to)
                new = await v.claim(q, tok, state, now, client_address(request))
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
                if state.settings.challenge == "pow":
                    # a place only for a solved challenge: the page solves it, then joins
                    return q, "challenged", self._wait(tenant, queue, return_to, challenge=True)
                new = await v.join(q, state.settings, return_to, now, client_address(request))
        except TooManyJoins:
            if state.settings.flagged == "infinite":
                resp = self._wait(tenant, queue, return_to)
                v.set_cookie(resp, v.flag(tenant.name, queue, return_to, now, state), now)
                return q, "flagged", resp
            # no place, no cookie: the waiting page comes back later, with backoff
            return q, "over_budget", self._wait(tenant, queue, return_to, JOIN_REFUSED_RETRY)
        except Busy:
            # load, not an outage: wait and come back, never fail open
            return q, "waiting", self._wait(tenant, queue, return_to, 2)
        except StorageError as e:
            if tok is not None:
                return q, "waiting", self._wait(tenant, queue, return_to)
            return q, "redis_error", self._redis_down(tenant, queue, state.settings, e, request)

        if new.admitted:
            resp = answer(204)
            v.set_cookie(resp, new, now)
            return q, "entered", resp
        resp = self._wait(tenant, queue, return_to)
        v.set_cookie(resp, new, now)
        return q, "waiting", resp

    def _renew_pass(
        self,
        request: web.Request,
        tenant: Tenant,
        queue: str,
        tok: Token,
        resp: web.Response,
        now: int,
    ) -> None:
        """nginx's fast pass, bound to the session cookie the browser will send next
        and to the address nginx saw: anywhere else the request comes here."""
        assert self.fast_pass is not None
        v = self.visitors
        session = v.next_cookie(request, resp, queue)
        held = v.verify(session, tenant, now)
        if session is None or held is None or held.sid != tok.sid or not held.admitted:
            return  # a Bearer token, or a cookie other than the one decided on: no pass
        address = request.headers.get("X-Real-IP", "")
        scope = f"{queue} {host_name(request.host)}"  # as fastpass.conf hashes it
        self.fast_pass.renew(
            request.headers.get("Cookie", ""),
            tok.sid,
            scope,
            address,
            session,
            now,
            resp.headers,
            v.cookie_attrs,
        )

    async def _redeem(
        self,
        request: web.Request,
        q: QueueRef,
        s: QueueSettings,
        code: str,
        tok: Token | None,
        return_to: str,
        now: int,
    ) -> Token | None:
        """A place for the access code on the link; None when it gives none (unknown,
        used, expired or malformed, or a request that takes no place)."""
        method = request.headers.get("X-Original-Method", "GET")
        # previews, checks and cross-site posts spend no code (as they take no place)
        cross_site = request.headers.get("Sec-Fetch-Site") == "cross-site"
        if not code or method in ("HEAD", "OPTIONS") or (cross_site and method != "GET"):
            return None
        try:
            return await self.visitors.redeem(q, s, code, tok, return_to, now)
        except NoSuchCode:
            self.client_log.info("access code refused", {"queue": str(q)})
            return None

    def _invite(self, tenant: Tenant, queue: str, return_to: str, code: str | None) -> web.Response:
        """An invite-only queue and no valid code: no place. nginx sends browsers to
        the waiting page's invitation notice, JSON clients a 403 (X-Anteroom-State)."""
        resp = self._wait(tenant, queue, return_to, 60)
        why = "#invite" if code is None else "#invite-invalid"
        resp.headers["X-Anteroom-Location"] = (
            self.visitors.waiting_location(tenant, return_to, queue) + "&access=invite" + why
        )
        resp.headers["X-Anteroom-State"] = "invite"
        return resp

    def _wait(
        self,
        tenant: Tenant,
        queue: str,
        return_to: str,
        retry_after: int = 5,
        challenge: bool = False,
    ) -> web.Response:
        resp = answer(401)
        location = self.visitors.waiting_location(tenant, return_to, queue)
        # the page without JavaScript shows why it cannot get a place (CSS :target)
        resp.headers["X-Anteroom-Location"] = location + ("#challenge" if challenge else "")
        resp.headers["Retry-After"] = str(retry_after)
        return resp

    def _closed(self, tenant: Tenant, queue: str, return_to: str) -> web.Response:
        """The waiting page's closed view (``#closed`` shows it without JavaScript);
        ``X-Anteroom-State: closed`` lets nginx answer JSON clients with a 410."""
        resp = answer(401)
        location = self.visitors.waiting_location(tenant, return_to, queue)
        resp.headers["X-Anteroom-Location"] = location + "#closed"
        resp.headers["X-Anteroom-State"] = "closed"
        return resp

    def _check_scheme(self, request: web.Request) -> None:
        if (
            not self._warned_http
            and self._cookie_secure
            and request.headers.get("X-Forwarded-Proto") == "http"
        ):
            self._warned_http = True
            log.warning(
                "site reached over plain HTTP but cookies are Secure: browsers drop them and "
                "every request takes a new place. Serve HTTPS, or set ANTEROOM_COOKIE_SECURE=0 "
                "for staging over HTTP",
                extra={"host": excerpt(request.host)},
            )

    def _redis_down(
        self, tenant: Tenant, queue: str, s: QueueSettings, e: Exception, request: web.Request
    ) -> web.Response:
        self.client_log.error(  # one line a minute, not one per visitor
            "redis unavailable for new visitors", {"error": str(e), "policy": s.on_redis_error}
        )
        if s.on_redis_error == "open":
            return answer(204)
        return self._wait(tenant, queue, original_path(request), 10)
