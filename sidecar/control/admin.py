"""The operators' control room, on its own listener (``ANTEROOM_ADMIN_LISTEN``).

JSON API under ``/api/`` and ``/metrics`` take ``Authorization: Bearer TOKEN``;
the dashboard at ``/`` signs in once with a token and then carries an HttpOnly,
SameSite=Strict cookie, and its forms a CSRF token. Changes are operator
overrides in each queue's Redis settings hash, which every replica's tick reads,
so they take effect everywhere within a second; each one is audited in Redis.

Known queues: every queue named in the tenants' configuration, every queue this
process serves, and queues found in Redis by their ticket counters (a bounded
SCAN, refreshed every few seconds) whose tenant is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta, timezone
from importlib import resources
from typing import Any

import jinja2
from aiohttp import web
from aiohttp.typedefs import Handler
from redis.asyncio import Redis, RedisCluster

from ..config import (
    MESSAGE_MAX,
    MODES,
    OVERRIDABLE,
    ROLES,
    WAITING_TOKEN_TTL,
    AdminToken,
    Config,
    ConfigError,
    OverrideErrors,
    QueueSettings,
    leave_to,
    opens_at,
    overridable,
    queue_overrides,
    queue_setting,
    settings_fields,
    with_overrides,
)
from ..config import NAME_RE as NAME
from ..logs import Throttled
from ..metrics import CONTENT_TYPE, Metrics, QueueFigures
from ..queue import (
    Engine,
    QueueRef,
    QueueState,
    Refresher,
    StorageError,
    TooManyQueues,
    codes,
    history,
)
from ..queue.client import text
from ..queue.estimate import newcomer_wait
from ..queue.keys import (
    AUDIT_KEY,
    AUDIT_MAXLEN,
    CODES_MAX,
    FORGOTTEN_KEY,
    KNOWN_PATTERN,
    SCAN_MAX_QUEUES,
    queue_keep,
    queue_of_key,
)

log = logging.getLogger("sidecar.admin")

WHO = web.RequestKey("admin", AdminToken)  # the token a request came with
CSRF = web.RequestKey("csrf", str)  # the dashboard form token of its session

SESSION_COOKIE = "anteroom_admin"
SESSION_TTL = 12 * 3600  # a dashboard sign-in lasts a working day
FAILED_SIGN_IN_DELAY = 0.5  # seconds
SCAN_EVERY = 5.0  # seconds between looks for queues in Redis
DRAIN = "drain"  # settings-hash field: unix second a drain began (mode is "paused" meanwhile)
SID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
# access codes: how long one stays valid (seconds), default and bounds
CODE_TTL_DEFAULT = 7 * 86400
CODE_TTL_MIN, CODE_TTL_MAX = 60, 90 * 86400
AUDIT_LIMIT = 200  # entries one GET /api/audit returns at most
CREATED = "created"  # settings-hash field: unix second a queue was created through the API
FORGET_CHUNK = 500  # keys per UNLINK when a queue is forgotten
FORGOTTEN_KEPT = 3600  # seconds a forgotten queue is remembered (replicas drop it meanwhile)
# seconds a forget waits before removing the keys: every process's refresher has
# stopped ticking the queue by then (it looks every queue.refresher.FORGOTTEN_EVERY)
FORGET_WAIT = 2.5
SALE_WINDOW = 24 * 3600  # seconds the dashboard's "how it went" figures cover
SALE_EVERY = 15.0  # seconds between reads of them (a day of records per queue)
FIELD_LABELS = {
    "capacity": "Capacity",
    "admit_per_minute": "Admit per minute",
    "session_ttl": "Session TTL (s)",
    "grace": "Grace (s)",
    "abandon_after": "Abandon after (s)",
    "session_max": "Session max (s)",
    "joins_per_address": "Joins per address / min (0 = no limit)",
    "opens_at": "Opens at",
    "closes_at": "Closes at",
    "max_addresses": "Addresses per session",
    "leave_to": "“Leave the line” goes to",
    "challenge": "Proof of work for newcomers",
    "challenge_difficulty": "Work (log2 hashes)",
    "flagged": "Flagged clients",
    "message": "Message to the line",
    "closed_link": "Closed page link",
    "order": "Order",
    "access": "Who may join",
}
# chosen from a list in the dashboard: value -> what the option says
CHOICE_FIELDS = {
    "challenge": {"none": "None", "pow": "Proof of work"},
    "flagged": {"refuse": "Told they are refused", "infinite": "A line that never moves"},
    "order": {"fifo": "First come, first served", "random": "Random draw"},
    "access": {"open": "Anyone", "invite": "Code holders only"},
}
# entered as local date-times in the dashboard; unix seconds in the API
TIME_FIELDS = ("opens_at", "closes_at")
TEXT_FIELDS = ("leave_to", "message", "closed_link")
# what each role may do (each role may do what the ones before it may)
ROLE_OF_ACTION = {
    "read": "viewer",
    "set": "operator",
    "create": "operator",
    "reset": "operator",
    "drain": "operator",
    "codes": "operator",
    "revoke": "admin",
    "forget": "admin",
}
# dashboard buttons that stop or open the gate for everyone: asked twice
CONFIRM = {
    "paused": "Nobody new is let in; people in line keep their places.",
    "drain": "Nobody new is let in while the sessions inside finish.",
    "closed": "Newcomers see the closed page; people in line are told.",
    "off": "The gate lets everyone through, with no line and no limit.",
    "forget": "The queue's line, sessions, settings and history are deleted.",
    "withdraw_codes": "Every unused access code of the queue stops working, "
    "including links already handed out.",
}


class AdminError(Exception):
    """A request the API refuses: the status and a JSON body saying why."""

    def __init__(self, status: int, body: Mapping[str, Any]) -> None:
        super().__init__(str(body))
        self.status = status
        self.body = dict(body)


@dataclass(frozen=True, slots=True)
class QueueView:
    tenant: str
    queue: str
    mode: str
    draining: bool
    waiting: int
    active: int
    invited: int
    admitted_last_minute: int
    serving: int
    tickets: int
    eta_seconds: float | None  # estimated wait for someone joining now
    settings: dict[str, int | str]  # effective
    configured: dict[str, int | str]
    overrides: dict[str, int | str]
    updated_ms: int

    @property
    def key(self) -> str:
        return f"{self.tenant}/{self.queue}"


def _settings_dict(s: QueueSettings) -> dict[str, int | str]:
    return {k: v for k, v in settings_fields(s).items() if overridable(k)}


def allowed(role: str, action: str) -> bool:
    """Whether ``role`` may do ``action`` (a key of ROLE_OF_ACTION)."""
    return ROLES.index(role) >= ROLES.index(ROLE_OF_ACTION[action])


class Tokens:
    """The admin tokens: Bearer checks, and the dashboard's signed session cookie."""

    def __init__(self, tokens: tuple[AdminToken, ...]) -> None:
        self._tokens = [(t, t.token.encode()) for t in tokens]

    def find(self, presented: str) -> AdminToken | None:
        """The token presented, comparing with every token in constant time."""
        raw = presented.encode()
        found = None
        for t, token in self._tokens:
            if hmac.compare_digest(raw, token) and found is None:
                found = t
        return found

    def _named(self, name: str) -> AdminToken | None:
        return next((t for t, _ in self._tokens if t.name == name), None)

    def _sign(self, name: str, purpose: str, exp: int) -> str | None:
        t = self._named(name)
        if t is None:
            return None
        # the role is signed too: a session ends when its token's role changes
        msg = f"{purpose}|{name}|{t.role}|{exp}".encode()
        return hmac.new(t.token.encode(), msg, hashlib.sha256).hexdigest()

    def session(self, name: str, now: int) -> str:
        exp = now + SESSION_TTL
        return f"{name}|{exp}|{self._sign(name, 'session', exp)}"

    def session_token(self, cookie: str | None, now: int) -> AdminToken | None:
        """The token a session cookie was signed for, if still valid. Removing a token
        from ANTEROOM_ADMIN_TOKEN (or changing its role) ends the sessions it opened."""
        if not cookie:
            return None
        name, _, rest = cookie.partition("|")
        exp_s, _, sig = rest.partition("|")
        if not exp_s.isdigit() or int(exp_s) <= now:
            return None
        good = self._sign(name, "session", int(exp_s))
        return self._named(name) if good is not None and hmac.compare_digest(good, sig) else None

    def csrf(self, cookie: str) -> str:
        name, _, rest = cookie.partition("|")
        exp_s = rest.partition("|")[0]
        return self._sign(name, "csrf", int(exp_s) if exp_s.isdigit() else 0) or ""


class Admin:
    def __init__(
        self,
        config: Config,
        engine: Engine,
        refresher: Refresher,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.engine = engine
        self.redis: Redis | RedisCluster = engine.redis
        self.refresher = refresher
        self.metrics = metrics
        self.tokens = Tokens(config.admin_tokens)
        self.tenants = {t.name: t for t in config.tenants}
        self.client_log = Throttled(log)  # lines a request can cause at will
        self._seen: set[QueueRef] = set()
        self._made: set[QueueRef] = set()  # found with a settings hash (an operator's)
        self._next_scan = 0.0
        self._forgetting: set[QueueRef] = set()  # stopping everywhere before the keys go
        self._sale: dict[QueueRef, dict[str, Any]] = {}
        self._sale_at = 0.0
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("sidecar.control", "templates"),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["duration"] = duration
        self.templates.filters["share"] = share

    # -- the application -----------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors, self._auth], client_max_size=64 * 1024)
        r = app.router
        r.add_get("/api/queues", self.api_queues)
        r.add_get("/api/queues/{tenant}/{queue}", self.api_queue)
        r.add_patch("/api/queues/{tenant}/{queue}", self.api_patch)
        r.add_delete("/api/queues/{tenant}/{queue}", self.api_forget)
        r.add_delete("/api/queues/{tenant}/{queue}/overrides", self.api_reset)
        r.add_post("/api/queues/{tenant}/{queue}/drain", self.api_drain)
        r.add_get("/api/queues/{tenant}/{queue}/sessions", self.api_sessions)
        r.add_post("/api/queues/{tenant}/{queue}/codes", self.api_make_codes)
        r.add_get("/api/queues/{tenant}/{queue}/codes", self.api_codes)
        r.add_delete("/api/queues/{tenant}/{queue}/codes", self.api_withdraw_codes)
        r.add_delete("/api/queues/{tenant}/{queue}/sessions/{sid}", self.api_revoke)
        r.add_get("/api/queues/{tenant}/{queue}/report", self.api_report)
        r.add_get("/api/audit", self.api_audit)
        r.add_get("/metrics", self.metrics_text)
        r.add_get("/login", self.login_form)
        r.add_post("/login", self.login)
        r.add_post("/logout", self.logout)
        r.add_get("/", self.dashboard)
        r.add_get("/ui/data", self.ui_data)
        r.add_post("/ui/queues/{tenant}/{queue}", self.ui_change)
        r.add_get("/ui/queues/{tenant}/{queue}/report.{format}", self.ui_report)
        r.add_get("/static/{name}", self.static)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except AdminError as e:
            return web.json_response(e.body, status=e.status)
        except web.HTTPException:
            raise
        except StorageError as e:
            log.warning("admin request failed: redis", extra={"error": str(e)})
            return web.json_response({"error": "redis unavailable"}, status=503)
        except Exception:
            log.exception("admin request failed", extra={"path": request.path})
            return web.json_response({"error": "internal error"}, status=503)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith("/api/") or path == "/metrics":
            auth = request.headers.get("Authorization", "")
            scheme, _, presented = auth.partition(" ")
            token = self.tokens.find(presented.strip()) if scheme.lower() == "bearer" else None
            if token is None:
                return web.json_response(
                    {"error": "a valid admin token is required (Authorization: Bearer …)"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="anteroom-admin"'},
                )
            request[WHO] = token
            return await handler(request)
        if path in ("/login", "/static/dashboard.css"):
            return await handler(request)
        cookie = request.cookies.get(SESSION_COOKIE)
        token = self.tokens.session_token(cookie, int(time.time()))
        if token is None or cookie is None:
            if request.method == "GET" and path == "/":
                raise web.HTTPSeeOther("/login")
            return web.json_response({"error": "sign in first"}, status=401)
        if request.method == "POST":
            form = await request.post()
            if not hmac.compare_digest(str(form.get("csrf", "")), self.tokens.csrf(cookie)):
                return web.json_response({"error": "stale form: reload the page"}, status=403)
        request[WHO] = token
        request[CSRF] = self.tokens.csrf(cookie)
        return await handler(request)

    def _may(self, request: web.Request, action: str) -> AdminToken:
        """The token of the request if its role allows ``action``; else a 403, audited
        in the log only (a refused viewer must not push changes out of the audit)."""
        token: AdminToken = request[WHO]
        if not allowed(token.role, action):
            needs = ROLE_OF_ACTION[action]
            log.warning(
                "admin action refused",
                extra={"by": token.name, "role": token.role, "action": action, "needs": needs},
            )
            raise AdminError(
                403,
                {
                    "error": f"the {token.role} role may not {action}: it needs {needs}",
                    "role": token.role,
                    "needs": needs,
                },
            )
        return token

    # -- queues and their figures ---------------------------------------------

    def _name(self, request: web.Request) -> QueueRef:
        tenant, queue = request.match_info["tenant"], request.match_info["queue"]
        if tenant not in self.tenants:
            raise AdminError(404, {"error": f"unknown tenant {tenant!r}"})
        if not NAME.match(queue):
            raise AdminError(404, {"error": "queue names are letters, digits, '_' or '-'"})
        return QueueRef(tenant, queue)

    async def _ref(self, request: web.Request) -> QueueRef:
        """The queue the path names, if it is known (a typo never makes a queue)."""
        q = self._name(request)
        if not await self.is_known(q):
            raise AdminError(
                404,
                {
                    "error": f"unknown queue {q.tenant}/{q.queue}: nobody has visited it and "
                    'it is not configured; create it with PATCH {"create": true, …}'
                },
            )
        return q

    async def is_known(self, q: QueueRef) -> bool:
        if q in self._forgetting:
            return False
        if q.queue in self.tenants[q.tenant].queues or q in self.refresher.states:
            return True
        return bool(await self.redis.exists(q.keys.tickets, q.keys.settings))

    async def known_queues(self) -> list[QueueRef]:
        refs = {QueueRef(t.name, q) for t in self.config.tenants for q in t.queues}
        refs |= set(self.refresher.states)
        if time.monotonic() >= self._next_scan:
            # queues an operator made (a settings hash) are never crowded out by names
            # clients made (a regex location; their keys expire, keys.queue_keep)
            made: set[QueueRef] = set()
            visited: set[QueueRef] = set()
            async for key in self.redis.scan_iter(match=KNOWN_PATTERN, count=500):
                tq = queue_of_key(text(key))
                if tq and tq[0] in self.tenants and NAME.match(tq[1]):
                    found = made if text(key).endswith("}:settings") else visited
                    if len(found) < SCAN_MAX_QUEUES:
                        found.add(QueueRef(*tq))
                if len(made) >= SCAN_MAX_QUEUES:
                    break
            self._made = made
            self._seen = made | set(sorted(visited - made)[: SCAN_MAX_QUEUES - len(made)])
            self._next_scan = time.monotonic() + SCAN_EVERY
        return sorted((refs | self._seen) - self._forgetting)

    def configured(self, q: QueueRef) -> QueueSettings:
        return self.tenants[q.tenant].settings_for(q.queue)

    async def _state(self, q: QueueRef) -> QueueState | None:
        st = self.refresher.current(q)
        if st is None:
            try:  # from now on this process follows it too (and may become its ticker)
                st = await self.refresher.state(q, self.configured(q))
            except TooManyQueues:
                return None
        return st

    async def _listed_state(self, q: QueueRef) -> QueueState | None:
        """A queue that is neither configured, made by an operator nor followed here
        (a name from a regex location) is shown from its last snapshot: listing it
        does not tick it, so its keys still expire."""
        st = self.refresher.states.get(q)  # not "asked": a listing keeps nothing followed
        if st is not None or q.queue in self.tenants[q.tenant].queues or q in self._made:
            return st or await self._state(q)
        (st,) = await self.engine.snapshots([(q, self.configured(q))])
        return st

    async def _overrides(self, qs: list[QueueRef]) -> list[dict[str, str]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for q in qs:
                pipe.hgetall(q.keys.settings)
            raw = await pipe.execute()
        return [{text(k): text(v) for k, v in r.items()} for r in raw]

    def _overridden(self, q: QueueRef, stored: dict[str, str]) -> dict[str, int | str]:
        """The valid overrides among the stored ones."""
        configured = self.configured(q)
        overrides: dict[str, int | str] = {}
        for key in (*OVERRIDABLE, *sorted(k for k in stored if k not in OVERRIDABLE)):
            if key in stored and overridable(key):
                # what the tick would apply; anything else is ignored there too
                with contextlib.suppress(ConfigError):
                    overrides[key] = queue_overrides({key: stored[key]}, configured)[key]
        return overrides

    def _view(self, q: QueueRef, st: QueueState | None, stored: dict[str, str]) -> QueueView:
        configured = self.configured(q)
        overrides = self._overridden(q, stored)
        settings = _settings_dict(with_overrides(configured, overrides))
        mode = str(settings["mode"])
        tickets = st.tickets if st else 0
        serving = st.serving if st else 0
        eta = newcomer_wait(st) if st else None
        return QueueView(
            tenant=q.tenant,
            queue=q.queue,
            mode=mode,
            draining=DRAIN in stored and mode == "paused",
            waiting=st.waiting if st else 0,
            active=st.active if st else 0,
            invited=st.invited if st else 0,
            admitted_last_minute=st.admitted_last_minute if st else 0,
            serving=serving,
            tickets=tickets,
            eta_seconds=eta,
            settings=settings,
            configured=_settings_dict(configured),
            overrides=overrides,
            updated_ms=st.redis_time_ms if st else 0,
        )

    async def views(self, qs: list[QueueRef] | None = None) -> list[QueueView]:
        if qs is None:  # the list: queues only found in Redis are read, not followed
            qs = await self.known_queues()
            states = [await self._listed_state(q) for q in qs]
        else:
            states = [await self._state(q) for q in qs]
        stored = await self._overrides(qs) if qs else []
        return [self._view(q, st, o) for q, st, o in zip(qs, states, stored, strict=True)]

    async def view(self, q: QueueRef) -> QueueView:
        (v,) = await self.views([q])
        return v

    # -- changes (shared by the API, the dashboard and the CLI) ----------------

    async def audit(self, who: AdminToken, action: str, q: QueueRef | None, **detail: Any) -> None:
        now = time.time()
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        entry = {"at": now, "when": when, "by": who.name, "role": who.role, "action": action}
        entry.update(detail)
        if q is not None:
            entry.update(tenant=q.tenant, queue=q.queue)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lpush(AUDIT_KEY, json.dumps(entry))
            pipe.ltrim(AUDIT_KEY, 0, AUDIT_MAXLEN - 1)
            await pipe.execute()
        log.info("admin change", extra={k: v for k, v in entry.items() if k != "at"})

    async def change(
        self,
        who: AdminToken,
        q: QueueRef,
        changes: Mapping[str, object],
        create: bool = False,
        end_sessions: bool = False,
    ) -> QueueView:
        """Validates ``changes`` whole (OverrideErrors lists every bad field) and stores
        them; ``create``: the queue is new (the caller checked it was unknown);
        ``end_sessions``: closing it, the admitted sessions end now too (the caller
        checked the role may revoke)."""
        # checked before the queue is looked at: a refused creation leaves no trace
        (stored,) = await self._overrides([q])
        base = with_overrides(self.configured(q), self._overridden(q, stored))
        cleaned = queue_overrides(changes, base)
        before = settings_fields(base)
        diff = {k: [before.get(k, ""), v] for k, v in cleaned.items()}
        if end_sessions and cleaned.get("mode", base.mode) != "closed":
            raise OverrideErrors(
                {"end_sessions": "end_sessions: only when closing the queue (mode=closed)"}
            )
        ended: dict[str, int] = {}
        if end_sessions:
            # the mode first: nobody new takes the room the ended sessions leave
            cleaned.setdefault("mode", "closed")
        if cleaned or create:
            async with self.redis.pipeline(transaction=True) as pipe:
                if create:  # known on every replica from now on, even with no change
                    pipe.hsetnx(q.keys.settings, CREATED, str(int(time.time())))
                if cleaned:
                    pipe.hset(q.keys.settings, mapping=cleaned)  # type: ignore[arg-type]
                if cleaned.get("mode", "paused") != "paused":
                    pipe.hdel(q.keys.settings, DRAIN)  # resuming ends a drain
                await pipe.execute()
            if create:
                await self.redis.zrem(FORGOTTEN_KEY, f"{q.tenant}:{q.queue}")
            await self.engine.poke(q)  # its ticker applies it now, every replica reads it
            if end_sessions:
                until = int(time.time()) + max(WAITING_TOKEN_TTL, base.session_max)
                ended["ended_sessions"] = await self.engine.end_sessions(q, until)
            await self.audit(who, "create" if create else "set", q, changes=diff, **ended)
        return await self.view(q)

    async def reset(self, who: AdminToken, q: QueueRef, names: list[str]) -> QueueView:
        bad = [n for n in names if not overridable(n)]
        if bad:
            raise OverrideErrors({n: f"{n}: not a setting ({', '.join(OVERRIDABLE)})" for n in bad})
        before = await self.view(q)
        names = names or [*OVERRIDABLE, *(k for k in before.overrides if k not in OVERRIDABLE)]
        removed = {
            n: [before.overrides[n], before.configured.get(n, "")]
            for n in names
            if n in before.overrides
        }
        fields = [*names, DRAIN] if "mode" in names else names
        await self.redis.hdel(q.keys.settings, *fields)
        await self.engine.poke(q)
        if removed:
            await self.audit(who, "reset", q, changes=removed)
        return await self.view(q)

    async def drain(self, who: AdminToken, q: QueueRef) -> QueueView:
        before = await self.view(q)
        await self.redis.hset(
            q.keys.settings, mapping={"mode": "paused", DRAIN: str(int(time.time()))}
        )
        await self.engine.poke(q)
        await self.audit(who, "drain", q, changes={"mode": [before.mode, "paused"]})
        return await self.view(q)

    async def revoke(self, who: AdminToken, q: QueueRef, sid: str) -> bool:
        if not SID_RE.match(sid):
            raise AdminError(400, {"error": "session ids are letters, digits, '_' or '-'"})
        # as long as any cookie of it could be presented (a place in line lasts longest)
        until = int(time.time()) + max(WAITING_TOKEN_TTL, self.configured(q).session_ttl)
        self.refresher.revoke(sid, until)  # this process refuses it at once
        freed = await self.engine.leave(q, 0, sid, until)  # the ticket is unknown: 0
        await self.audit(who, "revoke", q, session=sid, freed=freed)
        return freed

    async def forget(self, who: AdminToken, q: QueueRef, force: bool = False) -> int:
        """Deletes a queue nobody needs (a typo, a retired sale): its keys, in chunks,
        and its place in the list, the dashboard and /metrics on every replica.
        Returns the number of keys removed."""
        if q.queue in self.tenants[q.tenant].queues:
            raise AdminError(
                409,
                {
                    "error": f"{q.tenant}/{q.queue} is configured (ANTEROOM_CONFIG): remove "
                    "it there and from nginx first; reset its overrides instead"
                },
            )
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in (q.keys.waiting, q.keys.active, q.keys.invited):
                pipe.zcard(key)  # now, not as of the last tick
            present = [int(n) for n in await pipe.execute()]
        if any(present) and not force:
            waiting, active, invited = present
            raise AdminError(
                409,
                {
                    "error": f"{q.tenant}/{q.queue} has {waiting} in line, {active} "
                    f"active and {invited} invited: drain it and wait, or forget it with "
                    "force (they lose their places)"
                },
            )
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(FORGOTTEN_KEY, {f"{q.tenant}:{q.queue}": now})
            pipe.zremrangebyscore(FORGOTTEN_KEY, "-inf", now - FORGOTTEN_KEPT)
            await pipe.execute()
        # every process stops ticking it first: a tick of a queue whose keys are gone
        # would start a recovery and write them again
        self._forgetting.add(q)
        try:
            self._drop(q)
            await asyncio.sleep(FORGET_WAIT)
            self._drop(q)
            removed = await self._remove_keys(q)
        finally:
            self._forgetting.discard(q)
        extra = {"present": present} if force else {}
        await self.audit(who, "forget", q, keys=removed, **extra)
        return removed

    def _drop(self, q: QueueRef) -> None:
        self.refresher.forget(q)
        self._seen.discard(q)
        self._made.discard(q)

    async def _remove_keys(self, q: QueueRef) -> int:
        """The queue's keys: the fixed ones in one UNLINK (big sets are freed off
        Redis's main thread), then what a SCAN finds (per-session and per-address
        keys), FORGET_CHUNK keys per call. One slot: the hash tag. A new epoch is left."""
        fixed = [*q.keys.all(), q.keys.history]
        s = self.configured(q)
        epoch = f"{time.time_ns() // 1000:d}"  # like prelude.lua's: Redis TIME in µs
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.unlink(*fixed)
            # a fresh epoch stays (a tombstone): a process that still knows the old
            # one sees a new epoch, not a lost queue (no recovery); old tokens are stale
            pipe.set(q.keys.epoch, epoch, ex=queue_keep(s.session_max, s.session_ttl))
            removed = int((await pipe.execute())[0])
        chunk: list[bytes | str] = []
        prefix = f"{q.keys.tickets[: -len('tickets')]}*"
        async for key in self.redis.scan_iter(match=prefix, count=1000):
            if text(key) == q.keys.epoch:
                continue
            chunk.append(key)
            if len(chunk) >= FORGET_CHUNK:
                removed += int(await self.redis.unlink(*chunk))
                chunk = []
        if chunk:
            removed += int(await self.redis.unlink(*chunk))
        return removed

    # -- JSON API -------------------------------------------------------------

    async def api_queues(self, request: web.Request) -> web.Response:
        self._may(request, "read")
        return web.json_response({"queues": [asdict(v) for v in await self.views()]})

    async def api_queue(self, request: web.Request) -> web.Response:
        self._may(request, "read")
        return web.json_response(asdict(await self.view(await self._ref(request))))

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise AdminError(400, {"error": "the body must be a JSON object"}) from None
        if not isinstance(body, dict):
            raise AdminError(400, {"error": "the body must be a JSON object"})
        return body

    async def api_patch(self, request: web.Request) -> web.Response:
        who = self._may(request, "set")
        body = await self._body(request)
        create = body.pop("create", False)
        if not isinstance(create, bool):
            raise AdminError(400, {"error": "create: true or false"})
        end = body.pop("end_sessions", False)
        if not isinstance(end, bool):
            raise AdminError(400, {"error": "end_sessions: true or false"})
        if end:  # ending sessions is revoking them: the admin role's
            self._may(request, "revoke")
        q = self._name(request)
        create = create and not await self.is_known(q)
        if not create:
            q = await self._ref(request)
        try:
            view = await self.change(who, q, body, create=create, end_sessions=end)
        except OverrideErrors as e:
            raise AdminError(400, {"error": "nothing was changed", "fields": e.errors}) from None
        return web.json_response(asdict(view), status=201 if create else 200)

    async def api_reset(self, request: web.Request) -> web.Response:
        who = self._may(request, "reset")
        q = await self._ref(request)
        names = [n for n in request.query.get("keys", "").split(",") if n]
        try:
            view = await self.reset(who, q, names)
        except OverrideErrors as e:
            raise AdminError(400, {"error": "nothing was changed", "fields": e.errors}) from None
        return web.json_response(asdict(view))

    async def api_forget(self, request: web.Request) -> web.Response:
        who = self._may(request, "forget")
        if "keys" in request.query:  # the old spelling of a reset: never a deletion
            raise AdminError(
                400, {"error": "resetting overrides moved to DELETE …/{queue}/overrides?keys="}
            )
        q = await self._ref(request)
        force = request.query.get("force", "") in ("1", "true", "yes")
        removed = await self.forget(who, q, force)
        return web.json_response({"forgotten": f"{q.tenant}/{q.queue}", "keys": removed})

    async def api_drain(self, request: web.Request) -> web.Response:
        who = self._may(request, "drain")
        return web.json_response(asdict(await self.drain(who, await self._ref(request))))

    async def make_codes(
        self, who: AdminToken, q: QueueRef, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """One-time access codes for ``q`` as asked in ``body`` (checked), audited
        without the codes: the answer is the only place they are shown."""
        count, ttl, label, path = _code_request(body)
        expires_at = int(time.time()) + ttl
        made = await codes.make(self.redis, q, count, expires_at, label)
        sep = "&" if "?" in path else "?"
        await self.audit(who, "codes", q, count=count, label=label, expires_at=expires_at)
        return {
            "count": count,
            "label": label,
            "expires_at": expires_at,
            "codes": made,
            "links": [f"{path}{sep}anteroom_code={c}" for c in made],
        }

    async def withdraw_codes(self, who: AdminToken, q: QueueRef, label: str | None) -> int:
        withdrawn = await codes.withdraw(self.redis, q, label)
        await self.audit(who, "withdraw codes", q, label=label, withdrawn=withdrawn)
        return withdrawn

    async def unused_codes(self, qs: list[QueueRef]) -> dict[str, int]:
        """Each queue's count of valid unused codes (one ZCOUNT each, pipelined)."""
        if not qs:
            return {}
        now = int(time.time())
        async with self.redis.pipeline(transaction=False) as pipe:
            for q in qs:
                pipe.zcount(q.keys.codes, f"({now}", "+inf")
            counts = await pipe.execute()
        return {f"{q.tenant}/{q.queue}": int(n) for q, n in zip(qs, counts, strict=True)}

    async def api_make_codes(self, request: web.Request) -> web.Response:
        """One-time access codes, shown once: each a link that skips the line."""
        who = self._may(request, "codes")
        q = await self._ref(request)
        body = await self._body(request)
        return web.json_response(await self.make_codes(who, q, body), status=201)

    async def api_codes(self, request: web.Request) -> web.Response:
        self._may(request, "read")
        left = await codes.unused(self.redis, await self._ref(request))
        return web.json_response(
            {"unused": left.count, "by_label": left.by_label, "next_expiry": left.next_expiry}
        )

    async def api_withdraw_codes(self, request: web.Request) -> web.Response:
        who = self._may(request, "codes")
        q = await self._ref(request)
        withdrawn = await self.withdraw_codes(who, q, request.query.get("label"))
        return web.json_response({"withdrawn": withdrawn})

    async def api_sessions(self, request: web.Request) -> web.Response:
        self._may(request, "read")
        q = await self._ref(request)
        now_ms = int(time.time() * 1000)
        rows: list[tuple[bytes, float]] = await self.redis.zrange(  # type: ignore[assignment]
            q.keys.active, 0, 199, withscores=True
        )
        sessions = [
            {"session": text(sid), "expires_in": round((score - now_ms) / 1000, 1)}
            for sid, score in rows
        ]
        return web.json_response({"sessions": sessions})

    async def api_revoke(self, request: web.Request) -> web.Response:
        who = self._may(request, "revoke")
        q = await self._ref(request)
        sid = request.match_info["sid"]
        freed = await self.revoke(who, q, sid)
        return web.json_response({"revoked": sid, "freed": freed})

    async def api_report(self, request: web.Request) -> web.Response:
        self._may(request, "read")
        fmt = request.query.get("format", "json")
        return await self._report(await self._ref(request), request, fmt)

    async def ui_report(self, request: web.Request) -> web.Response:
        return await self._report(await self._ref(request), request, request.match_info["format"])

    async def _report(self, q: QueueRef, request: web.Request, fmt: str) -> web.Response:
        """How the sale went, minute by minute (the kept week unless ``since`` /
        ``until`` narrow it: unix seconds or ISO-8601 with a zone), as JSON or CSV."""
        if fmt not in ("json", "csv"):
            raise AdminError(400, {"error": "format: json or csv"})
        now = int(time.time())
        bounds = {"since": now - history.KEPT_SECONDS, "until": now + 60}
        for name in bounds:
            raw = request.query.get(name, "").strip()
            if raw:
                try:
                    bounds[name] = opens_at(name, raw)
                except ConfigError as e:
                    raise AdminError(400, {"error": str(e)}) from None
        records = await history.minutes(self.redis, q, bounds["since"], bounds["until"])
        name = f"anteroom-{q.tenant}-{q.queue}-{time.strftime('%Y%m%d-%H%M', time.gmtime(now))}"
        headers = {
            "Cache-Control": "no-store",
            "Content-Disposition": f'attachment; filename="{name}.{fmt}"',
        }
        if fmt == "csv":
            return web.Response(
                text=history.report_csv(records), content_type="text/csv", headers=headers
            )
        body = {
            "tenant": q.tenant,
            "queue": q.queue,
            "since": bounds["since"],
            "until": bounds["until"],
            "summary": history.summary(records),
            "minutes": history.report_rows(records),
        }
        return web.json_response(body, headers=headers)

    async def sale(self, qs: list[QueueRef]) -> dict[str, dict[str, Any]]:
        """Each queue's last SALE_WINDOW seconds summed up (waits, abandonment, the
        estimate's quality), read again at most every SALE_EVERY seconds."""
        now = time.monotonic()
        if now >= self._sale_at or set(qs) - self._sale.keys():
            until = int(time.time()) + 60
            found = {}
            for q in qs:
                records = await history.minutes(self.redis, q, until - SALE_WINDOW, until)
                found[q] = history.summary(records)
            self._sale, self._sale_at = found, now + SALE_EVERY
        return {f"{q.tenant}/{q.queue}": self._sale[q] for q in qs if q in self._sale}

    async def api_audit(self, request: web.Request) -> web.Response:
        self._may(request, "read")
        try:
            limit = min(max(int(request.query.get("limit", "100")), 1), AUDIT_LIMIT)
        except ValueError:
            raise AdminError(400, {"error": "limit: a whole number"}) from None
        raw = await self.redis.lrange(AUDIT_KEY, 0, limit - 1)
        return web.json_response({"entries": [json.loads(e) for e in raw]})

    async def metrics_text(self, request: web.Request) -> web.Response:
        self._may(request, "read")
        self.metrics.queues = [_figures(v) for v in await self.views()]
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    # -- dashboard ------------------------------------------------------------

    def _page(self, name: str, status: int = 200, **context: Any) -> web.Response:
        html = self.templates.get_template(name).render(**context)
        return web.Response(
            text=html,
            status=status,
            content_type="text/html",
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
                "X-Frame-Options": "DENY",
                "Referrer-Policy": "no-referrer",
            },
        )

    async def login_form(self, request: web.Request) -> web.Response:
        return self._page("login.html", error=None)

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        token = self.tokens.find(str(form.get("token", "")).strip())
        if token is None:
            # anyone who reaches the admin address can cause it: one line a minute
            self.client_log.warning("admin sign-in refused", {"remote": request.remote})
            await asyncio.sleep(FAILED_SIGN_IN_DELAY)  # slows guessing; tokens are long anyway
            return self._page("login.html", status=401, error="That token is not valid.")
        resp = web.Response(status=303, headers={"Location": "/"})  # returned, not raised
        resp.headers["Set-Cookie"] = (
            f"{SESSION_COOKIE}={self.tokens.session(token.name, int(time.time()))}; "
            f"Max-Age={SESSION_TTL}; Path=/; HttpOnly; SameSite=Strict"
        )
        await self.audit(token, "sign-in", None)
        return resp

    async def logout(self, request: web.Request) -> web.StreamResponse:
        resp = web.Response(status=303, headers={"Location": "/login"})
        resp.headers["Set-Cookie"] = (
            f"{SESSION_COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict"
        )
        return resp

    async def dashboard(
        self, request: web.Request, errors: Mapping[str, Any] | None = None
    ) -> web.Response:
        views = await self.views()
        recent = [json.loads(e) for e in await self.redis.lrange(AUDIT_KEY, 0, 7)]
        token: AdminToken = request[WHO]
        refs = [QueueRef(v.tenant, v.queue) for v in views]
        sale = await self.sale(refs)
        return self._page(
            "dashboard.html",
            sale=sale,
            unused_codes=await self.unused_codes(refs),
            code_ttl_hours=CODE_TTL_DEFAULT // 3600,
            code_ttl_max_hours=CODE_TTL_MAX // 3600,
            codes_max=CODES_MAX,
            recent=recent,
            status=400 if errors else 200,
            queues=views,
            who=token.name,
            role=token.role,
            may={action: allowed(token.role, action) for action in ROLE_OF_ACTION},
            configured_queues={f"{t.name}/{q}" for t in self.config.tenants for q in t.queues},
            csrf=request[CSRF],
            errors=errors or {},
            settings_fields=[k for k in OVERRIDABLE if k in FIELD_LABELS],
            labels=FIELD_LABELS,
            modes=MODES,
            time_fields=TIME_FIELDS,
            text_fields=TEXT_FIELDS,
            choice_fields=CHOICE_FIELDS,
            local_time=_datetime_local,
        )

    async def ui_data(self, request: web.Request) -> web.Response:
        views = await self.views()
        now = int(time.time())
        refs = [QueueRef(v.tenant, v.queue) for v in views]
        points = await history.read_many(self.redis, refs, now)
        charts = {v.key: [asdict(p) for p in ps] for v, ps in zip(views, points, strict=True)}
        sale = await self.sale(refs)
        return web.json_response(
            {"queues": [asdict(v) for v in views], "history": charts, "sale": sale, "now": now},
            headers={"Cache-Control": "no-store"},
        )

    async def ui_change(self, request: web.Request) -> web.StreamResponse:
        q = await self._ref(request)
        form = await request.post()
        action = str(form.get("action", ""))
        needs = {
            "settings": "set",
            "reset": "reset",
            "drain": "drain",
            "forget": "forget",
            "codes": "codes",
            "withdraw_codes": "codes",
        }
        if action not in needs and action not in MODES:
            raise AdminError(400, {"error": f"unknown action {action!r}"})
        who = self._may(request, needs.get(action, "set"))
        if action in CONFIRM and form.get("confirm") != "yes":
            v = await self.view(q)
            return self._page(
                "confirm.html",
                q=v,
                action=action,
                label=_ACTION_LABELS.get(action, action),
                what=CONFIRM[action],
                unused=(await self.unused_codes([q]))[f"{q.tenant}/{q.queue}"],
                csrf=request[CSRF],
                may_revoke=allowed(request[WHO].role, "revoke"),
                message_max=MESSAGE_MAX,
            )
        try:
            if action == "settings":
                current = (await self.view(q)).settings
                changes: dict[str, object] = {}
                for k in OVERRIDABLE:
                    if k not in form:
                        continue
                    value: object = str(form[k]).strip()
                    if k in TIME_FIELDS:
                        value = _from_local(str(value), str(form.get(k + "_offset", "")))
                        with contextlib.suppress(ConfigError):  # else the change says why
                            value = queue_setting(k, k, value)
                    if str(value) != str(current.get(k)):
                        changes[k] = value
                await self.change(who, q, changes)
            elif action == "closed":
                changes = {"mode": "closed"}
                if "message" in form:  # the confirmation asks for the words to show
                    changes["message"] = str(form["message"]).strip()
                end = form.get("end_sessions") == "yes"
                if end:
                    self._may(request, "revoke")
                await self.change(who, q, changes, end_sessions=end)
            elif action in MODES:
                await self.change(who, q, {"mode": action})
            elif action == "drain":
                await self.drain(who, q)
            elif action == "reset":
                await self.reset(who, q, [])
            elif action == "forget":
                await self.forget(who, q)
                raise web.HTTPSeeOther("/")
            elif action == "withdraw_codes":
                await self.withdraw_codes(who, q, None)
            elif action == "codes":
                made = await self.make_codes(who, q, _code_form(form))
                # the links are in this answer only (no-store; never in a URL or a log)
                return self._page(
                    "codes.html",
                    status=201,
                    q=q,
                    made=made,
                    expires=datetime.fromtimestamp(made["expires_at"], UTC),
                    unused=(await self.unused_codes([q]))[f"{q.tenant}/{q.queue}"],
                )
        except OverrideErrors as e:
            return await self.dashboard(request, errors={f"{q.tenant}/{q.queue}": e.errors})
        except AdminError as e:
            if e.status == 400 and action == "codes":
                field = {"codes": e.body["error"]}
                return await self.dashboard(request, errors={f"{q.tenant}/{q.queue}": field})
            if e.status != 409:
                raise
            return await self.dashboard(
                request, errors={f"{q.tenant}/{q.queue}": {"queue": e.body["error"]}}
            )
        raise web.HTTPSeeOther(f"/#q-{q.tenant}-{q.queue}")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        types = {"dashboard.js": "application/javascript", "dashboard.css": "text/css"}
        if name not in types:
            raise web.HTTPNotFound()
        text = resources.files("sidecar.control").joinpath("templates", name).read_text()
        return web.Response(
            text=text, content_type=types[name], headers={"Cache-Control": "no-cache"}
        )


_ACTION_LABELS = {
    "paused": "Pause",
    "drain": "Drain",
    "closed": "Close",
    "off": "Turn off",
    "forget": "Forget",
    "withdraw_codes": "Withdraw unused codes of",
}


NOTHING = "\u2013"  # an en dash: nothing to tell yet


def duration(seconds: object) -> str:
    """A wait for people: NOTHING (none), "45 s", "12 min 5 s", "2 h 3 min"."""
    if not isinstance(seconds, int | float):
        return NOTHING
    if seconds < 1:
        return "< 1 s"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def share(fraction: object) -> str:
    """A fraction as a percentage (NOTHING: nothing to tell)."""
    if not isinstance(fraction, int | float):
        return NOTHING
    return f"{fraction * 100:.0f} %"


def _datetime_local(unix: object) -> str:
    """A time field's value for ``<input type=datetime-local>``, in UTC (the page's
    script shows it in the browser's zone); "" for none."""
    if not isinstance(unix, int) or unix <= 0:
        return ""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M")


def _from_local(value: str, offset: str) -> str:
    """A dashboard date-time (the browser's local time, ``offset`` minutes east of
    UTC as its script sends it; UTC without JavaScript) as ISO-8601 with its zone,
    for the configuration's own rule to check; "0" (none) when empty."""
    if not value or value == "0":
        return "0"
    try:
        minutes = int(offset) if offset else 0
        zone = timezone(timedelta(minutes=minutes))
    except (ValueError, OverflowError):
        zone = UTC
    try:
        return datetime.fromisoformat(value).replace(tzinfo=zone).isoformat()
    except ValueError:
        return value  # the configuration's rule names what is wrong with it


def _figures(v: QueueView) -> QueueFigures:
    return QueueFigures(
        tenant=v.tenant,
        queue=v.queue,
        mode=v.mode,
        values={
            "anteroom_queue_waiting": v.waiting,
            "anteroom_queue_active": v.active,
            "anteroom_queue_invited": v.invited,
            "anteroom_queue_admitted_last_minute": v.admitted_last_minute,
            "anteroom_queue_serving": v.serving,
            "anteroom_queue_tickets": v.tickets,
            "anteroom_queue_capacity": float(v.settings["capacity"]),
            "anteroom_queue_admit_per_minute": float(v.settings["admit_per_minute"]),
            "anteroom_queue_draining": 1.0 if v.draining else 0.0,
        },
    )


async def start_admin(
    config: Config, engine: Engine, refresher: Refresher, metrics: Metrics
) -> web.AppRunner:
    """The admin listener on its own address (worker 0 of ``python -m sidecar``)."""
    runner = web.AppRunner(Admin(config, engine, refresher, metrics).app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, config.admin_host, config.admin_port).start()
    log.info("admin listening", extra={"listen": f"{config.admin_host}:{config.admin_port}"})
    if config.admin_token_generated:
        log.warning(
            "demo admin token (set ANTEROOM_ADMIN_TOKEN to choose it)",
            extra={"token": config.admin_tokens[0][1]},
        )
    return runner


def _code_form(form: Mapping[str, Any]) -> dict[str, Any]:
    """The dashboard's access-code form as the API's body (hours to seconds)."""
    body: dict[str, Any] = {}
    for name, key, scale in (("count", "count", 1), ("expires_hours", "expires_in", 3600)):
        raw = str(form.get(name, "")).strip()
        if not raw and name == "expires_hours":
            continue
        top = CODES_MAX if name == "count" else CODE_TTL_MAX // 3600
        if not raw.isdigit() or not 1 <= int(raw) <= top:
            what = "count" if name == "count" else "expiry (hours)"
            raise AdminError(400, {"error": f"{what}: a whole number from 1 to {top}"})
        body[key] = int(raw) * scale
    body["label"] = str(form.get("label", "")).strip()
    body["path"] = str(form.get("path", "")).strip() or "/"
    return body


def _code_request(body: Mapping[str, Any]) -> tuple[int, int, str, str]:
    """(count, seconds valid, label, path) of a request for access codes, checked."""
    unknown = set(body) - {"count", "expires_in", "label", "path"}
    if unknown:
        raise AdminError(400, {"error": f"unknown fields: {', '.join(sorted(unknown))}"})
    count, ttl = body.get("count"), body.get("expires_in", CODE_TTL_DEFAULT)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= CODES_MAX:
        raise AdminError(400, {"error": f"count: a whole number from 1 to {CODES_MAX}"})
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not CODE_TTL_MIN <= ttl <= CODE_TTL_MAX:
        raise AdminError(
            400, {"error": f"expires_in: seconds from {CODE_TTL_MIN} to {CODE_TTL_MAX}"}
        )
    label = body.get("label", "")
    ok = isinstance(label, str) and len(label) <= codes.LABEL_MAX and label.isprintable()
    if not ok:
        raise AdminError(400, {"error": f"label: printable text, at most {codes.LABEL_MAX}"})
    try:
        path = leave_to("path", body.get("path", "/"))  # the same rule: a same-site path
    except ConfigError as e:
        raise AdminError(400, {"error": str(e)}) from None
    return count, ttl, str(label), path
