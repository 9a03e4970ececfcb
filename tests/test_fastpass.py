"""The fast pass cookie the sidecar mints (nginx's side is in test_nginx.py)."""

from __future__ import annotations

import base64
import hashlib

import pytest

from sidecar.config import Config, ConfigError
from sidecar.web.fastpass import FastPass, from_config, nginx_conf

SECRET = "fast-pass-secret-0123456789"


ADDR = "203.0.113.7"
SESSION = "2|acme|shop|a|1|sid1|1000|1600||%2F|sig"


def from_env(env: dict[str, str]) -> FastPass | None:
    """The fast pass as the sidecar reads it: from its configuration."""
    return from_config(Config.from_env(env, serving=False))


def test_the_hash_is_what_secure_link_md5_computes() -> None:
    fast = FastPass(SECRET, ttl=20)
    expires, sid, digest = fast.value("abcDEF_-12", "shop h", ADDR, SESSION, 1000).split(".")
    assert expires == "1020" and sid == "abcDEF_-12"
    text = f"1020 abcDEF_-12 shop h {ADDR} {SESSION} {SECRET}"
    raw = hashlib.md5(text.encode()).digest()
    assert digest == base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert len(digest) == 22


def test_fresh_only_for_this_session_queue_address_cookie_and_lifetime() -> None:
    fast = FastPass(SECRET, ttl=20)
    cookie = f"x=1; anteroom__pass={fast.value('sid1', 'shop', ADDR, SESSION, 1000)}"
    assert fast.fresh(cookie, "sid1", "shop", ADDR, SESSION, 1005)
    assert not fast.fresh(cookie, "sid1", "shop", ADDR, SESSION, 1011)  # renew: half left
    assert not fast.fresh(cookie, "sid2", "shop", ADDR, SESSION, 1005)
    assert not fast.fresh(cookie, "sid1", "other", ADDR, SESSION, 1005)
    assert not fast.fresh(cookie, "sid1", "shop", "203.0.113.8", SESSION, 1005)
    assert not fast.fresh(cookie, "sid1", "shop", ADDR, SESSION + "x", 1005)
    assert not fast.fresh(
        cookie.replace("anteroom__pass=1020", "anteroom__pass=9020"),
        "sid1",
        "shop",
        ADDR,
        SESSION,
        1005,
    )
    assert not fast.fresh("anteroom__pass=garbage|é", "sid1", "shop", ADDR, SESSION, 1005)


def test_renew_adds_the_header_only_when_needed() -> None:
    fast = FastPass(SECRET, ttl=20)
    headers: dict[str, str] = {}
    fast.renew("", "sid1", "shop", ADDR, SESSION, 1000, headers, "; Path=/; HttpOnly")
    assert headers["X-Anteroom-Pass"].startswith("anteroom__pass=1020.sid1.")
    assert "Max-Age=20; Path=/; HttpOnly" in headers["X-Anteroom-Pass"]
    again: dict[str, str] = {}
    held = headers["X-Anteroom-Pass"].split(";", 1)[0]
    fast.renew(held, "sid1", "shop", ADDR, SESSION, 1001, again, "; Path=/")
    assert again == {}
    moved: dict[str, str] = {}  # the same pass from another address: a new one
    fast.renew(held, "sid1", "shop", "198.51.100.1", SESSION, 1001, moved, "; Path=/")
    assert moved


@pytest.mark.parametrize("address", ["", "a b", "1.2.3.4, 5.6.7.8", "x" * 50])
def test_no_pass_without_an_address_nginx_could_check(address: str) -> None:
    headers: dict[str, str] = {}
    FastPass(SECRET).renew("", "sid1", "shop", address, SESSION, 1000, headers, "")
    assert headers == {}


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ANTEROOM_FAST_PASS_SECRET": "short"}, "ANTEROOM_FAST_PASS_SECRET"),
        ({"ANTEROOM_FAST_PASS_SECRET": 'x" ; $evil0123456789'}, "ANTEROOM_FAST_PASS_SECRET"),
        ({"ANTEROOM_FAST_PASS_SECRET": SECRET, "ANTEROOM_FAST_PASS_TTL": "0"}, "TTL"),
        ({"ANTEROOM_FAST_PASS_SECRET": SECRET, "ANTEROOM_FAST_PASS_TTL": "301"}, "TTL"),
        ({"ANTEROOM_FAST_PASS_SECRET": SECRET, "ANTEROOM_FAST_PASS_TTL": "x"}, "TTL"),
    ],
)
def test_bad_settings_name_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        from_env(env)


def test_off_without_a_secret_and_nginx_conf_quotes_nothing_unsafe() -> None:
    assert from_env({}) is None
    fast = from_env({"ANTEROOM_FAST_PASS_SECRET": SECRET})
    assert fast is not None and fast.ttl == 20
    assert f'default "{SECRET}";' in nginx_conf(fast)
    assert 'default "anteroom";' in nginx_conf(fast)
    assert 'default "shop_v2";' in nginx_conf(fast, "shop_v2")
