"""Waiting pages from S3 while the bucket hangs or is down (issue 16 item 6):
every language, including those the theme lacks and none at all, gets the
cached page or the tenant's own, never an nginx error; and a header tells an
outage from the cache's routine background refresh."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import aiohttp
import pytest

from devstack.stack import S3Server, Stack
from tests.conftest import make_stack

pytestmark = pytest.mark.integration

TOML = """
[tenants.acme]
hosts = ["127.0.0.1"]
title = "Acme"
"""
# the default theme has en and fr only; the tenant's own language is en
LANGUAGES = ["de", "es-ES,es;q=0.9", "ja", "zh-CN", "pt-BR", "", "en-GB", "fr"]
FRESH = 10  # seconds pages-s3.conf keeps a copy fresh


@pytest.fixture(scope="module")
def bucket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3down")).start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        os.killpg(server.proc.pid, signal.SIGCONT)
    server.stop()


@pytest.fixture(scope="module")
def site(bucket: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = make_stack(tmp_path_factory.mktemp("s3downsite"), site_toml=TOML, s3=bucket)
    yield stack
    stack.stop()


async def page(site: Stack, accept: str) -> tuple[int, dict[str, str], str]:
    headers = {"Accept-Language": accept} if accept else {}
    timeout = aiohttp.ClientTimeout(total=20)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(site.url + "/_anteroom/waiting/acme/?queue=q", headers=headers) as r,
    ):
        return r.status, dict(r.headers), await r.text()


def a_waiting_page(text: str) -> bool:
    return '<html lang="en">' in text or '<html lang="fr">' in text


async def test_every_language_gets_a_page_while_the_bucket_hangs_or_is_down(
    site: Stack, bucket: S3Server
) -> None:
    # before the outage: the tenant's page and English were asked for once
    for accept in ("", "en"):
        status, _, text = await page(site, accept)
        assert status == 200 and a_waiting_page(text)
    await asyncio.sleep(FRESH + 1)

    # a healthy bucket past the fresh time: a routine refresh, no bucket error
    status, headers, _ = await page(site, "en")
    assert status == 200
    routine = headers.get("X-Anteroom-Bucket", "")
    assert not any(code in routine for code in ("502", "504")), headers

    assert bucket.proc is not None
    os.killpg(bucket.proc.pid, signal.SIGSTOP)  # hangs: connections open, no answer
    try:
        hanging = await asyncio.gather(*(page(site, a) for a in LANGUAGES))
    finally:
        os.killpg(bucket.proc.pid, signal.SIGCONT)
    for accept, (status, _headers, text) in zip(LANGUAGES, hanging, strict=True):
        assert status == 200 and a_waiting_page(text), (accept, status, text[:200])
    # the outage shows: some answer came from the cache after the bucket failed
    assert any("504" in h.get("X-Anteroom-Bucket", "") for _, h, _ in hanging), [
        (h.get("X-Anteroom-Cache"), h.get("X-Anteroom-Bucket")) for _, h, _ in hanging
    ]

    bucket.stop()  # down: connections refused
    for accept in LANGUAGES:
        status, headers, text = await page(site, accept)
        assert status == 200 and a_waiting_page(text), (accept, status, text[:200])
