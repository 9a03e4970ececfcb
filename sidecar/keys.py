"""Redis key names and the constants that size what lives under them.

Every key of one queue shares the hash tag ``{tenant:queue}``, so each Lua
script touches a single Redis Cluster slot and queues spread over shards.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "aq"

# Ended sessions are published in a capped stream; replicas read it each tick.
# Far more than can end between two ticks, small enough to stay cheap.
ENDED_STREAM_MAXLEN = 10_000
# Sessions (and waiters) per heartbeat script call: one call stays well under a millisecond.
HEARTBEAT_CHUNK = 500
# Invitations handed out per advance at most, so one script call stays short.
ADVANCE_MAX_STEPS = 1_000
# Operator changes, newest first; a list capped at this length (LTRIM).
AUDIT_KEY = PREFIX + ":admin:audit"
AUDIT_MAXLEN = 1_000
# Dashboard history: one point per queue every HISTORY_STEP seconds, an hour kept.
HISTORY_STEP = 5
HISTORY_SECONDS = 3_600
# Queues found in Redis by the admin (SCAN for their ticket counters), at most.
SCAN_MAX_QUEUES = 1_000
TICKETS_PATTERN = PREFIX + ":{*}:tickets"


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
    history: str  # HASH 5 s bucket -> "waiting,active,admitted last minute" (dashboard)

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
        history=base + "history",
    )


def queue_of_tickets_key(key: str) -> tuple[str, str] | None:
    """(tenant, queue) of a key ``aq:{tenant:queue}:tickets``, else None."""
    head, tail = f"{PREFIX}:{{", "}:tickets"
    if not (key.startswith(head) and key.endswith(tail)):
        return None
    tenant, sep, queue = key[len(head) : -len(tail)].partition(":")
    return (tenant, queue) if sep else None
