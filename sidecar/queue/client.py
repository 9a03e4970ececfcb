"""Redis Sentinel URLs: ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``.

redis-py speaks Sentinel but does not read such URLs; this turns one into a
client for the service's current primary that follows failovers by itself.
``rediss+sentinel://`` uses TLS to the primary and to the sentinels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

# What a Redis call raises when storage cannot answer (refused, reset, timed out,
# an error reply): the parts outside the engine catch this, never a subset.
StorageError: tuple[type[Exception], ...] = (RedisError, OSError)


def text(v: Any) -> str:
    """A Redis reply value (bytes from a client without decode_responses) as text."""
    return v.decode() if isinstance(v, bytes) else str(v)


SCHEMES = ("redis+sentinel", "rediss+sentinel")


class SentinelURLError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class SentinelURL:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False


def parse(url: str) -> SentinelURL:
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise SentinelURLError(f"expected {' or '.join(s + '://' for s in SCHEMES)}")
    creds, _, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if creds:
        user, sep, pw = creds.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if sep else None
    sentinels = []
    for item in hostlist.split(","):
        host, sep, port = item.rpartition(":")
        if not sep:
            host, port = item, "26379"
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise SentinelURLError(f"bad sentinel address {item!r}")
        sentinels.append((host, int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise SentinelURLError("the path is /SERVICE_NAME or /SERVICE_NAME/DB")
    db = path[1] if len(path) == 2 else "0"
    if not db.isdigit():
        raise SentinelURLError(f"the database is a number, got {db!r}")
    return SentinelURL(
        tuple(sentinels), path[0], int(db), username, password, parts.scheme == SCHEMES[1]
    )


def primary_client(url: str, **kwargs: Any) -> tuple[Redis, Sentinel]:
    """A client of the primary named by ``url`` and the Sentinel handle it asks
    (close both on shutdown). ``kwargs`` go to every connection."""
    u = parse(url)
    conn: dict[str, Any] = {**kwargs, "db": u.db, "username": u.username, "password": u.password}
    socket_kwargs = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
    if u.tls:
        conn["ssl"] = True
        socket_kwargs["ssl"] = True
    sentinel = Sentinel(list(u.sentinels), sentinel_kwargs=socket_kwargs, **conn)  # type: ignore[no-untyped-call]
    return sentinel.master_for(u.service), sentinel
