"""Per-process view of the queues, kept fresh by one background task.

Every ``refresh_interval`` the refresher runs the tick script for every
queue this process has seen (one round trip): it purges, advances the line and
reads the state that gate and status answer from. Ended sessions come back
with it, so a revoked cookie stops passing here within one tick. Every
``heartbeat_interval`` it writes the batched "still here" signals of admitted
sessions and waiters in one round trip.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace

from redis.exceptions import RedisError

from ..config import QueueSettings
from .client import text
from .engine import REFUSED, Engine, QueueRef, QueueState, Shared
from .keys import ADDRESSES_KEPT, FORGOTTEN_KEY

log = logging.getLogger("sidecar.refresher")

MAX_QUEUES = 1000  # queue names come from nginx config; a runaway regex should not grow this
# Revoked admitted sessions kept in memory (about 200 bytes each): admissions are
# bounded by capacity, so this is only reached if sessions churn very fast.
MAX_REVOKED = 100_000
# seconds between looks for queues an operator forgot (one ZRANGEBYSCORE per process)
FORGOTTEN_EVERY = 1.0


class TooManyQueues(Exception):
    pass


class Refresher:
    def __init__(
        self,
        engine: Engine,
        refresh_interval: float,
        heartbeat_interval: float,
        on_tick: Callable[[Mapping[QueueRef, QueueState]], Awaitable[None]] | None = None,
    ) -> None:
        self.engine = engine
        self.on_tick = on_tick  # after each tick (the dashboard's history)
        self.refresh_interval = refresh_interval
        self.heartbeat_interval = heartbeat_interval
        self.states: dict[QueueRef, QueueState] = {}
        self.revoked: dict[str, int] = {}  # session id -> unix second its cookie would expire
        # sessions this process revoked for sharing (flagged = infinite sends them to
        # a line that never moves); bounded like the log throttle below
        self.flagged: set[str] = set()
        self.redis_ok = True
        self._next_prune = 0.0
        self._configured: dict[QueueRef, QueueSettings] = {}
        self._last_ended: dict[QueueRef, str] = {}
        self._first_tick: dict[QueueRef, asyncio.Future[QueueState]] = {}
        # session id -> client addresses seen since the last flush (shared cookies)
        self._sessions: defaultdict[QueueRef, dict[str, set[str]]] = defaultdict(dict)
        self._shared_logged: dict[str, float] = {}  # sid -> when last logged (monotonic)
        self._waiters: defaultdict[QueueRef, set[int]] = defaultdict(set)
        self._forgotten_since = time.time()  # forgettings before this process are done

    # -- hot path: plain dict work, no awaits -------------------------------

    def touch_session(self, q: QueueRef, sid: str, address: str | None = None) -> None:
        """``address``: the client's, when the queue watches for shared cookies."""
        seen = self._sessions[q]
        addrs = seen.get(sid)
        if addrs is None:
            addrs = seen[sid] = set()
        if address and len(addrs) < ADDRESSES_KEPT:
            addrs.add(address)

    def touch_waiter(self, q: QueueRef, ticket: int) -> None:
        self._waiters[q].add(ticket)

    def revoke(self, sid: str, until: int) -> None:
        self.revoked[sid] = until
        if len(self.revoked) > MAX_REVOKED:
            self._prune_revoked()

    def _prune_revoked(self) -> None:
        now = int(time.time())
        self.revoked = {sid: until for sid, until in self.revoked.items() if until > now}
        if len(self.revoked) > MAX_REVOKED:  # the oldest revocations go first
            log.warning("revocation list full; dropping the oldest", extra={"size": MAX_REVOKED})
            excess = len(self.revoked) - MAX_REVOKED
            for sid in list(itertools.islice(self.revoked, excess)):
                del self.revoked[sid]

    def note_join(self, q: QueueRef, ticket: int, admitted: bool, epoch: str) -> None:
        """Folds a join this process just made into the cached state, so the next
        status poll counts positions from it without waiting for the next tick
        (unless the queue has a new epoch: the next tick brings its state)."""
        st = self.states.get(q)
        if st is None or ticket == REFUSED or st.epoch != epoch:
            return
        if admitted:
            st = replace(
                st,
                tickets=max(st.tickets, ticket),
                serving=max(st.serving, ticket),
                active=st.active + 1,
            )
        else:
            st = replace(
                st,
                tickets=max(st.tickets, ticket),
                waiting=st.waiting + 1,
                live=st.live.joined(ticket),
            )
        self.states[q] = st

    def forget(self, q: QueueRef) -> None:
        """Stops ticking ``q`` (forgotten by an operator); a later request brings it back."""
        self.states.pop(q, None)
        self._configured.pop(q, None)
        self._last_ended.pop(q, None)
        self._sessions.pop(q, None)
        self._waiters.pop(q, None)
        self.engine.metrics.forget(q)
        self.engine.forget(q)

    async def drop_forgotten(self) -> None:
        """Queues forgotten through the admin API (on any replica) since the last look:
        this process stops ticking them, within FORGOTTEN_EVERY."""
        try:
            raw: list[tuple[bytes, float]] = await self.engine.redis.zrangebyscore(  # type: ignore[assignment]
                FORGOTTEN_KEY, f"({self._forgotten_since}", "+inf", withscores=True
            )
        except (RedisError, OSError):
            return  # the tick reports the outage
        for member, at in raw:
            self._forgotten_since = max(self._forgotten_since, float(at))
            tenant, _, queue = text(member).partition(":")
            self.forget(QueueRef(tenant, queue))

    # -- first sight of a queue --------------------------------------------

    async def state(self, q: QueueRef, configured: QueueSettings) -> QueueState:
        """The cached state; the first request for a queue waits for one tick of it.
        Hot callers read ``states`` first and await this only on a miss."""
        st = self.states.get(q)
        if st is not None:
            return st
        fut = self._first_tick.get(q)
        if fut is None:
            if len(self._configured) >= MAX_QUEUES:
                raise TooManyQueues(str(q))
            fut = asyncio.get_running_loop().create_future()
            self._first_tick[q] = fut
            try:
                (st,) = await self.engine.tick([(q, configured, "0-0")])
            except Exception as e:
                del self._first_tick[q]
                fut.set_exception(e)
                fut.exception()  # mark retrieved: waiters (if any) re-raise it
                raise
            except BaseException:  # cancelled (shutdown): waiters are cancelled too
                del self._first_tick[q]
                fut.cancel()
                raise
            self._configured[q] = configured
            self._absorb(q, st)
            del self._first_tick[q]
            fut.set_result(st)
            return st
        return await asyncio.shield(fut)

    # -- background loop ----------------------------------------------------

    async def run(self) -> None:
        next_flush = time.monotonic() + self.heartbeat_interval
        next_forgotten = time.monotonic() + FORGOTTEN_EVERY
        while True:
            started = time.monotonic()
            try:
                if started >= next_forgotten:
                    next_forgotten = started + FORGOTTEN_EVERY
                    await self.drop_forgotten()
                was_ok = self.redis_ok
                await self.refresh()
                # back from an outage: the sessions held meanwhile are counted again
                # before newcomers can take their room (Redis may have lost them)
                if started >= next_flush or (self.redis_ok and not was_ok):
                    await self.flush()
                    next_flush = started + self.heartbeat_interval
            except Exception:  # a bug must not freeze every queue of this process
                log.exception("refresh failed")
            await asyncio.sleep(max(0.0, self.refresh_interval - (time.monotonic() - started)))

    async def refresh(self) -> None:
        queues = [(q, s, self._last_ended.get(q, "0-0")) for q, s in self._configured.items()]
        try:
            states = await self.engine.tick(queues)
        except (RedisError, OSError) as e:
            self._redis_failed("tick", e)
            return
        self._redis_recovered()
        for (q, _, _), st in zip(queues, states, strict=True):
            if q in self._configured:  # not forgotten while the tick ran
                self._absorb(q, st)
        if self.on_tick is not None:
            await self.on_tick(self.states)
        if self.revoked and time.monotonic() >= self._next_prune:
            self._prune_revoked()
            self._next_prune = time.monotonic() + 10.0

    async def flush(self) -> None:
        if not self._sessions and not self._waiters:
            return
        sessions, waiters = self._sessions, self._waiters
        self._sessions, self._waiters = defaultdict(dict), defaultdict(set)
        batch: dict[QueueRef, tuple[dict[str, set[str]], list[int], QueueSettings]] = {}
        for q in sessions.keys() | waiters.keys():
            batch[q] = (sessions.get(q, {}), sorted(waiters.get(q, ())), self._settings(q))
        try:
            beats = await self.engine.heartbeat(batch)
        except (RedisError, OSError) as e:
            self._redis_failed("heartbeat", e)
            # keep the signals for the next flush: nothing is lost while Redis is away
            for q, sids in sessions.items():
                for sid, addrs in sids.items():
                    self._sessions[q].setdefault(sid, set()).update(addrs)
            for q, tickets in waiters.items():
                self._waiters[q] |= tickets
            return
        if beats.ended:
            # sessions Redis had lost (a restart) that no longer had room: their cookies
            # stop passing everywhere and their visitors join the line again
            log.info("lost sessions ended", extra={"count": beats.ended})
        for shared in beats.shared:
            self._report_shared(shared)

    def _settings(self, q: QueueRef) -> QueueSettings:
        """The queue's effective settings as last seen (configured ones before a tick)."""
        st = self.states.get(q)
        return st.settings if st else self._configured[q]

    def _report_shared(self, shared: Shared) -> None:
        """One line per shared session per minute from this process (flag), or at once
        (revoke: the session ended; this process refuses its cookie from now on)."""
        if shared.revoked:  # every replica reads it from the ended stream on its next tick
            if len(self.flagged) > MAX_REVOKED:
                self.flagged.clear()
            self.flagged.add(shared.sid)
            self.revoke(shared.sid, int(time.time()) + self._settings(shared.queue).session_ttl)
        now = time.monotonic()
        if not shared.revoked and now - self._shared_logged.get(shared.sid, -1e9) < 60:
            return
        if len(self._shared_logged) > MAX_QUEUES * 10:
            self._shared_logged.clear()
        self._shared_logged[shared.sid] = now
        log.warning(
            "session shared",
            extra={
                "queue": str(shared.queue),
                "sid": shared.sid,
                "addresses": shared.addresses,
                "action": "revoked" if shared.revoked else "flagged",
            },
        )

    def _absorb(self, q: QueueRef, st: QueueState) -> None:
        self.states[q] = st
        if st.opened and st.order is not None:
            # this replica drew the order: the seed replays it (engine.shuffled_order)
            log.info(
                "queue opened, pre-queue shuffled",
                extra={
                    "queue": str(q),
                    "seed": st.order.seed,
                    "first": st.order.first,
                    "last": st.order.last,
                    "in_line": st.waiting,
                },
            )
        for stream_id, sid, until in st.ended:
            if sid:
                self.revoke(sid, until)
            self._last_ended[q] = stream_id
        if st.expired or st.lapsed or st.newly_invited or st.skipped:
            log.debug(
                "queue advanced",
                extra={
                    "queue": str(q),
                    "serving": st.serving,
                    "invited": st.newly_invited,
                    "skipped": st.skipped,
                    "expired": st.expired,
                    "lapsed": st.lapsed,
                },
            )

    def _redis_failed(self, what: str, e: Exception) -> None:
        if self.redis_ok:
            log.error("redis unavailable", extra={"during": what, "error": str(e)})
        self.redis_ok = False

    def _redis_recovered(self) -> None:
        if not self.redis_ok:
            log.warning("redis available again")
        self.redis_ok = True
