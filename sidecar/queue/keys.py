"""Redis key names and the constants that size what lives under them.

Every key of one queue shares the hash tag ``{tenant:queue}``, so each Lua
script touches a single Redis Cluster slot and queues spread over shards.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import WAITING_TOKEN_TTL
from ..metrics import WAIT_BUCKETS

PREFIX = "aq"

# Ended sessions are published in a capped stream; replicas read it each tick.
# Far more than can end between two ticks, small enough to stay cheap.
ENDED_STREAM_MAXLEN = 10_000
# Sessions (and waiters) per heartbeat script call: one call stays well under a millisecond.
HEARTBEAT_CHUNK = 500
# Tickets one advance may pass at most (invited or skipped), so one script call
# stays short (about 5 ms) yet 100k abandoned places are passed in a few seconds.
ADVANCE_MAX_STEPS = 10_000
# Waiters who stopped polling that one tick takes out of the line at most (about
# 3 us each); the rest go at the next ticks (the reply says more work is left).
PRUNE_MAX = 1_000
# A newcomer who has not polled yet counts as present this long: the time to
# load the waiting page and send the first status poll (or, without
# JavaScript, the page's 20 s refresh). Bots that take a place and never come
# back are dropped from the line after it.
FIRST_POLL_WINDOW_MS = 30_000
# Revoked sessions a (new or lagging) replica reloads per script call (about 3 us
# each); it reads them all, chunk after chunk, before its first state is used.
REVOKED_RELOAD_CHUNK = 1_000
# sessions one end_sessions.lua call ends (an operator closing a queue): about 2 ms
END_CHUNK = 500
# Changed blocks of the line summary one call returns at most; a process that is
# further behind (new, or after an opening) reads the rest in more calls.
LINE_CHUNK = 2_000
# An opening: a pre-queue of up to OPEN_INLINE_MAX places is shuffled inside the
# tick (a few ms); a bigger one is drawn by the sidecar from the seed the tick
# logs, and written (OPEN_WRITE_CHUNK places per call) then counted in its new
# places (OPEN_MOVE_CHUNK per call) in short calls, the queue "opening" meanwhile.
OPEN_INLINE_MAX = 1_000
OPEN_WRITE_CHUNK = 32_768
OPEN_MOVE_CHUNK = 800
# Access codes: made per call at most, and expired ones swept per call (admin).
CODES_MAX = 10_000
CODES_SWEEP = 1_000
# Random order (order = random): places drawn per tick at most, each O(log N) in
# the waiting set (ZRANGE by rank), so a tick stays within a few ms at 1M waiters.
DRAW_MAX = 250
# Ended-stream entries a replica reads per call; more come with the next one.
ENDED_READ_CHUNK = 1_000
# Live positions: the tick reports exactly who is still in line among the next
# FRONT_WINDOW tickets (rounded up to whole blocks), and beyond that how many
# are in line per block of LIVE_BLOCK tickets, so every process answers status
# polls without a Redis call. Past the window a position is at most
# LIVE_BLOCK - 1 too high (the visitor's own block is counted as a bound).
FRONT_WINDOW = 1_000
LIVE_BLOCK = 100
# Per-address join budget: one counter per client address and minute,
# aq:{tenant:queue}:addr:<address>:<minute>, built inside join.lua; it outlives
# its minute so a clock step between replicas never resets it early.
ADDRESS_COUNTER_TTL = 120
# The same budget also caps the places one address holds in line at once: a SET
# of its tickets per address, aq:{tenant:queue}:held:<address>, cleaned at its
# next join (tickets no longer in line leave it). It lives as long as a place
# can (a waiting token's lifetime) after the address's last join, so it never
# forgets a place that could still draw.
PLACE_TTL = WAITING_TOKEN_TTL
# Redis lost a queue (restart without persistence) while replicas remembered it:
# the new epoch starts a recovery. Tickets are numbered on from the last count a
# replica saw plus this slack (tickets handed out since its last tick), so every
# place from before stays ahead of newcomers.
RECOVERY_TICKET_SLACK = 10_000
# A queue's keys expire when no ticker has run for this long past the longest a
# token naming its epoch may live (queue_keep): queue names a client chooses leave
# nothing forever. The tick sets every key's expiry again once the epoch's has
# fallen QUEUE_KEEP_REFRESH seconds (under the refresher's EVICT_AFTER: a queue is
# ticked at least that long after its last request, so keys made by that request
# get their expiry). An operator's keys (settings, access codes) are kept.
QUEUE_KEEP_MARGIN = 3_600
QUEUE_KEEP_REFRESH = 30
# For one heartbeat flush plus this long (the engine's purge slack + margin), the
# line stands still: admitted cookies that come back are counted before anyone
# new is admitted, and waiters' polls put their old tickets back in line.
RECOVERY_MARGIN_MS = 4_000
# Shared admitted cookies: client addresses a session used in this window count
# as "at once"; a session keeps at most ADDRESSES_KEPT of them (newest).
ADDRESS_WINDOW_MS = 60_000
ADDRESSES_KEPT = 64
# Operator changes, newest first; a list capped at this length (LTRIM).
AUDIT_KEY = PREFIX + ":admin:audit"
AUDIT_MAXLEN = 1_000
# Dashboard history: one point per queue every HISTORY_STEP seconds, an hour kept.
HISTORY_STEP = 5
HISTORY_SECONDS = 3_600
# How the sale went: one record per minute with something to tell (joins,
# admissions, the line, waits, people who gave up), kept MINUTES_KEPT minutes
# (7 days); written by the ticker when the minute is over, from the tally that
# join, claim, leave and the tick add to. Idle minutes write nothing.
MINUTES_KEPT = 7 * 24 * 60
# Time in line (join -> admission), seconds: the upper bounds of the buckets the
# tally counts, the Prometheus histogram's; past the last one: +Inf.
WAIT_BOUNDS = tuple(int(b) for b in WAIT_BUCKETS)
# The page's estimate at join against the wait that followed (actual / estimate, per
# mille): the buckets' upper bounds. 750..1500 is the range a measured estimate
# is shown with (estimate.MEASURED_LOW and MEASURED_HIGH).
ESTIMATE_BOUNDS = (500, 750, 1_500, 2_000)
# One ticker per queue: the process holding a queue's lease (a field of TICKERS_KEY,
# "holder deadline_ms", renewed at every refresh) runs its tick; the others read its
# snapshot when the queue's version (another field) moves. One key for every queue,
# so each process learns every change with one call per refresh, whatever Q.
TICKERS_KEY = PREFIX + ":{anteroom}:tickers"
# Up to this many fields Redis keeps a hash as a listpack (hash-max-listpack-entries
# is 128 by default, 512 in many configurations), where HMGET scans it once per
# field: below it a process reads the whole hash (HGETALL, one scan) instead.
TICKERS_READ_WHOLE = 512
LEASE_MIN_MS = 750  # a lease lasts max(this, 3 refreshes): taken over within about a second
# A queue with nobody in line, invited or recalled is ticked this often (seconds);
# a join, leave or operator change wakes its ticker at once.
IDLE_TICK = 4.0  # under HISTORY_STEP: every history bucket still gets its point
# Queues found in Redis by the admin (SCAN for their ticket counters), at most.
SCAN_MAX_QUEUES = 1_000
TICKETS_PATTERN = PREFIX + ":{*}:tickets"
# ... and by their settings hash (a queue created through the admin API before its
# first visitor): "tick…" or "sett…", one SCAN for both
KNOWN_PATTERN = PREFIX + ":{*}:[st][ie][ct][kt]*"
# Queues forgotten through the admin API: ZSET "tenant:queue" -> unix second. Every
# replica's admin stops tracking them; kept an hour.
FORGOTTEN_KEY = PREFIX + ":admin:forgotten"


def queue_keep(session_max: int, session_ttl: int) -> int:
    """Seconds a queue's keys (and a forgotten queue's epoch) are kept after its
    last tick (tick.lua computes the same from the queue's effective settings)."""
    return max(PLACE_TTL, session_max, session_ttl) + QUEUE_KEEP_MARGIN


@dataclass(frozen=True, slots=True)
class QueueKeys:
    tickets: str  # INCR counter: the last ticket handed out
    serving: str  # highest ticket invited (or skipped) so far
    waiting: str  # ZSET ticket -> last time the waiter was seen (ms)
    invited: str  # ZSET ticket -> claim deadline (ms)
    active: str  # ZSET session id -> expiry (ms)
    rate: str  # HASH unix second -> admissions in that second (rolling minute)
    settings: str  # HASH of operator overrides (mode, capacity, ...)
    ended: str  # STREAM of ended session ids, for revocation on every replica
    revoked: str  # ZSET session id -> unix second its cookie expires; heartbeats skip these
    missed: str  # ZSET ticket -> end of its second chance (ms); negative once used
    recall: str  # ZSET ticket -> ticket: came back within their second chance, served first
    live: str  # HASH ticket // LIVE_BLOCK -> how many of that block are still in line
    # the line summary's version: bumped by every script call that changes a block of
    # `live` or moves `serving`, so a process reads only what changed since its version
    line_version: str
    line_log: str  # ZSET block -> line_version of its last change (blocks ahead of serving)
    history: str  # HASH 5 s bucket -> "waiting,active,admitted last minute" (dashboard)
    # HASH "<minute>.<what>" -> count for minutes not yet recorded (joins j, waits w<i>,
    # left l, pruned p, skipped s, estimate accuracy e<k>, the estimate eta), and
    # "closed": the last minute recorded
    tally: str
    minutes: str  # HASH unix minute -> its record (history.Minute), MINUTES_KEPT of them
    # Scheduled opening: {from, to} tickets of the pre-queue while closed; after the
    # shuffle {first, last, seed, at}: the line order of tickets first..last
    opening: str
    order: str  # STRING, 4 bytes per place: line number first+i -> ticket first+value
    rank: str  # STRING, 4 bytes per ticket: ticket first+i -> line number first+value
    # the queue's epoch: an id made when its keys are first written (SET NX). Redis
    # restarted without persistence makes a new one; tokens carry it (see tokens.py)
    epoch: str
    # HASH: the ticker's snapshot {version, body (JSON array of scripts.SNAPSHOT fields)}
    snapshot: str
    # prefix of per-session ZSETs: client address -> last seen (ms); shared cookies
    addresses: str
    # HASH, after Redis lost the queue: from (the lost epoch), first..last (its tickets
    # that may come back), until (ms: the line stands still before it), and
    # "t<ticket>" -> session id for each old place put back (at most once)
    recovery: str
    # prefix of proof-of-work challenges already used (web/challenge.py), one
    # short-lived string each: a solution is accepted once across every replica
    spent: str
    # access codes not yet used: ZSET SHA-256 of the code (hex) -> expiry (unix
    # seconds), and HASH the same digest -> the operator's label; never the code itself
    codes: str
    code_labels: str

    def all(self) -> list[str]:
        return [
            self.tickets,
            self.serving,
            self.waiting,
            self.invited,
            self.active,
            self.rate,
            self.settings,
            self.ended,
            self.revoked,
            self.missed,
            self.recall,
            self.live,
            self.line_version,
            self.line_log,
            self.opening,
            self.order,
            self.rank,
            self.epoch,
            self.recovery,
            self.history,
            self.snapshot,
            self.tally,
            self.minutes,
            self.codes,
            self.code_labels,
        ]


def queue_keys(tenant: str, queue: str) -> QueueKeys:
    base = f"{PREFIX}:{{{tenant}:{queue}}}:"
    return QueueKeys(
        tickets=base + "tickets",
        serving=base + "serving",
        waiting=base + "waiting",
        invited=base + "invited",
        active=base + "active",
        rate=base + "rate",
        settings=base + "settings",
        ended=base + "ended",
        revoked=base + "revoked",
        missed=base + "missed",
        recall=base + "recall",
        live=base + "live",
        line_version=base + "line:v",
        line_log=base + "line:log",
        history=base + "history",
        tally=base + "tally",
        minutes=base + "minutes",
        opening=base + "opening",
        order=base + "order",
        rank=base + "rank",
        epoch=base + "epoch",
        snapshot=base + "snapshot",
        addresses=base + "from:",
        recovery=base + "recovery",
        spent=base + "pow:",
        codes=base + "codes",
        code_labels=base + "codes:label",
    )


def queue_of_tickets_key(key: str) -> tuple[str, str] | None:
    """(tenant, queue) of a key ``aq:{tenant:queue}:tickets``, else None."""
    head, tail = f"{PREFIX}:{{", "}:tickets"
    if not (key.startswith(head) and key.endswith(tail)):
        return None
    tenant, sep, queue = key[len(head) : -len(tail)].partition(":")
    return (tenant, queue) if sep else None


def queue_of_key(key: str) -> tuple[str, str] | None:
    """(tenant, queue) of a key ``aq:{tenant:queue}:tickets`` or ``…:settings``."""
    for suffix in ("}:tickets", "}:settings"):
        if key.endswith(suffix):
            return queue_of_tickets_key(key[: -len(suffix)] + "}:tickets")
    return None
