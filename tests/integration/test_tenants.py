"""Many sites from one deployment, through real nginx: tenants chosen by exact
and wildcard hosts, each with its own keys, cookies, settings, theme and
language negotiation on the waiting page."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis

from devstack.stack import Stack
from tests.conftest import make_stack
from tests.visitors import Visitor

pytestmark = pytest.mark.integration

TOML = """
[tenants.main]
hosts = ["*"]
title = "Main"

[tenants.shop]
hosts = ["shop.localhost"]
title = "Shop"

[tenants.tix]
hosts = ["tickets.localhost", "*.tickets.localhost"]
title = "Tix"
theme = "tickets"
language = "fr"
[tenants.tix.queue_defaults]
capacity = 1

[tenants.vip]
hosts = ["vip.tickets.localhost"]
title = "VIP"
theme = "tickets"

[tenants.eu]
hosts = ["*.eu.tickets.localhost"]
"""


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = make_stack(tmp_path_factory.mktemp("tenants"), site_toml=TOML)
    yield stack
    stack.stop()


def new_queue() -> str:
    return "t" + uuid.uuid4().hex[:10]


def tenant_of(v: Visitor) -> str:
    """The tenant a visitor's token was issued for (it is in clear, only signed)."""
    assert v.cookie
    return v.cookie.split("|")[1]


@pytest.mark.parametrize(
    ("host", "tenant"),
    [
        ("127.0.0.1", "main"),
        ("elsewhere.example", "main"),
        ("shop.localhost", "shop"),
        ("tickets.localhost", "tix"),
        ("paris.tickets.localhost", "tix"),
        ("a.b.tickets.localhost", "tix"),
        ("vip.tickets.localhost", "vip"),  # exact beats the wildcard
        ("fr.eu.tickets.localhost", "eu"),  # the nearer wildcard wins
        ("Paris.Tickets.Localhost:8080", "tix"),  # case and port do not matter
    ],
)
async def test_host_picks_the_tenant(sites: Stack, http, host: str, tenant: str) -> None:
    v = Visitor(http, sites.url, host)
    r = await v.get(f"/q/{new_queue()}/")
    assert r.status == 200
    assert tenant_of(v) == tenant


async def test_keys_settings_and_cookies_stay_per_tenant(sites: Stack, http) -> None:
    path = f"/q/{new_queue()}/"
    # tix admits one at a time (its queue_defaults), shop two (the global default)
    tix = [Visitor(http, sites.url, "tickets.localhost") for _ in range(2)]
    shop = [Visitor(http, sites.url, "shop.localhost") for _ in range(3)]
    assert [(await v.get(path)).status for v in tix] == [200, 302]
    assert [(await v.get(path)).status for v in shop] == [200, 200, 302]
    # the tix waiter's page is the tix one, the shop waiter's the shop one
    assert (tix[1].history[-1].location or "").startswith("/_anteroom/waiting/tix/?")
    assert (shop[2].history[-1].location or "").startswith("/_anteroom/waiting/shop/?")

    # a shop cookie that admits on shop does not admit on tix (same queue name)
    admitted_shop_cookie = shop[0].cookie
    assert (await shop[0].get(path)).status == 200
    replay = Visitor(http, sites.url, "a.tickets.localhost", cookies=dict(shop[0].cookies))
    r = await replay.get(path)
    assert r.status == 302  # treated as no cookie: joins tix's line, which is full
    assert replay.cookie != admitted_shop_cookie and tenant_of(replay) == "tix"
    # and a tix cookie does not admit on vip, though vip is a subdomain of tickets
    replay_vip = Visitor(http, sites.url, "vip.tickets.localhost", cookies=dict(tix[0].cookies))
    assert (await replay_vip.get(path)).status == 200  # joined vip's own empty line
    assert tenant_of(replay_vip) == "vip"
    status = await Visitor(http, sites.url, "shop.localhost", cookies=dict(tix[1].cookies)).status()
    assert status["state"] == "none"  # a tix place means nothing on shop

    # one keyspace per tenant in Redis
    redis = Redis.from_url(sites.redis_url)
    try:
        raw: list[bytes] = await redis.keys(f"*:{path.split('/')[2]}}}*")  # type: ignore[assignment]
        keys = {k.decode() for k in raw}
    finally:
        await redis.aclose()
    tenants = {re.search(r"\{(\w+):", k).group(1) for k in keys}  # type: ignore[union-attr]
    assert tenants == {"tix", "shop", "vip"}, keys


@pytest.mark.parametrize(
    ("host", "accept", "lang", "words"),
    [
        ("tickets.localhost", "de-DE,de;q=0.9,en;q=0.8", "de", "Ticket-Warteschlange"),
        ("tickets.localhost", "en-US,en;q=0.9", "en", "ticket queue"),
        ("tickets.localhost", "fr-CH, fr;q=0.9", "fr", "billetterie"),
        ("tickets.localhost", "es-ES,es;q=0.9", "fr", "billetterie"),  # tix speaks fr
        ("tickets.localhost", None, "fr", "billetterie"),
        ("tickets.localhost", "*", "fr", "billetterie"),
        ("127.0.0.1", "de-DE,de;q=0.9", "en", "busy right now"),  # default/ has no de
        ("127.0.0.1", "fr-FR,fr;q=0.9", "fr", "très demandé"),
        ("vip.tickets.localhost", "de", "de", "Ticket-Warteschlange"),
    ],
)
async def test_waiting_page_language_from_accept_language(
    sites: Stack, http, host: str, accept: str | None, lang: str, words: str
) -> None:
    tenant = {"tickets.localhost": "tix", "127.0.0.1": "main"}.get(host, "vip")
    headers = {"Accept-Language": accept} if accept is not None else {}
    r = await Visitor(http, sites.url, host).get(
        f"/_anteroom/waiting/{tenant}/?return_to=%2F", headers=headers
    )
    assert r.status == 200
    assert f'<html lang="{lang}">' in r.text and words in r.text
    assert r.headers["Vary"] == "Accept-Language"
    assert r.headers["Cache-Control"] == "no-cache"


async def test_each_tenant_gets_its_theme(sites: Stack, http) -> None:
    tix = await Visitor(http, sites.url, "tickets.localhost").get("/_anteroom/waiting/tix/")
    main = await Visitor(http, sites.url).get("/_anteroom/waiting/main/")
    logo = re.search(r'src="(logo\.[0-9a-f]{10}\.svg)"', tix.text)
    assert logo and "logo." not in main.text
    css_tix = re.search(r'href="(waiting\.[0-9a-f]{10}\.css)"', tix.text)
    css_main = re.search(r'href="(waiting\.[0-9a-f]{10}\.css)"', main.text)
    assert css_tix and css_main and css_tix.group(1) != css_main.group(1)
    r = await Visitor(http, sites.url).get("/_anteroom/waiting/tix/" + logo.group(1))
    assert r.status == 200 and r.headers["Content-Type"] == "image/svg+xml"
    assert "immutable" in r.headers["Cache-Control"]
