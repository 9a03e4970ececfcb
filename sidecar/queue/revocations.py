"""Ended (revoked) admitted sessions, as one process remembers them: bounded and
failing closed.

The newest ``MAX_KEPT`` revocations are kept exactly (session id -> until). One
dropped to bound memory goes into the Bloom filter of its expiry window
(``WINDOW`` seconds), which never forgets before the revocation itself expires:
a session id a filter may hold is asked of Redis (its queue's ``revoked`` set)
before its cookie passes, and the answer is cached briefly. A window's filter
is dropped whole once its window has passed, so the filters hold what is in
force (give or take a window), not everything dropped since start: under steady
churn their false positives, each a Redis read, stay flat with uptime. So a
cookie passes only if this process knows it is not revoked: memory stays
bounded (about 20 MB for the exact list, at most ``GENERATIONS`` filters of
450 KB) whatever the churn, and the longest-lived revocations are never the
ones left out.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import logging
import math
import time

from .engine import Engine, QueueRef

log = logging.getLogger("sidecar.revocations")

MAX_KEPT = 100_000  # exact entries, about 200 bytes each
# Each window's filter is sized for this many dropped revocations at FILTER_FP false
# positives (each a Redis read, then cached); beyond it false positives grow, never misses.
FILTER_CAPACITY = 250_000
FILTER_FP = 0.001
# Dropped revocations are filed by expiry, one filter per WINDOW seconds, dropped
# when its window has passed. At most GENERATIONS filters: past that the two whose
# merge keeps the fewest ids beyond their expiry become one (bits OR-ed).
WINDOW = 60
GENERATIONS = 16
ANSWERS_KEPT = 10_000  # Redis answers cached (cleared whole when full)
ANSWER_TTL = 30.0  # seconds a "not revoked" answer is trusted (new revocations land exactly)


class Known(enum.Enum):
    CLEAR = 0  # not revoked, as far as this process can tell for certain
    REVOKED = 1
    UNSURE = 2  # the filter may hold it: ask Redis (Revocations.confirm)


class BloomFilter:
    """k bit positions per id from one BLAKE2b digest (double hashing)."""

    def __init__(self, capacity: int, fp: float) -> None:
        self.bits = max(64, int(-capacity * math.log(fp) / math.log(2) ** 2))
        self.k = max(1, round(self.bits / capacity * math.log(2)))
        self.array = bytearray((self.bits + 7) // 8)
        self.count = 0

    def _positions(self, key: str) -> list[int]:
        d = hashlib.blake2b(key.encode(), digest_size=16).digest()
        h1, h2 = int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little") | 1
        return [(h1 + i * h2) % self.bits for i in range(self.k)]

    def add(self, key: str) -> None:
        for p in self._positions(key):
            self.array[p >> 3] |= 1 << (p & 7)
        self.count += 1

    def __contains__(self, key: str) -> bool:
        return self.holds(self._positions(key))

    def holds(self, positions: list[int]) -> bool:
        a = self.array
        return all(a[p >> 3] & (1 << (p & 7)) for p in positions)

    def merge(self, other: BloomFilter) -> None:
        """Holds what either held (same size)."""
        n = len(self.array)
        both = int.from_bytes(self.array, "little") | int.from_bytes(other.array, "little")
        self.array = bytearray(both.to_bytes(n, "little"))
        self.count += other.count


class ExpiringFilter:
    """Bloom filters by expiry window: an id goes to the filter of the window its
    revocation ends in, and a filter is dropped whole when its window has passed."""

    def __init__(
        self,
        capacity: int = FILTER_CAPACITY,
        fp: float = FILTER_FP,
        window: int = WINDOW,
        generations: int = GENERATIONS,
    ) -> None:
        self.capacity, self.fp, self.window, self.generations = capacity, fp, window, generations
        # unix second after which every id of the filter has expired -> the filter
        self.filters: dict[int, BloomFilter] = {}

    @property
    def count(self) -> int:
        return sum(f.count for f in self.filters.values())

    def add(self, key: str, until: int) -> None:
        end = (until // self.window + 1) * self.window
        f = self.filters.get(end)
        if f is None:
            later = [e for e in self.filters if e > end]
            if len(self.filters) >= self.generations and later:
                f = self.filters[min(later)]  # kept a little longer than needed: fails closed
            else:
                if len(self.filters) >= self.generations:
                    self._merge_two()
                f = self.filters[end] = BloomFilter(self.capacity, self.fp)
        f.add(key)

    def __contains__(self, key: str) -> bool:
        if not self.filters:
            return False
        positions = next(iter(self.filters.values()))._positions(key)
        return any(f.holds(positions) for f in self.filters.values())

    def prune(self, now: int) -> bool:
        """Drops the filters whose window has passed; True if any was."""
        gone = [end for end in self.filters if end <= now]
        for end in gone:
            del self.filters[end]
        return bool(gone)

    def _merge_two(self) -> None:
        """Two neighbours become one, ending with the later: the pair that keeps the
        fewest ids past their expiry (count x the time added)."""
        ends = sorted(self.filters)
        pairs = itertools.pairwise(ends)
        a, b = min(pairs, key=lambda p: self.filters[p[0]].count * (p[1] - p[0]))
        self.filters[b].merge(self.filters.pop(a))


class Revocations:
    def __init__(
        self, engine: Engine, max_kept: int = MAX_KEPT, filter_capacity: int = FILTER_CAPACITY
    ) -> None:
        self.engine = engine
        self.max_kept = max_kept
        self.kept: dict[str, int] = {}  # session id -> unix second its cookie would expire
        self.dropped = ExpiringFilter(filter_capacity)
        self._answers: dict[str, tuple[bool, float]] = {}  # sid -> (revoked, trusted until)
        self._warned = False
        self.asked = 0  # Redis reads made for filter hits (metrics, tests)

    def __contains__(self, sid: str) -> bool:
        """Definitely revoked (the hot path's first check)."""
        return sid in self.kept

    def add(self, sid: str, until: int) -> None:
        self.kept[sid] = until
        self._answers.pop(sid, None)
        if len(self.kept) > self.max_kept:
            self._drop()

    def known(self, sid: str) -> Known:
        if sid in self.kept:
            return Known.REVOKED
        if not self.dropped.filters:
            return Known.CLEAR
        answer = self._answers.get(sid)
        if answer is not None and answer[1] > time.monotonic():
            return Known.REVOKED if answer[0] else Known.CLEAR
        return Known.UNSURE if sid in self.dropped else Known.CLEAR

    async def confirm(self, q: QueueRef, sid: str) -> bool:
        """Asks Redis whether ``sid`` (admitted to ``q``) is revoked: the answer for an
        UNSURE id. Redis errors propagate: the caller must not admit on them."""
        self.asked += 1
        until = await self.engine.revoked_until(q, sid)
        revoked = until > time.time()
        if len(self._answers) >= ANSWERS_KEPT:
            self._answers.clear()
        self._answers[sid] = (revoked, time.monotonic() + ANSWER_TTL)
        return revoked

    def prune(self) -> None:
        """Forgets what expired: exact entries, and the filters whose window passed."""
        now = int(time.time())
        self.kept = {sid: until for sid, until in self.kept.items() if until > now}
        if self.dropped.prune(now) and not self.dropped.filters:
            self._answers.clear()
        if len(self._answers) >= ANSWERS_KEPT:
            self._answers.clear()

    def _drop(self) -> None:
        """The oldest exact entries go to the filter: still refused, asked of Redis."""
        if not self._warned:
            self._warned = True
            log.warning(
                "many revoked sessions: the oldest are checked against Redis",
                extra={"kept": self.max_kept},
            )
        excess = len(self.kept) - self.max_kept + self.max_kept // 10  # in batches
        for sid in list(itertools.islice(self.kept, excess)):
            self.dropped.add(sid, self.kept.pop(sid))
            self._answers.pop(sid, None)
