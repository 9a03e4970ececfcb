"""Configuration: process settings from ``ANTEROOM_*`` variables, tenants from TOML.

Precedence for queue settings, least to most specific: built-in defaults,
``ANTEROOM_*`` variables, a tenant's ``[tenants.NAME.queue_defaults]``, and a
queue's own ``[tenants.NAME.queues.QUEUE]`` table. Every invalid value raises
:class:`ConfigError` naming the setting, so start-up stops with a clear line.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

MODES = ("on", "queue-all", "paused", "off")
ON_REDIS_ERROR = ("wait", "open")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
DEMO_SECRET = "anteroom-demo-secret-not-for-production"
# Values shipped in examples and templates: anyone who read them could forge cookies.
PLACEHOLDER_SECRET_RE = re.compile(
    r"change[-_ ]?me|replace[-_ ]?me|placeholder|example|your[-_ ]?(long[-_ ]?)?secret"
    r"|not[-_ ]for[-_ ]production",
    re.IGNORECASE,
)
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


# name in QueueSettings -> (environment variable, smallest allowed value)
_QUEUE_ENV: dict[str, tuple[str, int]] = {
    "capacity": ("ANTEROOM_CAPACITY", 0),
    "admit_per_minute": ("ANTEROOM_ADMIT_PER_MINUTE", 0),
    "session_ttl": ("ANTEROOM_SESSION_TTL", 1),
    "grace": ("ANTEROOM_GRACE", 1),
    "abandon_after": ("ANTEROOM_ABANDON_AFTER", 10),
}


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
    backlog: int = 4096  # listen queue: a burst waits in the kernel, not as nginx 502s
    shutdown_timeout: float = 10.0  # SIGTERM: seconds in-flight requests get to finish
    demo: bool = False
    host_map: Mapping[str, Tenant] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "host_map", {h: t for t in self.tenants for h in t.hosts})

    def tenant_for_host(self, host: str) -> Tenant | None:
        """The tenant serving ``host`` (lower-case, no port); ``*`` catches the rest."""
        return self.host_map.get(host) or self.host_map.get("*")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, serving: bool = True) -> Config:
        return load(os.environ if env is None else env, serving)


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
    cookie_name = env.get("ANTEROOM_COOKIE_NAME", "anteroom")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", cookie_name):
        raise ConfigError(
            f"ANTEROOM_COOKIE_NAME: letters, digits, '_' or '-' only, got {cookie_name!r}"
        )
    log_level = env.get("ANTEROOM_LOG_LEVEL", "info").lower()
    if log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(
            f"ANTEROOM_LOG_LEVEL: one of debug, info, warning, error, got {log_level!r}"
        )
    log_format = env.get("ANTEROOM_LOG_FORMAT", "json").lower()
    if log_format not in ("json", "text"):
        raise ConfigError(f"ANTEROOM_LOG_FORMAT: json or text, got {log_format!r}")

    defaults = _queue_settings_from_env(env)
    path = env.get("ANTEROOM_CONFIG", "")
    tenants = _tenants_from_file(path, defaults) if path else ()
    if not tenants:
        tenants = (Tenant(name="default", hosts=("*",), queue_defaults=defaults),)

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
        backlog=_int("ANTEROOM_BACKLOG", env.get("ANTEROOM_BACKLOG", "4096"), 1, 65535),
        shutdown_timeout=_float(env, "ANTEROOM_SHUTDOWN_TIMEOUT", 10.0, 0.5, 300.0),
        demo=demo,
    )


def _queue_settings_from_env(env: Mapping[str, str]) -> QueueSettings:
    values: dict[str, Any] = {}
    for name, (var, minimum) in _QUEUE_ENV.items():
        if var in env:
            values[name] = _int(var, env[var], minimum)
    if "ANTEROOM_MODE" in env:
        values["mode"] = _choice("ANTEROOM_MODE", env["ANTEROOM_MODE"], MODES)
    if "ANTEROOM_ON_REDIS_ERROR" in env:
        values["on_redis_error"] = _choice(
            "ANTEROOM_ON_REDIS_ERROR", env["ANTEROOM_ON_REDIS_ERROR"], ON_REDIS_ERROR
        )
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
                language=_str(t, "language", "en", where),
                title=_str(t, "title", "", where),
                waiting_url=_str(t, "waiting_url", "", where),
            )
        )
    return tuple(tenants)


def _queue_table(doc: object, base: QueueSettings, where: str) -> QueueSettings:
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: must be a table")
    known = {f.name for f in fields(QueueSettings)}
    values: dict[str, Any] = {}
    for key, value in doc.items():
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown setting")
        if key == "mode":
            values[key] = _choice(f"{where}.mode", value, MODES)
        elif key == "on_redis_error":
            values[key] = _choice(f"{where}.on_redis_error", value, ON_REDIS_ERROR)
        else:
            values[key] = _int(f"{where}.{key}", value, _QUEUE_ENV[key][1])
    return _checked(replace(base, **values), where)


def _checked(s: QueueSettings, where: str) -> QueueSettings:
    if s.abandon_after < 10:
        raise ConfigError(f"{where}: abandon_after must be at least 10 seconds")
    return s


def _placeholder(secret: bytes) -> bool:
    return PLACEHOLDER_SECRET_RE.search(secret.decode(errors="replace")) is not None


def _workers(value: str) -> int:
    if value.strip().lower() == "auto":
        return os.cpu_count() or 1
    return _int("ANTEROOM_WORKERS", value, 1, 256)


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
