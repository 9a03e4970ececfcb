"""The fast pass cookie the sidecar mints (nginx's side is in test_nginx.py)."""

from __future__ import annotations

import base64
import hashlib

import pytest

from sidecar.config import Config, ConfigError
from sidecar.web.fastpass import FastPass, from_config, nginx_conf

SECRET = "fast-pass-secret-0123456789"


def from_env(env: dict[str, str]) -> FastPass | None:
    """The fast pass as the sidecar reads it: from its configuration."""
    return from_config(Config.from_env(env, serving=False))


def test_the_hash_is_what_secure_link_md5_computes() -> None:
    fast = FastPass(SECRET, ttl=20)
    expires, sid, digest = fast.value("abcDEF_-12", "shop", 1000).split(".")
    assert expires == "1020" and sid == "abcDEF_-12"
    raw = hashlib.md5(f"1020 abcDEF_-12 shop {SECRET}".encode()).digest()
    assert digest == base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert len(digest) == 22


def test_fresh_only_for_this_session_queue_and_lifetime() -> None:
    fast = FastPass(SECRET, ttl=20)
    cookie = f"x=1; anteroom__pass={fast.value('sid1', 'shop', 1000)}"
    assert fast.fresh(cookie, "sid1", "shop", 1005)
    assert not fast.fresh(cookie, "sid1", "shop", 1011)  # less than half left: renew
    assert not fast.fresh(cookie, "sid2", "shop", 1005)
    assert not fast.fresh(cookie, "sid1", "other", 1005)
    assert not fast.fresh(
        cookie.replace("anteroom__pass=1020", "anteroom__pass=9020"), "sid1", "shop", 1005
    )
    assert not fast.fresh("anteroom__pass=garbage|é", "sid1", "shop", 1005)


def test_renew_adds_the_header_only_when_needed() -> None:
    fast = FastPass(SECRET, ttl=20)
    headers: dict[str, str] = {}
    fast.renew("", "sid1", "shop", 1000, headers, "; Path=/; HttpOnly")
    assert headers["X-Anteroom-Pass"].startswith("anteroom__pass=1020.sid1.")
    assert "Max-Age=20; Path=/; HttpOnly" in headers["X-Anteroom-Pass"]
    again: dict[str, str] = {}
    held = headers["X-Anteroom-Pass"].split(";", 1)[0]
    fast.renew(held, "sid1", "shop", 1001, again, "; Path=/")
    assert again == {}


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
