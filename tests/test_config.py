from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.config import DEMO_SECRET, Config, ConfigError, QueueSettings, load, queue_overrides

SECRET = {"ANTEROOM_SECRETS": "s" * 20, "ANTEROOM_ADMIN_TOKEN": "ops:" + "t" * 20}


def test_defaults_and_environment_overrides() -> None:
    c = load(
        {
            **SECRET,
            "ANTEROOM_CAPACITY": "3",
            "ANTEROOM_ADMIT_PER_MINUTE": "60",
            "ANTEROOM_SESSION_TTL": "90",
            "ANTEROOM_GRACE": "20",
        }
    )
    (t,) = c.tenants
    s = t.settings_for("anything")
    assert (s.capacity, s.admit_per_minute, s.session_ttl, s.grace) == (3, 60, 90, 20)
    assert c.cookie_secure is True and c.workers == 1
    assert c.tenant_for_host("whatever.example") is t
    assert load({**SECRET, "ANTEROOM_WORKERS": "auto"}).workers >= 1


def test_several_secrets_for_rotation() -> None:
    c = load({**SECRET, "ANTEROOM_SECRETS": "new-secret-0123456789, old-secret-0123456789"})
    assert c.secrets == (b"new-secret-0123456789", b"old-secret-0123456789")


def test_placeholder_secret_is_tolerated_only_in_demo_mode() -> None:
    c = load({"ANTEROOM_DEMO": "1", "ANTEROOM_SECRETS": "change-me-to-a-long-random-secret"})
    assert c.secrets == (b"change-me-to-a-long-random-secret",)


def test_sentinel_url_shutdown_and_backlog_settings() -> None:
    c = load(
        {
            **SECRET,
            "ANTEROOM_REDIS_URL": "redis+sentinel://10.0.0.5:26379,10.0.0.6:26379/mymaster/0",
            "ANTEROOM_BACKLOG": "1024",
            "ANTEROOM_SHUTDOWN_TIMEOUT": "2.5",
        }
    )
    assert c.redis_url.startswith("redis+sentinel://")
    assert (c.backlog, c.shutdown_timeout) == (1024, 2.5)
    d = load(SECRET)
    assert (d.backlog, d.shutdown_timeout) == (4096, 10.0)


def test_demo_mode_needs_no_secret_and_allows_http() -> None:
    c = load({"ANTEROOM_DEMO": "1"})
    assert c.secrets and c.cookie_secure is False


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({}, "ANTEROOM_SECRETS"),
        ({"ANTEROOM_SECRETS": "short"}, "ANTEROOM_SECRETS"),
        ({**SECRET, "ANTEROOM_CAPACITY": "lots"}, "ANTEROOM_CAPACITY"),
        ({**SECRET, "ANTEROOM_CAPACITY": "-1"}, "ANTEROOM_CAPACITY"),
        ({**SECRET, "ANTEROOM_ADMIT_PER_MINUTE": "1.5"}, "ANTEROOM_ADMIT_PER_MINUTE"),
        ({**SECRET, "ANTEROOM_SESSION_TTL": "0"}, "ANTEROOM_SESSION_TTL"),
        ({**SECRET, "ANTEROOM_GRACE": ""}, "ANTEROOM_GRACE"),
        ({**SECRET, "ANTEROOM_LISTEN": "8081"}, "ANTEROOM_LISTEN"),
        ({**SECRET, "ANTEROOM_LISTEN": "127.0.0.1:99999"}, "ANTEROOM_LISTEN"),
        ({**SECRET, "ANTEROOM_REDIS_URL": "http://x"}, "ANTEROOM_REDIS_URL"),
        ({**SECRET, "ANTEROOM_COOKIE_SECURE": "maybe"}, "ANTEROOM_COOKIE_SECURE"),
        ({**SECRET, "ANTEROOM_LOG_LEVEL": "loud"}, "ANTEROOM_LOG_LEVEL"),
        ({**SECRET, "ANTEROOM_MODE": "sometimes"}, "ANTEROOM_MODE"),
        ({**SECRET, "ANTEROOM_WORKERS": "0"}, "ANTEROOM_WORKERS"),
        ({**SECRET, "ANTEROOM_WORKERS": "many"}, "ANTEROOM_WORKERS"),
        ({**SECRET, "ANTEROOM_CONFIG": "/nonexistent.toml"}, "ANTEROOM_CONFIG"),
        ({"ANTEROOM_SECRETS": "s" * 20}, "ANTEROOM_ADMIN_TOKEN"),
        ({**SECRET, "ANTEROOM_ADMIN_TOKEN": "ops:short"}, "ANTEROOM_ADMIN_TOKEN"),
        ({**SECRET, "ANTEROOM_ADMIN_TOKEN": f"a:{'x' * 16},a:{'y' * 16}"}, "ANTEROOM_ADMIN_TOKEN"),
        ({**SECRET, "ANTEROOM_ADMIN_LISTEN": "9091"}, "ANTEROOM_ADMIN_LISTEN"),
        ({"ANTEROOM_SECRETS": "change-me-to-a-long-random-secret"}, "ANTEROOM_SECRETS"),
        ({"ANTEROOM_SECRETS": "REPLACE_ME_with_32_random_bytes"}, "ANTEROOM_SECRETS"),
        ({"ANTEROOM_SECRETS": "new-secret-0123456789,changeme-changeme"}, "ANTEROOM_SECRETS"),
        ({"ANTEROOM_SECRETS": DEMO_SECRET}, "ANTEROOM_SECRETS"),
        ({**SECRET, "ANTEROOM_BACKLOG": "0"}, "ANTEROOM_BACKLOG"),
        ({**SECRET, "ANTEROOM_SHARED_SESSIONS": "ban"}, "ANTEROOM_SHARED_SESSIONS"),
        ({**SECRET, "ANTEROOM_MAX_ADDRESSES": "0"}, "ANTEROOM_MAX_ADDRESSES"),
        ({**SECRET, "ANTEROOM_SHUTDOWN_TIMEOUT": "forever"}, "ANTEROOM_SHUTDOWN_TIMEOUT"),
        (
            {**SECRET, "ANTEROOM_REDIS_CLUSTER": "1", "ANTEROOM_REDIS_URL": "redis+sentinel://h/m"},
            "ANTEROOM_REDIS_CLUSTER",
        ),
    ],
)
def test_invalid_settings_are_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load(env)


def test_shared_sessions_from_environment_toml_and_overrides(tmp_path: Path) -> None:
    from sidecar.config import QueueSettings, queue_overrides

    env = {"ANTEROOM_SHARED_SESSIONS": "flag", "ANTEROOM_MAX_ADDRESSES": "6"}
    (t,) = load({**SECRET, **env}).tenants
    assert (t.queue_defaults.shared_sessions, t.queue_defaults.max_addresses) == ("flag", 6)
    text = '[tenants.a]\nhosts = ["a.example"]\n[tenants.a.queues.q]\nshared_sessions = "revoke"\n'
    (t,) = load(toml(tmp_path, text)).tenants
    assert t.settings_for("q").shared_sessions == "revoke"
    assert t.settings_for("other").shared_sessions == "allow"  # the default
    changed = queue_overrides({"shared_sessions": "revoke", "max_addresses": "2"}, QueueSettings())
    assert changed == {"shared_sessions": "revoke", "max_addresses": 2}
    with pytest.raises(ConfigError, match="shared_sessions"):
        queue_overrides({"shared_sessions": "sometimes"}, QueueSettings())


def test_admin_tokens_named_for_the_audit_log() -> None:
    c = load({**SECRET, "ANTEROOM_ADMIN_TOKEN": f"alice:{'a' * 16}, {'b' * 16}"})
    assert c.admin_tokens == (("alice", "a" * 16, "admin"), ("token2", "b" * 16, "admin"))
    assert (c.admin_host, c.admin_port) == ("127.0.0.1", 9091)
    off = load({"ANTEROOM_SECRETS": "s" * 20, "ANTEROOM_ADMIN_LISTEN": "off"})
    assert off.admin_port == 0 and off.admin_tokens == ()
    demo = load({"ANTEROOM_DEMO": "1"})
    assert demo.admin_token_generated and len(demo.admin_tokens[0][1]) >= 16


def test_admin_token_roles_and_old_settings_as_admin() -> None:
    raw = f"eve:viewer:{'v' * 16},olga:operator:{'o' * 16},ada:admin:{'a' * 16},"
    raw += f"old:{'x' * 16},{'b' * 16},colon:{'t1' * 4}:{'u' * 8}"
    tokens = load({**SECRET, "ANTEROOM_ADMIN_TOKEN": raw}).admin_tokens
    assert [(t.name, t.role) for t in tokens] == [
        ("eve", "viewer"),
        ("olga", "operator"),
        ("ada", "admin"),
        ("old", "admin"),  # name:token, as before
        ("token5", "admin"),  # a bare token, as before
        ("colon", "admin"),  # a token with a colon in it that names no role
    ]
    assert tokens[0].token == "v" * 16 and tokens[5].token == f"{'t1' * 4}:{'u' * 8}"


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        # a misspelt role never becomes part of an admin's token
        (f"eve:viewr:{'v' * 16}", "ANTEROOM_ADMIN_TOKEN: eve: unknown role 'viewr'"),
        (f"eve:viewer:{'v' * 8}", "ANTEROOM_ADMIN_TOKEN: eve: each token must be at least 16"),
        (f"a:viewer:{'v' * 16},b:admin:{'v' * 16}", "ANTEROOM_ADMIN_TOKEN: b: the same token"),
        (f"a:viewer:{'v' * 16},a:admin:{'w' * 16}", "ANTEROOM_ADMIN_TOKEN: the name 'a'"),
    ],
)
def test_bad_admin_tokens_stop_start_up_naming_the_setting(raw: str, named: str) -> None:
    with pytest.raises(ConfigError) as e:
        load({**SECRET, "ANTEROOM_ADMIN_TOKEN": raw})
    assert str(e.value).startswith(named)


@pytest.mark.parametrize("value", ["/", "/shop/thanks", "/bye?from=queue&x=1", "/a%20b", "/#top"])
def test_leave_to_is_a_same_site_path_everywhere(tmp_path: Path, value: str) -> None:
    text = f'[tenants.a]\nhosts = ["a.example"]\n[tenants.a.queues.q]\nleave_to = "{value}"\n'
    assert load(toml(tmp_path, text)).tenants[0].settings_for("q").leave_to == value
    assert load({**SECRET, "ANTEROOM_LEAVE_TO": value}).tenants[0].queue_defaults.leave_to == value
    assert queue_overrides({"leave_to": value}, QueueSettings()) == {"leave_to": value}


@pytest.mark.parametrize(
    "value",
    [
        "",
        "shop",
        "//evil.example/",
        "/\\evil.example",
        "https://evil.example/",
        "/a b",
        "/é",
        "/x\t/evil",
        "/" + "a" * 600,
    ],
)
def test_leave_to_elsewhere_is_refused_naming_the_setting(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"^ANTEROOM_LEAVE_TO: a path on the same site"):
        load({**SECRET, "ANTEROOM_LEAVE_TO": value})
    with pytest.raises(ConfigError, match="leave_to: a path on the same site"):
        queue_overrides({"leave_to": value}, QueueSettings())
    text = (
        f'[tenants.a]\nhosts = ["a.example"]\n[tenants.a.queues.q]\nleave_to = {json.dumps(value)}'
    )
    with pytest.raises(ConfigError, match=r"^tenants\.a\.queues\.q\.leave_to: a path"):
        load(toml(tmp_path, text))


def test_operator_overrides_follow_the_same_rules() -> None:
    from sidecar.config import OverrideErrors, QueueSettings, queue_overrides

    base = QueueSettings()
    assert queue_overrides({"capacity": "5", "mode": "paused"}, base) == {
        "capacity": 5,
        "mode": "paused",
    }
    with pytest.raises(OverrideErrors) as e:
        queue_overrides({"capacity": 5, "abandon_after": 9, "mode": "x", "colour": 1}, base)
    assert set(e.value.errors) == {"abandon_after", "mode", "colour"}
    assert (
        "at least 10" in e.value.errors["abandon_after"] or "10" in e.value.errors["abandon_after"]
    )


def toml(tmp_path: Path, text: str) -> dict[str, str]:
    p = tmp_path / "anteroom.toml"
    p.write_text(text)
    return {**SECRET, "ANTEROOM_CONFIG": str(p)}


def test_tenants_from_toml(tmp_path: Path) -> None:
    env = toml(
        tmp_path,
        """
[tenants.acme]
hosts = ["shop.acme.test", "Acme.test"]
queue_defaults = { capacity = 50 }
[tenants.acme.queues.checkout]
capacity = 5
admit_per_minute = 30
[tenants.beta]
hosts = ["beta.test"]
""",
    )
    c = load({**env, "ANTEROOM_SESSION_TTL": "100"})
    acme = c.tenant_for_host("acme.test")
    assert acme is not None and acme.name == "acme"
    assert acme.settings_for("checkout").capacity == 5
    assert acme.settings_for("checkout").session_ttl == 100  # environment below TOML
    assert acme.settings_for("browse").capacity == 50
    assert c.tenant_for_host("unknown.test") is None


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[tenants.acme]\nhosts = []", "tenants.acme.hosts"),
        ("[tenants.acme]\nhosts = ['a']\ncolour = 'red'", "tenants.acme.colour"),
        (
            "[tenants.acme]\nhosts = ['a']\n[tenants.acme.queues.q]\ncapacity = 'x'",
            "tenants.acme.queues.q.capacity",
        ),
        (
            "[tenants.acme]\nhosts = ['a']\n[tenants.acme.queues.q]\nmode = 'maybe'",
            "tenants.acme.queues.q.mode",
        ),
        ("[tenants.a]\nhosts = ['x']\n[tenants.b]\nhosts = ['x']", "tenants.b.hosts"),
        ("[tenants.acme\nhosts = ['a']", "ANTEROOM_CONFIG"),
        ("[tenants.acme]\nhosts = ['shop.example:8080']", "tenants.acme.hosts"),
        ("[tenants.acme]\nhosts = ['https://shop.example']", "tenants.acme.hosts"),
        ("[tenants.acme]\nhosts = ['shop.*.example']", "tenants.acme.hosts"),
        (
            "[tenants.a]\nhosts = ['*.x.example']\n[tenants.b]\nhosts = ['*.X.example']",
            "tenants.b.hosts",
        ),
        ("[tenants.acme]\nhosts = ['a']\nlanguage = 'French'", "tenants.acme.language"),
    ],
)
def test_invalid_toml_is_named(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load(toml(tmp_path, text))


def test_startup_stops_with_a_message_naming_the_setting() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "sidecar"],
        env={"PATH": "/usr/bin:/bin", "ANTEROOM_SECRETS": "s" * 20, "ANTEROOM_CAPACITY": "many"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "ANTEROOM_CAPACITY" in r.stderr and "Traceback" not in r.stderr


def test_building_pages_needs_no_secret(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "sidecar", "build-pages", "--out", str(tmp_path)],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    page = tmp_path / "_anteroom" / "waiting" / "default" / "index.html"
    assert "in line" in page.read_text()
    assert load({}, serving=False).tenants  # no ConfigError for the missing secret


def test_from_env_reads_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTEROOM_SECRETS", "x" * 16)
    monkeypatch.setenv("ANTEROOM_ADMIN_TOKEN", "y" * 16)
    monkeypatch.setenv("ANTEROOM_COOKIE_NAME", "queue_pass")
    assert Config.from_env().cookie_name == "queue_pass"


def test_hosts_most_specific_first(tmp_path: Path) -> None:
    c = load(
        toml(
            tmp_path,
            """
[tenants.any]
hosts = ["*"]
[tenants.tix]
hosts = ["tickets.example", "*.tickets.example"]
[tenants.vip]
hosts = ["vip.tickets.example"]
[tenants.eu]
hosts = ["*.eu.tickets.example"]
[tenants.v6]
hosts = ["[::1]", "127.0.0.1"]
""",
        )
    )
    expect = {
        "tickets.example": "tix",
        "a.tickets.example": "tix",
        "a.b.tickets.example": "tix",
        "vip.tickets.example": "vip",  # an exact name beats any wildcard
        "eu.tickets.example": "tix",  # *.eu.… is for subdomains of eu only
        "fr.eu.tickets.example": "eu",  # the nearer wildcard wins
        "x.fr.eu.tickets.example": "eu",
        "tickets.example.org": "any",
        "xtickets.example": "any",
        "[::1]": "v6",
        "127.0.0.1": "v6",
        "": "any",
    }
    for host, name in expect.items():
        tenant = c.tenant_for_host(host)
        assert tenant is not None and tenant.name == name, host


def test_no_catch_all_means_unknown_hosts_have_no_tenant(tmp_path: Path) -> None:
    c = load(toml(tmp_path, "[tenants.tix]\nhosts = ['*.tickets.example']"))
    assert c.tenant_for_host("tickets.example") is None
    assert c.tenant_for_host("evil.example") is None
    tenant = c.tenant_for_host("a.tickets.example")
    assert tenant is not None and tenant.name == "tix"


def test_a_tenant_language_the_theme_lacks_is_named(tmp_path: Path) -> None:
    from sidecar.pages.themes import build_pages

    c = load(toml(tmp_path, "[tenants.acme]\nhosts = ['a']\nlanguage = 'de'"), serving=False)
    with pytest.raises(ConfigError, match=r"tenants\.acme\.language: .*'de'.*en, fr"):
        build_pages(c, tmp_path / "out")


def test_pages_build_is_build_pages_and_publish_names_missing_settings(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [sys.executable, "-m", "sidecar", "pages", "build", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "_anteroom" / "waiting" / "default" / "index.fr.html").is_file()
    r = subprocess.run(
        [sys.executable, "-m", "sidecar", "pages", "publish"],
        env={**env, "ANTEROOM_S3_ENDPOINT": "https://s3.example", "ANTEROOM_S3_BUCKET": "b"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "ANTEROOM_S3_BUCKET" in r.stderr


def test_opens_at_and_join_budget_from_env_toml_and_overrides(tmp_path: Path) -> None:
    from sidecar.config import QueueSettings, queue_overrides

    env = {
        **SECRET,
        "ANTEROOM_OPENS_AT": "2026-12-01T09:00:00Z",
        "ANTEROOM_JOINS_PER_ADDRESS": "30",
    }
    s = load(env).tenants[0].settings_for("q")
    assert (s.opens_at, s.joins_per_address) == (1796115600, 30)
    assert load({**SECRET, "ANTEROOM_OPENS_AT": ""}).tenants[0].queue_defaults.opens_at == 0
    toml = tmp_path / "a.toml"
    toml.write_text(
        '[tenants.a]\nhosts = ["a.test"]\n'
        "[tenants.a.queues.sale]\nopens_at = 2026-12-01T10:00:00+01:00\n"
        '[tenants.a.queues.later]\nopens_at = "1796119200"\njoins_per_address = 5\n'
    )
    (t,) = load({**SECRET, "ANTEROOM_CONFIG": str(toml)}).tenants
    assert t.settings_for("sale").opens_at == 1796115600
    assert (t.settings_for("later").opens_at, t.settings_for("later").joins_per_address) == (
        1796119200,
        5,
    )
    # the admin API and CLI: ISO or unix seconds in, unix seconds stored; 0 or "" = none
    base = QueueSettings()
    assert queue_overrides({"opens_at": "2026-12-01T09:00:00Z"}, base) == {"opens_at": 1796115600}
    assert queue_overrides({"opens_at": ""}, base) == {"opens_at": 0}
    assert queue_overrides({"joins_per_address": "30"}, base) == {"joins_per_address": 30}


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("2026-12-01T09:00:00", "time zone"),  # no zone: refused, never guessed
        ("next friday", "ISO-8601"),
        ("-5", "ISO-8601"),
        ("999999999999", "between"),
    ],
)
def test_bad_opens_at_is_named(value: str, named: str) -> None:
    with pytest.raises(ConfigError, match=f"ANTEROOM_OPENS_AT: .*{named}"):
        load({**SECRET, "ANTEROOM_OPENS_AT": value})


def test_bad_join_budget_is_named() -> None:
    from sidecar.config import OverrideErrors, QueueSettings, queue_overrides

    with pytest.raises(ConfigError, match="ANTEROOM_JOINS_PER_ADDRESS"):
        load({**SECRET, "ANTEROOM_JOINS_PER_ADDRESS": "-1"})
    with pytest.raises(OverrideErrors) as e:
        queue_overrides({"joins_per_address": "lots", "opens_at": "soon"}, QueueSettings())
    assert set(e.value.errors) == {"joins_per_address", "opens_at"}


def test_closed_mode_closes_at_message_and_link_everywhere(tmp_path: Path) -> None:
    text = (
        '[tenants.a]\nhosts = ["a.example"]\n[tenants.a.queues.q]\nmode = "closed"\n'
        "opens_at = 2026-12-01T09:00:00Z\ncloses_at = 2026-12-01T10:00:00Z\n"
        'message = "  Sold <b>out</b>\\nSee you  "\nmessage_fr = "Épuisé"\n'
        'closed_link = "https://tickets.example/next"\n'
    )
    s = load(toml(tmp_path, text)).tenants[0].settings_for("q")
    assert (s.mode, s.closes_at - s.opens_at) == ("closed", 3600)
    assert s.message == "Sold <b>out</b>\nSee you"  # plain text, kept as written
    assert (s.message_for("fr"), s.message_for("de")) == ("Épuisé", s.message)
    assert s.closed_link == "https://tickets.example/next"
    env = {**SECRET, "ANTEROOM_CLOSES_AT": "2000000000", "ANTEROOM_MESSAGE": "Hi"}
    d = load(env).tenants[0].queue_defaults
    assert (d.closes_at, d.message) == (2_000_000_000, "Hi")
    assert queue_overrides(
        {"mode": "closed", "message_de": "Ausverkauft", "closed_link": "/events/"}, QueueSettings()
    ) == {"mode": "closed", "message_de": "Ausverkauft", "closed_link": "/events/"}


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("message", "x" * 281, "at most 280 characters"),
        ("message", "bell\a", "without control characters"),
        ("message_fr", 5, "plain text"),
        ("closed_link", "javascript:alert(1)", "a path on the site"),
        ("closed_link", "//evil.example/", "a path on the site"),
        ("closes_at", "tomorrow", "ISO-8601"),
        ("message_french", "Bonjour", "not a setting that can be changed"),
    ],
)
def test_bad_texts_and_times_are_refused_naming_the_setting(
    key: str, value: object, says: str
) -> None:
    with pytest.raises(ConfigError, match=f"{key}: .*{says}"):
        queue_overrides({key: value}, QueueSettings())


def test_closes_at_must_come_after_opens_at(tmp_path: Path) -> None:
    text = (
        '[tenants.a]\nhosts = ["a.example"]\n[tenants.a.queues.q]\n'
        "opens_at = 2000\ncloses_at = 1000\n"
    )
    with pytest.raises(
        ConfigError, match=r"^tenants\.a\.queues\.q: closes_at \(1000\) must come after"
    ):
        load(toml(tmp_path, text))


@pytest.mark.parametrize(
    ("pattern", "valid"),
    [
        ("sidecar.config.NAME_RE", "shop"),
        ("sidecar.config.LANGUAGE_RE", "fr"),
        ("sidecar.config.HOST_RE", "shop.example"),
        ("sidecar.config.IPV6_RE", "[::1]"),
        ("sidecar.config.MESSAGE_VARIANT_RE", "message_fr"),
        ("sidecar.web.http.CODE_RE", "a" * 22),
        ("sidecar.web.challenge.COUNTER_RE", "42"),
        ("sidecar.control.admin.SID_RE", "Vq_12oj"),
        ("sidecar.pages.themes.HASHED_RE", "waiting.0123456789.css"),
    ],
)
def test_no_pattern_takes_a_trailing_newline(pattern: str, valid: str) -> None:
    """A value from a URL, header or form ("shop%0A") is the name it checks, or
    refused: ``$`` would also match before a final newline."""
    import importlib

    module, _, name = pattern.rpartition(".")
    regex = getattr(importlib.import_module(module), name)
    assert regex.search(valid) and not regex.search(valid + "\n")
