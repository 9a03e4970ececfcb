"""A visitor with its own cookie, talking HTTP to nginx on loopback."""

from __future__ import annotations

from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any

import aiohttp

COOKIE = "anteroom"


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
    cookie: str | None = None
    history: list[Reply] = field(default_factory=list)

    async def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, **kw: Any
    ) -> Reply:
        h = {"Host": self.host, **(headers or {})}
        if self.cookie is not None and "Cookie" not in h:
            h["Cookie"] = f"{COOKIE}={self.cookie}"
        async with self.http.request(
            method, self.base + path, headers=h, allow_redirects=False, **kw
        ) as r:
            reply = Reply(
                r.status, dict(r.headers), r.headers.getall("Set-Cookie", []), await r.text()
            )
        for raw in reply.set_cookies:
            c: SimpleCookie = SimpleCookie()
            c.load(raw)
            if COOKIE in c:
                value = c[COOKIE].value
                self.cookie = value or None
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
