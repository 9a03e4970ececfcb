"""docs/openapi-admin.yaml against the admin app, in process on the real Redis: every
route is documented and every documented operation is, and each operation refuses
the roles below the one the document names (403, nothing changed)."""

from __future__ import annotations

import hashlib
import logging
import re
import time
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


async def sign_in(client: Client, role: str) -> tuple[dict[str, str], str]:
    """The dashboard session of ``role``: its cookie header and its form token."""
    r = await client.post("/login", data={"token": TOKENS[role]}, allow_redirects=False)
    cookie = r.headers["Set-Cookie"].split(";")[0]
    headers = {"Cookie": cookie}
    page = await (await client.get("/", headers=headers)).text()
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found
    return headers, found.group(1)


async def test_the_dashboard_sets_order_and_access_and_makes_codes_shown_once(
    admin_client: Client, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    bearer = {"Authorization": f"Bearer {TOKENS['operator']}"}
    base = "/api/queues/default/vip"
    r = await admin_client.patch(base, json={"create": True}, headers=bearer)
    assert r.status == 201
    cookie, csrf = await sign_in(admin_client, "operator")
    form = "/ui/queues/default/vip"

    async def post(**data: str) -> tuple[int, str]:
        r = await admin_client.post(
            form, data={"csrf": csrf, **data}, headers=cookie, allow_redirects=False
        )
        return r.status, await r.text()

    async def unused() -> int:
        return int(await redis.zcard("aq:{default:vip}:codes"))

    # order and access: drop-downs, the one validator, audited
    page = await (await admin_client.get("/", headers=cookie)).text()
    assert '<select name="order"' in page and '<select name="access"' in page
    status, page = await post(action="settings", order="lottery")
    assert status == 400 and "order" in page and "Nothing was changed" in page
    assert await post(action="settings", order="random", access="invite") == (303, "303: See Other")
    view = await (await admin_client.get(base, headers=bearer)).json()
    assert view["overrides"] == {"order": "random", "access": "invite"}
    audit = (await (await admin_client.get("/api/audit", headers=bearer)).json())["entries"]
    assert audit[0]["action"] == "set" and set(audit[0]["changes"]) == {"order", "access"}

    # codes: bad input answered on the page, nothing made
    for bad in (
        {"count": "0"},
        {"count": "x"},
        {"count": "2", "expires_hours": "0"},
        {"count": "1", "path": "//evil.example/"},
    ):
        status, page = await post(action="codes", **bad)
        assert status == 400 and "Nothing was changed" in page, bad
    assert await unused() == 0

    # made: the links shown once, only hashes kept, the audit and the log without them
    with caplog.at_level(logging.DEBUG):
        status, page = await post(
            action="codes", count="3", label="press", expires_hours="2", path="/vip/"
        )
    assert status == 201
    made = re.findall(r"/vip/\?anteroom_code=([A-Za-z0-9_-]{22})", page)
    assert len(made) == 3 and "Unused codes of this queue now: <strong>3</strong>" in page
    kept = str(await redis.zrange("aq:{default:vip}:codes", 0, -1, withscores=True))
    audit = (await (await admin_client.get("/api/audit", headers=bearer)).json())["entries"]
    board = await (await admin_client.get("/", headers=cookie)).text()
    for code in made:
        assert code not in kept and code not in str(audit) and code not in board
        assert code not in caplog.text
    assert (audit[0]["action"], audit[0]["count"], audit[0]["by"]) == ("codes", 3, "operator")
    expiry = await redis.zscore(
        "aq:{default:vip}:codes", hashlib.sha256(made[0].encode()).hexdigest()
    )
    assert expiry is not None and 2 * 3600 - 60 < expiry - time.time() <= 2 * 3600
    assert "<strong>3</strong> unused" in board

    # a viewer sees the count only, and may not make or withdraw
    viewer, viewer_csrf = await sign_in(admin_client, "viewer")
    seen = await (await admin_client.get("/", headers=viewer)).text()
    assert "<strong>3</strong> unused" in seen and "make-codes" not in seen
    for action in ("codes", "withdraw_codes"):
        r = await admin_client.post(
            form, data={"csrf": viewer_csrf, "action": action, "count": "1"}, headers=viewer
        )
        assert r.status == 403
    assert await unused() == 3

    # withdrawing asks first; Yes withdraws them all
    status, page = await post(action="withdraw_codes")
    assert status == 200 and "Yes, withdraw them" in page and "<strong>3</strong>" in page
    assert await unused() == 3
    assert await post(action="withdraw_codes", confirm="yes") == (303, "303: See Other")
    assert await unused() == 0
    audit = (await (await admin_client.get("/api/audit", headers=bearer)).json())["entries"]
    assert (audit[0]["action"], audit[0]["withdrawn"]) == ("withdraw codes", 3)
