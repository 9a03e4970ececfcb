"""docs/openapi-admin.yaml against the admin app, in process on the real Redis: every
route is documented and every documented operation is, and each operation refuses
the roles below the one the document names (403, nothing changed)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request
from redis.asyncio import Redis

from devstack.stack import ROOT
from sidecar.config import ROLES, load
from sidecar.control.admin import Admin
from sidecar.metrics import Metrics
from sidecar.queue import Engine, Refresher
from tests.conftest import FAST

DOC = yaml.safe_load((ROOT / "docs" / "openapi-admin.yaml").read_text())
METHODS = ("get", "put", "post", "patch", "delete")
TOKENS = {role: f"{role}-token-0123456789abcdef" for role in ROLES}
Client = TestClient[Request, Application]


def documented() -> dict[tuple[str, str], str]:
    """(METHOD, path) -> the least role, from the document."""
    return {
        (method.upper(), path): op["x-anteroom-role"]
        for path, item in DOC["paths"].items()
        for method, op in item.items()
        if method in METHODS
    }


@pytest.fixture
async def admin_client(redis: Redis, redis_url: str, aiohttp_client: Any) -> AsyncIterator[Client]:
    env = {
        **FAST,
        "ANTEROOM_REDIS_URL": redis_url,
        "ANTEROOM_ADMIN_TOKEN": ",".join(f"{r}:{r}:{t}" for r, t in TOKENS.items()),
    }
    config = load(env)
    client = Redis.from_url(redis_url)
    engine = Engine(client)
    refresher = Refresher(engine, 0.25, 1.0)
    app = Admin(config, engine, refresher, Metrics()).app()
    yield await aiohttp_client(app, cookie_jar=aiohttp.DummyCookieJar())
    await client.aclose()


def routes(client: Client) -> set[tuple[str, str]]:
    found = set()
    app = client.app
    assert app is not None
    for route in app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if (path.startswith("/api/") or path == "/metrics") and route.method != "HEAD":
            found.add((route.method, path))
    return found


async def test_every_admin_route_is_documented_and_nothing_else(admin_client: Client) -> None:
    assert routes(admin_client) == set(documented())


async def test_each_operation_refuses_the_roles_below_the_documented_one(
    admin_client: Client, redis: Redis
) -> None:
    async def call(method: str, path: str, role: str) -> tuple[int, Any]:
        concrete = path.format(tenant="default", queue="doc", sid="sid-1")
        body = {"capacity": 7} if method == "PATCH" else None
        headers = {"Authorization": f"Bearer {TOKENS[role]}"}
        r = await admin_client.request(method, concrete, json=body, headers=headers)
        return r.status, await r.json() if r.content_type == "application/json" else None

    status, _ = await call("PATCH", "/api/queues/default/doc", "admin")
    assert status == 404  # unknown: created only when asked
    r = await admin_client.patch(
        "/api/queues/default/doc",
        json={"create": True},
        headers={"Authorization": f"Bearer {TOKENS['operator']}"},
    )
    assert r.status == 201
    before = await redis.hgetall("aq:{default:doc}:settings")
    for (method, path), needs in sorted(documented().items()):
        for role in ROLES[: ROLES.index(needs)]:
            status, body = await call(method, path, role)
            assert status == 403, (method, path, role, status)
            assert (body["role"], body["needs"]) == (role, needs)
        if method == "GET":  # the least role may do it
            assert (await call(method, path, needs))[0] == 200, (method, path)
    assert await redis.hgetall("aq:{default:doc}:settings") == before  # nothing changed
    assert await redis.exists("aq:{default:doc}:settings")  # not forgotten


async def test_an_operator_makes_access_codes_shown_once_and_audited(
    admin_client: Client, redis: Redis
) -> None:
    def auth(role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKENS[role]}"}

    base = "/api/queues/default/vip"
    r = await admin_client.patch(
        base, json={"create": True, "access": "invite"}, headers=auth("operator")
    )
    assert r.status == 201 and (await r.json())["settings"]["access"] == "invite"
    body = {"count": 3, "label": "press", "expires_in": 3600, "path": "/vip/"}
    r = await admin_client.post(base + "/codes", json=body, headers=auth("operator"))
    made = await r.json()
    assert r.status == 201 and len(made["codes"]) == 3
    assert made["links"][0] == f"/vip/?anteroom_code={made['codes'][0]}"
    stored = str(await redis.zrange("aq:{default:vip}:codes", 0, -1))
    assert not any(c in stored for c in made["codes"])  # only their hashes
    r = await admin_client.get(base + "/codes", headers=auth("viewer"))
    assert (await r.json())["by_label"] == {"press": 3}
    (entry,) = [
        e
        for e in (await (await admin_client.get("/api/audit", headers=auth("viewer"))).json())[
            "entries"
        ]
        if e["action"] == "codes"
    ]
    assert (entry["count"], entry["label"], entry["by"]) == (3, "press", "operator")
    assert not any(c in str(entry) for c in made["codes"])
    for bad in (
        {"count": 0},
        {"count": 10_001},
        {"count": 2, "expires_in": 5},
        {"count": 1, "path": "//evil.example/"},
        {"count": 1, "label": "a\nb"},
        {"count": 1, "extra": 1},
    ):
        r = await admin_client.post(base + "/codes", json=bad, headers=auth("operator"))
        assert r.status == 400, bad
        assert "error" in await r.json()
    r = await admin_client.delete(base + "/codes?label=press", headers=auth("operator"))
    assert (await r.json())["withdrawn"] == 3
