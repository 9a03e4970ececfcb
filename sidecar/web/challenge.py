"""Proof of work before a place (a queue's ``challenge = "pow"``).

A challenge is ``1.tenant.queue.difficulty.expiry.seed.mac``: signed with the
configured secrets (HMAC-SHA256; the first signs, all verify), short-lived,
and accepted once across every replica (its seed is spent in Redis with SET NX
until it would have expired anyway). Nothing is stored when it is handed out.

The work: for each part ``i`` in ``0..PARTS-1`` find a decimal ``counter`` such
that ``SHA-256(f"{seed}.{i}.{counter}")`` starts with ``bits`` zero bits, where
``bits = difficulty - log2(PARTS)``. On average that is ``2**difficulty``
hashes in all; splitting it in parts gives the page a true progress bar and
makes the solve time far less of a lottery than one big puzzle. Checking a
solution costs PARTS hashes and one HMAC whatever the input (fixed-size work,
a constant-time MAC compare).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

PARTS = 16
PART_BITS = 4  # log2(PARTS)
TTL = 120  # seconds to solve and join: a slow phone takes about ten
VERSION = "1"
MAX_CHALLENGE = 300  # characters; names are at most 64 each
COUNTER_RE = re.compile(r"^[0-9]{1,12}\Z")
_DOMAIN = b"anteroom-challenge|"  # a challenge's MAC can never pass for a token's


@dataclass(frozen=True, slots=True)
class Challenge:
    tenant: str
    queue: str
    difficulty: int
    exp: int  # unix seconds
    seed: str

    @property
    def bits(self) -> int:
        """Zero bits each part's hash starts with."""
        return self.difficulty - PART_BITS


class Refused(Exception):
    """A solution that gives no place; the message says why (for the client)."""


def part_ok(seed: str, part: int, counter: str, bits: int) -> bool:
    digest = hashlib.sha256(f"{seed}.{part}.{counter}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - bits) == 0


def solve(seed: str, bits: int, parts: int = PARTS) -> list[int]:
    """The reference solver (what an API client runs; see docs/admin.md)."""
    found = []
    for part in range(parts):
        counter = 0
        while not part_ok(seed, part, str(counter), bits):
            counter += 1
        found.append(counter)
    return found


class Challenges:
    def __init__(self, keys: tuple[bytes, ...]) -> None:
        self._keys = keys

    def _mac(self, key: bytes, payload: str) -> str:
        digest = hmac.digest(key, _DOMAIN + payload.encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def issue(self, tenant: str, queue: str, difficulty: int, now: int) -> Challenge:
        return Challenge(tenant, queue, difficulty, now + TTL, secrets.token_urlsafe(12))

    def dumps(self, c: Challenge) -> str:
        payload = ".".join((VERSION, c.tenant, c.queue, str(c.difficulty), str(c.exp), c.seed))
        return payload + "." + self._mac(self._keys[0], payload)

    def describe(self, c: Challenge, now: int) -> dict[str, Any]:
        """What the page and API clients are given."""
        return {
            "challenge": self.dumps(c),
            "algorithm": "sha256-leading-zero-bits",
            "seed": c.seed,
            "parts": PARTS,
            "bits": c.bits,
            "expires_in": c.exp - now,
        }

    def verify(
        self, raw: str, solution: str, tenant: str, queue: str, difficulty: int, now: int
    ) -> Challenge:
        """The challenge ``raw`` if it is ours, for this queue, unexpired, at least
        as hard as the queue asks now, and ``solution`` solves it; else
        :class:`Refused`. Not yet spent: the caller records that (once)."""
        if not raw or len(raw) > MAX_CHALLENGE or not raw.isascii():
            raise Refused("malformed challenge")
        payload, sep, mac = raw.rpartition(".")
        parts = payload.split(".")
        if not sep or len(parts) != 6 or parts[0] != VERSION:
            raise Refused("malformed challenge")
        if not any(hmac.compare_digest(self._mac(k, payload), mac) for k in self._keys):
            raise Refused("challenge not issued here")
        _, c_tenant, c_queue, c_difficulty, c_exp, seed = parts
        if (c_tenant, c_queue) != (tenant, queue):
            raise Refused("challenge of another queue")
        if int(c_exp) <= now:
            raise Refused("challenge expired")
        c = Challenge(c_tenant, c_queue, int(c_difficulty), int(c_exp), seed)
        if c.difficulty < difficulty:
            raise Refused("challenge easier than the queue asks now")
        counters = solution.split(",")
        if len(counters) != PARTS or not all(COUNTER_RE.match(n) for n in counters):
            raise Refused(f"solution: {PARTS} comma-separated whole numbers")
        # every part is checked: the cost never depends on which one is wrong
        ok = 1
        for part, counter in enumerate(counters):
            ok &= part_ok(seed, part, counter, c.bits)
        if not ok:
            raise Refused("wrong solution")
        return c
