"""Waiting pages on S3: publish to a real S3-compatible server (SeaweedFS on
loopback), then real nginx serves them through pages-s3.conf and its cache."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from devstack.stack import ROOT, S3Server, Stack
from sidecar.config import S3Settings, load
from sidecar.pages.publish import IMMUTABLE, publish
from tests.conftest import make_stack

pytestmark = pytest.mark.integration

TOML = """
[tenants.acme]
hosts = ["127.0.0.1"]
title = "Acme"

[tenants.gigs]
hosts = ["gigs.localhost"]
title = "Gigs"
theme = "tickets"
language = "fr"
"""


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def site(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = make_stack(tmp_path_factory.mktemp("s3site"), site_toml=TOML, s3=s3)
    yield stack
    stack.stop()


def config_of(site: Stack):
    return load(site.sidecar_env(), serving=False)


async def fetch(url: str, **headers: str) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as r:
        return r.status, dict(r.headers), await r.text()


def asset(page: str, pattern: str) -> str:
    m = re.search(pattern, page)
    assert m, page
    return m.group(1)


async def test_published_objects_have_types_and_cache_headers(site: Stack, s3: S3Server) -> None:
    base = f"{s3.endpoint}/{s3.bucket}/site/_anteroom/waiting/gigs/"
    status, headers, page = await fetch(base + "index.html")  # anonymous read
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-cache"
    assert 'lang="fr"' in page and "billetterie" in page
    css = asset(page, r'href="(waiting\.[0-9a-f]{10}\.css)"')
    js = asset(page, r'src="(waiting\.[0-9a-f]{10}\.js)"')
    logo = asset(page, r'src="(logo\.[0-9a-f]{10}\.svg)"')
    for name, ctype in [
        (css, "text/css; charset=utf-8"),
        (js, "application/javascript; charset=utf-8"),
        (logo, "image/svg+xml"),
    ]:
        status, headers, _ = await fetch(base + name)
        assert status == 200, name
        assert headers["Content-Type"] == ctype
        assert headers["Cache-Control"] == IMMUTABLE
    status, headers, _ = await fetch(base + "keepalive.js")
    assert status == 200 and headers["Cache-Control"] == "no-cache"
    for lang in ("en", "fr", "de"):
        assert (await fetch(base + f"index.{lang}.html"))[0] == 200


def test_second_publish_uploads_nothing(site: Stack, s3: S3Server) -> None:
    done = publish(config_of(site), S3Settings.from_env(s3.env("site")))
    assert done.uploaded == []
    assert len(done.unchanged) >= 12


def test_theme_change_uploads_only_what_changed(site: Stack, s3: S3Server, tmp_path: Path) -> None:
    themes = tmp_path / "themes"
    shutil.copytree(ROOT / "theme_assets", themes)
    settings = S3Settings.from_env(s3.env("changing"))
    config = config_of(site)
    first = publish(config, settings, root=themes)
    assert first.unchanged == [] and len(first.uploaded) >= 12

    css = themes / "tickets" / "waiting.css.j2"
    css.write_text(css.read_text().replace("#c2185b", "#00796b"))
    dry = publish(config, settings, root=themes, dry_run=True)
    second = publish(config, settings, root=themes)
    assert dry.uploaded == second.uploaded  # the dry run said so, and put nothing
    gigs = "changing/_anteroom/waiting/gigs/"
    changed = sorted(k.removeprefix(gigs) for k in second.uploaded)
    # the new stylesheet under a new name, and the pages that link it; nothing else
    assert len(changed) == 5, changed
    assert re.fullmatch(r"waiting\.[0-9a-f]{10}\.css", changed.pop()), changed
    assert changed == ["index.de.html", "index.en.html", "index.fr.html", "index.html"]
    assert all(k.startswith(gigs) for k in second.uploaded)


async def test_nginx_serves_the_page_from_the_bucket_in_the_visitors_language(
    site: Stack,
) -> None:
    page = site.url + "/_anteroom/waiting/gigs/?return_to=%2Fq%2Fa%2F"
    for accept, lang, words in [
        ("de-DE,de;q=0.9,en;q=0.5", "de", "Ticket-Warteschlange"),
        ("en-GB,en;q=0.9", "en", "ticket queue"),
        ("es-ES,es;q=0.9", "fr", "billetterie"),  # no Spanish strings: the tenant's own
        ("", "fr", "billetterie"),
    ]:
        headers = {"Host": "gigs.localhost"}
        if accept:
            headers["Accept-Language"] = accept
        status, got, text = await fetch(page, **headers)
        assert status == 200, accept
        assert f'<html lang="{lang}">' in text and words in text, accept
        assert got["Vary"] == "Accept-Language"
        assert "X-Anteroom-Cache" in got  # served by pages-s3.conf
        assert "Set-Cookie" not in got
    css = asset(text, r'href="(waiting\.[0-9a-f]{10}\.css)"')
    status, got, _ = await fetch(site.url + "/_anteroom/waiting/gigs/" + css)
    assert status == 200 and got["Content-Type"].startswith("text/css")
    assert got["Cache-Control"] == IMMUTABLE


async def test_a_waiter_lands_on_the_page_from_the_bucket(site: Stack) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        # capacity 2: the third visitor waits
        for _ in range(2):
            async with http.get(site.url + "/q/s3gate/", allow_redirects=False) as r:
                assert r.status == 200
        async with http.get(site.url + "/q/s3gate/", allow_redirects=False) as r:
            assert r.status == 302
            location = r.headers["Location"]
        assert location.startswith("/_anteroom/waiting/acme/?queue=s3gate&return_to=")
        async with http.get(site.url + location) as r:
            assert r.status == 200 and "X-Anteroom-Cache" in r.headers
            assert '<h1 id="heading">You&#39;re in line</h1>' in await r.text()


def test_a_wrong_secret_is_refused_with_a_clear_message(site: Stack, s3: S3Server) -> None:
    from sidecar.pages.s3 import S3Error

    env = {**s3.env("site"), "ANTEROOM_S3_SECRET_ACCESS_KEY": "not-the-secret"}
    with pytest.raises(S3Error, match="access denied"):
        publish(config_of(site), S3Settings.from_env(env))


async def test_cached_page_is_served_while_the_bucket_is_down(site: Stack, s3: S3Server) -> None:
    """Runs last in this module: it stops the S3 server."""
    page = site.url + "/_anteroom/waiting/gigs/"
    status, _, before = await fetch(page, Host="gigs.localhost", **{"Accept-Language": "de"})
    assert status == 200
    css = asset(before, r'href="(waiting\.[0-9a-f]{10}\.css)"')
    assert (await fetch(site.url + "/_anteroom/waiting/gigs/" + css))[0] == 200
    s3.stop()
    await asyncio.sleep(11)  # past the 10 s the cache holds a copy fresh
    status, headers, after = await fetch(page, Host="gigs.localhost", **{"Accept-Language": "de"})
    assert status == 200 and after == before
    assert headers["X-Anteroom-Cache"] == "STALE"
    status, headers, _ = await fetch(site.url + "/_anteroom/waiting/gigs/" + css)
    assert status == 200 and headers["X-Anteroom-Cache"] == "STALE"
