"""The Python <-> Lua contract: every script's arguments and reply, by name.

Each ``lua/<name>.lua`` binds its ARGV to named locals on its first lines, one
per line and in the order :attr:`Script.args` lists them (tests/test_scripts.py
reads the files and checks); a variadic tail, if any, starts at ``REST``. It
answers ``return reply{field = value, ...}``: the prelude lays the fields out
in the order of :attr:`Script.reply` and raises on a missing or unknown one, so
a field added or moved on one side fails loudly instead of shifting the rest.

Constants the scripts share with Python are generated from their Python
definitions into a small header that :func:`source` puts before the prelude.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from ..config import (
    ACCESS,
    CHALLENGES,
    FLAGGED,
    MESSAGE_MAX,
    MODES,
    OPENS_AT_MAX,
    ORDERS,
    OVERRIDE_LEAST,
    OVERRIDE_MOST,
    SHARED_SESSIONS,
    TEXT_SETTINGS,
)
from .keys import (
    ADDRESS_COUNTER_TTL,
    ADVANCE_MAX_STEPS,
    DRAW_MAX,
    ENDED_STREAM_MAXLEN,
    ESTIMATE_BOUNDS,
    FIRST_POLL_WINDOW_MS,
    FRONT_WINDOW,
    HISTORY_SECONDS,
    HISTORY_STEP,
    LINE_CHUNK,
    LIVE_BLOCK,
    MINUTES_KEPT,
    OPEN_INLINE_MAX,
    PLACE_TTL,
    PRUNE_MAX,
    QUEUE_KEEP_MARGIN,
    QUEUE_KEEP_REFRESH,
    RECOVERY_TICKET_SLACK,
    WAIT_BOUNDS,
)

# name -> value, as Lua locals of the same name
CONSTANTS: Mapping[str, int | tuple[str, ...] | Mapping[str, int] | Mapping[int, int]] = {
    "LIVE_BLOCK": LIVE_BLOCK,
    "OPENS_AT_MAX": OPENS_AT_MAX,
    "ADDRESS_COUNTER_TTL": ADDRESS_COUNTER_TTL,
    "ADVANCE_MAX_STEPS": ADVANCE_MAX_STEPS,
    "ENDED_STREAM_MAXLEN": ENDED_STREAM_MAXLEN,
    "FIRST_POLL_WINDOW_MS": FIRST_POLL_WINDOW_MS,
    "FRONT_WINDOW": FRONT_WINDOW,
    "HISTORY_STEP": HISTORY_STEP,
    "HISTORY_SECONDS": HISTORY_SECONDS,
    "MINUTES_KEPT": MINUTES_KEPT,
    # ascending upper bounds, as Lua arrays
    "WAIT_BOUNDS": dict(enumerate(WAIT_BOUNDS, start=1)),
    "ESTIMATE_BOUNDS": dict(enumerate(ESTIMATE_BOUNDS, start=1)),
    "PLACE_TTL": PLACE_TTL,
    "RECOVERY_TICKET_SLACK": RECOVERY_TICKET_SLACK,
    "QUEUE_KEEP_MARGIN": QUEUE_KEEP_MARGIN,
    "QUEUE_KEEP_REFRESH": QUEUE_KEEP_REFRESH,
    "PRUNE_MAX": PRUNE_MAX,
    "LINE_CHUNK": LINE_CHUNK,
    "OPEN_INLINE_MAX": OPEN_INLINE_MAX,
    "DRAW_MAX": DRAW_MAX,
    "MODES": MODES,  # a set in Lua: MODES[value] is true for a known mode
    "ORDERS": ORDERS,
    "ACCESS": ACCESS,
    "SHARED_SESSIONS": SHARED_SESSIONS,
    "OVERRIDE_LEAST": OVERRIDE_LEAST,  # setting -> least value an operator may set
    "OVERRIDE_MOST": OVERRIDE_MOST,  # setting -> greatest value (others: 1e9)
    "CHALLENGES": CHALLENGES,
    "FLAGGED": FLAGGED,
    "TEXT_SETTINGS": TEXT_SETTINGS,  # a set: texts for the pages, carried in the snapshot
    # bytes of one text setting the snapshot carries (UTF-8: up to 4 a character)
    "TEXT_BYTES_MAX": 4 * max(MESSAGE_MAX, 512),
}


class ContractError(Exception):
    """Python and a script disagree on its arguments or reply: a bug, never load."""


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    args: tuple[str, ...]
    reply: tuple[str, ...]
    rest: str = ""  # what the variadic ARGV tail holds ("" = none)
    # prelude parts (lua/<part>.lua) the script uses, each one concern: functions only
    parts: tuple[str, ...] = ()

    def argv(self, values: Mapping[str, Any], rest: Sequence[Any] = ()) -> list[Any]:
        """ARGV in the script's order; every named argument exactly once."""
        if values.keys() != set(self.args):
            missing = set(self.args) - values.keys()
            extra = values.keys() - set(self.args)
            raise ContractError(f"{self.name}: missing {sorted(missing)}, unknown {sorted(extra)}")
        if rest and not self.rest:
            raise ContractError(f"{self.name}: takes no variadic arguments")
        return [*(values[a] for a in self.args), *rest]

    def decode(self, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, list) or len(raw) != len(self.reply):
            raise ContractError(f"{self.name}: reply {raw!r} does not match {self.reply}")
        return dict(zip(self.reply, raw, strict=True))

    def header(self) -> str:
        lines = [f"-- generated from sidecar/queue/scripts.py for {self.name}.lua"]
        lines += [f"local {name} = {_lua(value)}" for name, value in CONSTANTS.items()]
        lines.append(f"local REST = {len(self.args) + 1}")
        lines.append(f"local REPLY_FIELDS = {_lua(self.reply, as_set=False)}")
        lines.append(f"local SNAPSHOT_FIELDS = {_lua(SNAPSHOT, as_set=False)}")
        return "\n".join(lines) + "\n"


def _lua(value: Any, as_set: bool = True) -> str:
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return "'" + value + "'"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"[{_lua(k)}] = {_lua(v)}" for k, v in value.items()) + "}"
    if as_set:
        return "{" + ", ".join(f"[{_lua(v)}] = true" for v in value) + "}"
    return "{" + ", ".join(_lua(v) for v in value) + "}"


# A queue's effective settings, in the order the tick binds them (tick.lua); the tick's
# reply and the snapshot carry them too (by name: their order there is free)
_SETTINGS = (
    "capacity",
    "admit_per_minute",
    "session_ttl",
    "grace",
    "abandon_after",
    "mode",
    "session_max",
    "opens_at",
    "joins_per_address",
    "shared_sessions",
    "max_addresses",
    "challenge",
    "challenge_difficulty",
    "flagged",
)

# What the ticker publishes for the other replicas (snapshot.lua): the tick's reply
# without what only concerns the tick itself (its counts, its clock, the version).
SNAPSHOT = (
    "tickets",
    "serving",
    "waiting",
    "active",
    "invited",
    "admitted_last_minute",
    *_SETTINGS,
    "recalled",
    "line_version",
    "closed",
    "opening",
    "shuffled_first",
    "shuffled_last",
    "seed",
    "epoch",
    "order",
    "access",
    "in_draw",
    "closes_at",
    "texts",
)

_ADMISSION = (
    "mode",
    "capacity",
    "admit_per_minute",
    "confirm_ms",
    "grace_ms",
    "opens_at",
    "joins_per_address",
)

# What the calling replica last saw of the queue: if Redis lost it since, the new
# epoch rebuilds the line from the places tokens still vouch for (prelude.lua).
_KNOWN = ("known_epoch", "known_tickets", "known_serving", "recovery_ms")

JOIN = Script(
    "join",
    args=(*_ADMISSION, *_KNOWN),
    rest="(session id, client address) pairs; address '' = unknown: no budget applies",
    reply=("places", "epoch"),
    parts=("settings",),  # the operator's overrides in Redis, never a stale copy
)
# claim: joined_ms is the place's join time (its token's issue time; 0 unknown);
# waited_ms (-1: no new admission) and the estimate it was given at join (seconds,
# -1 unknown) feed the time-in-line figures
CLAIM = Script(
    "claim",
    args=("ticket", "sid", "epoch", *_ADMISSION, "joined_ms"),
    reply=("result", "current_epoch", "waited_ms", "estimate"),
    parts=("settings",),
)
LEAVE = Script(
    "leave", args=("ticket", "sid", "revoke_until", "epoch"), reply=("freed", "left_line")
)
HEARTBEAT = Script(
    "heartbeat",
    args=(
        "session_ttl_ms",
        "capacity",
        "mode",
        "shared_sessions",
        "max_addresses",
        "window_ms",
        "addresses_kept",
        "address_prefix",
        "sessions",
    ),
    rest="session ids, then as many comma-separated address lists, then waiting tickets",
    reply=("counted", "ended", "shared", "gone"),
)
TICK = Script(
    "tick",
    args=(
        *_SETTINGS,
        "purge_slack_ms",
        *_KNOWN,
        "line_version",
        "line_epoch",
        "eta",  # what a newcomer was told at the caller's last look (seconds; -1 none)
        "order",
        "access",
        "draw_seed",
        "closes_at",
    ),
    reply=(
        "tickets",
        "serving",
        "waiting",
        "active",
        "invited",
        "admitted_last_minute",
        "redis_time_ms",
        *_SETTINGS,
        "expired",
        "lapsed",
        "newly_invited",
        "skipped",
        "unseen",
        "pruned",
        "more",
        "recalled",
        "line_version",
        "line_full",
        "line_same",
        "line_more",
        "front",
        "blocks",
        "closed",
        "opened",
        "opening",
        "shuffled_first",
        "shuffled_last",
        "seed",
        "epoch",
        "version",
        "changed",
        "order",
        "access",
        "in_draw",
        "closes_at",
        "texts",
    ),
    parts=("settings", "shuffle", "advance", "summary", "history", "snapshot", "keep"),
)
LINE = Script(
    "line",
    args=("line_version", "line_epoch", "limit"),
    reply=(
        "serving",
        "line_version",
        "line_full",
        "line_same",
        "line_more",
        "front",
        "blocks",
    ),
    parts=("summary",),
)
OPEN = Script(
    "open",
    args=("seed", "offset", "order", "rank", "move"),
    reply=("written", "moved", "done"),
    parts=("shuffle",),
)
# An access code: one place served before the line (admitted at once with room),
# once across every replica. digest: SHA-256 of the code; old_ticket/old_epoch:
# the place the holder had (0/''), taken out of line.
REDEEM = Script(
    "redeem",
    args=("digest", "sid", "old_ticket", "old_epoch", *_ADMISSION, *_KNOWN),
    reply=("result", "ticket", "epoch", "label"),
)
REVOKED = Script("revoked", args=("after", "limit"), reply=("revoked", "done"))
TICKERS = Script(
    "tickers",
    args=("holder", "lease_ms", "claims", "releases"),
    rest="queue names ('tenant:queue'): the ones claimed, then the ones released",
    reply=("now_ms", "held"),
)

END_SESSIONS = Script("end_sessions", args=("revoke_until", "limit"), reply=("ended", "done"))

SCRIPTS: Mapping[str, Script] = {
    s.name: s
    for s in (
        JOIN,
        CLAIM,
        LEAVE,
        HEARTBEAT,
        TICK,
        LINE,
        OPEN,
        REDEEM,
        REVOKED,
        TICKERS,
        END_SESSIONS,
    )
}


def source(script: Script) -> str:
    """What Redis runs: the generated header, the shared prelude, the script's parts,
    the script."""
    lua = resources.files("sidecar.queue.lua")
    files = ("prelude", *script.parts, script.name)
    return "\n".join((script.header(), *(lua.joinpath(f"{f}.lua").read_text() for f in files)))
