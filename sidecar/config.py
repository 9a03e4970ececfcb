"""Configuration: process settings from ``ANTEROOM_*`` variables, tenants from TOML.

Precedence for queue settings, least to most specific: built-in defaults,
``ANTEROOM_*`` variables, a tenant's ``[tenants.NAME.queue_defaults]``, and a
queue's own ``[tenants.NAME.queues.QUEUE]`` table. Every invalid value raises
:class:`ConfigError` naming the setting, so start-up stops with a clear line.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets as random_tokens
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any, NamedTuple
from urllib.parse import urlsplit

# closed: newcomers see the closed page, people in line are told, nobody new is let in
MODES = ("on", "queue-all", "paused", "off", "closed")
ON_REDIS_ERROR = ("wait", "open")
# an admitted cookie used from more than max_addresses client addresses at once
SHARED_SESSIONS = ("allow", "flag", "revoke")
# what a newcomer does before a place is given: nothing, or a proof of work
CHALLENGES = ("none", "pow")
# flagged clients (over the join budget, a shared cookie revoked): told so, or an
# endless line that looks like any other
FLAGGED = ("refuse", "infinite")
# who is admitted next: the first present waiter in line, or one drawn at random
ORDERS = ("fifo", "random")
# who may take a place: anyone, or only holders of an access code
ACCESS = ("open", "invite")
# proof of work: log2 of the hashes a newcomer computes on average
DIFFICULTY_DEFAULT = 21
DIFFICULTY_MIN, DIFFICULTY_MAX = 8, 32
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
LANGUAGE_RE = re.compile(r"^[a-z]{2,3}\Z")  # primary subtag: what nginx reads from Accept-Language
# a host name or address as the gate sees it: lower-case, no port; "*." + name for subdomains
_LABEL = r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?"
HOST_RE = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*\Z")
IPV6_RE = re.compile(r"^\[[0-9a-f:.]+\]\Z")
DEMO_SECRET = "anteroom-demo-secret-not-for-production"
# Values shipped in examples and templates: anyone who read them could forge cookies.
PLACEHOLDER_SECRET_RE = re.compile(
    r"change[-_ ]?me|replace[-_ ]?me|placeholder|example|your[-_ ]?(long[-_ ]?)?secret"
    r"|not[-_ ]for[-_ ]production",
    re.IGNORECASE,
)
# a place in line outlives the longest sale (and an admin revocation covers it)
WAITING_TOKEN_TTL = 12 * 3600
# nginx fast pass: characters that need no escaping inside an nginx quoted string
FAST_PASS_SECRET_RE = re.compile(r"[A-Za-z0-9+/=_.:-]{16,256}")
FAST_PASS_TTL = 20  # seconds; a left or revoked session keeps passing in nginx that long
FAST_PASS_MAX_TTL = 300
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_ADMIN_URL = "http://127.0.0.1:9091"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "rediss+sentinel://")


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names it."""


@dataclass(frozen=True, slots=True)
class QueueSettings:
    capacity: int = 100  # concurrent active + invited sessions; 0 = no limit
    admit_per_minute: int = 0  # new admissions per rolling minute; 0 = no limit
    session_ttl: int = 600  # seconds idle before an admitted session ends
    grace: int = 60  # seconds an invited waiter has to claim the place
    abandon_after: int = 120  # seconds without a poll before a waiter is skipped
    mode: str = "on"
    on_redis_error: str = "wait"
    session_max: int = 7200  # seconds an admitted session may last at most, however used
    opens_at: int = 0  # unix seconds of a scheduled opening (pre-queue before it); 0 = none
    joins_per_address: int = 0  # new places per client address per minute; 0 = no limit
    shared_sessions: str = "allow"  # allow | flag (log it) | revoke (end the session)
    max_addresses: int = 4  # client addresses one session may use at once (last minute)
    challenge: str = "none"  # none | pow: newcomers solve a proof of work before a place
    challenge_difficulty: int = DIFFICULTY_DEFAULT  # log2 of the average hashes to solve it
    flagged: str = "refuse"  # refuse | infinite: a line that never moves for flagged clients
    leave_to: str = "/"  # where "Leave the line" on the waiting page goes: a same-site path
    order: str = "fifo"  # fifo | random: each admission draws a present waiter at random
    access: str = "open"  # open | invite: only access-code holders may take a place
    closes_at: int = 0  # unix seconds from which the queue is closed (as mode closed); 0 = none
    message: str = ""  # plain text shown to the line (waiting, countdown and closed pages)
    messages: tuple[tuple[str, str], ...] = ()  # (language, text): message_<lang> variants
    closed_link: str = ""  # a link on the closed page: a same-site path or an http(s) URL

    def message_for(self, language: str) -> str:
        """The message in ``language`` if the operator wrote one, else the plain one."""
        return next((t for lang, t in self.messages if lang == language), self.message)


# name in QueueSettings -> (environment variable, smallest allowed value)
_QUEUE_ENV: dict[str, tuple[str, int]] = {
    "capacity": ("ANTEROOM_CAPACITY", 0),
    "admit_per_minute": ("ANTEROOM_ADMIT_PER_MINUTE", 0),
    "session_ttl": ("ANTEROOM_SESSION_TTL", 1),
    "grace": ("ANTEROOM_GRACE", 1),
    # hidden browser tabs may poll only once a minute (timer throttling)
    "abandon_after": ("ANTEROOM_ABANDON_AFTER", 90),
    "session_max": ("ANTEROOM_SESSION_MAX", 10),
    "joins_per_address": ("ANTEROOM_JOINS_PER_ADDRESS", 0),
    "max_addresses": ("ANTEROOM_MAX_ADDRESSES", 1),
}
# the largest opens_at accepted (year 5138): far beyond any sale, still exact in Lua
OPENS_AT_MAX = 10**11
# name -> least value: the same rules for operator overrides in Redis (tick.lua)
OVERRIDE_LEAST: dict[str, int] = {name: least for name, (_, least) in _QUEUE_ENV.items()}
OVERRIDE_LEAST["challenge_difficulty"] = DIFFICULTY_MIN
# name -> greatest value an operator may set (others: 10**9)
OVERRIDE_MOST: dict[str, int] = {"challenge_difficulty": DIFFICULTY_MAX}
# what an operator may change on a running queue (admin API, CLI, dashboard)
OVERRIDABLE = (
    "capacity",
    "admit_per_minute",
    "session_ttl",
    "grace",
    "abandon_after",
    "session_max",
    "joins_per_address",
    "opens_at",
    "mode",
    "shared_sessions",
    "max_addresses",
    "leave_to",
    # switched on during an attack: every replica asks newcomers for work within a second
    "challenge",
    "challenge_difficulty",
    "flagged",
    "order",
    "access",
    "closes_at",
    "message",
    "closed_link",
)
ADMIN_TOKEN_MIN = 16
# what an admin token may do, each role including the ones before it
ROLES = ("viewer", "operator", "admin")
LEAVE_TO_MAX = 512  # characters; a path, carried in a Location header
MESSAGE_MAX = 280  # characters of a message to the line (one short paragraph)
# a language's variant of the message: message_fr, message_de (config.LANGUAGE_RE)
MESSAGE_VARIANT_RE = re.compile(r"^message_([a-z]{2,3})\Z")
MESSAGE_VARIANTS_MAX = 16  # languages one queue's message may have
# settings held as text for the pages (scripts.TEXT_SETTINGS): never read by the line
TEXT_SETTINGS = ("message", "closed_link")


class AdminToken(NamedTuple):
    name: str  # what the audit log shows
    token: str
    role: str = "admin"  # one of ROLES


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    hosts: tuple[str, ...]
    queue_defaults: QueueSettings
    queues: Mapping[str, QueueSettings] = field(default_factory=dict)
    theme: str = "default"
    language: str = "en"
    title: str = ""
    waiting_url: str = ""  # where the 401 sends visitors; built from the name if empty

    def settings_for(self, queue: str) -> QueueSettings:
        return self.queues.get(queue, self.queue_defaults)

    @property
    def waiting_page(self) -> str:
        return self.waiting_url or f"/_anteroom/waiting/{self.name}/"


@dataclass(frozen=True, slots=True)
class S3Settings:
    """Where ``pages publish`` uploads: ``ANTEROOM_S3_*``, credentials falling back
    to the usual ``AWS_*`` variables."""

    endpoint: str  # scheme://host[:port], no path
    bucket: str
    prefix: str  # "" or ends with "/"
    region: str
    access_key: str
    secret_key: str
    session_token: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> S3Settings:
        endpoint = env.get("ANTEROOM_S3_ENDPOINT", "").rstrip("/")
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            raise ConfigError(
                "ANTEROOM_S3_ENDPOINT: expected http(s)://host[:port] "
                f"(e.g. https://s3.eu-west-1.amazonaws.com), got {endpoint!r}"
            )
        bucket = env.get("ANTEROOM_S3_BUCKET", "")
        if not (3 <= len(bucket) <= 63) or not all(c.isalnum() or c in ".-" for c in bucket):
            raise ConfigError(
                f"ANTEROOM_S3_BUCKET: 3-63 letters, digits, '.' or '-', got {bucket!r}"
            )
        prefix = env.get("ANTEROOM_S3_PREFIX", "").strip("/")
        if any(c in prefix for c in "?#\\") or ".." in prefix.split("/"):
            raise ConfigError(f"ANTEROOM_S3_PREFIX: a plain path, got {prefix!r}")
        access = env.get("ANTEROOM_S3_ACCESS_KEY_ID") or env.get("AWS_ACCESS_KEY_ID", "")
        secret = env.get("ANTEROOM_S3_SECRET_ACCESS_KEY") or env.get("AWS_SECRET_ACCESS_KEY", "")
        if not access or not secret:
            raise ConfigError(
                "ANTEROOM_S3_ACCESS_KEY_ID / ANTEROOM_S3_SECRET_ACCESS_KEY (or AWS_ACCESS_KEY_ID /"
                " AWS_SECRET_ACCESS_KEY): both are required to publish"
            )
        region = env.get("ANTEROOM_S3_REGION") or env.get("AWS_REGION") or "us-east-1"
        return cls(
            endpoint=endpoint,
            bucket=bucket,
            prefix=prefix + "/" if prefix else "",
            region=region,
            access_key=access,
            secret_key=secret,
            session_token=env.get("ANTEROOM_S3_SESSION_TOKEN") or env.get("AWS_SESSION_TOKEN", ""),
        )


@dataclass(frozen=True, slots=True)
class Config:
    secrets: tuple[bytes, ...]
    tenants: tuple[Tenant, ...]
    listen_host: str = "127.0.0.1"
    listen_port: int = 8081
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster: bool = False  # redis_url names one node of a Redis Cluster
    cookie_name: str = "anteroom"
    cookie_secure: bool = True
    log_level: str = "info"
    log_format: str = "json"
    refresh_interval: float = 0.25  # seconds between queue-state reads (and advances)
    heartbeat_interval: float = 1.0  # seconds between heartbeat flushes
    workers: int = 1  # processes sharing the listen port (SO_REUSEPORT)
    redis_pool: int = 64  # connections a process's requests share (joins are coalesced)
    redis_pool_timeout: float = 2.0  # wait for one before answering "busy"; under nginx's 5 s
    backlog: int = 4096  # listen queue: a burst waits in the kernel, not as nginx 502s
    shutdown_timeout: float = 10.0  # SIGTERM: seconds in-flight requests get to finish
    demo: bool = False
    admin_host: str = "127.0.0.1"
    admin_port: int = 9091  # 0: no admin listener (ANTEROOM_ADMIN_LISTEN=off)
    admin_tokens: tuple[AdminToken, ...] = ()
    admin_token_generated: bool = False  # demo without ANTEROOM_ADMIN_TOKEN
    admin_url: str = DEFAULT_ADMIN_URL  # where the CLI finds the admin listener
    log_levels: tuple[tuple[str, str], ...] = ()  # (logger, level) overrides
    fast_pass_secret: str = ""  # nginx fast pass off when empty
    fast_pass_ttl: int = FAST_PASS_TTL
    config_file: str = ""  # ANTEROOM_CONFIG: the tenants' TOML; "" = one default tenant
    themes: str = ""  # folder of waiting-page themes; "" = the shipped ones
    s3: S3Settings | None = None  # page commands only, when ANTEROOM_S3_* is set
    host_map: Mapping[str, Tenant] = field(init=False, repr=False, compare=False)
    # "tickets.example" -> the tenant of "*.tickets.example"
    wildcard_map: Mapping[str, Tenant] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        hosts = [(h, t) for t in self.tenants for h in t.hosts]
        object.__setattr__(self, "host_map", {h: t for h, t in hosts if not h.startswith("*.")})
        object.__setattr__(self, "wildcard_map", {h[2:]: t for h, t in hosts if h.startswith("*.")})

    def tenant_for_host(self, host: str) -> Tenant | None:
        """The tenant serving ``host`` (lower-case, no port), most specific first:
        the exact name, then ``*.parent`` from the nearest parent up, then ``*``.
        ``*.tickets.example`` matches ``a.tickets.example`` and
        ``a.b.tickets.example``, not ``tickets.example`` itself."""
        tenant = self.host_map.get(host)
        if tenant is not None:
            return tenant
        if self.wildcard_map:
            dot = host.find(".")
            while dot != -1:
                tenant = self.wildcard_map.get(host[dot + 1 :])
                if tenant is not None:
                    return tenant
                dot = host.find(".", dot + 1)
        return self.host_map.get("*")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, serving: bool = True) -> Config:
        return load(os.environ if env is None else env, serving)


def cookie_prefix(env: Mapping[str, str]) -> str:
    """ANTEROOM_COOKIE_NAME, the visitor cookies' prefix (also fastpass-secret.conf's)."""
    name = env.get("ANTEROOM_COOKIE_NAME", "anteroom")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        raise ConfigError(f"ANTEROOM_COOKIE_NAME: letters, digits, '_' or '-' only, got {name!r}")
    return name


def load(env: Mapping[str, str], serving: bool = True) -> Config:
    """The configuration in ``env``. ``serving=False`` (building pages) needs no secret."""
    demo = _bool(env, "ANTEROOM_DEMO", False)
    raw_secrets = env.get("ANTEROOM_SECRETS") or env.get("ANTEROOM_SECRET") or ""
    secrets = tuple(s.strip().encode() for s in raw_secrets.split(",") if s.strip())
    if not secrets:
        if serving and not demo:
            raise ConfigError(
                "ANTEROOM_SECRETS: required (comma-separated; the first signs, all verify)"
            )
        secrets = (DEMO_SECRET.encode(),)
    for s in secrets:
        if len(s) < 16:
            raise ConfigError("ANTEROOM_SECRETS: each secret must be at least 16 characters")
        if serving and not demo and (s == DEMO_SECRET.encode() or _placeholder(s)):
            raise ConfigError(
                "ANTEROOM_SECRETS: a placeholder or published value is not a secret; "
                "generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )

    host, port = _listen(env.get("ANTEROOM_LISTEN", "127.0.0.1:8081"))
    if not _private(host) and not _bool(env, "ANTEROOM_LISTEN_PUBLIC", False):
        raise ConfigError(
            f"ANTEROOM_LISTEN: {host} is not a loopback or private address; anyone reaching "
            "the sidecar can forge what nginx tells it. Set ANTEROOM_LISTEN_PUBLIC=1 if a "
            "firewall keeps it private."
        )
    redis_url = env.get("ANTEROOM_REDIS_URL", "redis://127.0.0.1:6379/0")
    if not redis_url.startswith(REDIS_SCHEMES):
        raise ConfigError(
            f"ANTEROOM_REDIS_URL: expected one of {', '.join(REDIS_SCHEMES)}, got {redis_url!r}"
        )
    redis_cluster = _bool(env, "ANTEROOM_REDIS_CLUSTER", False)
    if redis_cluster and "+sentinel://" in redis_url:
        raise ConfigError(
            "ANTEROOM_REDIS_CLUSTER: a Sentinel URL names a primary/replica set, not a Cluster"
        )
    cookie_name = cookie_prefix(env)
    log_level = env.get("ANTEROOM_LOG_LEVEL", "info").lower()
    if log_level not in LOG_LEVELS:
        raise ConfigError(
            f"ANTEROOM_LOG_LEVEL: one of debug, info, warning, error, got {log_level!r}"
        )
    log_format = env.get("ANTEROOM_LOG_FORMAT", "json").lower()
    if log_format not in ("json", "text"):
        raise ConfigError(f"ANTEROOM_LOG_FORMAT: json or text, got {log_format!r}")

    log_levels = log_levels_from(env.get("ANTEROOM_LOG_LEVELS", ""))
    fast_pass_secret, fast_pass_ttl = _fast_pass(env)
    admin_url = env.get("ANTEROOM_ADMIN_URL", DEFAULT_ADMIN_URL)
    if not admin_url.startswith(("http://", "https://")):
        raise ConfigError(f"ANTEROOM_ADMIN_URL: expected http(s)://HOST:PORT, got {admin_url!r}")
    s3 = None  # only the page commands publish; a server never needs it
    if not serving and any(k.startswith("ANTEROOM_S3_") for k in env):
        s3 = S3Settings.from_env(env)

    defaults = _queue_settings_from_env(env)
    path = env.get("ANTEROOM_CONFIG", "")
    tenants = _tenants_from_file(path, defaults) if path else ()
    if not tenants:
        tenants = (Tenant(name="default", hosts=("*",), queue_defaults=defaults),)

    admin_host, admin_port = _admin_listen(env.get("ANTEROOM_ADMIN_LISTEN", "127.0.0.1:9091"))
    admin_tokens = admin_tokens_from(env.get("ANTEROOM_ADMIN_TOKEN", ""))
    generated = False
    if serving and admin_port and not admin_tokens:
        if not demo:
            raise ConfigError(
                "ANTEROOM_ADMIN_TOKEN: required for the admin listener "
                "(comma-separated tokens, each optionally name:token or name:role:token; "
                "or ANTEROOM_ADMIN_LISTEN=off for none)"
            )
        admin_tokens, generated = (AdminToken("demo", random_tokens.token_urlsafe(24)),), True

    return Config(
        secrets=secrets,
        tenants=tenants,
        listen_host=host,
        listen_port=port,
        redis_url=redis_url,
        redis_cluster=redis_cluster,
        cookie_name=cookie_name,
        cookie_secure=_bool(env, "ANTEROOM_COOKIE_SECURE", not demo),
        log_level=log_level,
        log_format=log_format,
        refresh_interval=_float(env, "ANTEROOM_REFRESH_INTERVAL", 0.25, 0.02, 5.0),
        heartbeat_interval=_float(env, "ANTEROOM_HEARTBEAT_INTERVAL", 1.0, 0.05, 30.0),
        workers=_workers(env.get("ANTEROOM_WORKERS", "1")),
        redis_pool=_int("ANTEROOM_REDIS_POOL", env.get("ANTEROOM_REDIS_POOL", "64"), 1, 10_000),
        redis_pool_timeout=_float(env, "ANTEROOM_REDIS_POOL_TIMEOUT", 2.0, 0.05, 4.0),
        backlog=_int("ANTEROOM_BACKLOG", env.get("ANTEROOM_BACKLOG", "4096"), 1, 65535),
        shutdown_timeout=_float(env, "ANTEROOM_SHUTDOWN_TIMEOUT", 10.0, 0.5, 300.0),
        demo=demo,
        admin_host=admin_host,
        admin_port=admin_port,
        admin_tokens=admin_tokens,
        admin_token_generated=generated,
        admin_url=admin_url,
        log_levels=log_levels,
        fast_pass_secret=fast_pass_secret,
        fast_pass_ttl=fast_pass_ttl,
        config_file=path,
        themes=env.get("ANTEROOM_THEMES", ""),
        s3=s3,
    )


def log_levels_from(raw: str) -> tuple[tuple[str, str], ...]:
    """``ANTEROOM_LOG_LEVELS``: ``logger=level`` pairs, comma-separated."""
    pairs = []
    for item in filter(None, (s.strip() for s in raw.split(","))):
        name, sep, level = item.partition("=")
        if not sep or not name.strip() or level.strip().lower() not in LOG_LEVELS:
            raise ConfigError(f"ANTEROOM_LOG_LEVELS: expected logger=level pairs, got {item!r}")
        pairs.append((name.strip(), level.strip().lower()))
    return tuple(pairs)


def _fast_pass(env: Mapping[str, str]) -> tuple[str, int]:
    """(secret, ttl) of the nginx fast pass; ("", ttl) when it is off."""
    secret = env.get("ANTEROOM_FAST_PASS_SECRET", "").strip()
    if not secret:
        return "", FAST_PASS_TTL
    if not FAST_PASS_SECRET_RE.fullmatch(secret):
        raise ConfigError(
            "ANTEROOM_FAST_PASS_SECRET: 16 to 256 characters of letters, digits and + / = _ . : -"
            " (e.g. openssl rand -hex 32)"
        )
    raw_ttl = env.get("ANTEROOM_FAST_PASS_TTL", str(FAST_PASS_TTL))
    try:
        ttl = int(raw_ttl)
    except ValueError:
        ttl = 0
    if not 1 <= ttl <= FAST_PASS_MAX_TTL:
        raise ConfigError(
            f"ANTEROOM_FAST_PASS_TTL: seconds from 1 to {FAST_PASS_MAX_TTL}, got {raw_ttl!r}"
            f" (default {FAST_PASS_TTL})"
        )
    return secret, ttl


def admin_tokens_from(raw: str) -> tuple[AdminToken, ...]:
    """``name:role:token``, ``name:token`` or bare ``token`` items, comma-separated.
    The name is what the audit log shows (a bare token is ``token1``, ``token2``… by
    position); the role is one of ROLES, ``admin`` when not given."""
    tokens: list[AdminToken] = []
    for i, item in enumerate((t.strip() for t in raw.split(",") if t.strip()), start=1):
        name, sep, token = item.partition(":")
        role = "admin"
        if not sep or not NAME_RE.match(name):
            name, token = f"token{i}", item
        else:
            maybe_role, sep2, rest = token.partition(":")
            if sep2 and maybe_role in ROLES:
                role, token = maybe_role, rest
            elif sep2 and re.fullmatch(r"[A-Za-z]{1,16}", maybe_role):
                # a misspelt role must not become part of an admin token
                raise ConfigError(
                    f"ANTEROOM_ADMIN_TOKEN: {name}: unknown role {maybe_role!r} "
                    f"(one of {', '.join(ROLES)}; name:role:token)"
                )
        if len(token) < ADMIN_TOKEN_MIN:
            raise ConfigError(
                f"ANTEROOM_ADMIN_TOKEN: {name}: each token must be at least "
                f"{ADMIN_TOKEN_MIN} characters"
            )
        if any(t.name == name for t in tokens):
            raise ConfigError(f"ANTEROOM_ADMIN_TOKEN: the name {name!r} is used twice")
        if any(t.token == token for t in tokens):
            raise ConfigError(f"ANTEROOM_ADMIN_TOKEN: {name}: the same token is listed twice")
        tokens.append(AdminToken(name, token, role))
    return tuple(tokens)


def queue_setting(name: str, key: str, value: object) -> int | str:
    """One queue setting by the rules every source shares (TOML, environment, the
    admin API and CLI); ``name`` is how a ConfigError refers to it."""
    if key == "mode":
        return _choice(name, value, MODES)
    if key == "on_redis_error":
        return _choice(name, value, ON_REDIS_ERROR)
    if key in ("opens_at", "closes_at"):
        return opens_at(name, value)
    if key == "message" or MESSAGE_VARIANT_RE.match(key):
        return message(name, value)
    if key == "closed_link":
        return closed_link(name, value)
    if key == "shared_sessions":
        return _choice(name, value, SHARED_SESSIONS)
    if key == "challenge":
        return _choice(name, value, CHALLENGES)
    if key == "flagged":
        return _choice(name, value, FLAGGED)
    if key == "order":
        return _choice(name, value, ORDERS)
    if key == "access":
        return _choice(name, value, ACCESS)
    if key == "challenge_difficulty":
        return _int(name, value, DIFFICULTY_MIN, DIFFICULTY_MAX)
    if key == "leave_to":
        return leave_to(name, value)
    if key in _QUEUE_ENV:
        return _int(name, value, _QUEUE_ENV[key][1])
    raise ConfigError(f"{name}: unknown setting")


def opens_at(name: str, value: object) -> int:
    """A scheduled opening as unix seconds: a whole number of seconds, an ISO-8601
    timestamp with its offset (``2026-12-01T09:00:00Z``) or a TOML date-time; 0 or
    an empty string: no scheduled opening."""
    if isinstance(value, str) and value.strip() in ("", "0"):
        return 0
    if isinstance(value, int | str) and not isinstance(value, bool):
        if isinstance(value, int) or value.strip().isdigit():
            return _int(name, value, 0, OPENS_AT_MAX)
        with contextlib.suppress(ValueError):  # not a timestamp: the error below
            value = datetime.fromisoformat(value.strip())
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ConfigError(f"{name}: give the time zone, e.g. {value.isoformat()}Z for UTC")
        return int(value.astimezone(UTC).timestamp())
    raise ConfigError(
        f"{name}: expected unix seconds or an ISO-8601 time with its zone "
        f"(2026-12-01T09:00:00Z), got {value!r}"
    )


def leave_to(name: str, value: object) -> str:
    """A path on the same site: "/", "/shop/thanks?from=queue"; never another host."""
    ok = (
        isinstance(value, str)
        and 0 < len(value) <= LEAVE_TO_MAX
        and value.startswith("/")
        and not value.startswith("//")
        and "\\" not in value
        and all(0x21 <= ord(c) <= 0x7E for c in value)
    )
    if not ok or urlsplit(str(value)).netloc:
        raise ConfigError(
            f"{name}: a path on the same site starting with a single '/' "
            f"(printable ASCII, no spaces, at most {LEAVE_TO_MAX} characters), got {value!r}"
        )
    return str(value)


def message(name: str, value: object) -> str:
    """Plain text for the line: shown escaped (never HTML), at most MESSAGE_MAX
    characters, no control characters but line breaks; "" for none."""
    if not isinstance(value, str):
        raise ConfigError(f"{name}: plain text, got {value!r}")
    text = value.strip()
    if len(text) > MESSAGE_MAX:
        raise ConfigError(f"{name}: at most {MESSAGE_MAX} characters, got {len(text)}")
    if any((ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0 for c in text):
        raise ConfigError(f"{name}: plain text without control characters")
    return text


def closed_link(name: str, value: object) -> str:
    """Where the closed page's link goes: a path on the site or an http(s) URL; ""
    for none."""
    if value == "":
        return ""
    ok = (
        isinstance(value, str)
        and len(value) <= LEAVE_TO_MAX
        and all(0x21 <= ord(c) <= 0x7E for c in value)
        and "\\" not in value
    )
    if ok:
        parts = urlsplit(str(value))
        path = str(value).startswith("/") and not str(value).startswith("//")
        ok = (path and not parts.netloc) or (
            parts.scheme in ("http", "https") and bool(parts.netloc)
        )
    if not ok:
        raise ConfigError(
            f"{name}: a path on the site (/events/) or an http(s) URL "
            f"(printable ASCII, at most {LEAVE_TO_MAX} characters), got {value!r}"
        )
    return str(value)


def with_overrides(base: QueueSettings, cleaned: Mapping[str, int | str]) -> QueueSettings:
    """``base`` with checked values (queue_setting) applied; message_<lang> variants
    join ``messages`` (an empty text removes one)."""
    variants = dict(base.messages)
    plain: dict[str, Any] = {}
    for key, value in cleaned.items():
        m = MESSAGE_VARIANT_RE.match(key)
        if m:
            variants[m.group(1)] = str(value)
        else:
            plain[key] = value
    messages = tuple(sorted((lang, t) for lang, t in variants.items() if t))
    return replace(base, **plain, messages=messages)


def settings_fields(s: QueueSettings) -> dict[str, Any]:
    """``s`` as setting names: every field, with message_<lang> for each variant."""
    out = {f.name: getattr(s, f.name) for f in fields(QueueSettings) if f.name != "messages"}
    out.update((f"message_{lang}", text) for lang, text in s.messages)
    return out


def overridable(key: str) -> bool:
    """Whether an operator may change ``key`` on a running queue."""
    return key in OVERRIDABLE or MESSAGE_VARIANT_RE.match(key) is not None


def queue_overrides(changes: Mapping[str, object], base: QueueSettings) -> dict[str, int | str]:
    """Operator changes to a running queue, checked whole: the cleaned values, or a
    :class:`OverrideErrors` with one message per bad field (nothing is half valid)."""
    cleaned: dict[str, int | str] = {}
    errors: dict[str, str] = {}
    for key, value in changes.items():
        if not overridable(key):
            errors[key] = (
                f"{key}: not a setting that can be changed "
                f"({', '.join(OVERRIDABLE)}, message_<language>)"
            )
            continue
        try:
            cleaned[key] = queue_setting(key, key, value)
        except ConfigError as e:
            errors[key] = str(e)
    if not errors:
        try:
            _checked(with_overrides(base, cleaned), "settings")
        except ConfigError as e:
            errors["settings"] = str(e)
    if errors:
        raise OverrideErrors(errors)
    return cleaned


class OverrideErrors(ConfigError):
    """Several bad fields at once: ``errors`` maps each to its message."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        super().__init__("; ".join(errors.values()))
        self.errors = dict(errors)


def _queue_settings_from_env(env: Mapping[str, str]) -> QueueSettings:
    values: dict[str, Any] = {}
    variables = {name: var for name, (var, _) in _QUEUE_ENV.items()}
    variables.update(
        mode="ANTEROOM_MODE",
        on_redis_error="ANTEROOM_ON_REDIS_ERROR",
        opens_at="ANTEROOM_OPENS_AT",
        closes_at="ANTEROOM_CLOSES_AT",
        message="ANTEROOM_MESSAGE",
        closed_link="ANTEROOM_CLOSED_LINK",
        shared_sessions="ANTEROOM_SHARED_SESSIONS",
        challenge="ANTEROOM_CHALLENGE",
        challenge_difficulty="ANTEROOM_CHALLENGE_DIFFICULTY",
        flagged="ANTEROOM_FLAGGED",
        leave_to="ANTEROOM_LEAVE_TO",
        order="ANTEROOM_ORDER",
        access="ANTEROOM_ACCESS",
    )
    for name, var in variables.items():
        if var in env:
            values[name] = queue_setting(var, name, env[var])
    return _checked(QueueSettings(**values), "ANTEROOM_*")


def _tenants_from_file(path: str, defaults: QueueSettings) -> tuple[Tenant, ...]:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"ANTEROOM_CONFIG: cannot read {path!r}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"ANTEROOM_CONFIG: {path}: {e}") from None
    unknown = set(doc) - {"tenants"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key {sorted(unknown)[0]!r}")
    tenants_doc = doc.get("tenants", {})
    if not isinstance(tenants_doc, dict):
        raise ConfigError(f"{path}: 'tenants' must be a table")
    tenants = []
    seen_hosts: dict[str, str] = {}
    for name, t in tenants_doc.items():
        where = f"tenants.{name}"
        if not NAME_RE.match(name) or not isinstance(t, dict):
            raise ConfigError(f"{where}: tenant names are letters, digits, '_' or '-'")
        allowed = {"hosts", "theme", "language", "title", "waiting_url", "queue_defaults", "queues"}
        extra = set(t) - allowed
        if extra:
            raise ConfigError(f"{where}.{sorted(extra)[0]}: unknown setting")
        hosts = t.get("hosts")
        if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) for h in hosts):
            raise ConfigError(f"{where}.hosts: a non-empty list of host names")
        for h in hosts:
            h = h.lower()
            if h != "*" and not HOST_RE.match(h) and not IPV6_RE.match(h):
                raise ConfigError(
                    f"{where}.hosts: {h!r} is not a host name: use a name (shop.example), "
                    "'*.' and a name for its subdomains (*.shop.example), or '*' for any "
                    "other host; no scheme, port or path"
                )
            if h in seen_hosts:
                raise ConfigError(f"{where}.hosts: {h!r} already belongs to {seen_hosts[h]}")
            seen_hosts[h] = name
        tdefaults = _queue_table(t.get("queue_defaults", {}), defaults, f"{where}.queue_defaults")
        queues_doc = t.get("queues", {})
        if not isinstance(queues_doc, dict):
            raise ConfigError(f"{where}.queues: must be a table")
        queues = {}
        for qname, q in queues_doc.items():
            if not NAME_RE.match(qname):
                raise ConfigError(
                    f"{where}.queues.{qname}: queue names are letters, digits, '_' or '-'"
                )
            queues[qname] = _queue_table(q, tdefaults, f"{where}.queues.{qname}")
        theme = _str(t, "theme", "default", where)
        if not NAME_RE.match(theme):
            raise ConfigError(f"{where}.theme: letters, digits, '_' or '-', got {theme!r}")
        tenants.append(
            Tenant(
                name=name,
                hosts=tuple(h.lower() for h in hosts),
                queue_defaults=tdefaults,
                queues=queues,
                theme=theme,
                language=_language(t, where),
                title=_str(t, "title", "", where),
                waiting_url=_str(t, "waiting_url", "", where),
            )
        )
    return tuple(tenants)


def _language(doc: Mapping[str, object], where: str) -> str:
    language = _str(doc, "language", "en", where)
    if not LANGUAGE_RE.match(language):
        raise ConfigError(
            f"{where}.language: a two- or three-letter code in lower case (en, fr), "
            f"got {language!r}"
        )
    return language


def _queue_table(doc: object, base: QueueSettings, where: str) -> QueueSettings:
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: must be a table")
    known = {f.name for f in fields(QueueSettings)} - {"messages"}
    values: dict[str, Any] = {}
    for key, value in doc.items():
        if key not in known and not MESSAGE_VARIANT_RE.match(key):
            raise ConfigError(f"{where}.{key}: unknown setting")
        values[key] = queue_setting(f"{where}.{key}", key, value)
    return _checked(with_overrides(base, values), where)


def _checked(s: QueueSettings, where: str) -> QueueSettings:
    if s.session_max < s.session_ttl:
        raise ConfigError(
            f"{where}: session_max ({s.session_max}) must be at least session_ttl ({s.session_ttl})"
        )
    if s.opens_at and s.closes_at and s.closes_at <= s.opens_at:
        raise ConfigError(
            f"{where}: closes_at ({s.closes_at}) must come after opens_at ({s.opens_at})"
        )
    if len(s.messages) > MESSAGE_VARIANTS_MAX:
        raise ConfigError(f"{where}: at most {MESSAGE_VARIANTS_MAX} languages of message")
    return s


def _placeholder(secret: bytes) -> bool:
    return PLACEHOLDER_SECRET_RE.search(secret.decode(errors="replace")) is not None


def _workers(value: str) -> int:
    if value.strip().lower() == "auto":
        return os.cpu_count() or 1
    return _int("ANTEROOM_WORKERS", value, 1, 256)


def _private(host: str) -> bool:
    """Loopback or private network: where only nginx (or the operator) can reach it."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # a host name: cannot tell, ask for the explicit setting
    return ip.is_loopback or (ip.is_private and not ip.is_unspecified)


def _admin_listen(value: str) -> tuple[str, int]:
    if value.strip().lower() in ("", "off", "0", "no", "false"):
        return "", 0
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"ANTEROOM_ADMIN_LISTEN: expected HOST:PORT or off, got {value!r}")
    return host.strip("[]"), _int("ANTEROOM_ADMIN_LISTEN", port, 1, 65535)


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"ANTEROOM_LISTEN: expected HOST:PORT, got {value!r}")
    return host.strip("[]"), _int("ANTEROOM_LISTEN", port, 1, 65535)


def _int(name: str, value: object, minimum: int, maximum: int = 10**9) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a whole number, got {value!r}")
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{name}: expected a whole number, got {value!r}") from None
    if not minimum <= n <= maximum:
        raise ConfigError(f"{name}: must be between {minimum} and {maximum}, got {n}")
    return n


def _float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    if name not in env:
        return default
    try:
        v = float(env[name])
    except ValueError:
        raise ConfigError(f"{name}: expected a number of seconds, got {env[name]!r}") from None
    if not lo <= v <= hi:
        raise ConfigError(f"{name}: must be between {lo} and {hi}, got {v}")
    return v


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: expected 1/0, true/false, yes/no or on/off, got {raw!r}")


def _choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{name}: one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _str(doc: Mapping[str, object], key: str, default: str, where: str) -> str:
    v = doc.get(key, default)
    if not isinstance(v, str):
        raise ConfigError(f"{where}.{key}: expected a string, got {v!r}")
    return v
