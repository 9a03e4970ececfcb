from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from sidecar.web.http import decoded, host_name, plain_query, safe_path
from sidecar.web.tokens import ADMITTED, WAITING, Signer, Token, cookie_value

OLD, NEW = b"old-secret-0123456789abcdef", b"new-secret-0123456789abcdef"
T = Token(
    "acme", "checkout", WAITING, 42, "sid-1", 1000, 2000, "/cart?item=1&q=a b|c", "1700000000123456"
)


def test_round_trip_keeps_every_field() -> None:
    s = Signer((NEW,))
    assert s.loads(s.dumps(T)) == T
    admitted = Token("acme", "checkout", ADMITTED, 1, "x", 1, 2)
    assert s.loads(s.dumps(admitted)) == admitted


def test_a_place_without_its_epoch_is_no_place() -> None:
    s = Signer((NEW,))
    assert s.loads(s.dumps(Token("acme", "checkout", WAITING, 1, "x", 1, 2))) is None
    # the format before epochs (nine fields), even well signed, is no token
    old = "1|acme|checkout|w|1|x|1|2|/"
    assert s.loads(old + "|" + s._mac(NEW, old.encode())) is None


def test_rotation_first_signs_all_verify() -> None:
    issued_before = Signer((OLD,)).dumps(T)
    rotated = Signer((NEW, OLD))
    assert rotated.loads(issued_before) == T
    assert Signer((OLD,)).loads(rotated.dumps(T)) is None  # new tokens use the new key
    assert Signer((NEW,)).loads(issued_before) is None  # retired key: no longer valid


@pytest.mark.parametrize(
    "mutate",
    [
        lambda raw: raw[:-1],
        lambda raw: raw[: len(raw) // 2],
        lambda raw: raw.replace("|w|", "|a|"),  # waiting promoted to admitted
        lambda raw: raw.replace("|42|", "|1|"),  # jump the line
        lambda raw: raw + "x",
        lambda raw: "",
        lambda raw: "|",
        lambda raw: "é" + raw,
        lambda raw: "1" + raw[1:],  # another format version
        lambda raw: "x" * 5000,
    ],
)
def test_tampered_tokens_are_rejected(mutate) -> None:
    s = Signer((NEW,))
    assert s.loads(mutate(s.dumps(T))) is None


def test_cookie_safe_characters_only() -> None:
    raw = Signer((NEW,)).dumps(T)
    assert all(c.isalnum() or c in "|%/-_." for c in raw), raw


@pytest.mark.parametrize(
    "value",
    ["/", "/shop/", "/shop/item?id=1&x=%2F%2F", "/a/b#frag", "/%5Cevil"],
)
def test_safe_paths_pass(value: str) -> None:
    assert safe_path(value) == value


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "shop",
        "//evil.example",
        "///evil.example",
        "https://evil.example",
        "/\\evil.example",
        "\\/evil.example",
        "/\t/evil.example",
        "/\n/evil.example",
        "/ /evil",
        "/é",
    ],
)
def test_unsafe_paths_refused(value: str | None) -> None:
    assert safe_path(value) is None


def test_long_return_to_is_cut_so_its_token_fits() -> None:
    """A path too long to carry in a cookie and a Location header becomes a shorter
    one on the same site, so its visitor still gets a place (issue: long URLs)."""
    assert safe_path("/shop/?q=" + "%2F" * 1000) == "/shop/"
    assert safe_path("/" + "a" * 3000) == "/"
    signer = Signer((NEW,))
    for value in ("/shop/?q=" + "%2F" * 1000, "/" + "%" * 1023, "/" + "a" * 1023):
        path = safe_path(value)
        assert path is not None
        t = Token("acme", "checkout", WAITING, 10**9, "s" * 16, 1, 2, path, "1" * 16)
        raw = signer.dumps(t)
        assert signer.loads(raw) == t and len(raw) < 1300


def test_non_ascii_signature_is_no_token() -> None:
    """``abc|é`` once raised TypeError in compare_digest: every malformed token is
    simply no token."""
    s = Signer((NEW,))
    for raw in ("abc|é", s.dumps(T)[:-1] + "é", "é|é", "\udcff|x"):
        assert s.loads(raw) is None


def test_host_name() -> None:
    assert host_name("Shop.Example:8080") == "shop.example"
    assert host_name("[::1]:8080") == "[::1]"
    assert host_name("127.0.0.1") == "127.0.0.1"
    assert host_name("shop.example.:443") == "shop.example"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("anteroom=abc", "abc"),
        ("a=1; anteroom=abc|d%2F; b=2", "abc|d%2F"),
        ('anteroom="quoted"', "quoted"),
        ("xanteroom=no; anteroom=yes", "yes"),
        ("anteroom_x=no", None),
        ("", None),
        ("anteroom", None),
        ("x=" + "anteroom=" * 50 + "; anteroom=yes", "yes"),
        (" " * 100 + "anteroom=yes", "yes"),
        ("a=b anteroom=no; \t anteroom=yes", "yes"),
        (";" * 100 + "anteroom=yes", "yes"),
    ],
)
def test_cookie_value(header: str, expected: str | None) -> None:
    assert cookie_value(header, "anteroom") == expected


def _parsed_cookie_value(header: str, name: str) -> str | None:
    """The plain reading of a Cookie header cookie_value's scan must agree with."""
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
    return None


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["anteroom", "xanteroom", "anteroom_x", "a", ""]),
            st.sampled_from(["=", "", "=="]),
            st.text(alphabet=' "=;\t\x0banteroom|%', max_size=12),
        ),
        max_size=6,
    ),
    st.sampled_from(["; ", ";", " ; ", ";\t", "; \x0b"]),
)
def test_cookie_value_reads_as_a_parse_would(
    parts: list[tuple[str, str, str]], separator: str
) -> None:
    """The scan finds exactly what splitting the header would: the first cookie of
    that name, never the tail of another cookie's name or value."""
    header = separator.join(f"{k}{sep}{v}" for k, sep, v in parts)
    assert cookie_value(header, "anteroom") == _parsed_cookie_value(header, "anteroom")


def test_verified_waiting_tokens_are_kept_and_bounded() -> None:
    """A waiter's poll costs no HMAC after the first: the verified token is kept, apart
    from admitted ones, bounded; expiry stays the caller's check on every use."""
    from sidecar.web import tokens

    s = Signer((NEW,))
    waiting = Token("acme", "q", WAITING, 5, "sid-w", 1, 2, "/shop/", "1" * 16)
    raw = s.dumps(waiting)
    first = s.loads(raw)
    assert first == waiting and s.loads(raw) is first  # the second read is the cached one
    assert s.loads(raw[:-1] + ("A" if raw[-1] != "A" else "B")) is None  # never by prefix
    long = s.dumps(Token("acme", "q", WAITING, 5, "sid-w", 1, 2, "/" + "a" * 400, "e"))
    assert s.loads(long) is not None and s.loads(long) is not s.loads(long)  # not kept
    for n in range(tokens.VERIFIED_CACHE_SIZE + 1):
        s.loads(s.dumps(Token("acme", "q", WAITING, n, "sid", 1, 2, "/", "e")))
    assert len(s._waiting) <= tokens.VERIFIED_CACHE_SIZE
    assert s._verified == {}  # a crowd of waiters never pushes out admitted cookies


def _parsed_query_value(target: str, name: str) -> str | None:
    """What aiohttp's request parser and yarl make of an origin-form target."""
    target, _, fragment = target.partition("#")
    path, _, query = target.partition("?")
    url = URL.build(path=path, query_string=query, fragment=fragment, encoded=True)
    return url.query.get(name)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["queue", "lang", "q%75eue", "queue+", "x", ""]),
            st.sampled_from(["=", "", "=="]),
            st.text(alphabet="shop%2F+=?#;&a", max_size=8),
        ),
        max_size=5,
    ),
    st.sampled_from(["queue", "lang"]),
)
@settings(max_examples=500)
def test_plain_query_reads_as_the_full_parse(pairs: list[tuple[str, str, str]], name: str) -> None:
    """A poll's parameters read from the raw target are the parsed query's, or the
    raw reading says it cannot tell."""
    target = "/_anteroom/status?" + "&".join(f"{k}{sep}{v}" for k, sep, v in pairs)
    params = plain_query(target)
    if params is not None:
        value = params.get(name)
        if value is None or decoded(value):
            assert value == _parsed_query_value(target, name)


def test_plain_query_defers_what_needs_decoding() -> None:
    assert plain_query("/s?queue=shop&return_to=%2Fshop%2F&queue=x") == {
        "queue": "shop",
        "return_to": "%2Fshop%2F",
    }
    assert plain_query("/s?q%75eue=shop") is None
    assert plain_query("http://x/s?queue=shop") is None
    assert plain_query("/s") == {}
    assert plain_query("/s?lang=fr#&queue=x") == {"lang": "fr"}
    assert plain_query("/s#?queue=x") == {}  # all fragment
    assert not decoded("%2Fshop") and not decoded("a+b") and decoded("shop")
