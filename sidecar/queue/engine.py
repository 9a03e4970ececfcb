"""The queue engine: typed wrappers around one Lua script per operation.

Each public method is one EVALSHA (one round trip); ``tick`` and
``heartbeat`` batch several queues, and concurrent joins are coalesced.
Scripts share ``lua/prelude.lua``, prepended at load time, and are called by
SHA, loaded again on NOSCRIPT.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import enum
import hashlib
import itertools
import json
import logging
import secrets
import struct
import sys
import time
from array import array
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import NoScriptError, RedisError

from ..config import (
    MESSAGE_VARIANT_RE,
    TEXT_SETTINGS,
    ConfigError,
    QueueSettings,
    queue_setting,
    with_overrides,
)
from ..metrics import Metrics
from .client import text as _s
from .keys import (
    ADDRESS_WINDOW_MS,
    ADDRESSES_KEPT,
    END_CHUNK,
    ENDED_READ_CHUNK,
    HEARTBEAT_CHUNK,
    LINE_CHUNK,
    LIVE_BLOCK,
    OPEN_MOVE_CHUNK,
    OPEN_WRITE_CHUNK,
    RECOVERY_MARGIN_MS,
    REVOKED_RELOAD_CHUNK,
    TICKERS_KEY,
    TICKERS_READ_WHOLE,
    QueueKeys,
    queue_keys,
)
from .scripts import (
    CLAIM,
    END_SESSIONS,
    HEARTBEAT,
    JOIN,
    LEAVE,
    LINE,
    OPEN,
    REDEEM,
    REVOKED,
    SCRIPTS,
    SNAPSHOT,
    TICK,
    TICKERS,
    Script,
    source,
)

log = logging.getLogger("sidecar.engine")


class QueueRef(NamedTuple):
    """A tenant's queue. A tuple: it is hashed on every request (C-speed)."""

    tenant: str
    queue: str

    @property
    def keys(self) -> QueueKeys:
        return queue_keys(self.tenant, self.queue)

    def __str__(self) -> str:
        return f"{self.tenant}:{self.queue}"


@dataclass(frozen=True, slots=True)
class LiveLine:
    """Who is still in line, as the summary last read said: exactly for ``front`` (one
    char per line number after ``at``, the serving it was read at: "1" still in
    line), then per block of line numbers."""

    front: str = ""
    blocks: tuple[int, ...] = ()  # block numbers, ascending
    cumulative: tuple[int, ...] = ()  # people in line in blocks[0..i]
    counts: Mapping[int, int] = field(default_factory=dict)
    # tickets this process handed out since the tick (sorted): positions right after
    # joining count them, at O(log n) a join whatever the length of the line
    recent: list[int] = field(default_factory=list)
    at: int | None = None  # the serving the front was read at (None: the caller's)

    @classmethod
    def of(cls, front: str, counts: Mapping[int, int], at: int | None = None) -> LiveLine:
        blocks = tuple(sorted(counts))
        return cls(
            front,
            blocks,
            tuple(itertools.accumulate(counts[b] for b in blocks)),
            counts,
            at=at,
        )

    def again(self) -> LiveLine:
        """The same summary for a new tick (nothing changed): no joins since it yet."""
        return LiveLine(self.front, self.blocks, self.cumulative, self.counts, [], self.at)

    def joined(self, ticket: int) -> LiveLine:
        bisect.insort(self.recent, ticket)
        return self

    def _in_blocks(self, lo: int, hi: int) -> int:
        """People in line in blocks lo..hi-1."""
        i, j = bisect.bisect_left(self.blocks, lo), bisect.bisect_left(self.blocks, hi)
        if j <= i:
            return 0
        return self.cumulative[j - 1] - (self.cumulative[i - 1] if i else 0)

    def ahead(self, ticket: int, serving: int) -> int:
        """How many people still in line are ahead of ``ticket``: exact in the front
        window, at most LIVE_BLOCK - 1 too many beyond it."""
        if ticket <= serving:
            return 0
        # a summary read at an earlier serving still counts those invited since:
        # the answer of then, never a higher one
        base = serving if self.at is None else self.at
        offset = ticket - base - 1
        if offset < len(self.front):
            return self.front.count("1", 0, offset)
        window_end = base + len(self.front)  # last line number the front covers
        mine = ticket // LIVE_BLOCK
        ahead = self.front.count("1")
        ahead += self._in_blocks(window_end // LIVE_BLOCK + 1, mine)
        # the visitor's block may start inside the window
        lo = mine * LIVE_BLOCK if mine > window_end // LIVE_BLOCK else window_end + 1
        # others of the visitor's own block, at most those numbered before them
        ahead += max(0, min(self.counts.get(mine, 0) - 1, ticket - lo))
        # and those who joined through this process since the tick
        ahead += bisect.bisect_left(self.recent, ticket) - bisect.bisect_right(
            self.recent, window_end
        )
        return ahead


@dataclass(slots=True)
class _Summary:
    """A process's copy of one queue's line summary (lua/summary.lua), kept up to
    date from the blocks changed since its version."""

    epoch: str = ""
    version: int = 0
    counts: dict[int, int] = field(default_factory=dict)
    live: LiveLine = field(default_factory=LiveLine)

    def apply(self, r: Mapping[str, Any], epoch: str, serving: int) -> bool:
        """Folds one read in; True when caught up (the summary is whole again)."""
        if int(r["line_same"]):
            self.live = self.live.again()
            return True
        if int(r["line_full"]) or epoch != self.epoch:
            self.counts = {}
        self.epoch = epoch
        blocks = r["blocks"]
        for i in range(0, len(blocks), 2):
            block, n = int(blocks[i]), int(blocks[i + 1])
            if n > 0:
                self.counts[block] = n
            else:
                self.counts.pop(block, None)
        self.version = int(r["line_version"])
        if int(r["line_more"]):
            return False
        floor = serving // LIVE_BLOCK  # blocks behind serving never change again
        for block in [b for b in self.counts if b < floor]:
            del self.counts[block]
        self.live = LiveLine.of(_s(r["front"]), dict(self.counts), serving)
        return True


def shuffled_order(seed: int, count: int) -> list[int]:
    """The pre-queue order tick.lua draws at an opening, replayed from its logged
    seed: element i is the offset (ticket - first) of the visitor at line
    first + i. Fisher-Yates driven by L'Ecuyer's combined generator, in the same
    double arithmetic as the Lua, so both sides agree bit for bit."""
    s1 = seed % 2147483562 + 1
    s2 = seed // 2147483562 % 2147483398 + 1
    a = list(range(count))
    for i in range(count, 1, -1):
        s1 = 40014 * s1 % 2147483563
        s2 = 40692 * s2 % 2147483399
        j = int((s1 - s2) % 2147483562 / 2147483562 * i)
        a[i - 1], a[j] = a[j], a[i - 1]
    return a


def drawn_order(seed: int, count: int) -> tuple[bytes, bytes]:
    """The order and rank strings of an opening (4 bytes big-endian per place), as
    open.lua writes them: order[i] = ticket offset at line first + i, rank its inverse."""
    order = array("I", shuffled_order(seed, count))
    rank = array("I", bytes(4 * count)) if order.itemsize == 4 else array("I", [0] * count)
    for i, t in enumerate(order):
        rank[t] = i
    if order.itemsize != 4:  # a platform whose C int is not 4 bytes
        return struct.pack(f">{count}I", *order), struct.pack(f">{count}I", *rank)
    if sys.byteorder == "little":
        order.byteswap()
        rank.byteswap()
    return order.tobytes(), rank.tobytes()


@dataclass(frozen=True, slots=True)
class LineOrder:
    """The last opening's pre-queue (tickets first..last) in its shuffled order."""

    first: int
    last: int
    seed: int
    ranks: array[int]  # ticket first + i stands at line number first + ranks[i]

    def line(self, ticket: int) -> int:
        if self.first <= ticket <= self.last:
            return self.first + self.ranks[ticket - self.first]
        return ticket


def line_order(first: int, last: int, seed: int, packed: bytes) -> LineOrder | None:
    """The order from the ``rank`` string tick.lua stored (4 bytes big-endian per
    ticket); None if it does not hold last - first + 1 places."""
    ranks = array("I")
    if ranks.itemsize == 4:
        ranks.frombytes(packed[: len(packed) // 4 * 4])
        if sys.byteorder == "little":
            ranks.byteswap()
    else:  # a platform whose C int is not 4 bytes
        ranks = array("I", struct.unpack(f">{len(packed) // 4}I", packed))
    return LineOrder(first, last, seed, ranks) if len(ranks) == last - first + 1 else None


@dataclass(frozen=True, slots=True)
class QueueState:
    """A queue as one tick saw it; shared by every request in the process."""

    tickets: int  # last ticket handed out
    serving: int  # tickets up to this one have been invited (or skipped)
    waiting: int  # people in line (polled lately, or joined in the last few seconds)
    active: int  # admitted sessions
    invited: int  # invitations not yet claimed
    admitted_last_minute: int
    redis_time_ms: int
    settings: QueueSettings  # effective: configuration plus operator overrides
    expired: int = 0  # sessions purged by this tick
    lapsed: int = 0  # invitations that ran out by this tick
    newly_invited: int = 0
    skipped: int = 0
    unseen: int = 0  # of the skipped, those still in line but never seen (they gave up)
    recalled: int = 0  # waiters back within their second chance, served before the line
    live: LiveLine = field(default_factory=LiveLine)
    closed: bool = False  # before a scheduled opening (settings.opens_at): nobody admitted
    order: LineOrder | None = None  # the last opening's shuffled pre-queue
    opened: bool = False  # this tick drew the opening's order (or its seed)
    opening: bool = False  # the drawn order is being written: nobody admitted, no positions
    more: bool = False  # capped work (pruning, the advance) was left for the next tick
    epoch: str = ""  # the queue's epoch (keys.QueueKeys.epoch): tokens from another are stale
    version: int = 0  # the snapshot's version (moves when anything above changed)
    changed: bool = False  # this tick published a new version
    in_draw: int = 0  # random order: present waiters, each as likely to be drawn next

    def line(self, ticket: int) -> int:
        """Where ``ticket`` stands in the line: itself, unless it was in a shuffled
        pre-queue. Its turn has come once ``serving`` reaches this number."""
        return ticket if self.order is None else self.order.line(ticket)

    @property
    def shut(self) -> bool:
        """Closed (mode closed, or its closes_at passed by Redis' clock): newcomers see
        the closed page, people in line are told; admitted sessions go on."""
        s = self.settings
        return s.mode == "closed" or 0 < s.closes_at <= self.redis_time_ms // 1000

    def position(self, ticket: int) -> int:
        """1 for the next in line; counts only people still in line ahead."""
        return 1 + self.recalled + self.live.ahead(self.line(ticket), self.serving)

    @property
    def admissions_per_second(self) -> float:
        return self.admitted_last_minute / 60.0


class Claim(enum.Enum):
    ADMITTED = 1
    NOT_YET = 0  # not invited yet, or recalled for the next free slot
    MISSED = -1  # the turn passed and its second chance too: join again
    STALE = -2  # a place from another epoch (Redis lost the queue since): join again
    RESTORED = 2  # a place from the epoch Redis lost, back in line under the current one


class Redeemed(enum.Enum):
    INVALID = 0  # no such code: unknown, used or expired
    ADMITTED = 1  # admitted at once
    NEXT = 2  # next in: invited at the next free slot, before the line


class Redemption(NamedTuple):
    result: Redeemed
    ticket: int
    epoch: str
    label: str  # the operator's label of the code ("" = none)


class Joined(NamedTuple):
    admitted: bool  # admitted at once (nobody ahead, room)
    ticket: int
    epoch: str  # the queue's epoch the ticket belongs to


class Ended(NamedTuple):
    """An entry of a queue's ended stream."""

    id: str
    sid: str
    until: int  # unix seconds its cookie could still be presented
    why: str  # "shared": revoked for sharing (flagged clients); "" or "lost" otherwise


class Shared(NamedTuple):
    """An admitted session used from more client addresses at once than allowed."""

    queue: QueueRef
    sid: str
    addresses: int  # seen within keys.ADDRESS_WINDOW_MS
    revoked: bool  # ended by the queue's shared_sessions = "revoke"


@dataclass(slots=True)
class Heartbeats:
    ended: int = 0  # sessions ended because Redis no longer had room for them
    shared: list[Shared] = field(default_factory=list)
    # waiting tickets of the batch no longer in line (invited, drawn, left, pruned)
    gone: dict[QueueRef, list[int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Tickers:
    """One refresh's view of the queues' tickers (tickers.lua)."""

    now_ms: int  # Redis' clock
    versions: list[str]  # per queue read: its version ("" = none yet)
    leases: list[str]  # per queue read: "holder deadline_ms" ("" = nobody)
    held: list[bool]  # per queue claimed: this process holds it now


class Busy(Exception):
    """Every Redis connection of this process stayed in use for the whole wait:
    load, not an outage. Callers answer "wait" and never fail open on it."""


REFUSED = 0  # the ticket of a join refused because its address used up its budget
JOIN_BATCH_MAX = 500  # newcomers per join script call: one call stays near a millisecond

# A call of one script: (script, keys, args)
Call = tuple[Script, list[str], list[Any]]


def confirm_ms(s: QueueSettings) -> int:
    """How long a new session holds its slot before its cookie comes back."""
    return min(s.session_ttl, s.grace) * 1000


@dataclass(slots=True)
class _Joins:
    settings: QueueSettings
    sids: list[str] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    futures: list[asyncio.Future[Joined]] = field(default_factory=list)


class Engine:
    """Works with one Redis (batches are pipelined) or a Redis Cluster (batches run
    concurrently: EVALSHA cannot be pipelined across slots; each queue is one slot).

    Request-driven calls share ``pool_size`` connections and wait at most
    ``pool_timeout`` for one (then :class:`Busy`); the refresher's batches skip
    that wait so the line keeps moving under any load."""

    def __init__(
        self,
        redis: Redis | RedisCluster,
        purge_slack_ms: int = 2000,
        pool_size: int = 64,
        pool_timeout: float = 2.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.redis = redis
        self.metrics = metrics or Metrics()
        self.purge_slack_ms = purge_slack_ms
        self.pool_timeout = pool_timeout
        self._slots = asyncio.Semaphore(pool_size)
        self._cluster = isinstance(redis, RedisCluster)
        self._sources = {name: source(script) for name, script in SCRIPTS.items()}
        self._sha = {n: hashlib.sha1(src.encode()).hexdigest() for n, src in self._sources.items()}
        self._joins: dict[QueueRef, _Joins] = {}
        self._joining: set[QueueRef] = set()
        self._orders: dict[QueueRef, LineOrder] = {}  # each queue's last drawn order
        # each queue as this process last saw it (epoch, tickets, serving): if Redis
        # loses it, the script that makes the new epoch rebuilds the line from it
        self._known: dict[QueueRef, tuple[str, int, int]] = {}
        # how long the line stands still after a loss: a heartbeat flush and a margin
        self.recovery_ms = purge_slack_ms + RECOVERY_MARGIN_MS
        self._summaries: dict[QueueRef, _Summary] = {}  # each queue's line summary
        self._openings: dict[QueueRef, asyncio.Task[None]] = {}
        self.open_write_chunk = OPEN_WRITE_CHUNK
        self.open_move_chunk = OPEN_MOVE_CHUNK
        self._tasks: set[asyncio.Task[None]] = set()
        self._tickers_len = 0  # fields of keys.TICKERS_KEY at the last read

    def forget(self, q: QueueRef) -> None:
        """This process stops following ``q`` (an operator deleted it, or it was quiet):
        its keys going (deleted, or expired) is no loss to recover from."""
        self._known.pop(q, None)
        self._orders.pop(q, None)

    async def load_scripts(self) -> None:
        """SCRIPT LOAD on the server (every primary of a cluster); done again by
        itself whenever Redis answers NOSCRIPT (restart, failover, flush)."""
        for src in self._sources.values():
            await self.redis.script_load(src)

    async def _evalsha(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        name = script.name
        started = time.perf_counter()  # metrics: latency and errors by operation
        try:
            return await self.redis.evalsha(self._sha[name], len(keys), *keys, *args)
        except NoScriptError:
            await self.load_scripts()
            return await self.redis.evalsha(self._sha[name], len(keys), *keys, *args)
        except (RedisError, OSError):
            self.metrics.redis_error(name)
            raise
        finally:
            self.metrics.redis_call(name, time.perf_counter() - started)

    async def _call(
        self, script: Script, keys: list[str], args: list[Any], poke: QueueRef | None = None
    ) -> dict[str, Any]:
        """A request's script call: waits its turn for a connection (back-pressure);
        then moves ``poke``'s version (see :meth:`poke`) on the same connection slot."""
        try:
            async with asyncio.timeout(self.pool_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise Busy(script.name) from None
        try:
            reply = script.decode(await self._evalsha(script, keys, args))
            if poke is not None:
                await self.poke(poke)
            return reply
        finally:
            self._slots.release()

    async def _batch(self, calls: Sequence[Call]) -> list[dict[str, Any]]:
        """Several calls in one round trip (one per shard on a cluster)."""
        if self._cluster:
            replies = list(await asyncio.gather(*(self._evalsha(*c) for c in calls)))
        else:
            name = calls[0][0].name
            started = time.perf_counter()  # metrics: latency and errors by operation
            try:
                replies = await self._batch_pipelined(calls)
            except (RedisError, OSError):
                self.metrics.redis_error(name)
                raise
            finally:
                self.metrics.redis_call(name, time.perf_counter() - started)
        return [script.decode(r) for (script, _, _), r in zip(calls, replies, strict=True)]

    async def _batch_pipelined(self, calls: Sequence[Call]) -> list[Any]:
        replies = await self._pipeline(calls)
        if any(isinstance(r, NoScriptError) for r in replies):
            await self.load_scripts()
            replies = await self._pipeline(calls)
        for r in replies:
            if isinstance(r, Exception):
                raise r
        return replies

    async def _pipeline(self, calls: Sequence[Call]) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for script, keys, args in calls:
                pipe.evalsha(self._sha[script.name], len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))

    def _admission(self, s: QueueSettings) -> dict[str, str | int]:
        """The arguments of the scripts that may admit: the policy to enforce."""
        return {
            "mode": s.mode,
            "capacity": s.capacity,
            "admit_per_minute": s.admit_per_minute,
            "confirm_ms": confirm_ms(s),
            "grace_ms": s.grace * 1000,
            "opens_at": s.opens_at,
            "joins_per_address": s.joins_per_address,
        }

    def _known_args(self, q: QueueRef) -> dict[str, str | int]:
        epoch, tickets, serving = self._known.get(q, ("", 0, 0))
        return {
            "known_epoch": epoch,
            "known_tickets": tickets,
            "known_serving": serving,
            "recovery_ms": self.recovery_ms,
        }

    def _saw(self, q: QueueRef, epoch: str, tickets: int, serving: int | None = None) -> None:
        known = self._known.get(q)
        if known is None or known[0] != epoch:
            self._known[q] = (epoch, tickets, serving or 0)
        else:
            self._known[q] = (epoch, max(known[1], tickets), max(known[2], serving or 0))

    # -- joins, coalesced ----------------------------------------------------

    async def join(self, q: QueueRef, sid: str, s: QueueSettings, address: str = "") -> Joined:
        """Takes a ticket; returns (admitted at once, ticket, epoch); ticket REFUSED when
        ``address`` (the client's, "" = unknown) has used its budget of joins for this
        minute (``joins_per_address``): no ticket is taken then. Concurrent joins to one
        queue in this process go to Redis together, in arrival order: one script
        call per event-loop turn (or per batch in flight), never one per visitor."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Joined] = loop.create_future()
        joins = self._joins.get(q)
        if joins is None:
            joins = self._joins[q] = _Joins(s)
            if q not in self._joining:
                loop.call_soon(self._start_joins, q)
        joins.sids.append(sid)
        joins.addresses.append(address)
        joins.futures.append(fut)
        return await fut

    def _start_joins(self, q: QueueRef) -> None:
        if q in self._joining:
            return  # the batch in flight takes the next one when it is done
        self._joining.add(q)
        task = asyncio.create_task(self._run_joins(q))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_joins(self, q: QueueRef) -> None:
        # one batch in flight per queue: batches reach Redis in arrival order (FIFO)
        try:
            while (joins := self._joins.pop(q, None)) is not None:
                for i in range(0, len(joins.sids), JOIN_BATCH_MAX):
                    futures = joins.futures[i : i + JOIN_BATCH_MAX]
                    try:
                        reply = await self.join_many(
                            q,
                            joins.sids[i : i + JOIN_BATCH_MAX],
                            joins.settings,
                            joins.addresses[i : i + JOIN_BATCH_MAX],
                        )
                    except Exception as e:
                        for f in futures:
                            if not f.done():
                                f.set_exception(e)
                        continue
                    except BaseException:  # shutting down: nobody gets an answer
                        for f in futures:
                            f.cancel()
                        raise
                    for f, result in zip(futures, reply, strict=True):
                        if not f.done():  # its request may have been cancelled
                            f.set_result(result)
        finally:
            self._joining.discard(q)

    async def join_many(
        self,
        q: QueueRef,
        sids: Sequence[str],
        s: QueueSettings,
        addresses: Sequence[str] | None = None,
    ) -> list[Joined]:
        """Tickets for ``sids`` in order: [(admitted at once, ticket or REFUSED, epoch)]."""
        addrs = addresses if addresses is not None else [""] * len(sids)
        pairs = [x for pair in zip(sids, addrs, strict=True) for x in pair]
        args = {**self._admission(s), **self._known_args(q)}
        # someone may wait now: its ticker need not wait for its idle tick
        reply = await self._call(JOIN, q.keys.all(), JOIN.argv(args, pairs), q)
        epoch, places = _s(reply["epoch"]), reply["places"]
        self._saw(q, epoch, max((int(t) for t in places[::2]), default=0))
        for admitted in places[1::2]:
            if admitted:  # walked in: no time in line
                self.metrics.waited(q, 0.0)
        return [
            Joined(bool(places[i + 1]), int(places[i]), epoch) for i in range(0, len(places), 2)
        ]

    # -- one visitor ---------------------------------------------------------

    async def claim(
        self, q: QueueRef, ticket: int, sid: str, s: QueueSettings, epoch: str | None = None
    ) -> Claim:
        """``epoch``: the one in the visitor's token; None trusts the ticket (tests)."""
        return (await self.claim_place(q, ticket, sid, s, epoch))[0]

    async def claim_place(
        self,
        q: QueueRef,
        ticket: int,
        sid: str,
        s: QueueSettings,
        epoch: str | None = None,
        joined: int = 0,
    ) -> tuple[Claim, str]:
        """:meth:`claim` and the queue's current epoch (a RESTORED place's new one).
        ``joined``: unix second the place was taken (its token's issue time; 0 unknown),
        for the time in line a first admission records."""
        args = {"ticket": ticket, "sid": sid, "epoch": epoch or "", **self._admission(s)}
        args["joined_ms"] = joined * 1000
        reply = await self._call(CLAIM, q.keys.all(), CLAIM.argv(args))
        waited_ms, told = int(reply["waited_ms"]), int(reply["estimate"])
        if waited_ms >= 0:
            self.metrics.waited(q, waited_ms / 1000)
            if told > 0:
                self.metrics.estimate_ratio(q, waited_ms / 1000 / told)
        return Claim(int(reply["result"])), _s(reply["current_epoch"])

    async def leave(
        self, q: QueueRef, ticket: int, sid: str, revoke_until: int, epoch: str | None = None
    ) -> bool:
        """Ends the visitor's place or session; True if it freed capacity.
        ``revoke_until``: when the admitted cookie would expire (0 for a place in line);
        a ``ticket`` of another ``epoch`` is someone else's now and is left alone
        (None trusts the ticket: operators and tests)."""
        args = {"ticket": ticket, "sid": sid, "revoke_until": revoke_until, "epoch": epoch or ""}
        # every replica reads the ended stream at its next refresh
        reply = await self._call(LEAVE, q.keys.all(), LEAVE.argv(args), q)
        self.metrics.gone(q, "left", int(reply["left_line"]))
        return bool(reply["freed"])

    async def redeem(
        self,
        q: QueueRef,
        digest: str,
        sid: str,
        s: QueueSettings,
        old_ticket: int = 0,
        old_epoch: str = "",
    ) -> Redemption:
        """Uses the access code whose SHA-256 is ``digest`` (once, on any replica): a
        place for ``sid`` admitted at once or next in; the place the holder had
        (``old_ticket`` of ``old_epoch``) leaves the line."""
        args = {
            "digest": digest,
            "sid": sid,
            "old_ticket": old_ticket,
            "old_epoch": old_epoch,
            **self._admission(s),
            **self._known_args(q),
        }
        reply = await self._call(REDEEM, q.keys.all(), REDEEM.argv(args), q)
        result = Redeemed(int(reply["result"]))
        epoch = _s(reply["epoch"])
        if result is not Redeemed.INVALID:
            self._saw(q, epoch, int(reply["ticket"]))
        return Redemption(result, int(reply["ticket"]), epoch, _s(reply["label"]))

    async def spend_challenge(self, q: QueueRef, nonce: str, ttl_ms: int) -> bool:
        """Records a solved challenge as used (SET NX, gone when it would have
        expired anyway): True the first time on any replica, False for a replay."""
        try:
            async with asyncio.timeout(self.pool_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise Busy("spend_challenge") from None
        try:
            return bool(await self.redis.set(q.keys.spent + nonce, b"1", nx=True, px=ttl_ms))
        finally:
            self._slots.release()

    # -- the refresher's batches ----------------------------------------------

    async def heartbeat(
        self,
        batch: Mapping[
            QueueRef,
            tuple[Sequence[str] | Mapping[str, Collection[str]], Sequence[int], QueueSettings],
        ],
    ) -> Heartbeats:
        """Extends sessions and marks waiters seen: {queue: (sids, tickets, settings)};
        sids may map each session to the client addresses it was used from."""
        result = Heartbeats()
        if not batch:
            return result
        calls: list[Call] = []
        queues: list[QueueRef] = []
        for q, (sessions, tickets, s) in batch.items():
            sids = list(sessions)
            if isinstance(sessions, Mapping) and s.shared_sessions != "allow":
                addrs = [",".join(sessions[sid]) for sid in sids]
            else:
                addrs = [""] * len(sids)
            head = {
                "session_ttl_ms": s.session_ttl * 1000,
                "capacity": s.capacity,
                "mode": s.mode,
                "shared_sessions": s.shared_sessions,
                "max_addresses": s.max_addresses,
                "window_ms": ADDRESS_WINDOW_MS,
                "addresses_kept": ADDRESSES_KEPT,
                "address_prefix": q.keys.addresses,
            }
            # chunks keep each script call short, whatever the crowd
            for i in range(0, max(len(sids), len(tickets)), HEARTBEAT_CHUNK):
                chunk = slice(i, i + HEARTBEAT_CHUNK)
                rest = [*sids[chunk], *addrs[chunk], *tickets[chunk]]
                args = HEARTBEAT.argv({**head, "sessions": len(sids[chunk])}, rest)
                calls.append((HEARTBEAT, q.keys.all(), args))
                queues.append(q)
        self.metrics.heartbeat_batch(sum(len(s) + len(t) for s, t, _ in batch.values()))
        poked: set[QueueRef] = set()
        for q, r in zip(queues, await self._batch(calls), strict=True):
            result.ended += int(r["ended"])
            found = r["shared"]
            for j in range(0, len(found), 3):
                result.shared.append(Shared(q, _s(found[j]), int(found[j + 1]), bool(found[j + 2])))
                if found[j + 2]:
                    poked.add(q)
            if int(r["ended"]):
                poked.add(q)
            if r["gone"]:
                result.gone.setdefault(q, []).extend(int(t) for t in r["gone"])
        for q in poked:  # sessions ended: every replica reads them at its next refresh
            await self.poke(q)
        return result

    async def tick(
        self,
        queues: Sequence[tuple[QueueRef, QueueSettings]],
        etas: Mapping[QueueRef, float | None] | None = None,
    ) -> list[QueueState]:
        """Purges, advances, records and publishes each queue: [(queue, configured
        settings)]; ``etas``: what a newcomer to each was told lately (the record of
        how good the estimate was; estimate.newcomer_wait)."""
        if not queues:
            return []
        calls: list[Call] = []
        for q, s in queues:
            eta = (etas or {}).get(q)
            summary = self._summaries.get(q) or _Summary()
            args = {
                "capacity": s.capacity,
                "admit_per_minute": s.admit_per_minute,
                "session_ttl": s.session_ttl,
                "grace": s.grace,
                "abandon_after": s.abandon_after,
                "mode": s.mode,
                "session_max": s.session_max,
                "opens_at": s.opens_at,
                "joins_per_address": s.joins_per_address,
                "shared_sessions": s.shared_sessions,
                "max_addresses": s.max_addresses,
                "challenge": s.challenge,
                "challenge_difficulty": s.challenge_difficulty,
                "flagged": s.flagged,
                "purge_slack_ms": self.purge_slack_ms,
                **self._known_args(q),
                "line_version": summary.version,
                "line_epoch": summary.epoch,
                "eta": -1 if eta is None else round(eta),
                "order": s.order,
                "access": s.access,
                # random order: who is drawn must not be foreseeable
                "draw_seed": str(secrets.randbits(52)),
                "closes_at": s.closes_at,
            }
            calls.append((TICK, q.keys.all(), TICK.argv(args)))
        replies = await self._batch(calls)
        states = []
        for r, (q, s) in zip(replies, queues, strict=True):
            epoch = _s(r["epoch"])
            self._saw(q, epoch, int(r["tickets"]), int(r["serving"]))
            self.metrics.gone(q, "pruned", int(r["pruned"]))
            self.metrics.gone(q, "skipped", int(r["unseen"]))
            live = await self._summary(q, r, epoch)
            order = None
            if int(r["opening"]):
                first, last = int(r["shuffled_first"]), int(r["shuffled_last"])
                self._drive_opening(q, _s(r["seed"]), first, last)
            else:
                order = await self._line_order(q, r)
            states.append(_state(r, s, order, live))
        return states

    async def _summary(self, q: QueueRef, r: Mapping[str, Any], epoch: str) -> LiveLine:
        """The queue's line summary after this tick: the blocks changed since the last
        one folded in; cut short (a new process, an opening), read on until whole."""
        summary = self._summaries.setdefault(q, _Summary())
        reply, serving = r, int(r["serving"])
        while not summary.apply(reply, epoch, serving):
            args = {"line_version": summary.version, "line_epoch": epoch, "limit": LINE_CHUNK}
            reply = LINE.decode(await self._evalsha(LINE, q.keys.all(), LINE.argv(args)))
            serving = int(reply["serving"])
        return summary.live

    async def line(self, q: QueueRef, epoch: str) -> LiveLine:
        """The queue's line summary read on its own (a process that does not tick the
        queue): only the blocks changed since this process's copy, in short calls."""
        summary = self._summaries.setdefault(q, _Summary())
        while True:
            args = {"line_version": summary.version, "line_epoch": epoch, "limit": LINE_CHUNK}
            reply = LINE.decode(await self._evalsha(LINE, q.keys.all(), LINE.argv(args)))
            if summary.apply(reply, epoch, int(reply["serving"])):
                return summary.live

    # -- a big opening, in short calls -----------------------------------------

    def _drive_opening(self, q: QueueRef, seed: str, first: int, last: int) -> None:
        """Writes the order the tick drew a seed for (one task per queue and process;
        replicas racing each other write the same bytes once: open.lua)."""
        task = self._openings.get(q)
        if task is not None and not task.done():
            return
        task = asyncio.create_task(self._open(q, seed, first, last))
        self._openings[q] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self, q: QueueRef, seed: str, first: int, last: int) -> None:
        keys = q.keys.all()
        count = last - first + 1
        log.info(
            "queue opening, order drawn",
            extra={"queue": str(q), "seed": int(seed), "first": first, "last": last},
        )
        order, rank = await asyncio.to_thread(drawn_order, int(seed), count)
        written = moved = 0
        try:
            while True:
                n = min(self.open_write_chunk, count - written)
                args = {
                    "seed": seed,
                    "offset": written,
                    "order": order[4 * written : 4 * (written + n)],
                    "rank": rank[4 * written : 4 * (written + n)],
                    "move": self.open_move_chunk,
                }
                r = OPEN.decode(await self._evalsha(OPEN, keys, OPEN.argv(args)))
                written, moved = int(r["written"]), int(r["moved"])
                if int(r["done"]):
                    break
        except (RedisError, OSError) as e:  # the next tick starts it again from where it stood
            log.warning("opening interrupted", extra={"queue": str(q), "error": str(e)})
            return
        if moved == count:
            log.info("queue opened", extra={"queue": str(q), "seed": int(seed)})

    # -- tickers and snapshots ------------------------------------------------

    async def tickers(
        self,
        holder: str,
        lease_ms: int,
        reads: Sequence[QueueRef],
        claims: Sequence[QueueRef] = (),
        releases: Sequence[QueueRef] = (),
    ) -> Tickers:
        """Versions and leases of ``reads``; renews or takes the leases of ``claims``
        (free, expired or already ``holder``'s); gives back those of ``releases``."""
        async with self.redis.pipeline(transaction=False) as pipe:
            # a small hash is a listpack, where each HMGET field is a scan: read it whole
            if self._tickers_len <= TICKERS_READ_WHOLE:
                pipe.hgetall(TICKERS_KEY)
            else:
                pipe.hmget(TICKERS_KEY, [f"{p}:{q}" for q in reads for p in ("v", "l")])
            pipe.hlen(TICKERS_KEY)
            values, self._tickers_len = await pipe.execute()
        if isinstance(values, dict):
            whole = {_s(k): _s(v) for k, v in values.items()}
            versions = [whole.get(f"v:{q}", "") for q in reads]
            leases = [whole.get(f"l:{q}", "") for q in reads]
        else:
            versions = [_s(v) if v is not None else "" for v in values[0::2]]
            leases = [_s(v) if v is not None else "" for v in values[1::2]]
        args = {"holder": holder, "lease_ms": lease_ms, "claims": len(claims)}
        args["releases"] = len(releases)
        names = [str(q) for q in (*claims, *releases)]
        r = TICKERS.decode(await self._evalsha(TICKERS, [TICKERS_KEY], TICKERS.argv(args, names)))
        return Tickers(int(r["now_ms"]), versions, leases, [bool(h) for h in r["held"]])

    async def bump(self, queues: Sequence[QueueRef]) -> list[int]:
        """Moves each queue's version: every replica reads it again at its next refresh
        (and its ticker ticks it at once, if another process moved it)."""
        if not queues:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for q in queues:
                pipe.hincrby(TICKERS_KEY, f"v:{q}", 1)
            return [int(v) for v in await pipe.execute()]

    async def poke(self, q: QueueRef) -> None:
        """After a change made outside the ticker (join, leave, operator): the ticker
        ticks the queue at once and every replica reads what changed. Best effort:
        the ticker's own ticks catch up within keys.IDLE_TICK if this is lost."""
        with contextlib.suppress(RedisError, OSError):
            await self.redis.hincrby(TICKERS_KEY, f"v:{q}", 1)

    async def snapshots(
        self, queues: Sequence[tuple[QueueRef, QueueSettings]]
    ) -> list[QueueState | None]:
        """Each queue's state as its ticker last published it (None: none yet), with
        the line summary brought up to date when it moved."""
        if not queues:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for q, _ in queues:
                pipe.hmget(q.keys.snapshot, "body", "version", "at")
            replies = await pipe.execute()
        out: list[QueueState | None] = []
        for (q, s), (body, version, at) in zip(queues, replies, strict=True):
            if body is None:
                out.append(None)
                continue
            r: dict[str, Any] = dict(zip(SNAPSHOT, json.loads(body), strict=True))
            r.update(
                redis_time_ms=int(at or 0),
                version=int(version or 0),
                changed=0,
                expired=0,
                lapsed=0,
                newly_invited=0,
                skipped=0,
                unseen=0,
                opened=0,
                more=0,
            )
            epoch = _s(r["epoch"])
            known = self._summaries.get(q)
            if known is not None and (known.version, known.epoch) == (
                int(r["line_version"]),
                epoch,
            ):
                live = known.live.again()
            else:
                live = await self.line(q, epoch)
            order = None if int(r["opening"]) else await self._line_order(q, r)
            out.append(_state(r, s, order, live))
        return out

    async def ended(self, reads: Sequence[tuple[QueueRef, str]]) -> list[tuple[list[Ended], bool]]:
        """Sessions ended after each (queue, last stream id read): [(id, sid, until, why)],
        and whether entries may have been trimmed unread (then reload the revoked set)."""
        if not reads:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for q, last in reads:
                pipe.xrange(q.keys.ended, last, "+", count=ENDED_READ_CHUNK + 1)
            replies = await pipe.execute()
        out = []
        for (_, last), entries in zip(reads, replies, strict=True):
            found = []
            for entry_id, f in entries:
                got = {_s(k): _s(v) for k, v in f.items()}
                until = int(float(got.get("until", 0)))
                found.append(Ended(_s(entry_id), got.get("sid", ""), until, got.get("why", "")))
            # the last entry read is still there: nothing was trimmed unread
            if found and found[0][0] == last:
                out.append((found[1:], False))
            else:  # "0-0": the stream was empty when this process loaded the revocations
                out.append((found, bool(found) and last != "0-0"))
        return out

    async def ended_heads(self, queues: Sequence[QueueRef]) -> list[str]:
        """The newest entry of each queue's ended stream ("0-0": none)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for q in queues:
                pipe.xrevrange(q.keys.ended, "+", "-", count=1)
            replies = await pipe.execute()
        return [_s(r[0][0]) if r else "0-0" for r in replies]

    async def revoked_chunk(self, q: QueueRef, after: str) -> tuple[str, list[tuple[str, int]]]:
        """A slice of every revocation of ``q`` in force (revoked.lua): those after
        session ``after`` ("" = from the start), and where to go on from ("" = done)."""
        args = {"after": after, "limit": REVOKED_RELOAD_CHUNK}
        r = REVOKED.decode(await self._evalsha(REVOKED, q.keys.all(), REVOKED.argv(args)))
        chunk = r["revoked"]
        found = [(_s(chunk[i]), int(float(chunk[i + 1]))) for i in range(0, len(chunk), 2)]
        return ("" if int(r["done"]) or not found else found[-1][0]), found

    async def end_sessions(self, q: QueueRef, revoke_until: int) -> int:
        """Ends every admitted session of ``q`` now (end_sessions.lua, keys.END_CHUNK a
        call); returns how many. Every replica refuses their cookies at its next read."""
        ended = 0
        args = {"revoke_until": revoke_until, "limit": END_CHUNK}
        while True:
            raw = await self._evalsha(END_SESSIONS, q.keys.all(), END_SESSIONS.argv(args))
            r = END_SESSIONS.decode(raw)
            ended += int(r["ended"])
            if int(r["done"]):
                break
        await self.poke(q)
        return ended

    async def revoked_until(self, q: QueueRef, sid: str) -> int:
        """Unix second until which ``sid`` is revoked in ``q`` (0: it is not)."""
        until = await self.redis.zscore(q.keys.revoked, sid)
        return int(until or 0)

    async def _line_order(self, q: QueueRef, r: Mapping[str, Any]) -> LineOrder | None:
        """The queue's drawn order, read once per process and opening (about 4 MB
        per million places; Redis keeps it in the ``rank`` string)."""
        first, last, seed = int(r["shuffled_first"]), int(r["shuffled_last"]), int(r["seed"])
        if last < first:
            return None
        known = self._orders.get(q)
        if known is not None and (known.first, known.last, known.seed) == (first, last, seed):
            return known
        packed, stored_seed = await self._read_order(q)
        # a newer opening in between: read again at the next tick
        order = line_order(first, last, seed, packed) if stored_seed == seed else None
        if order is not None:
            self._orders[q] = order
        return order

    async def _read_order(self, q: QueueRef) -> tuple[bytes, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(q.keys.rank)
            pipe.hget(q.keys.opening, "seed")
            packed, seed = await pipe.execute()
        return packed or b"", int(seed or 0)


def _texts(raw: Any) -> dict[str, int | str]:
    """The operator's texts for the pages (settings.lua), each by the configuration's
    own rule: a value it would refuse is ignored, as the tick ignores bad numbers."""
    try:
        found = json.loads(_s(raw))
    except ValueError:
        return {}
    if not isinstance(found, dict):  # cjson writes an empty table as {}
        return {}
    texts: dict[str, int | str] = {}
    for key, value in found.items():
        if key not in TEXT_SETTINGS and not MESSAGE_VARIANT_RE.match(key):
            continue
        with contextlib.suppress(ConfigError):
            texts[key] = queue_setting(key, key, value)
    return texts


def _state(
    r: Mapping[str, Any], configured: QueueSettings, order: LineOrder | None, live: LiveLine
) -> QueueState:
    settings = QueueSettings(
        capacity=int(r["capacity"]),
        admit_per_minute=int(r["admit_per_minute"]),
        session_ttl=int(r["session_ttl"]),
        grace=int(r["grace"]),
        abandon_after=int(r["abandon_after"]),
        mode=_s(r["mode"]),
        on_redis_error=configured.on_redis_error,
        session_max=int(r["session_max"]),
        opens_at=int(r["opens_at"]),
        joins_per_address=int(r["joins_per_address"]),
        shared_sessions=_s(r["shared_sessions"]),
        max_addresses=int(r["max_addresses"]),
        challenge=_s(r["challenge"]),
        challenge_difficulty=int(r["challenge_difficulty"]),
        flagged=_s(r["flagged"]),
        leave_to=configured.leave_to,  # read at a leave (web/status.py), not by the tick
        order=_s(r["order"]),
        access=_s(r["access"]),
        closes_at=int(r["closes_at"]),
        message=configured.message,
        messages=configured.messages,
        closed_link=configured.closed_link,
    )
    texts = _texts(r["texts"])
    if texts:
        settings = with_overrides(settings, texts)
    return QueueState(
        tickets=int(r["tickets"]),
        serving=int(r["serving"]),
        waiting=int(r["waiting"]),
        active=int(r["active"]),
        invited=int(r["invited"]),
        admitted_last_minute=int(r["admitted_last_minute"]),
        redis_time_ms=int(r["redis_time_ms"]),
        settings=settings if settings != configured else configured,
        expired=int(r["expired"]),
        lapsed=int(r["lapsed"]),
        newly_invited=int(r["newly_invited"]),
        skipped=int(r["skipped"]),
        unseen=int(r["unseen"]),
        recalled=int(r["recalled"]),
        live=live,
        closed=bool(int(r["closed"])),
        order=order,
        opened=bool(int(r["opened"])),
        opening=bool(int(r["opening"])),
        more=bool(int(r["more"])),
        epoch=_s(r["epoch"]),
        version=int(r["version"]),
        changed=bool(int(r["changed"])),
        in_draw=int(r["in_draw"]),
    )
