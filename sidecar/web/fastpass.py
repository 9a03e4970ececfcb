"""The nginx fast pass: a short-lived cookie nginx's ``secure_link`` checks by itself.

An admitted visitor gets ``anteroom__pass=EXPIRES.SESSION.HASH`` beside the
session cookie, where HASH is the MD5 of
``"EXPIRES SESSION QUEUE HOST ADDRESS COOKIE SECRET"``, base64url without
padding: exactly what ``secure_link_md5`` in ``nginx/anteroom/fastpass.conf``
computes. HOST is the site (tenant), ADDRESS the client address nginx saw
(``$remote_addr``, the X-Real-IP the sidecar gets) and COOKIE the whole signed
session cookie value of the queue. So the pass admits in nginx only from the
address it was minted for and only beside the exact cookie the sidecar
verified; from another address, beside another or a forged cookie, or alone,
the request goes to the sidecar, which sees it (shared-session detection,
revocation, the signature). While valid, nginx answers the auth subrequest
itself; the sidecar renews the pass on the requests that still reach it
(those of an admitted session only: a pass alone never renews).

On when ``ANTEROOM_FAST_PASS_SECRET`` is set; ``ANTEROOM_FAST_PASS_TTL`` is
the pass lifetime in seconds (default 20, at most 300): a left or revoked
session keeps passing in nginx for at most that long, from the one address.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

from ..config import ConfigError
from .tokens import cookie_value

# two underscores: queue names start with a letter or digit, so no queue cookie
# ("anteroom_<queue>") can ever be named like the pass
COOKIE = "anteroom__pass"
HEADER = "X-Anteroom-Pass"  # gate.conf copies it into a second Set-Cookie
DEFAULT_TTL = 20
MAX_TTL = 300
# characters that need no escaping inside an nginx quoted string
SECRET_RE = re.compile(r"[A-Za-z0-9+/=_.:-]{16,256}")
PASS_RE = re.compile(r"(\d{1,12})\.([A-Za-z0-9_-]{1,64})\.([A-Za-z0-9_-]{22})")
# what nginx's $remote_addr can be (IPv4, IPv6, "unix:"); anything else: no pass
ADDRESS_RE = re.compile(r"[0-9A-Fa-f.:]{2,45}|unix:")


@dataclass(frozen=True, slots=True)
class FastPass:
    secret: str
    ttl: int = DEFAULT_TTL

    def digest(self, expires: int, sid: str, scope: str, address: str, session: str) -> str:
        """``scope``: "<queue> <host>" as fastpass.conf hashes it, so a pass of one
        site (tenant) or queue is worth nothing on another; ``address``: nginx's
        ``$remote_addr``; ``session``: the exact session cookie value."""
        text = f"{expires} {sid} {scope} {address} {session} {self.secret}"
        raw = hashlib.md5(text.encode()).digest()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def value(self, sid: str, scope: str, address: str, session: str, now: int) -> str:
        expires = now + self.ttl
        return f"{expires}.{sid}.{self.digest(expires, sid, scope, address, session)}"

    def set_cookie(
        self, sid: str, scope: str, address: str, session: str, now: int, attrs: str
    ) -> str:
        """The Set-Cookie value of a fresh pass; ``attrs`` as the session cookie's."""
        value = self.value(sid, scope, address, session, now)
        return f"{COOKIE}={value}; Max-Age={self.ttl}{attrs}"

    def renew(
        self,
        cookie_header: str,
        sid: str,
        scope: str,
        address: str,
        session: str,
        now: int,
        headers: MutableMapping[str, str],
        attrs: str,
    ) -> None:
        """Adds a fresh pass to an admitted answer unless the visitor holds one for
        this address and cookie. No address or no cookie (a Bearer token): no pass,
        nginx could not check it."""
        if not address or not session or not ADDRESS_RE.fullmatch(address):
            return
        if not self.fresh(cookie_header, sid, scope, address, session, now):
            headers[HEADER] = self.set_cookie(sid, scope, address, session, now, attrs)

    def fresh(
        self, cookie_header: str, sid: str, scope: str, address: str, session: str, now: int
    ) -> bool:
        """Whether the request carries a valid pass for this session, queue, address
        and cookie with more than half its lifetime left (renewing sooner would
        only add a cookie to every answer)."""
        raw = cookie_value(cookie_header, COOKIE)
        m = PASS_RE.fullmatch(raw or "")
        if m is None or m.group(2) != sid:
            return False
        expires = int(m.group(1))
        if expires - now <= self.ttl / 2:
            return False
        return m.group(3) == self.digest(expires, sid, scope, address, session)


def from_env(env: Mapping[str, str]) -> FastPass | None:
    """The fast pass settings, or None when ``ANTEROOM_FAST_PASS_SECRET`` is unset."""
    secret = env.get("ANTEROOM_FAST_PASS_SECRET", "").strip()
    if not secret:
        return None
    if not SECRET_RE.fullmatch(secret):
        raise ConfigError(
            "ANTEROOM_FAST_PASS_SECRET: 16 to 256 characters of letters, digits and + / = _ . : -"
            " (e.g. openssl rand -hex 32)"
        )
    raw_ttl = env.get("ANTEROOM_FAST_PASS_TTL", str(DEFAULT_TTL))
    try:
        ttl = int(raw_ttl)
    except ValueError:
        ttl = 0
    if not 1 <= ttl <= MAX_TTL:
        raise ConfigError(
            f"ANTEROOM_FAST_PASS_TTL: seconds from 1 to {MAX_TTL}, got {raw_ttl!r}"
            f" (default {DEFAULT_TTL})"
        )
    return FastPass(secret=secret, ttl=ttl)


def nginx_conf(fast: FastPass, cookie_prefix: str = "anteroom") -> str:
    """``anteroom/fastpass-secret.conf``: the secret, and the session cookies'
    prefix (ANTEROOM_COOKIE_NAME), as nginx reads them."""
    return (
        "# Generated by `python -m sidecar fastpass-conf` from ANTEROOM_FAST_PASS_SECRET\n"
        "# and ANTEROOM_COOKIE_NAME.\n"
        "# Keep it readable by nginx only (chmod 640, owner root, group of nginx).\n"
        'map "" $anteroom_pass_key {\n'
        f'    default "{fast.secret}";\n'
        "}\n"
        'map "" $anteroom_pass_prefix {\n'
        f'    default "{cookie_prefix}";\n'
        "}\n"
    )
