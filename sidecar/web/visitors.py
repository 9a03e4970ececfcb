"""Visitors: who holds which place or session, and the Redis calls that change it.

One service for both the auth endpoint (gate) and the public endpoints
(status): reading and verifying tokens from cookies or a Bearer header,
setting and clearing cookies, joining, claiming a place whose turn came,
keeping a session alive, leaving, and the "seen waiter" rule. Tokens are
verified locally; the queue's state comes from the refresher's cache; the
engine is called only to change something.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import replace
from urllib.parse import quote

from aiohttp import web

from ..config import WAITING_TOKEN_TTL, Config, QueueSettings, Tenant
from ..metrics import Metrics
from ..queue import REFUSED, Claim, Engine, Known, QueueRef, QueueState, Refresher
from ..queue.codes import digest
from ..queue.engine import Redeemed
from .challenge import Challenges
from .http import host_name, session_address
from .tokens import (
    ADMITTED,
    FLAGGED,
    PRIORITY,
    WAITING,
    Signer,
    Token,
    cookie_name,
    cookie_value,
    cookie_values,
    new_session_id,
)

log = logging.getLogger("sidecar.gate")

# Seconds a refused newcomer is told to wait: the budget is per minute.
JOIN_REFUSED_RETRY = 60


class TooManyJoins(Exception):
    """The client's address used its budget of new places this minute."""


class NoSuchCode(Exception):
    """An access code that is unknown, used or expired."""


class Visitors:
    def __init__(self, config: Config, engine: Engine, refresher: Refresher) -> None:
        self.config = config
        self.engine = engine
        self.refresher = refresher
        self.metrics: Metrics = engine.metrics
        self.signer = Signer(config.secrets)
        self.challenges = Challenges(config.secrets)
        self.cookie_attrs = "; Path=/; HttpOnly; SameSite=Lax" + (
            "; Secure" if config.cookie_secure else ""
        )

    # -- who is asking ---------------------------------------------------------

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
            if tok.sid in self.refresher.flagged:
                # the effective setting: an operator may switch it on during an attack
                st = self.cached(QueueRef(tok.tenant, tok.queue))
                s = st.settings if st is not None else tenant.settings_for(tok.queue)
                if s.flagged == "infinite":
                    # revoked for sharing: from now on a line that never moves
                    return self.flag(tok.tenant, tok.queue, tok.return_to, now, st)
            return None  # ended (left, revoked): the visitor joins again like anyone
        return tok

    def unsure(self, tok: Token) -> bool:
        """This process cannot tell from memory alone whether ``tok``'s session ended
        (it may be one of the oldest, kept only in the filter): ask :meth:`revoked`."""
        return self.refresher.revoked.known(tok.sid) is Known.UNSURE

    async def revoked(self, q: QueueRef, tok: Token) -> bool:
        """Redis' answer for an unsure session (storage errors propagate: not admitted)."""
        return await self.refresher.revoked.confirm(q, tok.sid)

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

    def prior_token(
        self, request: web.Request, tenant: Tenant, queue: str, now: int
    ) -> Token | None:
        """The cookie this request got a moment ago, before an internal redirect
        (index, try_files, error_page): nginx passes it as X-Anteroom-Prior."""
        value = _set_cookie_value(
            request.headers.get("X-Anteroom-Prior"), self.config.cookie_name, queue
        )
        tok = self.verify(value, tenant, now)
        # a place in one queue never stands for a place in another
        return tok if tok is not None and tok.queue == queue else None

    # -- cookies ---------------------------------------------------------------

    def next_cookie(self, request: web.Request, resp: web.StreamResponse, queue: str) -> str | None:
        """The session cookie for ``queue`` the browser will send next: the one this
        answer sets, else the one set before an internal redirect, else the one sent."""
        name = self.config.cookie_name
        return (
            _set_cookie_value(resp.headers.get("Set-Cookie"), name, queue)
            or _set_cookie_value(request.headers.get("X-Anteroom-Prior"), name, queue)
            or cookie_value(request.headers.get("Cookie", ""), cookie_name(name, queue))
        )

    def bearer(self, tok: Token) -> str:
        """The token as an API client sends it back."""
        return self.signer.dumps(tok)

    def cookie_header(self, tok: Token, now: int) -> str:
        name = cookie_name(self.config.cookie_name, tok.queue)
        return f"{name}={self.signer.dumps(tok)}; Max-Age={tok.exp - now}{self.cookie_attrs}"

    def set_cookie(self, resp: web.StreamResponse, tok: Token, now: int) -> None:
        # added, not replaced: a keepalive may slide several queues' sessions at once
        # (an auth answer sets one cookie at most: nginx passes on the first only)
        resp.headers.add("Set-Cookie", self.cookie_header(tok, now))

    def clear_cookie(self, resp: web.StreamResponse, queue: str) -> None:
        name = cookie_name(self.config.cookie_name, queue)
        resp.headers.add("Set-Cookie", f"{name}=; Max-Age=0{self.cookie_attrs}")

    def waiting_location(self, tenant: Tenant, return_to: str, queue: str) -> str:
        return f"{tenant.waiting_page}?queue={queue}&return_to={quote(return_to, safe='')}"

    # -- the queue's state -----------------------------------------------------

    def cached(self, q: QueueRef) -> QueueState | None:
        """The refresher's last state of ``q``, if this process has seen it."""
        return self.refresher.current(q)

    async def state(self, q: QueueRef, tenant: Tenant) -> QueueState:
        """The cached state, read from Redis the first time ``q`` is asked about
        (:class:`TooManyQueues` past the process's bound; storage errors)."""
        state = self.refresher.current(q)
        if state is None:
            state = await self.refresher.state(q, tenant.settings_for(q.queue))
        return state

    # -- changes ---------------------------------------------------------------

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
            exp = _expiry(now, now, s)
            return Token(q.tenant, q.queue, ADMITTED, ticket, sid, now, exp, epoch=epoch)
        exp = now + WAITING_TOKEN_TTL
        return Token(q.tenant, q.queue, WAITING, ticket, sid, now, exp, return_to, epoch)

    def flag(
        self, tenant: str, queue: str, return_to: str, now: int, state: QueueState | None
    ) -> Token:
        """A place in a line that never moves: it looks like the next one in line
        (a ticket after the last, a position at the back), takes no capacity and
        is answered from memory (see :func:`flagged_position`)."""
        waiting = state.waiting if state is not None else 0
        ticket = (state.tickets if state is not None else 0) + 1 + secrets.randbelow(5)
        start = waiting + 20 + secrets.randbelow(80)
        exp = now + WAITING_TOKEN_TTL
        # the epoch field carries the position first shown: no Redis key names this place
        return Token(
            tenant, queue, FLAGGED, ticket, new_session_id(), now, exp, return_to, str(start)
        )

    @staticmethod
    def newly_flagged(request: web.Request, tok: Token) -> bool:
        """Whether ``tok`` was made for this request (a shared cookie revoked a moment
        ago) rather than sent by the client: then its cookie must be set."""
        h = request.headers
        return tok.sid not in h.get("Cookie", "") and tok.sid not in h.get("Authorization", "")

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

    def seen(self, q: QueueRef, tok: Token, state: QueueState | None = None) -> None:
        """A waiter asked: they are present (waiters who stop asking are skipped).
        Against a cached ``state`` of another epoch the number is someone else's."""
        if state is None or tok.epoch == state.epoch:
            self.refresher.touch_waiter(q, tok.ticket)

    def must_claim(self, q: QueueRef, tok: Token, state: QueueState) -> bool:
        """Whether only Redis can say what a waiting token's place is worth now: its
        turn came (by the cached state), or it is of another epoch than the cached
        one (a place lost in a restart, or a state a moment older than the token); a
        place from an access code (served before the line); in random order, a
        ticket the last heartbeats found out of line (drawn)."""
        return (
            state.line(tok.ticket) <= state.serving
            or tok.epoch != state.epoch
            or tok.priority
            or self.refresher.left_line(q, tok.ticket)
        )

    async def redeem(
        self,
        q: QueueRef,
        s: QueueSettings,
        code: str,
        held: Token | None,
        return_to: str,
        now: int,
    ) -> Token:
        """A place for an access code: admitted at once, or next in (before the line);
        the place ``held`` (if any) leaves the line. :class:`NoSuchCode` if the code
        is unknown, used or expired."""
        sid = new_session_id()
        old = held if held is not None and not held.admitted and not held.flagged else None
        r = await self.engine.redeem(
            q, digest(code), sid, s, old.ticket if old else 0, old.epoch if old else ""
        )
        if r.result is Redeemed.INVALID:
            raise NoSuchCode(q)
        log.info(
            "access code used",
            extra={"queue": str(q), "ticket": r.ticket, "label": r.label, "result": r.result.name},
        )
        admitted = r.result is Redeemed.ADMITTED
        tok = self.token_for(q, s, sid, r.ticket, admitted, return_to, now, r.epoch)
        return tok if admitted else replace(tok, state=PRIORITY)

    async def claim(
        self, q: QueueRef, tok: Token, state: QueueState, now: int, address: str = ""
    ) -> Token | None:
        """Claims a waiter's place when their turn came: the admitted token, a new
        waiting one (turn and second chance missed: back of the line), or None."""
        s = state.settings
        result, epoch = await self.engine.claim_place(
            q, tok.ticket, tok.sid, s, tok.epoch, joined=tok.iat
        )
        self.refresher.claimed(q, tok.ticket)
        if result is Claim.RESTORED:
            # Redis lost the queue and the token vouched for this place: same ticket,
            # the new epoch (queue/lua/claim.lua)
            log.info("place restored", extra={"queue": str(q), "ticket": tok.ticket})
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
            self.refresher.touch_session(q, tok.sid, session_address(request))
        if tok.exp - now <= s.session_ttl / 2:
            exp = _expiry(tok.iat, now, s)
            if exp > tok.exp:
                self.set_cookie(resp, replace(tok, exp=exp), now)

    async def leave(self, q: QueueRef, tok: Token) -> bool:
        """Ends a place or session: refused here at once, freed in Redis (whether a
        place or slot was freed); storage errors after the local refusal."""
        until = tok.exp if tok.admitted else 0
        if tok.admitted:
            self.refresher.revoke(tok.sid, until)
        return await self.engine.leave(q, tok.ticket, tok.sid, until, tok.epoch)


def flagged_position(tok: Token, now: int) -> int:
    """Where a flagged client is shown: it drifts forward fast at first, then ever
    more slowly, and never reaches the front (the same on every replica)."""
    start = int(tok.epoch) if tok.epoch.isdigit() else 50
    floor = max(3, start // 4)
    return floor + (start - floor) * 900 // (900 + max(0, now - tok.iat))


def _expiry(admitted_at: int, now: int, s: QueueSettings) -> int:
    """Sliding idle TTL inside the absolute lifetime."""
    return min(now + s.session_ttl, admitted_at + s.session_max)


def _set_cookie_value(header: str | None, prefix: str, queue: str) -> str | None:
    """The value of our cookie for ``queue`` in a Set-Cookie header value."""
    if not header:
        return None
    name, sep, rest = header.partition("=")
    if not sep or name.strip() != cookie_name(prefix, queue):
        return None
    value = rest.partition(";")[0].strip()
    return value or None
