"""A site written the way nginx operators write them, gated with only the shipped
snippets and the package installed (not editable) in a fresh virtualenv: static
pages with index and try_files, an error_page fallback, a rewrite ... last, a
named location, a proxied API in its own queue and a server-level add_header."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from devstack.stack import ROOT, Stack
from sidecar.queue.keys import queue_keys
from tests.conftest import SECRET
from tests.visitors import COOKIE, Visitor

pytestmark = pytest.mark.integration

TOML = """
[tenants.mysite]
hosts = ["127.0.0.1"]
title = "My site"

[tenants.other]
hosts = ["localhost"]
title = "Other site"
"""

SITE = """
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        server_name _;
        root DOCROOT;
        add_header X-Frame-Options SAMEORIGIN always;
        error_page 404 /errors/404.html;

        include anteroom/server.conf;{pages}

        location / {{
            index index.html;
            try_files $uri $uri/ =404;
        }}
        location /static/ {{ }}
        location /errors/ {{ internal; }}

        location /tickets/ {{
            set $anteroom_queue tickets;
            include anteroom/gate.conf;
            # gate.conf's add_header and error_page stop the server's from being inherited
            add_header X-Frame-Options SAMEORIGIN always;
            error_page 404 /tickets/not-found.html;
            index index.html;
            try_files $uri $uri/ =404;
        }}
        # old links, rewritten into the queued pages
        location /events/ {{
            set $anteroom_queue tickets;
            include anteroom/gate.conf;
            rewrite ^/events/(.*)$ /tickets/$1 last;
        }}
        # a seat map: a file if there is one, else the app
        location /seats/ {{
            set $anteroom_queue tickets;
            include anteroom/gate.conf;
            add_header X-Frame-Options SAMEORIGIN always;
            try_files $uri @seat_app;
        }}
        location @seat_app {{
            set $anteroom_queue tickets;
            include anteroom/gate.conf;
            add_header X-Frame-Options SAMEORIGIN always;
            proxy_pass http://origin;
        }}
        # a bundle: the file if there is one, else the API (another queue)
        location /bundle/ {{
            set $anteroom_queue tickets;
            include anteroom/gate.conf;
            add_header X-Frame-Options SAMEORIGIN always;
            try_files $uri @bundle_api;
        }}
        location @bundle_api {{
            set $anteroom_queue api;
            include anteroom/gate.conf;
            add_header X-Frame-Options SAMEORIGIN always;
            proxy_pass http://origin;
        }}
        location ^~ /api/ {{
            set $anteroom_queue api;
            include anteroom/gate.conf;
            add_header X-Frame-Options SAMEORIGIN always;
            proxy_pass http://origin;
        }}
{extra}
    }}
"""

FILES = {
    "index.html": "home",
    "static/app.css": "body{}",
    "errors/404.html": "site not found page",
    "tickets/index.html": "tickets home",
    "tickets/friday/index.html": "friday",
    "tickets/not-found.html": "no such ticket page",
    "seats/a1.html": "seat a1",
}


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """python of a fresh virtualenv with the package installed from a copy of the
    source (pip install ., not editable): once per test session."""
    work = tmp_path_factory.mktemp("installed")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("sidecar", "theme_assets"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    venv.create(work / "venv", with_pip=True)
    python = work / "venv" / "bin" / "python"
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    shutil.rmtree(src)  # nothing may come from the source tree any more
    return python


@pytest.fixture(scope="module")
def operator(tmp_path_factory: pytest.TempPathFactory, installed: Path) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("operator")
    # the snippets, installed as docs/nginx.md says
    snippets = work / "etc-nginx" / "anteroom"
    subprocess.run(["install", "-d", str(snippets)], check=True)
    subprocess.run(f"cp {ROOT}/nginx/anteroom/*.conf {snippets}/", shell=True, check=True)
    docroot = work / "www"
    for name, text in FILES.items():
        (docroot / name).parent.mkdir(parents=True, exist_ok=True)
        (docroot / name).write_text(text + "\n")
    (work / "anteroom.toml").write_text(TOML)
    stack = Stack(
        workdir=work,
        env={
            "ANTEROOM_SECRETS": SECRET,
            "ANTEROOM_CONFIG": str(work / "anteroom.toml"),
            "ANTEROOM_THEMES": "",  # the themes shipped in the package
            "ANTEROOM_DEMO": "0",
            "ANTEROOM_ADMIN_TOKEN": "ops:admin-token-0123456789abcdef",
            "ANTEROOM_COOKIE_SECURE": "0",  # staging over plain http
            "ANTEROOM_CAPACITY": "50",
            "ANTEROOM_LOG_LEVEL": "debug",
        },
        inherit_env=False,
        python=str(installed),
        snippets=snippets,
        site_template=SITE.replace("DOCROOT", str(docroot)),
    ).start()
    yield stack
    stack.stop()


@pytest.fixture
async def redis(operator: Stack) -> AsyncIterator[Redis]:
    client = Redis.from_url(operator.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def places(redis: Redis, queue: str) -> int:
    return int(await redis.get(queue_keys("mysite", queue).tickets) or 0)


def test_build_pages_from_the_installed_package(installed: Path, tmp_path: Path) -> None:
    toml = tmp_path / "anteroom.toml"
    toml.write_text(TOML)
    out = tmp_path / "pages"
    env = {"PATH": "/usr/bin:/bin", "ANTEROOM_CONFIG": str(toml)}
    r = subprocess.run(
        [str(installed), "-m", "sidecar", "build-pages", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "'mysite'" in r.stdout and "'other'" in r.stdout
    for tenant, title in (("mysite", "My site"), ("other", "Other site")):
        assert title in (out / "_anteroom" / "waiting" / tenant / "index.html").read_text()
    # without a TOML file: said so, and the one tenant is "default"
    r = subprocess.run(
        [str(installed), "-m", "sidecar", "build-pages", "--out", str(out)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
    )
    assert r.returncode == 0 and "'default'" in r.stdout and "ANTEROOM_CONFIG" in r.stdout
    # a configuration error is one line, not a traceback
    env["ANTEROOM_CONFIG"] = str(tmp_path / "missing.toml")
    r = subprocess.run(
        [str(installed), "-m", "sidecar", "build-pages", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "ANTEROOM_CONFIG" in r.stderr


def test_the_sidecar_runs_from_the_installed_package(operator: Stack, installed: Path) -> None:
    pid = operator.procs["sidecar"].pid
    exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    assert exe == str(installed) and exe != sys.executable


# path -> (status, body text, queue)
WALK = {
    "/tickets/": (200, "tickets home", "tickets"),  # index
    "/tickets/friday/": (200, "friday", "tickets"),  # try_files $uri/ then index
    "/tickets/nope.html": (404, "no such ticket page", "tickets"),  # error_page fallback
    "/events/friday/": (200, "friday", "tickets"),  # rewrite ... last, then index
    "/seats/a1.html": (200, "seat a1", "tickets"),
    "/seats/b7": (200, 'data-origin="demo"', "tickets"),  # try_files to a named location
    "/api/items": (200, 'data-origin="demo"', "api"),
}


@pytest.mark.parametrize("path", sorted(WALK))
async def test_one_visitor_takes_one_place(operator: Stack, redis, http, path: str) -> None:
    status, text, queue = WALK[path]
    before = {q: await places(redis, q) for q in ("tickets", "api")}
    v = Visitor(http, operator.url)
    r = await v.get(path)
    assert r.status == status and text in r.text, (r.status, r.text[:200])
    assert r.headers.get("X-Frame-Options") == "SAMEORIGIN"
    after = {q: await places(redis, q) for q in ("tickets", "api")}
    assert after[queue] == before[queue] + 1, "an internal redirect took a second place"
    assert all(after[q] == before[q] for q in after if q != queue)
    assert v.cookie and f"|{queue}|a|" in v.cookie
    again = await v.get(path)  # the same visitor comes back: still one place
    assert again.status == status
    assert await places(redis, queue) == after[queue]


async def test_redirect_into_another_queue_keeps_both_cookies(operator: Stack, redis, http) -> None:
    """tickets, then (try_files to a named location) api: a place in each, and the
    browser gets both cookies, not only the last."""
    before = {q: await places(redis, q) for q in ("tickets", "api")}
    r = await Visitor(http, operator.url).get("/bundle/x")
    assert r.status == 200 and 'data-origin="demo"' in r.text
    assert {q: await places(redis, q) for q in before} == {q: n + 1 for q, n in before.items()}
    queues = sorted(c.split("|")[2] for c in r.set_cookies if c.startswith(f"{COOKIE}"))
    assert queues == ["api", "tickets"], r.set_cookies


async def test_ungated_pages_keep_the_server_headers(operator: Stack, redis, http) -> None:
    before = await places(redis, "tickets")
    for path, text in (("/", "home"), ("/static/app.css", "body{}"), ("/x", "site not found")):
        r = await Visitor(http, operator.url).get(path)
        assert text in r.text and r.headers.get("X-Frame-Options") == "SAMEORIGIN"
        assert not r.set_cookies
    assert await places(redis, "tickets") == before


async def test_waiting_page_of_the_tenant_is_served(operator: Stack, http) -> None:
    r = await Visitor(http, operator.url).get("/_anteroom/waiting/mysite/")
    assert r.status == 200 and "My site" in r.text


async def test_admitted_to_one_queue_keeps_it_while_joining_another(operator: Stack, http) -> None:
    """One cookie per queue: entering the API's queue never costs the tickets session."""
    v = Visitor(http, operator.url)
    assert (await v.get("/tickets/")).status == 200
    tickets = v.cookies[f"{COOKIE}_tickets"]
    assert (await v.get("/api/items")).status == 200
    assert set(v.cookies) == {f"{COOKIE}_tickets", f"{COOKIE}_api"}
    r = await v.get("/tickets/")  # both cookies go along
    assert r.status == 200 and not r.set_cookies  # the same session, no new place
    assert v.cookies[f"{COOKIE}_tickets"] == tickets
