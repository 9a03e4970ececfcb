"""A visitor with its own cookie, talking HTTP to nginx on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any

import aiohttp

COOKIE = "anteroom"  # prefix: one cookie per queue, "anteroom_<queue>"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    set_cookies: list[str]
    text: str

    def json(self) -> Any:
        import json

        return json.loads(self.text)

    @property
    def location(self) -> str | None:
        return self.headers.get("Location")


@dataclass
class Visitor:
    http: aiohttp.ClientSession
    base: str
    host: str = "127.0.0.1"
    cookies: dict[str, str] = field(default_factory=dict)  # anteroom_<queue> -> token
    last: str | None = None  # the cookie name set most recently
    history: list[Reply] = field(default_factory=list)

    @property
    def cookie(self) -> str | None:
        """The token most recently given (the only one, for a single-queue visit)."""
        return self.cookies.get(self.last) if self.last else None

    def hold(self, queue: str, token: str | None) -> None:
        """Present ``token`` as this visitor's cookie for ``queue`` (a replay, a forgery)."""
        self.last = f"{COOKIE}_{queue}"
        if token is None:
            self.cookies.pop(self.last, None)
        else:
            self.cookies[self.last] = token

    async def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, **kw: Any
    ) -> Reply:
        h = {"Host": self.host, **(headers or {})}
        if self.cookies and "Cookie" not in h:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        async with self.http.request(
            method, self.base + path, headers=h, allow_redirects=False, **kw
        ) as r:
            reply = Reply(
                r.status, dict(r.headers), r.headers.getall("Set-Cookie", []), await r.text()
            )
        for raw in reply.set_cookies:
            c: SimpleCookie = SimpleCookie()
            c.load(raw)
            for name, morsel in c.items():
                # anteroom_<queue>; "anteroom__pass" is nginx's fast pass, kept apart
                if name.startswith(COOKIE + "_") and not name.startswith(COOKIE + "__"):
                    self.last = name
                    if morsel.value:
                        self.cookies[name] = morsel.value
                    else:
                        self.cookies.pop(name, None)
        self.history.append(reply)
        return reply

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> Reply:
        return await self.request("POST", path, **kw)

    async def status(self, return_to: str | None = None) -> dict[str, Any]:
        path = "/_anteroom/status"
        if return_to is not None:
            from urllib.parse import quote

            path += "?return_to=" + quote(return_to, safe="")
        r = await self.get(path)
        assert r.status == 200, (r.status, r.text)
        return dict(r.json())


def fields(token: str | None) -> tuple[str, int, str]:
    """(state, ticket, epoch) of a token: ``2|tenant|queue|state|ticket|sid|iat|exp|epoch|…``."""
    assert token
    parts = token.split("|")
    return parts[3], int(parts[4]), parts[8]


async def fill_then_queue(
    http: aiohttp.ClientSession, base: str, path: str, admitted: int, waiting: int
) -> tuple[list[Visitor], list[Visitor]]:
    """``admitted`` visitors let in on ``path`` (capacity full), then ``waiting``
    sent to the waiting page, each having polled once (present in line)."""
    inside = [Visitor(http, base) for _ in range(admitted)]
    for v in inside:
        assert (await v.get(path)).status == 200
    line = [Visitor(http, base) for _ in range(waiting)]
    for v in line:
        assert (await v.get(path)).status == 302
        assert (await v.status())["state"] == "waiting"
    return inside, line


def client_from(address: str, force_close: bool = False) -> aiohttp.ClientSession:
    """An HTTP client whose connections come from ``address`` (a loopback address:
    nginx's $remote_addr). No cookie jar: each Visitor keeps its own cookie."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0), force_close=force_close)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())


@asynccontextmanager
async def clients_from(addresses: Iterable[str]) -> AsyncIterator[list[aiohttp.ClientSession]]:
    """One :func:`client_from` each address, closed after."""
    sessions = [client_from(address) for address in addresses]
    try:
        yield sessions
    finally:
        for s in sessions:
            await s.close()
