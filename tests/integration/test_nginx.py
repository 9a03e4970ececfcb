"""The shipped nginx snippets on real nginx: each snippet alone and together under
``nginx -t``, and what they promise through a running stack (internal redirects,
cookies on errors, caching, path tricks, long URLs, odd headers, the fast pass)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from devstack.stack import NGINX_SNIPPETS, ROOT, Stack, free_port
from sidecar.queue.keys import queue_keys
from sidecar.web.fastpass import FastPass, nginx_conf
from tests.conftest import make_stack
from tests.visitors import COOKIE, Visitor

NGINX = shutil.which("nginx", path="/usr/sbin:/usr/bin:/usr/local/sbin")
PASS_SECRET = "fast-pass-secret-0123456789"
PASS_TTL = 2

needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")


# -- nginx -t ------------------------------------------------------------------

UPSTREAM = "upstream anteroom_sidecar { server 127.0.0.1:1; }"
SERVER = "server {{ listen 127.0.0.1:1; {body} }}"
GATED = "location /q/ { set $anteroom_queue q; include anteroom/gate.conf; return 200; }"
PAGES = "set $anteroom_pages /tmp; include anteroom/pages-local.conf;"
LIMITS = "limit_req_zone $binary_remote_addr zone=anteroom_public:10m rate=20r/s;"


def nginx_t(
    tmp_path: Path, http: str, fast_secret: bool = False
) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on ``http`` (http-context text), the snippets copied as an operator
    copies them; ``fast_secret`` adds a generated fastpass-secret.conf."""
    assert NGINX
    work = tmp_path / uuid.uuid4().hex[:8]
    (work / "anteroom").mkdir(parents=True)
    (work / "tmp").mkdir()
    for snippet in NGINX_SNIPPETS.glob("*.conf"):
        shutil.copy(snippet, work / "anteroom" / snippet.name)
    if fast_secret:
        conf = nginx_conf(FastPass(PASS_SECRET))
        (work / "anteroom" / "fastpass-secret.conf").write_text(conf)
    user = "user root;" if os.geteuid() == 0 else ""
    temp = " ".join(
        f"{kind}_temp_path {work}/tmp/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (work / "nginx.conf").write_text(
        f"{user}\npid {work}/nginx.pid;\nerror_log {work}/error.log;\n"
        f"events {{}}\nhttp {{\n{temp}\n{http}\n}}\n"
    )
    return subprocess.run(
        [NGINX, "-t", "-p", str(work), "-c", str(work / "nginx.conf")],
        capture_output=True,
        text=True,
    )


def limited_server_conf() -> str:
    """server.conf's commented limit_req example, switched on."""
    text = (NGINX_SNIPPETS / "server.conf").read_text()
    return re.sub(r"# (limit_req(_status)? .*;)", r"\1", text)


# every combination docs/nginx.md names, in roll-out order
VALID = {
    "http.conf alone": "include anteroom/http.conf;",
    "server.conf, no gated location yet": (
        f"include anteroom/http.conf; {UPSTREAM} "
        + SERVER.format(body="include anteroom/server.conf;")
    ),
    "pages only": "include anteroom/http.conf; " + SERVER.format(body=PAGES),
    "gated": (
        f"include anteroom/http.conf; {UPSTREAM} "
        + SERVER.format(body=f"{PAGES} include anteroom/server.conf; {GATED}")
    ),
    "gated, two servers": (
        f"include anteroom/http.conf; {UPSTREAM} "
        + SERVER.format(body=f"include anteroom/server.conf; {GATED}")
        + SERVER.format(body="server_name b; include anteroom/server.conf;")
    ),
}


@needs_nginx
@pytest.mark.parametrize("name", sorted(VALID))
def test_snippet_combination_passes_nginx_t(tmp_path: Path, name: str) -> None:
    r = nginx_t(tmp_path, VALID[name])
    assert r.returncode == 0, r.stderr
    assert "[warn]" not in r.stderr  # e.g. too many long variable names for the hash


@needs_nginx
def test_fast_pass_include_passes_nginx_t(tmp_path: Path) -> None:
    http = (
        f"include anteroom/http.conf; include anteroom/fastpass.conf; {UPSTREAM} "
        + SERVER.format(body=f"include anteroom/server.conf; {GATED}")
    )
    r = nginx_t(tmp_path, http, fast_secret=True)
    assert r.returncode == 0, r.stderr
    assert "[warn]" not in r.stderr
    missing = nginx_t(tmp_path, http)  # secret not generated yet: named
    assert missing.returncode and "fastpass-secret.conf" in missing.stderr


@needs_nginx
def test_limit_req_example_passes_nginx_t(tmp_path: Path) -> None:
    work = tmp_path / "limits"
    work.mkdir()
    (work / "server-limited.conf").write_text(limited_server_conf())
    assert "limit_req zone=anteroom_public" in limited_server_conf()
    http = f"include anteroom/http.conf; {LIMITS} {UPSTREAM} " + SERVER.format(
        body=f"include {work}/server-limited.conf; {GATED}"
    )
    r = nginx_t(tmp_path, http)
    assert r.returncode == 0, r.stderr


MISSING = {
    # what is left out -> (config, what the message names)
    "http.conf": (
        f"{UPSTREAM} " + SERVER.format(body="include anteroom/server.conf;"),
        '"anteroom_http_conf_included"',
    ),
    "server.conf": (
        "include anteroom/http.conf; " + SERVER.format(body=GATED),
        '"anteroom_server_conf_included"',
    ),
    "upstream": (
        "include anteroom/http.conf; " + SERVER.format(body="include anteroom/server.conf;"),
        '"anteroom_sidecar"',
    ),
    "anteroom_pages": (
        "include anteroom/http.conf; " + SERVER.format(body="include anteroom/pages-local.conf;"),
        '"anteroom_pages"',
    ),
}


@needs_nginx
@pytest.mark.parametrize("left_out", sorted(MISSING))
def test_a_missing_prerequisite_is_named(tmp_path: Path, left_out: str) -> None:
    http, named = MISSING[left_out]
    r = nginx_t(tmp_path, http)
    assert r.returncode != 0
    assert named in r.stderr, r.stderr


@needs_nginx
def test_the_site_in_docs_passes_nginx_t(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "nginx.md").read_text()
    (block,) = [b for b in re.findall(r"```nginx\n(.*?)```", doc, re.S) if "server {" in b]
    block = re.sub(r"listen 443 ssl", "listen 127.0.0.1:1", block)
    block = block.replace("server 127.0.0.1:8081;", "server 127.0.0.1:1;")
    pages = (
        f"{block}\nupstream app {{ server 127.0.0.1:1; }}\n"
        "limit_req_zone $binary_remote_addr zone=anteroom_public:10m rate=20r/s;"
    )
    r = nginx_t(tmp_path, pages)
    assert r.returncode == 0, r.stderr


# -- through a running stack ---------------------------------------------------


MICRO_CACHE = """
    proxy_cache_path {dir}/cache keys_zone=micro:1m max_size=10m;
    log_subrequest on;
    server {{
        listen 127.0.0.1:{port};
        server_name _;
        include anteroom/server.conf;
        # an operator's micro-cache: every answer, any status, for 10 s
        proxy_cache micro;
        proxy_cache_valid any 10s;
        location ~ ^/cached/(?<test_queue>[a-z0-9-]+)/ {{
            set $anteroom_queue $test_queue;
            include anteroom/gate.conf;
            proxy_pass http://origin;
        }}
    }}
"""


class Site:
    def __init__(self, stack: Stack, cache_port: int) -> None:
        self.stack = stack
        self.cache_url = f"http://127.0.0.1:{cache_port}"
        self.access_log = stack.workdir / "nginx" / "access.log"

    def sidecar_asks(self) -> int:
        """Auth subrequests nginx sent to a sidecar so far (not answered itself)."""
        lines = self.access_log.read_text().splitlines() if self.access_log.exists() else []
        return sum(
            1 for line in lines if "uri=/_anteroom/auth " in line and "upstream=- " not in line
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("nginx-site")
    cache_port = free_port()
    stack = make_stack(
        work,
        fast_pass=True,
        access_log=True,
        extra_http=MICRO_CACHE.format(dir=work, port=cache_port),
        ANTEROOM_FAST_PASS_SECRET=PASS_SECRET,
        ANTEROOM_FAST_PASS_TTL=str(PASS_TTL),
        ANTEROOM_SESSION_TTL="30",
    )
    yield Site(stack, cache_port)
    stack.stop()


@pytest.fixture
async def redis_of(site: Site) -> AsyncIterator[Redis]:
    client = Redis.from_url(site.stack.redis_url)
    yield client
    await client.aclose()


def queue() -> str:
    return "n" + uuid.uuid4().hex[:10]


async def tickets(redis: Redis, q: str) -> int:
    raw = await redis.get(queue_keys("acme", q).tickets)
    return int(raw or 0)


async def raw_request(url: str, request: bytes) -> tuple[int, bytes]:
    """Sends ``request`` as is (no client-side normalisation) and reads the answer."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data


def error_log(site: Site) -> str:
    return (site.stack.workdir / "nginx" / "error.log").read_text()


@pytest.mark.integration
@pytest.mark.parametrize(
    "path",
    ["/tickets/", "/tickets/friday/", "/tickets/saturday.html", "/tickets/missing.html"],
)
async def test_internal_redirects_are_one_visitor(site: Site, http, redis_of, path: str) -> None:
    """index, try_files $uri/ and =404 re-run the gate inside one request."""
    before = await tickets(redis_of, "tickets")
    v = Visitor(http, site.stack.url)
    r = await v.get(path)
    assert r.status == (404 if "missing" in path else 200)
    assert await tickets(redis_of, "tickets") == before + 1  # one place, not two
    assert len([c for c in r.set_cookies if c.startswith(f"{COOKIE}_")]) == 1
    assert v.cookie and "|tickets|a|" in v.cookie
    await v.post("/_anteroom/leave")  # the slot is free for the next case


@pytest.mark.integration
async def test_origin_error_keeps_the_cookie(site: Site, http, redis_of) -> None:
    """A 404 under a gated prefix still sets the cookie, so a retry is the same visitor."""
    v = Visitor(http, site.stack.url)
    first = await v.get("/tickets/nothing-here.html")
    assert first.status == 404 and v.cookie
    before = await tickets(redis_of, "tickets")
    again = await v.get("/tickets/nothing-here.html")
    assert again.status == 404
    assert await tickets(redis_of, "tickets") == before  # no new place
    await v.post("/_anteroom/leave")


@pytest.mark.integration
async def test_micro_cache_does_not_share_admission(site: Site, http) -> None:
    """Under a server-level proxy_cache, one admitted 204 must not admit everyone."""
    path = f"/cached/{queue()}/"
    first, second = Visitor(http, site.cache_url), Visitor(http, site.cache_url)
    assert (await first.get(path)).status == 200
    assert (await second.get(path)).status == 200
    assert (await first.get(path)).status == 200  # a 204 without cookie: cacheable
    late = Visitor(http, site.cache_url)
    r = await late.get(path)
    assert r.status == 302, "an auth answer was served from the cache"


TRICKS = [
    b"GET /shop/../ HTTP/1.1",
    b"GET /shop/%2e%2e/ HTTP/1.1",
    b"GET /shop/%2E%2E/ HTTP/1.1",
    b"GET /shop/.%2e/ HTTP/1.1",
    b"POST /shop/item/1/../../../ HTTP/1.1",
    b"GET /x/..%2fshop/ HTTP/1.1",
    b"GET /shop;x/ HTTP/1.1",
    b"GET /q/%2e%2e/shop/ HTTP/1.1",
    b"GET /x%5c..%5cshop/ HTTP/1.1",
]


@pytest.mark.integration
@pytest.mark.parametrize("line", TRICKS, ids=[t.decode() for t in TRICKS])
async def test_path_tricks_never_reach_a_gated_page(site: Site, line: bytes) -> None:
    status, data = await raw_request(
        site.stack.url, line + b"\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
    )
    assert status == 400, data[:300]
    assert b"You are in" not in data


@pytest.mark.integration
async def test_case_changed_prefix_is_not_the_gated_page(site: Site) -> None:
    status, data = await raw_request(
        site.stack.url, b"GET /SHOP/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    assert status == 404  # the origin has no /SHOP/ page (case-sensitive): not the shop
    assert b"You are in" not in data and b"anteroom_" not in data


@pytest.mark.integration
async def test_encoded_slashes_in_the_query_are_fine(site: Site, http) -> None:
    v = Visitor(http, site.stack.url)
    r = await v.get("/_anteroom/status?return_to=%2Fshop%2F")
    assert r.status == 200


@pytest.mark.integration
async def test_long_return_to_still_gets_a_place(site: Site, http) -> None:
    """~2 KB of return_to rides in both the cookie and the Location header."""
    q = queue()
    for _ in range(2):  # fill the capacity (2)
        assert (await Visitor(http, site.stack.url).get(f"/q/{q}/")).status == 200
    v = Visitor(http, site.stack.url)
    path = f"/q/{q}/" + "a" * 1000 + "?" + "b=%2F%3F" * 120
    r = await v.get(path)
    assert r.status == 302, r.status
    assert v.cookie and "|w|" in v.cookie
    assert "return_to=" in (r.location or "")
    assert "too big header" not in error_log(site)


@pytest.mark.integration
@pytest.mark.parametrize(
    "header",
    [
        b"X-Note: a\x01b",
        b"Cookie: anteroom=a\x01b",
        b"Accept: text/\x7fhtml",
        b"X-Note: " + b"z" * 6000,
    ],
    ids=["control", "cookie-control", "accept-del", "huge"],
)
async def test_odd_client_headers_get_a_normal_answer(site: Site, header: bytes) -> None:
    q = queue()
    path = f"/q/{q}/".encode()
    status, data = await raw_request(
        site.stack.url,
        b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header + b"\r\n"
        b"Connection: close\r\n\r\n",
    )
    # the gate decided (a place and its cookie); what the origin then makes of
    # the header is its own answer (the demo origin says 400 to a control character)
    assert status < 500, data[:300]
    assert f"\r\nSet-Cookie: {COOKIE}_{q}=2|acme|".encode() in data, data[:300]


@pytest.mark.integration
async def test_plain_http_scheme_reaches_the_sidecar(site: Site, http) -> None:
    """X-Forwarded-Proto travels to the auth location (the sidecar warns on Secure over http)."""
    server_conf = (NGINX_SNIPPETS / "server.conf").read_text()
    auth = server_conf.split("location = /_anteroom/auth", 1)[1].split("\n}\n", 1)[0]
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in auth


# -- fast pass -----------------------------------------------------------------


def pass_cookie(reply_cookies: list[str]) -> str | None:
    for c in reply_cookies:
        if c.startswith("anteroom__pass="):
            return c.split(";", 1)[0].split("=", 1)[1]
    return None


async def admitted_with_pass(http, site: Site, path: str) -> tuple[Visitor, str]:
    v = Visitor(http, site.stack.url)
    assert (await v.get(path)).status == 200  # joins, admitted at once
    r = await v.get(path)  # the sidecar sees an admitted session: a pass
    assert r.status == 200
    fast = pass_cookie(r.set_cookies)
    assert fast, r.set_cookies
    return v, fast


async def get_with(v: Visitor, path: str, cookie: str):
    return await v.get(path, headers={"Cookie": cookie})


@pytest.mark.integration
async def test_valid_pass_never_asks_the_sidecar(site: Site, http) -> None:
    path = f"/q/{queue()}/"
    v, fast = await admitted_with_pass(http, site, path)
    before = site.sidecar_asks()
    for _ in range(5):
        r = await get_with(v, path, f"{v.last}={v.cookie}; anteroom__pass={fast}")
        assert r.status == 200 and 'data-origin="demo"' in r.text
    assert site.sidecar_asks() == before


@pytest.mark.integration
@pytest.mark.parametrize(
    "kind", ["expired", "forged", "other-queue", "other-session", "other-site", "alone"]
)
async def test_invalid_pass_goes_to_the_sidecar(site: Site, http, kind: str) -> None:
    path = f"/q/{queue()}/"
    v, fast = await admitted_with_pass(http, site, path)
    other, _ = await admitted_with_pass(http, site, path)
    session = f"{v.last}={v.cookie}"
    if kind == "expired":
        await asyncio.sleep(PASS_TTL + 1.1)
        cookie = f"{session}; anteroom__pass={fast}"
    elif kind == "forged":
        expires, sid, digest = fast.split(".")
        cookie = f"{session}; anteroom__pass={int(expires) + 3600}.{sid}.{digest}"
    elif kind == "other-queue":
        path = f"/q/{queue()}/"
        cookie = f"{session}; anteroom__pass={fast}"
    elif kind == "other-site":  # the same nginx serves another tenant (Host)
        cookie = f"{session}; anteroom__pass={fast}"
    elif kind == "other-session":
        cookie = f"{other.last}={other.cookie}; anteroom__pass={fast}"
    else:
        cookie = f"anteroom__pass={fast}"
    before = site.sidecar_asks()
    host = "localhost" if kind == "other-site" else "127.0.0.1"
    r = await get_with(Visitor(http, site.stack.url, host), path, cookie)
    assert site.sidecar_asks() == before + 1, "nginx let an invalid pass through"
    if kind == "alone":  # a pass alone is a newcomer to the sidecar, and never renewed
        assert pass_cookie(r.set_cookies) is None


@pytest.mark.integration
async def test_left_session_stops_passing_within_the_pass_lifetime(site: Site, http) -> None:
    path = f"/q/{queue()}/"
    v, fast = await admitted_with_pass(http, site, path)
    old = f"{v.last}={v.cookie}; anteroom__pass={fast}"
    left = await v.post("/_anteroom/leave")
    assert left.status in (200, 204, 303), left.status
    await asyncio.sleep(PASS_TTL + 1.5)  # a replayed pair passes at most this long
    before = site.sidecar_asks()
    r = await get_with(Visitor(http, site.stack.url), path, old)
    assert site.sidecar_asks() == before + 1
    assert pass_cookie(r.set_cookies) is None  # a left session gets no new pass
    if r.status == 200:  # rejoined as a newcomer (capacity free), never the old session
        assert any(c.startswith(f"{COOKIE}_") for c in r.set_cookies)
