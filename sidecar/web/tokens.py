"""Signed visitor tokens, carried as the cookie (or as a Bearer token by API clients).

A token is ``2|tenant|queue|state|ticket|sid|iat|exp|epoch|return_to|signature``: the
fields in clear (they are not secret, only tamper-proof), the signature an
HMAC-SHA256 over everything before it, base64url without padding. Every
character is valid in a cookie value, so no quoting is needed. The first
secret signs; every secret verifies, so secrets can be rotated without
logging anyone out. Verification is local: no Redis round trip.

``epoch`` is the queue's epoch when the place was handed out (engine.QueueState):
a waiting token of another epoch names a place Redis lost in a restart. A token
of an older format (no epoch) is no token at all.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote

VERSION = "2"
MAX_TOKEN_LENGTH = 2048
# Verified tokens kept per process, admitted and waiting apart (a line of a
# million pollers must not push out the admitted cookies of the hot path): under
# 400 bytes an entry, so at most about 20 MB each. Expiry and revocation are
# checked on every use by the caller, never cached; a miss is the full check.
VERIFIED_CACHE_SIZE = 50_000
VERIFIED_CACHE_TOKEN = 400  # longer raw tokens (a long return_to) are verified each time
WAITING: Literal["w"] = "w"
ADMITTED: Literal["a"] = "a"
# a flagged client's place in a line that never moves (flagged = "infinite"): its
# ticket is the position it was first shown; no Redis key ever names it
FLAGGED: Literal["f"] = "f"
# a place served before the line (an access code's): waiting, but only a claim can
# tell when its turn came, so every poll of it asks Redis (few: one per code used)
PRIORITY: Literal["p"] = "p"
State = Literal["w", "a", "f", "p"]


_STATES: dict[str, State] = {
    WAITING: WAITING,
    ADMITTED: ADMITTED,
    FLAGGED: FLAGGED,
    PRIORITY: PRIORITY,
}


@dataclass(frozen=True, slots=True)
class Token:
    tenant: str
    queue: str
    state: State
    ticket: int
    sid: str
    iat: int  # joined (waiting) or admitted at, unix seconds; sliding keeps it
    exp: int  # expires at, unix seconds
    return_to: str = "/"  # waiting tokens only: where the visitor goes once admitted
    epoch: str = ""  # the queue's epoch the ticket belongs to (required for waiting tokens)

    @property
    def admitted(self) -> bool:
        return self.state == ADMITTED

    @property
    def flagged(self) -> bool:
        return self.state == FLAGGED

    @property
    def priority(self) -> bool:
        return self.state == PRIORITY


def cookie_name(prefix: str, queue: str) -> str:
    """One cookie per queue: a place (or session) in one never costs another."""
    return f"{prefix}_{queue}"


def cookie_values(header: str, prefix: str) -> list[tuple[str, str]]:
    """Every (queue, value) of this site's cookies in a Cookie header, first ones first."""
    if prefix not in header:
        return []
    start = prefix + "_"
    found = []
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name.startswith(start) and len(name) > len(start):
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            found.append((name[len(start) :], value))
    return found


def cookie_value(header: str, name: str) -> str | None:
    """The value of cookie ``name`` in a Cookie header (the first one, as browsers
    send the most specific first). A scan for the name, not a parse: the full cookie
    parser costs a third of an admitted request, and a site's own cookies (analytics,
    consent) may be most of the header."""
    prefix = name + "="
    at = header.find(prefix)
    seen = 0  # the header before this is looked at already (linear, whatever it holds)
    while at != -1:
        before = header[header.rfind(";", seen, at) + 1 : at]
        if not before or before.isspace():  # the name, not the end of another
            end = header.find(";", at)
            value = header[at + len(prefix) : len(header) if end == -1 else end].rstrip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
        seen = header.find(";", at)  # the next cookie
        if seen == -1:
            return None
        at = header.find(prefix, seen)
    return None


def new_session_id() -> str:
    return secrets.token_urlsafe(12)


class Signer:
    """Signs with the first secret and verifies with any of them."""

    def __init__(self, keys: tuple[bytes, ...]) -> None:
        if not keys:
            raise ValueError("at least one secret is needed")
        self._keys = keys
        # raw token -> Token for tokens already verified: an admitted visitor sends
        # the same cookie on every request, a waiter on every poll, so this skips the
        # HMAC and the parse. Only verified tokens get in; expiry and revocation are
        # checked by callers on every use.
        self._verified: dict[str, Token] = {}
        self._waiting: dict[str, Token] = {}

    def _mac(self, key: bytes, payload: bytes) -> str:
        digest = hmac.digest(key, payload, hashlib.sha256)  # one-shot C call: hot path
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def dumps(self, t: Token) -> str:
        payload = "|".join(
            (
                VERSION,
                t.tenant,
                t.queue,
                t.state,
                str(t.ticket),
                t.sid,
                str(t.iat),
                str(t.exp),
                t.epoch,
                quote(t.return_to, safe="/"),
            )
        )
        return payload + "|" + self._mac(self._keys[0], payload.encode())

    def loads(self, raw: str) -> Token | None:
        """The token in ``raw`` if it is well-formed and signed by one of our keys.

        Expiry is not checked here: callers compare ``exp`` with their clock.
        Anything malformed, truncated or forged gives ``None``, never an error.
        """
        cached = self._verified.get(raw) or self._waiting.get(raw)
        if cached is not None:
            return cached
        if not raw or len(raw) > MAX_TOKEN_LENGTH or not raw.isascii():
            return None  # compare_digest refuses non-ASCII str: never let it see one
        payload, sep, sig = raw.rpartition("|")
        if not sep:
            return None
        data = payload.encode("ascii")
        if not any(hmac.compare_digest(self._mac(k, data), sig) for k in self._keys):
            return None
        parts = payload.split("|")
        if len(parts) != 10 or parts[0] != VERSION or parts[3] not in _STATES:
            return None
        if parts[3] in (WAITING, PRIORITY) and not parts[8]:
            return None  # a place means nothing without the epoch it belongs to
        try:
            ticket, iat, exp = int(parts[4]), int(parts[6]), int(parts[7])
        except ValueError:
            return None
        state = _STATES[parts[3]]
        tok = Token(
            parts[1], parts[2], state, ticket, parts[5], iat, exp, unquote(parts[9]), parts[8]
        )
        if len(raw) <= VERIFIED_CACHE_TOKEN:
            cache = self._verified if state == ADMITTED else self._waiting
            if len(cache) >= VERIFIED_CACHE_SIZE:
                cache.clear()  # crude but O(1) amortised; refills with live cookies
            cache[raw] = tok
        return tok
