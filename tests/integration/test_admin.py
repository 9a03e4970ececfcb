"""The admin listener on a running stack: two sidecar processes, real nginx and Redis."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from devstack.stack import ROOT, Stack
from sidecar.queue.keys import queue_keys
from tests.conftest import eventually, make_stack
from tests.visitors import Visitor

pytestmark = pytest.mark.integration

OLD = "old-admin-token-0123456789"
NEW = "new-admin-token-9876543210"
VIEWER = "viewer-token-0123456789abc"
OPERATOR = "operator-token-0123456789ab"


@pytest.fixture(scope="module")
def admin_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # two tokens during a rotation; the first sidecar has the admin listener
    s = make_stack(
        tmp_path_factory.mktemp("admin"),
        replicas=1,
        ANTEROOM_ADMIN_TOKEN=f"old:{OLD},new:{NEW},eve:viewer:{VIEWER},olga:operator:{OPERATOR}",
    )
    yield s
    s.stop()


async def api(
    http: aiohttp.ClientSession,
    stack: Stack,
    method: str,
    path: str,
    token: str | None = NEW,
    **kw: Any,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(method, stack.admin_url + path, headers=headers, **kw) as r:
        if r.content_type == "application/json":
            return r.status, await r.json()
        return r.status, await r.text()


def sid(v: Visitor) -> str:
    assert v.cookie
    return v.cookie.split("|")[5]


async def auth_on_every_process(
    http: aiohttp.ClientSession, stack: Stack, queue: str, cookie: str | None = None
) -> list[int]:
    """The gate's answer from each sidecar process, asked directly."""
    statuses = []
    for port in (stack.sidecar_port, *stack.replica_ports):
        headers = {"Host": "127.0.0.1", "X-Anteroom-Queue": queue, "X-Original-URI": f"/q/{queue}/"}
        if cookie:
            headers["Cookie"] = f"anteroom_{queue}={cookie}"
        async with http.get(f"http://127.0.0.1:{port}/_anteroom/auth", headers=headers) as r:
            # a pass that comes with a new cookie is a new visitor, not this session
            passed_as_is = r.status == 204 and "Set-Cookie" not in r.headers
            statuses.append(r.status if not cookie or passed_as_is else 0)
    return statuses


async def test_every_admin_route_needs_a_token_old_and_new_work(
    admin_stack: Stack, http: aiohttp.ClientSession
) -> None:
    # the token first: an unknown queue is a 404 only to someone who may ask
    for path, ok in (
        ("/api/queues", 200),
        ("/api/audit", 200),
        ("/metrics", 200),
        ("/api/queues/acme/shop", 404),
    ):
        assert (await api(http, admin_stack, "GET", path, token=None))[0] == 401
        assert (await api(http, admin_stack, "GET", path, token="wrong-token-0123456789"))[0] == 401
        assert (await api(http, admin_stack, "GET", path, token=OLD))[0] == ok
        assert (await api(http, admin_stack, "GET", path, token=NEW))[0] == ok
    # a Bearer token is not a dashboard session, and vice versa
    async with http.get(admin_stack.admin_url + "/", allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"] == "/login"
    status, _ = await api(
        http, admin_stack, "PATCH", "/api/queues/acme/auth", token=None, json={"capacity": 9}
    )
    assert status == 401


async def test_nothing_admin_on_the_public_site(
    admin_stack: Stack, http: aiohttp.ClientSession
) -> None:
    v = Visitor(http, admin_stack.url)
    paths = ["/api/queues", "/metrics", "/login", "/ui/data", "/api/audit"]
    paths += ["/_anteroom" + p for p in paths] + ["/_anteroom/admin/"]
    for path in paths:
        r = await v.get(path, headers={"Authorization": f"Bearer {NEW}"})
        assert r.status == 404, (path, r.status)
        assert "anteroom_" not in r.text and "queues" not in r.text


async def test_patch_reaches_both_processes_within_a_second(
    admin_stack: Stack, http: aiohttp.ClientSession
) -> None:
    queue = "patched"
    first, second, third = (Visitor(http, admin_stack.url) for _ in range(3))
    assert (await first.get(f"/q/{queue}/")).status == 200
    assert (await second.get(f"/q/{queue}/")).status == 200
    assert (await third.get(f"/q/{queue}/")).status == 302  # capacity 2 is full

    status, view = await api(
        http, admin_stack, "PATCH", f"/api/queues/acme/{queue}", json={"capacity": 3}
    )
    assert status == 200 and view["settings"]["capacity"] == 3
    assert view["overrides"] == {"capacity": 3} and view["configured"]["capacity"] == 2

    async def third_admitted() -> bool:
        return bool((await third.status())["state"] == "admitted")

    await eventually(third_admitted, within=1.0, interval=0.05)

    # paused: neither process lets a newcomer in, within a second
    await api(http, admin_stack, "PATCH", f"/api/queues/acme/{queue}", json={"mode": "paused"})

    async def both_refuse_newcomers() -> bool:
        return await auth_on_every_process(http, admin_stack, queue) == [401, 401]

    await eventually(both_refuse_newcomers, within=1.0, interval=0.05)
    # DELETE …/overrides returns the queue to its configuration: on, capacity 2
    status, view = await api(http, admin_stack, "DELETE", f"/api/queues/acme/{queue}/overrides")
    assert status == 200 and view["overrides"] == {} and view["settings"]["mode"] == "on"


async def test_invalid_values_are_refused_whole(
    admin_stack: Stack, http: aiohttp.ClientSession
) -> None:
    path = "/api/queues/acme/strict"
    status, body = await api(
        http,
        admin_stack,
        "PATCH",
        path,
        json={"capacity": 7, "abandon_after": 5, "mode": "sometimes", "colour": "red", "create": 1},
    )
    assert status == 400 and "create" in body["error"]
    status, body = await api(
        http,
        admin_stack,
        "PATCH",
        path,
        json={
            "capacity": 7,
            "abandon_after": 5,
            "mode": "sometimes",
            "colour": "red",
            "create": True,
        },
    )
    assert status == 400 and body["error"] == "nothing was changed"
    assert set(body["fields"]) == {"abandon_after", "mode", "colour"}
    assert "10" in body["fields"]["abandon_after"]
    # refused whole: not even created
    assert (await api(http, admin_stack, "GET", path))[0] == 404
    status, view = await api(http, admin_stack, "PATCH", path, json={"create": True})
    assert status == 201 and view["settings"]["capacity"] == 2 and view["overrides"] == {}
    for bad in (b"not json", b"[1, 2]", b'{"capacity": true}', b'{"capacity": -1}'):
        status, body = await api(http, admin_stack, "PATCH", path, data=bad)
        assert status == 400, bad
    assert (await api(http, admin_stack, "GET", "/api/queues/nobody/strict"))[0] == 404
    assert (await api(http, admin_stack, "DELETE", path + "/overrides?keys=colour"))[0] == 400
    # the old spelling of a reset never deletes a queue
    assert (await api(http, admin_stack, "DELETE", path + "?keys=capacity"))[0] == 400


async def test_changes_are_audited_by_token_name(
    admin_stack: Stack, http: aiohttp.ClientSession
) -> None:
    path = "/api/queues/acme/audited"
    await api(http, admin_stack, "PATCH", path, token=OLD, json={"create": True})
    await api(http, admin_stack, "PATCH", path, token=OLD, json={"admit_per_minute": 120})
    await api(
        http, admin_stack, "DELETE", path + "/overrides?keys=admit_per_minute", token=OPERATOR
    )
    status, body = await api(http, admin_stack, "GET", "/api/audit?limit=50")
    assert status == 200
    mine = [e for e in body["entries"] if e.get("queue") == "audited"]
    assert [(e["by"], e["role"], e["action"], e["changes"]) for e in mine] == [
        ("olga", "operator", "reset", {"admit_per_minute": [120, 0]}),
        ("old", "admin", "set", {"admit_per_minute": [0, 120]}),
        ("old", "admin", "create", {}),
    ]
    assert OLD not in str(body) and NEW not in str(body)


async def test_revoke_refuses_the_session_on_every_process(
    admin_stack: Stack, http: aiohttp.ClientSession
) -> None:
    queue = "revoked"
    v = Visitor(http, admin_stack.url)
    assert (await v.get(f"/q/{queue}/")).status == 200
    assert v.cookie
    _, listed = await api(http, admin_stack, "GET", f"/api/queues/acme/{queue}/sessions")
    assert sid(v) in [s["session"] for s in listed["sessions"]]

    status, body = await api(
        http, admin_stack, "DELETE", f"/api/queues/acme/{queue}/sessions/{sid(v)}"
    )
    assert status == 200 and body == {"revoked": sid(v), "freed": True}
    revoked = v.cookie
    await v.get(f"/q/{queue}/")
    assert sid(v) != body["revoked"]  # in again only as a new visitor, through the line

    async def refused_everywhere() -> bool:
        # no process lets the revoked session pass as itself
        statuses = await auth_on_every_process(http, admin_stack, queue, revoked)
        return statuses == [0, 0]

    await eventually(refused_everywhere, within=1.5, interval=0.05)
    bad = await api(http, admin_stack, "DELETE", f"/api/queues/acme/{queue}/sessions/a%20b")
    assert bad[0] == 400


async def test_drain_admits_nobody_new_while_sessions_go_on(
    admin_stack: Stack, http: aiohttp.ClientSession
) -> None:
    queue = "drained"
    shopper, newcomer = Visitor(http, admin_stack.url), Visitor(http, admin_stack.url)
    assert (await shopper.get(f"/q/{queue}/")).status == 200
    status, view = await api(http, admin_stack, "POST", f"/api/queues/acme/{queue}/drain")
    assert status == 200 and view["draining"] and view["mode"] == "paused"

    async def newcomers_wait() -> bool:
        return await auth_on_every_process(http, admin_stack, queue) == [401, 401]

    await eventually(newcomers_wait, within=1.0, interval=0.05)
    assert (await newcomer.get(f"/q/{queue}/")).status == 302
    assert (await shopper.get(f"/q/{queue}/")).status == 200  # still shopping
    # resuming ends the drain; with room for everyone (the probes joined too) the
    # newcomer is let in
    _, view = await api(
        http, admin_stack, "PATCH", f"/api/queues/acme/{queue}", json={"mode": "on", "capacity": 9}
    )
    assert not view["draining"]

    async def newcomer_in() -> bool:
        return bool((await newcomer.status())["state"] == "admitted")

    await eventually(newcomer_in, within=2.0)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


async def test_metrics_gauges_show_the_shared_state(
    admin_stack: Stack, http: aiohttp.ClientSession
) -> None:
    queue = "gauged"
    crowd = [Visitor(http, admin_stack.url) for _ in range(4)]
    for v in crowd:  # nginx spreads them over both processes
        await v.get(f"/q/{queue}/")
    gauges = frozenset({("tenant", "acme"), ("queue", queue)})

    async def gauges_agree() -> dict[Any, float] | None:
        status, text = await api(http, admin_stack, "GET", "/metrics")
        assert status == 200
        m = samples(text)
        want = {"active": 2, "waiting": 2, "tickets": 4, "capacity": 2}
        got = {k: m.get((f"anteroom_queue_{k}", gauges)) for k in want}
        return m if got == want else None

    m = await eventually(gauges_agree, within=2.0)
    on = frozenset({("tenant", "acme"), ("queue", queue), ("mode", "on")})
    assert m[("anteroom_queue_mode", on)] == 1
    assert any(name == "anteroom_redis_call_duration_seconds_count" for name, _ in m)


def cli(stack: Stack, *args: str, token: str = NEW) -> subprocess.CompletedProcess[str]:
    """The CLI as an operator runs it: its own process, the admin URL and a token."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "ANTEROOM_ADMIN_URL": stack.admin_url,
        "ANTEROOM_ADMIN_TOKEN": token,
    }
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "queues", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


async def test_cli_round_trips_a_setting(admin_stack: Stack, http: aiohttp.ClientSession) -> None:
    # a typo never makes a queue: unknown names are refused unless created
    r = cli(admin_stack, "set", "acme", "cli", "capacity=9", "mode=queue-all")
    assert r.returncode == 2 and "404: unknown queue acme/cli" in r.stderr
    assert (await api(http, admin_stack, "GET", "/api/queues/acme/cli"))[0] == 404
    r = cli(admin_stack, "set", "acme", "cli", "capacity=9", "mode=queue-all", "--create")
    assert r.returncode == 0, r.stderr
    assert "capacity              9  (override; configured 2)" in r.stdout
    _, view = await api(http, admin_stack, "GET", "/api/queues/acme/cli")
    assert view["settings"]["capacity"] == 9 and view["mode"] == "queue-all"
    r = cli(admin_stack, "list")
    assert r.returncode == 0 and "acme/cli" in r.stdout and "queue-all" in r.stdout
    r = cli(admin_stack, "reset", "acme", "cli", "capacity")
    assert r.returncode == 0 and "capacity              2\n" in r.stdout
    r = cli(admin_stack, "show", "acme", "cli")
    assert "mode                  queue-all  (override; configured on)" in r.stdout
    # the same validation as the API: refused whole, one line, status 2
    r = cli(admin_stack, "set", "acme", "cli", "capacity=5", "abandon_after=3")
    assert r.returncode == 2 and "abandon_after" in r.stderr and "Traceback" not in r.stderr
    assert cli(admin_stack, "set", "acme", "cli", "capacity").returncode == 2
    assert cli(admin_stack, "list", token="").returncode == 2
    wrong = cli(admin_stack, "list", token="wrong-token-0123456789")
    assert wrong.returncode == 1 and "401" in wrong.stderr
    _, view = await api(http, admin_stack, "GET", "/api/queues/acme/cli")
    assert view["settings"]["capacity"] == 2
    audit = cli(admin_stack, "audit", "--limit", "5")
    assert "new (admin)  set acme/cli  capacity 9 -> 5" not in audit.stdout  # refused whole
    assert "new (admin)  create acme/cli  capacity 2 -> 9, mode on -> queue-all" in audit.stdout
    # a viewer's CLI reads, and is refused a change with the role it needs
    assert cli(admin_stack, "list", token=f"eve:viewer:{VIEWER}").returncode == 0
    r = cli(admin_stack, "set", "acme", "cli", "capacity=1", token=f"eve:viewer:{VIEWER}")
    assert r.returncode == 1 and "403: the viewer role may not set: it needs operator" in r.stderr
    r = cli(admin_stack, "forget", "acme", "cli")
    assert r.returncode == 0 and "forgot acme/cli" in r.stdout, r.stderr
    r = cli(admin_stack, "show", "acme", "cli")
    assert r.returncode == 2 and "unknown queue" in r.stderr


GRAFANA = ROOT / "deploy" / "grafana" / "anteroom.json"


def queried_names(dashboard: dict[str, Any]) -> set[str]:
    """Every anteroom_* name in the dashboard's queries (panels and variables)."""
    exprs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("expr", "query", "definition") and isinstance(v, str):
                    exprs.append(v)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(dashboard)
    return {name for e in exprs for name in re.findall(r"\banteroom_[a-z_]+\b", e)}


async def test_grafana_dashboard_queries_only_exported_names(
    admin_stack: Stack, http: aiohttp.ClientSession
) -> None:
    dashboard = json.loads(GRAFANA.read_text())
    assert dashboard["uid"] == "anteroom" and dashboard["panels"]
    names = queried_names(dashboard)
    assert len(names) >= 10
    await Visitor(http, admin_stack.url).get("/q/grafana/")  # a queue, so gauges have samples
    status, text = await api(http, admin_stack, "GET", "/metrics")
    assert status == 200
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    exported |= {f.name for f in text_string_to_metric_families(text)}
    for family in text_string_to_metric_families(text):  # histograms: their series names
        if family.type == "histogram":
            exported |= {family.name + s for s in ("_bucket", "_sum", "_count")}
        if family.type == "counter":
            exported.add(family.name + "_total")
    assert names <= exported, names - exported


async def test_roles_allow_what_they_name_and_refuse_the_rest(
    admin_stack: Stack, http: aiohttp.ClientSession
) -> None:
    queue = "roles"
    path = f"/api/queues/acme/{queue}"
    v = Visitor(http, admin_stack.url)
    assert (await v.get(f"/q/{queue}/")).status == 200
    for read in ("/api/queues", path, path + "/sessions", "/api/audit", "/metrics"):
        assert (await api(http, admin_stack, "GET", read, token=VIEWER))[0] == 200, read
    changes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("PATCH", path, {"capacity": 9}),
        ("PATCH", "/api/queues/acme/roles-new", {"create": True}),
        ("POST", path + "/drain", None),
        ("DELETE", path + "/overrides", None),
        ("DELETE", f"{path}/sessions/{sid(v)}", None),
        ("DELETE", path + "?force=true", None),
    ]
    operator_may = {"PATCH", "POST", "DELETE overrides"}
    for method, where, body in changes:
        status, answer = await api(http, admin_stack, method, where, token=VIEWER, json=body)
        assert status == 403 and answer["role"] == "viewer", (method, where, answer)
        kind = method if method != "DELETE" else f"DELETE {where.rsplit('/', 1)[-1]}"
        if kind not in operator_may:
            status, answer = await api(http, admin_stack, method, where, token=OPERATOR, json=body)
            assert status == 403 and answer["needs"] == "admin", (method, where, answer)
    # nothing changed by any refusal
    _, view = await api(http, admin_stack, "GET", path, token=VIEWER)
    assert view["overrides"] == {} and view["active"] == 1 and not view["draining"]
    assert (await api(http, admin_stack, "GET", "/api/queues/acme/roles-new"))[0] == 404
    # what each may do, audited with the token's name and role
    assert (await api(http, admin_stack, "PATCH", path, token=OPERATOR, json={"capacity": 9}))[
        0
    ] == 200
    status, body = await api(http, admin_stack, "DELETE", f"{path}/sessions/{sid(v)}", token=OLD)
    assert status == 200 and body["freed"]
    _, audit = await api(http, admin_stack, "GET", "/api/audit?limit=20", token=VIEWER)
    mine = [(e["by"], e["role"], e["action"]) for e in audit["entries"] if e.get("queue") == queue]
    assert mine == [("old", "admin", "revoke"), ("olga", "operator", "set")]
    # the dashboard: a viewer signs in and sees no forms; its posts are refused
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as viewer:
        async with viewer.post(admin_stack.admin_url + "/login", data={"token": VIEWER}) as r:
            page = await r.text()
        assert r.status == 200 and f'data-queue="acme/{queue}"' in page
        assert "(viewer)" in page and 'name="action"' not in page
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        form = {"csrf": csrf.group(1), "action": "paused", "confirm": "yes"}
        async with viewer.post(f"{admin_stack.admin_url}/ui/queues/acme/{queue}", data=form) as r:
            assert r.status == 403
    _, view = await api(http, admin_stack, "GET", path)
    assert view["mode"] == "on"


async def test_forget_removes_a_queue_from_every_replica_and_redis(
    admin_stack: Stack, http: aiohttp.ClientSession
) -> None:
    queue = "chekout"  # a typo, visited on both processes
    path = f"/api/queues/acme/{queue}"
    assert await auth_on_every_process(http, admin_stack, queue) == [204, 204]
    status, body = await api(http, admin_stack, "DELETE", path)
    assert status == 409 and "2 active" in body["error"]  # people inside: not without force
    status, body = await api(http, admin_stack, "DELETE", path + "?force=true")
    assert status == 200 and body["forgotten"] == f"acme/{queue}" and body["keys"] >= 5
    redis = Redis.from_url(admin_stack.redis_url)
    try:

        async def listed() -> bool:
            _, queues = await api(http, admin_stack, "GET", "/api/queues")
            _, metrics = await api(http, admin_stack, "GET", "/metrics")
            names = {q["queue"] for q in queues["queues"]}
            return queue not in names and f'queue="{queue}"' not in metrics

        async def no_keys() -> bool:
            """Nothing but the epoch left as a tombstone, and it expires."""
            keys = [k async for k in redis.scan_iter(match=f"aq:{{acme:{queue}}}:*")]
            epoch = f"aq:{{acme:{queue}}}:epoch"
            return [k.decode() for k in keys] == [epoch] and await redis.ttl(epoch) > 0

        # the answer comes once every process has stopped ticking it and its keys are gone
        assert await listed() and await no_keys()
        await asyncio.sleep(1.5)  # and nothing writes it again (no recovery, no history)
        assert await no_keys() and await listed()
    finally:
        await redis.aclose()
    assert (await api(http, admin_stack, "GET", path))[0] == 404
    _, audit = await api(http, admin_stack, "GET", "/api/audit?limit=5")
    (entry,) = [e for e in audit["entries"] if e.get("queue") == queue]
    assert entry["action"] == "forget" and entry["present"] == [0, 2, 0]
    # a visitor nginx still sends there brings it back, as a new line
    assert (await Visitor(http, admin_stack.url).get(f"/q/{queue}/")).status == 200


async def test_a_forgotten_queue_visited_again_is_a_new_line_never_a_recovery(
    admin_stack: Stack, http: aiohttp.ClientSession
) -> None:
    """A visitor arriving while the forget waits makes a process follow the queue
    again and remember its epoch; once the keys are gone its next join must not take
    the forget for Redis losing the queue (tickets jumping by 10,000, the line held
    still for seconds): the forget leaves a fresh epoch, old tokens are just stale."""
    queue = "retired"
    path = f"/api/queues/acme/{queue}"
    assert await auth_on_every_process(http, admin_stack, queue) == [204, 204]
    forgetting = asyncio.create_task(api(http, admin_stack, "DELETE", path + "?force=true"))
    await asyncio.sleep(1.5)  # every process has dropped it; then hears of it again
    assert await auth_on_every_process(http, admin_stack, queue) == [401, 401]  # full
    status, _ = await forgetting
    assert status == 200
    await asyncio.sleep(0.5)
    # a newcomer on each process: admitted at once, in a line numbered afresh
    assert await auth_on_every_process(http, admin_stack, queue) == [204, 204]
    redis = Redis.from_url(admin_stack.redis_url)
    try:
        keys = queue_keys("acme", queue)
        assert not await redis.exists(keys.recovery)
        assert int(await redis.get(keys.tickets) or 0) <= 10  # numbered afresh
    finally:
        await redis.aclose()


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A process of the origin's, with only ``env`` (and PATH) set."""
    full = {**env, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return subprocess.run(args, env=full, capture_output=True, text=True, timeout=30)


def cookie_header(v: Visitor) -> str:
    """The Cookie header the origin receives from ``v``: the site's own cookies too."""
    return "; ".join(["theme=dark", *(f"{k}={t}" for k, t in v.cookies.items())])


def doc_block(marker: str) -> str:
    """The code block after ``<!-- tested: MARKER … -->`` in docs/admin.md, as written."""
    text = (ROOT / "docs" / "admin.md").read_text()
    found = re.search(rf"<!-- tested: {marker} .*?-->\n```\w+\n(.*?)```", text, re.S)
    assert found, marker
    return found.group(1)


async def test_the_origin_ends_a_session_as_the_docs_say(
    admin_stack: Stack, http: aiohttp.ClientSession
) -> None:
    queue = "bought"
    buyers = [Visitor(http, admin_stack.url) for _ in range(2)]
    for b in buyers:
        assert (await b.get(f"/q/{queue}/")).status == 200  # capacity 2: both inside
    waiter = Visitor(http, admin_stack.url)
    assert (await waiter.get(f"/q/{queue}/")).status == 302
    env = {"ANTEROOM_SITE": admin_stack.url, "SITE_HOST": "127.0.0.1", "QUEUE": queue}

    # Python: the function from the docs, run in its own process as an origin would
    script = doc_block("origin-leave-python") + (
        f"\nprint(end_session({json.dumps(cookie_header(buyers[0]))}, {json.dumps(queue)}))\n"
    )
    r = run([sys.executable, "-c", script], env)
    assert (r.returncode, r.stdout.strip()) == (0, "True"), r.stderr

    async def waiter_in() -> bool:
        return bool((await waiter.status())["state"] == "admitted")

    await eventually(waiter_in, within=2.0)  # the freed slot went to the next in line
    # the ended session no longer passes as itself: its holder would queue again
    ended = buyers[0].cookie
    assert await auth_on_every_process(http, admin_stack, queue, ended) == [0, 0]

    # curl: the block from the docs, as written, in bash
    r = run(
        ["bash", "-c", doc_block("origin-leave-curl")],
        {**env, "VISITOR_COOKIES": cookie_header(buyers[1])},
    )
    assert r.returncode == 0 and json.loads(r.stdout) == {"state": "left", "freed": True}, r
    _, listed = await api(http, admin_stack, "GET", f"/api/queues/acme/{queue}/sessions")
    sessions = {s["session"] for s in listed["sessions"]}
    assert sid(waiter) in sessions and not {sid(b) for b in buyers} & sessions


async def test_leave_the_line_goes_where_the_operator_chose(
    admin_stack: Stack, http: aiohttp.ClientSession
) -> None:
    queue = "leaving"
    for _ in range(2):  # the house full
        await Visitor(http, admin_stack.url).get(f"/q/{queue}/")
    status, _ = await api(
        http,
        admin_stack,
        "PATCH",
        f"/api/queues/acme/{queue}",
        json={"leave_to": "//evil.example/"},
    )
    assert status == 400
    status, view = await api(
        http, admin_stack, "PATCH", f"/api/queues/acme/{queue}", json={"leave_to": "/sold-out"}
    )
    assert status == 200 and view["overrides"] == {"leave_to": "/sold-out"}
    waiter = Visitor(http, admin_stack.url)
    assert (await waiter.get(f"/q/{queue}/")).status == 302
    page = await waiter.get("/_anteroom/waiting/acme/")
    form = re.search(r'<form method="post" action="([^"]+)" id="leave-form">', page.text)
    assert form is not None and form.group(1) == "/_anteroom/leave?via=page"
    # what the page's script sends (it adds the queue), through nginx; at once on both
    r = await waiter.post(f"{form.group(1)}&queue={queue}")
    assert (r.status, r.location) == (303, "/sold-out")
    assert waiter.cookie is None  # the place is given up
