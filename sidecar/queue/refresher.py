"""Per-process view of the queues, kept fresh by one background task.

One process at a time ticks a queue (purge, advance, history, snapshot): the
one holding its lease, a field of ``keys.TICKERS_KEY`` renewed at every refresh
and taken over by another process within about a second if its holder dies or
stalls. Every ``refresh_interval`` each process makes one call for all the
queues it knows (tickers.lua): it renews its leases, and learns which queues'
versions moved; only those are read again (the snapshot, the ended stream), so
an idle queue costs each process nothing but its share of that one call, and
its ticker one tick every ``keys.IDLE_TICK`` seconds. A join, a leave or an
operator's change moves the version at once (``Engine.poke``): its ticker ticks
the queue and every replica refuses an ended session's cookie within a refresh
or two. Every ``heartbeat_interval`` the batched "still here" signals of
admitted sessions and waiters are written in one round trip.

A queue nobody asked about for ``FORGET_AFTER`` seconds is forgotten (its lease
given back). At most ``MAX_QUEUES`` are tracked; a new queue beyond that, when
none can be forgotten, is answered "busy" (wait), never admitted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace

from redis.exceptions import RedisError

from ..config import QueueSettings
from ..logs import Throttled
from .client import text
from .engine import REFUSED, Busy, Engine, QueueRef, QueueState, Shared
from .estimate import newcomer_wait
from .keys import ADDRESSES_KEPT, ENDED_READ_CHUNK, FORGOTTEN_KEY, IDLE_TICK, LEASE_MIN_MS
from .revocations import Revocations

log = logging.getLogger("sidecar.refresher")

MAX_QUEUES = 3_000  # tracked at once by one process (bounds each refresh's call)
FORGET_AFTER = 300.0  # seconds without a request before a queue is forgotten
EVICT_AFTER = 60.0  # a full set makes room by forgetting queues quiet this long
SHARED_LOGGED_MAX = 10_000
ENDED_READ_ROUNDS = 8  # ended-stream chunks read per queue in one refresh (a few ms)
FLAGGED_MAX = 100_000  # sessions revoked for sharing, kept for `flagged = infinite`
# Random order: waiting tickets the heartbeats found out of line (drawn), per queue
# until their next poll claims; cleared when full (they are found again at the
# next flush while they keep polling: nothing is lost, a claim comes a flush later).
LEFT_LINE_MAX = 100_000
# seconds between looks for queues an operator forgot (one ZRANGEBYSCORE per process)
FORGOTTEN_EVERY = 1.0


class TooManyQueues(Busy):
    """Every tracked queue was asked about within EVICT_AFTER: the new one waits."""


@dataclass(slots=True)
class _Tracked:
    configured: QueueSettings
    asked: float  # monotonic: the last request that asked about the queue
    version: str = ""  # as last read from the tickers' key
    lease: str = ""  # "holder deadline_ms" as last read
    held: bool = False  # this process ticks it
    next_tick: float = 0.0  # monotonic
    last_ended: str = "0-0"  # the last ended-stream entry read


class Refresher:
    def __init__(
        self,
        engine: Engine,
        refresh_interval: float,
        heartbeat_interval: float,
    ) -> None:
        self.engine = engine
        self.refresh_interval = refresh_interval
        self.heartbeat_interval = heartbeat_interval
        self.lease_ms = max(LEASE_MIN_MS, int(3000 * refresh_interval))
        # the pid first: operators (and tests) can tell which process ticks a queue
        self.holder = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.states: dict[QueueRef, QueueState] = {}
        self.revoked = Revocations(engine)  # `sid in revoked`: ended for certain
        # sessions revoked for sharing, by this process or (read from the ended
        # stream) any other (flagged = infinite sends them to a line that never
        # moves); bounded, cleared when full
        self.flagged: set[str] = set()
        self._forgotten_since = time.time()  # forgettings before this process are done
        self.redis_ok = True
        self.client_log = Throttled(log)  # lines requests can cause (a queue per URL)
        self._next_prune = 0.0
        self._tracked: dict[QueueRef, _Tracked] = {}
        self._asked: set[QueueRef] = set()  # since the last refresh
        self._releases: list[QueueRef] = []
        self._unread: set[QueueRef] = set()  # more ended entries than one read takes
        self._clock = (0, 0.0)  # (Redis ms, monotonic) at the last tickers call
        self._first_tick: dict[QueueRef, asyncio.Future[QueueState]] = {}
        # session id -> client addresses seen since the last flush (shared cookies)
        self._sessions: defaultdict[QueueRef, dict[str, set[str]]] = defaultdict(dict)
        self._shared_logged: dict[str, float] = {}  # sid -> when last logged (monotonic)
        self._waiters: defaultdict[QueueRef, set[int]] = defaultdict(set)
        self._left: defaultdict[QueueRef, set[int]] = defaultdict(set)

    @property
    def held(self) -> list[QueueRef]:
        """The queues this process ticks."""
        return [q for q, t in self._tracked.items() if t.held]

    # -- hot path: plain dict work, no awaits -------------------------------

    def current(self, q: QueueRef) -> QueueState | None:
        """The cached state (None: not tracked yet, await :meth:`state`)."""
        self._asked.add(q)
        return self.states.get(q)

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

    def left_line(self, q: QueueRef, ticket: int) -> bool:
        """Whether the last heartbeats found ``ticket`` out of ``q``'s line (random
        order: drawn, so only a claim can say what its place is worth now)."""
        left = self._left.get(q)
        return left is not None and ticket in left

    def claimed(self, q: QueueRef, ticket: int) -> None:
        """A claim answered for ``ticket``: the next heartbeats tell again if need be."""
        left = self._left.get(q)
        if left is not None:
            left.discard(ticket)

    def revoke(self, sid: str, until: int) -> None:
        self.revoked.add(sid, until)

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

    # -- first sight of a queue --------------------------------------------

    async def state(self, q: QueueRef, configured: QueueSettings) -> QueueState:
        """The cached state; the first request for a queue waits for one tick of it
        and for its revocations. Hot callers use :meth:`current` first."""
        self._asked.add(q)
        st = self.states.get(q)
        if st is not None:
            return st
        fut = self._first_tick.get(q)
        if fut is not None:
            return await asyncio.shield(fut)
        self._make_room(q)
        fut = asyncio.get_running_loop().create_future()
        self._first_tick[q] = fut
        try:
            (st,) = await self.engine.tick([(q, configured)])
            if st.changed:
                await self.engine.bump([q])
            tracked = _Tracked(configured, time.monotonic())
            await self._reload_revoked(q, tracked)
        except Exception as e:
            del self._first_tick[q]
            fut.set_exception(e)
            fut.exception()  # mark retrieved: waiters (if any) re-raise it
            raise
        except BaseException:  # cancelled (shutdown): waiters are cancelled too
            del self._first_tick[q]
            fut.cancel()
            raise
        self._tracked[q] = tracked
        self._absorb(q, st)
        del self._first_tick[q]
        fut.set_result(st)
        return st

    def _make_room(self, q: QueueRef) -> None:
        if len(self._tracked) < MAX_QUEUES:
            return
        now = time.monotonic()
        self._note_asked(now)
        quiet = min(self._tracked, key=lambda r: self._tracked[r].asked)
        if now - self._tracked[quiet].asked < EVICT_AFTER:
            # a location regex may take the name from the URL: one line a minute
            self.client_log.error("too many queues; check the nginx config", {"queue": str(q)})
            raise TooManyQueues(str(q))
        self._forget(quiet)

    async def _reload_revoked(self, q: QueueRef, t: _Tracked) -> None:
        """Every revocation of ``q`` in force, a slice per call (revoked.lua: a few ms
        at most, never one long script), then the ended stream from where it stood."""
        (head,) = await self.engine.ended_heads([q])
        after, loaded = "", 0
        while True:
            after, found = await self.engine.revoked_chunk(q, after)
            for sid, until in found:
                self.revoke(sid, until)
            loaded += len(found)
            if not after:
                break
        t.last_ended = head
        if loaded:
            log.info("revocations loaded", extra={"queue": str(q), "count": loaded})

    # -- queues an operator forgot ------------------------------------------

    def forget(self, q: QueueRef) -> None:
        """Stops tracking ``q`` (forgotten by an operator); a later request brings it back."""
        if q in self._tracked:
            self._forget(q)
        self.states.pop(q, None)
        self._sessions.pop(q, None)
        self._waiters.pop(q, None)
        self._left.pop(q, None)
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
            return  # the next refresh reports the outage
        for member, at in raw:
            self._forgotten_since = max(self._forgotten_since, float(at))
            tenant, _, queue = text(member).partition(":")
            self.forget(QueueRef(tenant, queue))

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
        now = time.monotonic()
        self._note_asked(now)
        for q in [q for q, t in self._tracked.items() if now - t.asked > FORGET_AFTER]:
            self._forget(q)
        queues = list(self._tracked)
        if not queues and not self._releases:
            return
        redis_now = self._clock[0] + (now - self._clock[1]) * 1000
        claims = [q for q in queues if self._wants(self._tracked[q], redis_now)]
        releases, self._releases = self._releases, []
        try:
            view = await self.engine.tickers(self.holder, self.lease_ms, queues, claims, releases)
        except (RedisError, OSError) as e:
            self._releases = releases  # given back at the next call (or they expire)
            self._redis_failed("tickers", e)
            return
        self._redis_recovered()
        self._clock = (view.now_ms, now)
        moved, self._unread = self._unread & self._tracked.keys(), set()
        for q, version, lease in zip(queues, view.versions, view.leases, strict=True):
            t = self._tracked[q]
            t.lease = lease
            if version != t.version:
                moved.add(q)
                t.version = version
        for q, held in zip(claims, view.held, strict=True):
            t = self._tracked[q]
            if held and not t.held:
                t.next_tick = 0.0  # just taken over: tick it now
            t.held = held
        try:
            await self._tick(
                [
                    q
                    for q in queues
                    if self._tracked[q].held and (q in moved or now >= self._tracked[q].next_tick)
                ],
                now,
                moved,
            )
            await self._read([q for q in moved if not self._tracked[q].held])
            await self._read_ended(sorted(moved, key=str))
        except (RedisError, OSError) as e:
            self._redis_failed("tick", e)
            return
        self._age(view.now_ms)
        if time.monotonic() >= self._next_prune:
            self.revoked.prune()
            self._next_prune = time.monotonic() + 10.0

    def _wants(self, t: _Tracked, redis_now: float) -> bool:
        """Renew a held lease; try one that is free or about to run out."""
        if t.held or not t.lease:
            return True
        _, _, deadline = t.lease.partition(" ")
        return not deadline.isdigit() or int(deadline) < redis_now + self.refresh_interval * 1000

    async def _tick(self, due: Sequence[QueueRef], now: float, moved: set[QueueRef]) -> None:
        if not due:
            return
        # what a newcomer was told at the last look: the record of the estimate's quality
        etas = {q: newcomer_wait(self.states[q]) for q in due if q in self.states}
        states = await self.engine.tick([(q, self._tracked[q].configured) for q in due], etas)
        changed = [
            q for q, st in zip(due, states, strict=True) if st.changed and q in self._tracked
        ]
        for q, st in zip(due, states, strict=True):
            if q not in self._tracked:  # forgotten while the tick ran
                continue
            self._absorb(q, st)
            # someone in line, invited or recalled; capped work left; an opening written
            busy = st.waiting or st.invited or st.recalled or st.more or st.opening
            opens_in = st.settings.opens_at - st.redis_time_ms / 1000
            soon = st.closed and opens_in <= IDLE_TICK
            self._tracked[q].next_tick = now + (
                self.refresh_interval if busy or soon else IDLE_TICK
            )
            if st.expired:  # sessions ended by this tick: read them from the stream
                moved.add(q)
        for q, version in zip(changed, await self.engine.bump(changed), strict=True):
            t = self._tracked[q]
            expected = int(t.version or 0) + 1
            # another process moved it meanwhile (a join, a leave): look again next time
            t.version = str(version if version == expected else expected)

    async def _read(self, queues: Sequence[QueueRef]) -> None:
        """The snapshots of queues another process ticks whose version moved."""
        states = await self.engine.snapshots([(q, self._tracked[q].configured) for q in queues])
        for q, st in zip(queues, states, strict=True):
            if st is not None and q in self._tracked:
                self.states[q] = st

    async def _read_ended(self, queues: Sequence[QueueRef]) -> None:
        """Ended sessions since the last read: up to ENDED_READ_ROUNDS chunks a refresh
        per queue (a burst of leaves is caught up within a few refreshes, each call
        short), the rest at the next refresh."""
        for _ in range(ENDED_READ_ROUNDS):
            if not queues:
                return
            reads = [(q, self._tracked[q].last_ended) for q in queues]
            more: list[QueueRef] = []
            for (q, _), (entries, behind) in zip(
                reads, await self.engine.ended(reads), strict=True
            ):
                t = self._tracked[q]
                if behind:  # entries were trimmed unread: everything in force, again
                    log.warning("ended stream trimmed unread; reloading", extra={"queue": str(q)})
                    await self._reload_revoked(q, t)
                    continue
                for stream_id, sid, until, why in entries:
                    if sid:
                        self.revoke(sid, until)
                        if why == "shared":  # revoked for sharing on any replica
                            self._flag(sid)
                    t.last_ended = stream_id
                if len(entries) >= ENDED_READ_CHUNK:
                    more.append(q)
            queues = more
        self._unread.update(queues)

    def _age(self, redis_now_ms: int) -> None:
        """States not read again lately still carry Redis' clock of now (countdowns)."""
        for q, st in self.states.items():
            if redis_now_ms - st.redis_time_ms > 1000:
                self.states[q] = replace(st, redis_time_ms=redis_now_ms)

    def _note_asked(self, now: float) -> None:
        asked, self._asked = self._asked, set()
        for q in asked:
            t = self._tracked.get(q)
            if t is not None:
                t.asked = now

    def _forget(self, q: QueueRef) -> None:
        t = self._tracked.pop(q)
        self.states.pop(q, None)
        self._left.pop(q, None)
        # its keys may expire once nobody ticks it: that is no loss to recover from
        self.engine.forget(q)
        if t.held:
            self._releases.append(q)

    async def flush(self) -> None:
        if not self._sessions and not self._waiters:
            return
        sessions, waiters = self._sessions, self._waiters
        self._sessions, self._waiters = defaultdict(dict), defaultdict(set)
        batch: dict[QueueRef, tuple[dict[str, set[str]], list[int], QueueSettings]] = {}
        for q in sessions.keys() | waiters.keys():
            s = self._settings(q)
            if s is not None:  # a queue forgotten meanwhile had nobody to count
                batch[q] = (sessions.get(q, {}), sorted(waiters.get(q, ())), s)
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
        for q, gone in beats.gone.items():
            s = self._settings(q)
            if s is None or s.order != "random":
                continue  # in line order serving says when a turn came
            left = self._left[q]
            if len(left) + len(gone) > LEFT_LINE_MAX:
                left.clear()
            left.update(gone)

    def _settings(self, q: QueueRef) -> QueueSettings | None:
        """The queue's effective settings as last seen (configured ones before a tick)."""
        st = self.states.get(q)
        if st is not None:
            return st.settings
        t = self._tracked.get(q)
        return t.configured if t is not None else None

    def _report_shared(self, shared: Shared) -> None:
        """One line per shared session per minute from this process (flag), or at once
        (revoke: the session ended; this process refuses its cookie from now on)."""
        s = self._settings(shared.queue)
        if shared.revoked and s is not None:  # every replica reads it from the ended stream
            self._flag(shared.sid)
            self.revoke(shared.sid, int(time.time()) + s.session_ttl)
        now = time.monotonic()
        if not shared.revoked and now - self._shared_logged.get(shared.sid, -1e9) < 60:
            return
        if len(self._shared_logged) > SHARED_LOGGED_MAX:
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

    def _flag(self, sid: str) -> None:
        if len(self.flagged) >= FLAGGED_MAX:
            self.flagged.clear()
        self.flagged.add(sid)

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
