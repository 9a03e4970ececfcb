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

from aiohttp import hdrs, web

from ..config import LANGUAGE_RE, NAME_RE, ConfigError, QueueSettings, Tenant, queue_setting
from ..logs import Throttled
from ..queue import Busy, QueueRef, QueueState, StorageError, TooManyQueues
from ..queue.client import text
from ..queue.estimate import measured, measured_rate, wait
from .challenge import Refused
from .http import (
    NO_STORE,
    client_address,
    decoded,
    json_answer,
    plain_query,
    query_value,
    queue_name,
    queue_param,
    return_param,
)
from .tokens import PRIORITY, WAITING, Token
from .visitors import JOIN_REFUSED_RETRY, NoSuchCode, TooManyJoins, Visitors, flagged_position

log = logging.getLogger("sidecar.status")

# a poll answers "still waiting" when its claim fails; a leave is refused locally anyway
LEAVE_FAILED: tuple[type[Exception], ...] = (*StorageError, Busy)
CLAIM_FAILED: tuple[type[Exception], ...] = (*LEAVE_FAILED, TooManyJoins)

# (position up to, seconds between polls): quick near the front, gentle further
# back. Every interval is also capped at a third of abandon_after, so a waiter
# who keeps polling is never taken for gone. See docs/performance.md for what
# a million waiters cost.
POLL_BANDS = ((10, 3), (100, 5), (1_000, 10), (10_000, 20))
POLL_FAR = 45
DRAW_POLL = 15  # random order: seconds between polls at most (draw_poll_after)
JSON_HEADERS = {**NO_STORE, "Content-Type": "application/json; charset=utf-8"}
MAX_SHARED_BODIES = 1024  # queues whose shared waiting JSON is kept (one per queue)
# poll URLs whose reading is kept (see Status._page), and their longest Host + URL:
# the page's poll is under 100 characters with a short return_to (4,096 x 512: 2 MB)
MAX_PAGES = 4096
MAX_PAGE_KEY = 512


def closed_body(queue: str, state: QueueState, language: str) -> dict[str, Any]:
    """What a visitor without an admitted session learns of a closed queue: the
    operator's message and link; nothing to poll for."""
    s = state.settings
    return {
        "state": "closed",
        "queue": queue,
        "message": s.message_for(language) or None,
        "link": s.closed_link or None,
        "closes_at": s.closes_at or None,
        "updated": state.redis_time_ms,
        "redirect": None,
        "poll_after": None,
    }


def language_param(request: web.Request, tenant: Tenant) -> str:
    """``?lang=`` (the waiting page's language), else the tenant's."""
    return language(query_value(request, "lang"), tenant)


def language(lang: str | None, tenant: Tenant) -> str:
    """``lang`` if it names a language, else the tenant's."""
    return lang if lang and LANGUAGE_RE.match(lang) else tenant.language


def poll_after(position: int, abandon_after: int) -> int:
    """Seconds until the next poll (the page adds jitter)."""
    every = POLL_FAR
    for upto, secs in POLL_BANDS:
        if position <= upto:
            every = secs
            break
    return max(1, min(every, abandon_after // 3))


def draw_poll_after(s: QueueSettings) -> int:
    """Seconds between polls in random order: anyone may be drawn at any tick, and a
    draw is noticed at the poll after the next heartbeat flush, so two polls and a
    flush fit well inside the grace period (and polls keep the waiter present)."""
    return max(2, min(DRAW_POLL, (s.grace - 2) // 3, s.abandon_after // 3))


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


@dataclass(slots=True)
class _Shared:
    """What every waiter of one queue state is answered with, in one language: the
    JSON up to the ticket, encoded once, and what each poll's own numbers are
    worked out from."""

    state: QueueState
    head: str  # the JSON up to the ticket
    # a pre-queue (or while its drawn order is written): the JSON after the ticket up
    # to the waiter's own poll_after; "" when the line is open
    closed: str
    opens_in: int
    draw_after: int  # random order: every waiter's poll_after; 0 in FIFO order
    rate: float  # admissions a second, when the wait is worked out from them (else 0)

    @classmethod
    def of(cls, queue: str, state: QueueState, language: str) -> _Shared:
        s = state.settings
        head = json.dumps(
            {
                "state": "waiting",
                "queue": queue,
                "in_line": state.waiting,
                "mode": s.mode,
                "opens_at": s.opens_at or None,
                "closes_at": s.closes_at or None,
                "message": s.message_for(language) or None,
                "updated": state.redis_time_ms,
                "redirect": None,
                # random order: no place in line, a draw among in_draw present waiters
                "order": s.order,
                "in_draw": state.in_draw if s.order == "random" else None,
            }
        )
        closed, opens_in = "", 0
        if state.closed or state.opening:
            if state.closed:
                opens_in = max(0, s.opens_at - state.redis_time_ms // 1000)
            tail = {
                "position": None,
                "ahead": None,
                "eta_seconds": None,
                "eta_range": None,
                "opens_in": opens_in,
                # "opening": the order is being written, places come in a moment
                "notice": "opens_later" if state.closed else "opening",
            }
            closed = ", " + json.dumps(tail)[1:-1] + ', "poll_after": '
        draw_after = draw_poll_after(s) if s.order == "random" else 0
        head = head[:-1] + ', "ticket": '
        return cls(state, head, closed, opens_in, draw_after, measured_rate(state))

    def answer(self, tok: Token) -> str:
        """The JSON answer of ``tok``'s waiter."""
        state = self.state
        if self.closed:  # a pre-queue, or its order being written: no place yet
            after = opening_poll_after(self.opens_in, tok.ticket, state.settings.abandon_after)
            return f"{self.head}{tok.ticket}{self.closed}{after}}}"
        if tok.state == PRIORITY:  # an access code's place: before everyone in line
            position = 1
        elif self.draw_after:
            return (
                f'{self.head}{tok.ticket}, "position": null, "ahead": null, '
                f'"eta_seconds": null, "eta_range": null, "poll_after": {self.draw_after}}}'
            )
        else:
            position = state.position(tok.ticket)
        eta, eta_range = measured(position, self.rate) if self.rate else wait(position, state)
        if eta_range is None:
            estimate = '"eta_seconds": null, "eta_range": null'
        else:
            estimate = f'"eta_seconds": {eta!r}, "eta_range": [{eta_range[0]}, {eta_range[1]}]'
        after = poll_after(position, state.settings.abandon_after)
        return (
            f'{self.head}{tok.ticket}, "position": {position}, "ahead": {position - 1}, '
            f'{estimate}, "poll_after": {after}}}'
        )


@dataclass(frozen=True, slots=True)
class _Page:
    """What a status poll's Host and URL say: the tenant, the queue and the language
    of the answer."""

    tenant: Tenant
    q: QueueRef
    language: str


@dataclass(slots=True)
class Visit:
    """Who is asking: their tenant, verified token, queue and its cached state."""

    tenant: Tenant
    now: int
    tok: Token | None = None
    q: QueueRef | None = None
    state: QueueState | None = None  # None when Redis could not be asked


class Status:
    def __init__(self, visitors: Visitors) -> None:
        self.visitors = visitors
        self.client_log = Throttled(log)  # lines a client's polls can cause at will
        # (queue, language) -> (the state they were built from, head, closed tail,
        # opens_in): see _waiting
        self._shared: dict[tuple[QueueRef, str], _Shared] = {}
        self._pages: dict[tuple[str, str], _Page] = {}  # (Host, URL) -> what they say

    def _tenant(self, request: web.Request) -> Tenant:
        tenant = self.visitors.tenant(request)
        if tenant is None:
            raise web.HTTPForbidden(text="unknown site", headers=NO_STORE)
        return tenant

    async def _state(self, q: QueueRef, tenant: Tenant) -> QueueState | None:
        with contextlib.suppress(*StorageError, TooManyQueues):
            return await self.visitors.state(q, tenant)
        return None

    async def _visit(self, request: web.Request) -> Visit:
        tenant = self._tenant(request)
        v = Visit(tenant, int(time.time()))
        tok = self.visitors.token(request, tenant, v.now, queue_param(request))
        if tok is None or not NAME_RE.match(tok.queue):
            return v
        v.tok, v.q = tok, QueueRef(tenant.name, tok.queue)
        if tok.flagged:  # answered from memory: never a Redis call
            v.state = self.visitors.cached(v.q)
            return v
        v.state = await self._state(v.q, tenant)
        return v

    async def _named_queue(
        self, request: web.Request, tenant: Tenant
    ) -> tuple[QueueRef, QueueState | None, QueueSettings] | None:
        """The ``?queue=`` of a visitor without a place, its state and settings (a
        known queue only: see _known)."""
        queue = queue_param(request)
        q = None if queue is None else self._known(tenant, queue)
        if queue is None or q is None:
            return None
        state = await self._state(q, tenant)
        return q, state, state.settings if state is not None else tenant.settings_for(queue)

    def _known(self, tenant: Tenant, queue: str) -> QueueRef | None:
        """``queue`` if the configuration names it or nginx has sent visitors to it
        (a made-up name tracks nothing)."""
        q = QueueRef(tenant.name, queue)
        return q if queue in tenant.queues or self.visitors.cached(q) is not None else None

    def _asked(self, request: web.Request, tenant: Tenant) -> QueueRef | web.Response:
        """An API client's ``?queue=`` (a known queue: see _known), or the error answer."""
        queue = queue_param(request)
        if queue is None:
            return json_answer({"error": "queue: letters, digits, '_' or '-' (at most 64)"}, 400)
        q = self._known(tenant, queue)
        return json_answer({"error": "unknown queue"}, 404) if q is None else q

    async def _shut_queue(
        self, request: web.Request, tenant: Tenant
    ) -> tuple[QueueRef, QueueState] | None:
        """The visitor's named queue with its state, if it is closed."""
        named = await self._named_queue(request, tenant)
        if named is None or named[1] is None or not named[1].shut:
            return None
        return named[0], named[1]

    async def _challenge_queue(self, request: web.Request, tenant: Tenant) -> QueueRef | None:
        """The visitor's named queue, if it asks newcomers for a proof of work."""
        named = await self._named_queue(request, tenant)
        if named is None or named[2].challenge != "pow" or named[2].mode == "off":
            return None
        return named[0]

    async def _invite_queue(self, request: web.Request, tenant: Tenant) -> QueueRef | None:
        """The visitor's named queue, if only invitations get a place in it."""
        named = await self._named_queue(request, tenant)
        if named is None or named[2].access != "invite" or named[2].mode == "off":
            return None
        return named[0]

    def _new_challenge(self, q: QueueRef, tenant: Tenant, now: int) -> dict[str, Any]:
        state = self.visitors.cached(q)
        s = state.settings if state is not None else tenant.settings_for(q.queue)
        c = self.visitors.challenges.issue(q.tenant, q.queue, s.challenge_difficulty, now)
        return self.visitors.challenges.describe(c, now)

    def _flagged(self, tok: Token, state: QueueState | None, now: int) -> str:
        """A flagged client's answer: shaped like any waiter's, from memory only."""
        position = flagged_position(tok, now)
        rate = (
            state.admissions_per_second
            if state is not None and state.admissions_per_second > 0
            else 0.5
        )
        eta = position / rate
        return json.dumps(
            {
                "state": "waiting",
                "queue": tok.queue,
                "in_line": max(position + 12, state.waiting if state is not None else 0),
                "mode": "on",
                "opens_at": None,
                "updated": now * 1000,
                "redirect": None,
                "ticket": tok.ticket,
                "position": position,
                "ahead": position - 1,
                "eta_seconds": round(eta, 1),
                "eta_range": [math.floor(eta * 0.75), math.ceil(eta * 1.5)],
                "poll_after": poll_after(position, 120),
            }
        )

    def _return_to(self, request: web.Request, tok: Token | None) -> str:
        return return_param(request, tok.return_to if tok else "/")

    def _waiting(self, q: QueueRef, tok: Token, state: QueueState, language: str) -> str:
        """A waiter's answer as JSON. What every waiter of this queue state shares is
        encoded once per state and language (the refresher replaces the state when it
        changes); a poll adds only its own numbers."""
        shared = self._shared.get((q, language))
        if shared is None or shared.state is not state:
            if len(self._shared) >= MAX_SHARED_BODIES:
                self._shared.clear()
            shared = self._shared[(q, language)] = _Shared.of(tok.queue, state, language)
        return shared.answer(tok)

    async def _decide(
        self, request: web.Request
    ) -> tuple[dict[str, Any] | None, Visit, web.Response]:
        """The visitor's state as JSON-ready data, or None for a waiter with a place
        (``v.tok``, ``v.q`` and ``v.state`` set: see _waiting); claims the place when it
        is their turn. Cookies to set are already on the returned response."""
        v = await self._visit(request)
        resp = web.Response(headers=NO_STORE)
        return_to = self._return_to(request, v.tok)
        tok, q, state = v.tok, v.q, v.state
        lang = language_param(request, v.tenant)
        if state is not None and state.shut and tok is not None and not tok.admitted:
            return closed_body(tok.queue, state, lang), v, resp  # flagged ones too
        if tok is None or q is None:
            shut = await self._shut_queue(request, v.tenant)
            if shut is not None:  # a newcomer the gate sent to the closed page
                return closed_body(shut[0].queue, shut[1], lang), v, resp
            cq = await self._challenge_queue(request, v.tenant)
            if cq is not None:  # a place for a solved challenge: POST /_anteroom/join
                asked: dict[str, Any] = {
                    "state": "challenge",
                    "queue": cq.queue,
                    "redirect": return_to,
                    "challenge": self._new_challenge(cq, v.tenant, v.now),
                }
                return asked, v, resp
            iq = await self._invite_queue(request, v.tenant)
            if iq is not None:  # no place without an access code: nothing to rejoin
                invite = {"state": "invite", "queue": iq.queue, "redirect": return_to}
                return invite, v, resp
            # no place in line: going back to the page joins it
            return {"state": "none", "redirect": return_to}, v, resp
        if tok.flagged:
            if self.visitors.newly_flagged(
                request, tok
            ):  # just flagged (a shared cookie revoked): keep it
                self.visitors.set_cookie(resp, tok, v.now)
            return None, v, resp
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
            self.visitors.keep_alive(q, tok, state, resp, v.now, request)
            return {"state": "admitted", "queue": tok.queue, "redirect": return_to}, v, resp

        self.visitors.seen(q, tok, state)
        if self.visitors.must_claim(q, tok, state):
            try:
                new = await self.visitors.claim(q, tok, state, v.now, client_address(request))
            except CLAIM_FAILED as e:
                self.client_log.warning("claim failed", {"queue": str(q), "error": repr(e)})
                new = None
            if new is not None:
                self.visitors.set_cookie(resp, new, v.now)
                v.tok = tok = new
                if new.admitted:  # let in from the waiting page: count it with the gate's
                    self.visitors.metrics.decision(q, "entered")
                    return {"state": "admitted", "queue": tok.queue, "redirect": return_to}, v, resp
        return None, v, resp

    def _page(self, request: web.Request) -> _Page | None:
        """What a poll's Host and URL say (None: something :meth:`_decide` must read,
        or decode). Remembered per Host and URL, which every waiter of a queue shares
        with many others, bounded: a miss only costs the reading."""
        host, target = request.host, request.raw_path
        key = (host, target)
        page = self._pages.get(key)
        if page is not None:
            return page
        params = plain_query(target)
        if params is None:
            return None
        queue, lang = queue_name(params.get("queue")), params.get("lang")
        tenant = self.visitors.tenant(request)
        if queue is None or tenant is None or (lang and not decoded(lang)):
            return None
        page = _Page(tenant, QueueRef(tenant.name, queue), language(lang, tenant))
        if len(host) + len(target) <= MAX_PAGE_KEY:  # a longer one: read on every poll
            if len(self._pages) >= MAX_PAGES:
                self._pages.clear()
            self._pages[key] = page
        return page

    def _poll(self, request: web.Request) -> web.Response | None:
        """The common poll, answered without an await: a waiter's cookie for the queue
        the page names, whose state is cached and open and whose turn has not come.
        None for anything else: :meth:`_decide` answers it."""
        page = self._page(request)
        if page is None or hdrs.AUTHORIZATION in request.headers:  # API clients: _decide
            return None
        visitors, q = self.visitors, page.q
        tok = visitors.token(request, page.tenant, int(time.time()), q.queue)
        if tok is None or tok.state != WAITING:
            return None
        state = visitors.cached(q)
        if state is None or state.shut or visitors.must_claim(q, tok, state):
            return None
        visitors.seen(q, tok, state)
        body = self._waiting(q, tok, state, page.language)
        return web.Response(body=body.encode(), headers=JSON_HEADERS)

    async def status(self, request: web.Request) -> web.Response:
        fast = self._poll(request)
        if fast is not None:
            return fast
        body, v, resp = await self._decide(request)
        if body is None and v.tok is not None and v.tok.flagged:
            payload = self._flagged(v.tok, v.state, v.now)
        elif body is None and v.q is not None and v.tok is not None and v.state is not None:
            payload = self._waiting(v.q, v.tok, v.state, language_param(request, v.tenant))
        else:
            payload = json.dumps(body)
        resp.body = payload.encode()
        resp.headers["Content-Type"] = JSON_HEADERS["Content-Type"]
        return resp

    async def resume(self, request: web.Request) -> web.Response:
        """No-JavaScript path: the waiting page's meta refresh lands here."""
        body, v, resp = await self._decide(request)
        if (body is None or body["state"] == "waiting") and v.tok is not None:
            return_to = self._return_to(request, v.tok)
            location = self.visitors.waiting_location(v.tenant, return_to, v.tok.queue)
        elif body is not None and body["state"] == "invite":  # no place without a code
            return_to = self._return_to(request, None)
            location = self.visitors.waiting_location(v.tenant, return_to, body["queue"])
            location += "&access=invite#invite"
        elif body is not None and body["state"] == "closed":  # the page's closed view
            return_to = self._return_to(request, v.tok)
            location = self.visitors.waiting_location(v.tenant, return_to, body["queue"])
            location += "#closed"
        elif (
            body is not None and body["state"] == "challenge"
        ):  # the page says why it needs JavaScript
            return_to = self._return_to(request, None)
            location = self.visitors.waiting_location(v.tenant, return_to, body["queue"])
            location += "#challenge"
        else:  # a body: only a waiter with a place has none
            location = body["redirect"] if body is not None else "/"
        resp.set_status(303)
        resp.headers["Location"] = location
        return resp

    async def join(self, request: web.Request) -> web.Response:
        """API clients: a place in a queue as JSON, the token to send as a Bearer."""
        tenant = self._tenant(request)
        if request.headers.get("Sec-Fetch-Site") == "cross-site":
            # a page of another site posting here would replace the visitor's place
            return json_answer({"error": "cross-site request"}, 403)
        q = self._asked(request, tenant)
        if isinstance(q, web.Response):
            return q
        queue = q.queue
        now = int(time.time())
        state = await self._state(q, tenant)
        if state is None:
            return json_answer({"error": "unavailable"}, 503, {"Retry-After": "10"})
        if state.settings.mode == "off":
            return json_answer(
                {"state": "admitted", "queue": queue, "token": None, "poll_after": None}
            )
        v = self.visitors
        tok = v.token(request, tenant, now, queue)
        return_to = return_param(request, "/")
        if state.shut and (tok is None or not tok.admitted or tok.flagged):
            return json_answer(closed_body(queue, state, language_param(request, tenant)), 410)
        code = request.query.get("anteroom_code", "")
        try:
            if (tok is None or not tok.priority) and code:
                with contextlib.suppress(NoSuchCode):
                    tok = await v.redeem(q, state.settings, code, tok, return_to, now)
            if tok is None and state.settings.access == "invite":
                invite = {"state": "invite", "queue": queue, "error": "this queue is by invitation"}
                return json_answer(invite, 403)
            if tok is None and state.settings.challenge == "pow":
                refused = await self._solved(request, q, state.settings.challenge_difficulty, now)
                if refused is not None:
                    return refused
            if tok is None:
                tok = await v.join(q, state.settings, return_to, now, client_address(request))
            elif not tok.admitted and v.must_claim(q, tok, state):
                tok = await v.claim(q, tok, state, now, client_address(request)) or tok
        except TooManyJoins:
            if state.settings.flagged == "infinite":
                tok = v.flag(tenant.name, queue, return_to, now, state)
            else:
                retry = {"Retry-After": str(JOIN_REFUSED_RETRY)}
                return json_answer({"error": "too many new places from this address"}, 429, retry)
        except Busy:
            return json_answer({"error": "busy"}, 503, {"Retry-After": "2"})
        except StorageError:
            return json_answer({"error": "unavailable"}, 503, {"Retry-After": "10"})
        if tok.admitted:
            body: dict[str, Any] = {
                "state": "admitted",
                "queue": queue,
                "position": 0,
                "eta_seconds": 0,
                "poll_after": None,
                "redirect": return_to,
            }
        elif tok.flagged:
            body = json.loads(self._flagged(tok, v.cached(q) or state, now))
        else:
            v.seen(q, tok)
            lang = language_param(request, tenant)
            body = json.loads(self._waiting(q, tok, v.cached(q) or state, lang))
        body["token"] = v.bearer(tok)
        resp = json_answer(body)
        v.set_cookie(resp, tok, now)
        return resp

    async def _solved(
        self, request: web.Request, q: QueueRef, difficulty: int, now: int
    ) -> web.Response | None:
        """None if the request carries a solved, unused challenge for ``q`` (now
        spent on every replica); else the answer, with a new challenge to solve."""
        challenges = self.visitors.challenges
        raw, solution = request.query.get("challenge", ""), request.query.get("solution", "")
        tenant = self._tenant(request)
        if not raw:
            error = "solve the challenge first"
        else:
            try:
                c = challenges.verify(raw, solution, q.tenant, q.queue, difficulty, now)
            except Refused as e:
                error = str(e)
            else:
                ttl_ms = (c.exp - now + 1) * 1000
                if await self.visitors.engine.spend_challenge(q, c.seed, ttl_ms):
                    return None
                error = "challenge already used"
        body = {"error": error, "challenge": self._new_challenge(q, tenant, now)}
        return json_answer(body, 403)

    async def challenge(self, request: web.Request) -> web.Response:
        """A new challenge for ``?queue=`` (API clients; the page gets one with its status)."""
        tenant = self._tenant(request)
        q = self._asked(request, tenant)
        if isinstance(q, web.Response):
            return q
        if await self._challenge_queue(request, tenant) is None:
            return json_answer({"error": "this queue asks for no challenge"}, 404)
        return json_answer(self._new_challenge(q, tenant, int(time.time())))

    async def leave(self, request: web.Request) -> web.Response:
        """Ends the place or session in ``?queue=`` (or every one the visitor holds)."""
        tenant = self._tenant(request)
        now = int(time.time())
        queue = queue_param(request)
        held = self.visitors.tokens(request, tenant, now)
        bearer = self.visitors.token(request, tenant, now, queue)
        if bearer is not None and bearer not in held:
            held.append(bearer)
        if queue is not None:
            held = [t for t in held if t.queue == queue]
        freed = False
        for tok in held:
            q = QueueRef(tenant.name, tok.queue)
            if tok.flagged:  # nothing in Redis to free
                continue
            try:
                freed = await self.visitors.leave(q, tok) or freed
            except LEAVE_FAILED as e:
                # this replica refuses the cookie already; the session idles out elsewhere
                self.client_log.warning("leave not recorded", {"queue": str(q), "error": repr(e)})
            log.info("left", extra={"queue": str(q), "ticket": tok.ticket, "sid": tok.sid})
        return_to = return_param(request, "")
        if not return_to and request.query.get("via") == "page":
            # the waiting page's "Leave the line": where the operator chose
            left = queue or (held[0].queue if len(held) == 1 else None)
            return_to = await self._leave_to(tenant, left)
        if return_to:
            resp = web.Response(status=303, headers={"Location": return_to, **NO_STORE})
        else:
            resp = json_answer({"state": "left", "freed": freed})
        for tok in held:
            self.visitors.clear_cookie(resp, tok.queue)
        return resp

    async def _leave_to(self, tenant: Tenant, queue: str | None) -> str:
        """The queue's ``leave_to``: an operator's override (read now, so a change holds
        everywhere at once), else its configuration; "/" when unknown or unreadable."""
        if queue is None:
            return "/"
        configured = tenant.settings_for(queue).leave_to
        try:
            stored = await self.visitors.engine.redis.hget(
                QueueRef(tenant.name, queue).keys.settings, "leave_to"
            )
        except LEAVE_FAILED:
            return configured
        if stored is None:
            return configured
        try:  # the configuration's own rule: a value it would refuse is ignored
            return str(queue_setting("leave_to", "leave_to", text(stored)))
        except ConfigError:
            return configured

    async def keepalive(self, request: web.Request) -> web.Response:
        """The site-page script's "still here", for every session the visitor holds."""
        tenant = self._tenant(request)
        now = int(time.time())
        queue = queue_param(request)
        sessions = [t for t in self.visitors.tokens(request, tenant, now) if t.admitted]
        if queue is not None:
            sessions = [t for t in sessions if t.queue == queue]
        if not sessions:
            return json_answer({"state": "none"})
        resp = json_answer({"state": "admitted", "expires_in": min(t.exp for t in sessions) - now})
        for tok in sessions:
            q = QueueRef(tenant.name, tok.queue)
            state = await self._state(q, tenant)
            if state is not None:
                self.visitors.keep_alive(q, tok, state, resp, now, request)
        return resp
