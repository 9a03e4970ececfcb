"""The fast pass across internal redirects: nginx answers a gate check itself only
for the queue the pass was checked for, never for another queue the same request
reaches after try_files, error_page, index or rewrite ... last."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from devstack.stack import Stack
from tests.conftest import FAST, QUEUE_LOCATIONS, SITE_TOML
from tests.integration.test_fastpass_binding import sidecar_asks
from tests.visitors import Visitor

pytestmark = pytest.mark.integration

PASS_SECRET = "fast-pass-secret-0123456789"

# A gated location whose missing files fall back (try_files, an internal redirect
# after the access phase) to a location of another queue, and a site location
# using secure_link itself (its own link, its own secret) whose missing files fall
# back to a gated location.
HOP_LOCATIONS = (
    QUEUE_LOCATIONS
    + """
        location /hop/ {
            set $anteroom_queue hopa;
            include anteroom/gate.conf;
            root {hop_root};
            try_files $uri /seats$uri;
        }
        location /seats/ {
            set $anteroom_queue vipq;
            include anteroom/gate.conf;
            proxy_pass http://origin;
        }
        location /files/ {
            secure_link $arg_h;
            secure_link_md5 "site-own-secret";
            if ($secure_link != "1") {
                return 403;
            }
            root {hop_root};
            try_files $uri /seats$uri;
        }
"""
)


@pytest.fixture(scope="module")
def hop_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir: Path = tmp_path_factory.mktemp("hop")
    toml = workdir / "anteroom.toml"
    toml.write_text(SITE_TOML)
    (workdir / "hoproot" / "hop").mkdir(parents=True)
    (workdir / "hoproot" / "hop" / "ok.html").write_text("<p>a static page</p>")
    s = Stack(
        workdir=workdir,
        env={
            **FAST,
            "ANTEROOM_CONFIG": str(toml),
            "ANTEROOM_FAST_PASS_SECRET": PASS_SECRET,
            "ANTEROOM_FAST_PASS_TTL": "20",
            "ANTEROOM_CAPACITY": "1",
            "ANTEROOM_SESSION_TTL": "60",
        },
        extra_locations=HOP_LOCATIONS.replace("{hop_root}", str(workdir / "hoproot")),
        inherit_env=False,
        replica_ports=[],
        fast_pass=True,
        extra_http="    log_subrequest on;",
        access_log=True,
    ).start()
    yield s
    s.stop()


def pass_of(cookies: list[str]) -> str | None:
    for c in cookies:
        if c.startswith("anteroom__pass="):
            return c.split(";", 1)[0].split("=", 1)[1]
    return None


async def admitted_with_pass(stack: Stack, http: aiohttp.ClientSession) -> tuple[str, str]:
    """vipq's only seat taken by someone else; a visitor admitted to hopa holding a
    fast pass for it: (its hopa session cookie, its pass)."""
    holder = Visitor(http, stack.url)
    assert (await holder.get("/seats/x")).status in (200, 302)
    v = Visitor(http, stack.url)
    first = await v.get("/hop/ok.html")
    assert first.status == 200, first
    second = await v.get("/hop/ok.html")
    fast = pass_of(second.set_cookies)
    assert fast, second.set_cookies
    # the pass works for hopa: nginx answers hopa's check itself
    asks = sidecar_asks(stack)
    again = await Visitor(http, stack.url).get(
        "/hop/ok.html",
        headers={"Cookie": f"anteroom_hopa={v.cookies['anteroom_hopa']}; anteroom__pass={fast}"},
    )
    assert again.status == 200
    assert sidecar_asks(stack) == asks, "the pass was not honoured by nginx"
    return f"anteroom_hopa={v.cookies['anteroom_hopa']}", fast


async def test_a_pass_of_one_queue_never_admits_to_another_after_an_internal_redirect(
    hop_stack: Stack, http: aiohttp.ClientSession
) -> None:
    """Class: nginx must never admit a request the sidecar would refuse. $secure_link
    is a cacheable variable: computed for the first queue's check, it would be reused
    by the second check of the same request (another queue, after try_files)."""
    session, fast = await admitted_with_pass(hop_stack, http)
    # without the pass the sidecar decides the second check: vipq is full, wait
    control = await Visitor(http, hop_stack.url).get("/hop/missing", headers={"Cookie": session})
    assert control.status == 302, control.status
    # the same pass + hopa cookie: the try_files fallback lands in vipq's location
    newcomer = await Visitor(http, hop_stack.url).get(
        "/hop/missing", headers={"Cookie": f"{session}; anteroom__pass={fast}"}
    )
    # vipq is full and this visitor holds no place there: it must wait (302)
    assert newcomer.status == 302, (newcomer.status, newcomer.set_cookies)


async def test_a_site_secure_link_is_never_taken_for_a_fast_pass(
    hop_stack: Stack, http: aiohttp.ClientSession
) -> None:
    """A site location that checks its own secure_link computes $secure_link first;
    a fallback from there into a gated location must not reuse that "1" as a pass
    (no Anteroom cookie needed: any valid link of the site would skip the line)."""
    import base64
    import hashlib

    link = base64.urlsafe_b64encode(hashlib.md5(b"site-own-secret").digest()).decode().rstrip("=")
    # the site's own check works: a wrong link is refused
    assert (await Visitor(http, hop_stack.url).get("/files/x?h=" + "A" * 22)).status == 403
    # someone holds vipq's only seat
    await Visitor(http, hop_stack.url).get("/seats/x")
    # the site's own link, valid, no Anteroom cookie at all: the file is missing and
    # the fallback is vipq's location, where this newcomer must wait
    r = await Visitor(http, hop_stack.url).get(f"/files/missing?h={link}")
    assert r.status == 302, (r.status, r.set_cookies)
