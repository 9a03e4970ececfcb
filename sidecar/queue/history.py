"""What the queues did, kept in Redis: the dashboard's last hour (one point every
few seconds) and how the sale went (one record a minute, seven days).

The queue's ticker writes both in its tick (lua/history.lua: the first write of
a ``HISTORY_STEP`` bucket wins, and the hash is trimmed to the hour in the same
call; a minute's record is made from its tally when it is over); this module
reads them back and turns the minutes into a report.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis, RedisCluster

from .client import text
from .engine import QueueRef
from .keys import ESTIMATE_BOUNDS, HISTORY_SECONDS, MINUTES_KEPT, WAIT_BOUNDS


@dataclass(frozen=True, slots=True)
class Point:
    at: int  # unix seconds, start of the bucket
    waiting: int
    active: int
    admitted_last_minute: int


async def read(redis: Redis | RedisCluster, q: QueueRef, now: int) -> list[Point]:
    """The last hour of ``q``, oldest first."""
    (points,) = await read_many(redis, [q], now)
    return points


async def read_many(
    redis: Redis | RedisCluster, queues: list[QueueRef], now: int
) -> list[list[Point]]:
    """The last hour of each queue, in one round trip (one per shard on a cluster)."""
    if not queues:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for q in queues:
            pipe.hgetall(q.keys.history)
        replies = await pipe.execute()
    return [_points(raw, now) for raw in replies]


def _points(raw: Mapping[bytes | str, bytes | str], now: int) -> list[Point]:
    points = []
    for at, value in raw.items():
        try:
            w, a, m = (int(v) for v in text(value).split(","))
            t = int(at)
        except ValueError:
            continue
        if t >= now - HISTORY_SECONDS:
            points.append(Point(t, w, a, m))
    return sorted(points, key=lambda p: p.at)


# -- how the sale went: one record a minute ---------------------------------


@dataclass(frozen=True, slots=True)
class Minute:
    """One minute of a queue (lua/history.lua write_minute)."""

    at: int  # unix seconds, start of the minute
    joins: int  # places taken
    admitted: int  # let in: walked in, or claimed a place whose turn came
    line: int  # people in line as the minute ended
    active: int  # admitted sessions as the minute ended
    left: int  # places given up with "Leave the line"
    pruned: int  # waiters who stopped polling, taken out of the line
    skipped: int  # turn came before they were ever seen
    estimate: int  # seconds a newcomer was told in this minute (-1: none given)
    waits: tuple[int, ...]  # admissions per WAIT_BOUNDS bucket (+Inf last)
    accuracy: tuple[int, ...]  # admissions per ESTIMATE_BOUNDS bucket of actual/estimate

    @property
    def gave_up(self) -> int:
        return self.left + self.pruned + self.skipped


def parse_minute(at_minute: int, raw: str) -> Minute | None:
    try:
        head, waits, accuracy = raw.split(";")
        j, a, line, active, left, pruned, skipped, eta = (int(v) for v in head.split(","))
        return Minute(
            at_minute * 60,
            j,
            a,
            line,
            active,
            left,
            pruned,
            skipped,
            eta,
            _buckets(waits, len(WAIT_BOUNDS) + 1),
            _buckets(accuracy, len(ESTIMATE_BOUNDS) + 1),
        )
    except ValueError:
        return None


def _buckets(sparse: str, n: int) -> tuple[int, ...]:
    counts = [0] * n
    for pair in filter(None, sparse.split(",")):
        i, c = pair.split(":")
        if 1 <= int(i) <= n:
            counts[int(i) - 1] += int(c)
    return tuple(counts)


async def minutes(
    redis: Redis | RedisCluster,
    q: QueueRef,
    since: int,
    until: int,
    line: int = 0,
    active: int = 0,
) -> list[Minute]:
    """The records of ``q`` from unix second ``since`` to ``until``, oldest first
    (at most MINUTES_KEPT of them), then the minutes still open, from their tally
    (the current one: ``line`` and ``active`` as they stand now). One round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(q.keys.minutes)
        pipe.hgetall(q.keys.tally)
        raw, open_tally = await pipe.execute()
    found: dict[int, Minute] = {}
    for at, value in raw.items():
        try:
            m = int(at)
        except ValueError:
            continue
        if since <= m * 60 < until and (rec := parse_minute(m, text(value))) is not None:
            found[m] = rec
    for m, rec in _open(open_tally, line, active).items():
        if since <= m * 60 < until and m not in found:
            found[m] = rec
    return [found[m] for m in sorted(found)]


def _open(raw: Mapping[bytes | str, bytes | str], line: int, active: int) -> dict[int, Minute]:
    """The tally's minutes not recorded yet, as their records will tell them."""
    per: dict[int, dict[str, int]] = {}
    for k, v in raw.items():
        minute, dot, what = text(k).partition(".")
        if dot and minute.isdigit():
            try:
                per.setdefault(int(minute), {})[what] = int(text(v))
            except ValueError:
                continue
    last = max(per, default=0)
    out = {}
    for m, f in per.items():
        waits = tuple(f.get(f"w{i}", 0) for i in range(1, len(WAIT_BOUNDS) + 2))
        accuracy = tuple(f.get(f"e{i}", 0) for i in range(1, len(ESTIMATE_BOUNDS) + 2))
        out[m] = Minute(
            m * 60,
            f.get("j", 0),
            sum(waits),
            line if m == last else 0,
            active if m == last else 0,
            f.get("l", 0),
            f.get("p", 0),
            f.get("s", 0),
            f.get("eta", -1),
            waits,
            accuracy,
        )
    return out


def quantile(counts: Sequence[int], bounds: Sequence[float], p: float) -> float | None:
    """The ``p`` quantile of bucketed counts, interpolated inside its bucket (as
    Prometheus' histogram_quantile does); the last bound for +Inf; None: no data."""
    total = sum(counts)
    if total == 0:
        return None
    rank, seen = p * total, 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i >= len(bounds):
                return float(bounds[-1])
            lo = 0.0 if i == 0 else float(bounds[i - 1])
            return lo + (float(bounds[i]) - lo) * (rank - seen) / n
        seen += n
    return float(bounds[-1])


@dataclass(slots=True)
class Summary:
    """A period's figures: what the dashboard shows and the report's totals."""

    since: int | None = None  # first minute with a record
    until: int | None = None  # end of the last one
    joins: int = 0
    admitted: int = 0
    left: int = 0
    pruned: int = 0
    skipped: int = 0
    longest_line: int = 0
    waits: list[int] = field(default_factory=lambda: [0] * (len(WAIT_BOUNDS) + 1))
    accuracy: list[int] = field(default_factory=lambda: [0] * (len(ESTIMATE_BOUNDS) + 1))

    def add(self, m: Minute) -> None:
        self.since = m.at if self.since is None else min(self.since, m.at)
        self.until = m.at + 60 if self.until is None else max(self.until, m.at + 60)
        self.joins += m.joins
        self.admitted += m.admitted
        self.left += m.left
        self.pruned += m.pruned
        self.skipped += m.skipped
        self.longest_line = max(self.longest_line, m.line)
        self.waits = [a + b for a, b in zip(self.waits, m.waits, strict=True)]
        self.accuracy = [a + b for a, b in zip(self.accuracy, m.accuracy, strict=True)]

    def as_dict(self) -> dict[str, Any]:
        gave_up = self.left + self.pruned + self.skipped
        ended = gave_up + self.admitted
        estimated = sum(self.accuracy)
        # buckets of actual/estimate (per mille): 500, 750, 1500, 2000, +Inf
        within = self.accuracy[2] if estimated else 0
        return {
            "since": self.since,
            "until": self.until,
            "joins": self.joins,
            "admitted": self.admitted,
            "left": self.left,
            "pruned": self.pruned,
            "skipped": self.skipped,
            "gave_up": gave_up,
            # of the places that ended (admitted or given up), the share given up
            "abandonment": round(gave_up / ended, 4) if ended else None,
            "longest_line": self.longest_line,
            "wait_p50": _round(quantile(self.waits, WAIT_BOUNDS, 0.5)),
            "wait_p90": _round(quantile(self.waits, WAIT_BOUNDS, 0.9)),
            "wait_p99": _round(quantile(self.waits, WAIT_BOUNDS, 0.99)),
            "estimated": estimated,
            # the wait fell inside the range the page showed (0.75x to 1.5x the estimate)
            "estimate_within_range": round(within / estimated, 4) if estimated else None,
            "estimate_too_long": round(sum(self.accuracy[:2]) / estimated, 4)
            if estimated
            else None,
            "estimate_too_short": round(sum(self.accuracy[3:]) / estimated, 4)
            if estimated
            else None,
        }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def summary(records: Sequence[Minute]) -> dict[str, Any]:
    total = Summary()
    for m in records:
        total.add(m)
    return total.as_dict()


REPORT_COLUMNS = (
    "minute",
    "joins",
    "admitted",
    "line",
    "active",
    "wait_p50",
    "wait_p90",
    "left",
    "pruned",
    "skipped",
    "abandonment",
    "estimate",
)


def report_rows(records: Sequence[Minute]) -> list[dict[str, Any]]:
    """One row a minute: the report's lines (times in UTC, ISO-8601)."""
    rows = []
    for m in records:
        ended = m.gave_up + m.admitted
        rows.append(
            {
                "minute": _iso(m.at),
                "joins": m.joins,
                "admitted": m.admitted,
                "line": m.line,
                "active": m.active,
                "wait_p50": _round(quantile(m.waits, WAIT_BOUNDS, 0.5)),
                "wait_p90": _round(quantile(m.waits, WAIT_BOUNDS, 0.9)),
                "left": m.left,
                "pruned": m.pruned,
                "skipped": m.skipped,
                "abandonment": round(m.gave_up / ended, 4) if ended else None,
                "estimate": m.estimate if m.estimate >= 0 else None,
            }
        )
    return rows


def report_csv(records: Sequence[Minute]) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=REPORT_COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in report_rows(records):
        w.writerow({k: "" if v is None else v for k, v in row.items()})
    return out.getvalue()


def _iso(unix: int) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%MZ")


KEPT_SECONDS = MINUTES_KEPT * 60
