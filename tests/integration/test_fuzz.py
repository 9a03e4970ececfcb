"""Fuzzing the edge: random and hostile requests through real nginx to a gated
location and every ``/_anteroom/`` endpoint. Whatever arrives:

- never a 5xx;
- never an admission (a 2xx from a gated location) without a valid admitted
  token for that queue (the queue is paused, so nobody new is let in);
- never a ``Location`` (or a JSON ``redirect``) that leaves the site;
- never a marker from the request unescaped in an HTML page or a header.

Requests go over raw sockets, so header values can be any bytes. Seeds are
fixed (``derandomize``) and examples bounded; the counts are printed.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis

from devstack.stack import Stack
from sidecar.queue.keys import queue_keys
from sidecar.web.http import host_name
from sidecar.web.tokens import ADMITTED, WAITING, Signer, Token
from tests.conftest import SECRET
from tests.visitors import COOKIE

pytestmark = pytest.mark.integration

QUEUE = "fuzz"
GATED = f"/q/{QUEUE}/"
MARKER = "<x-fz>"
SIGNER = Signer((SECRET.encode(),))
FOREIGN = Signer((b"not-our-secret-0123456789",))
FUZZ = settings(
    derandomize=True,  # fixed seed: the same inputs on every run
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
ENDPOINTS = [
    ("GET", "/_anteroom/status"),
    ("GET", "/_anteroom/continue"),
    ("POST", "/_anteroom/leave"),
    ("POST", "/_anteroom/keepalive"),
    ("POST", "/_anteroom/join"),
    ("GET", "/_anteroom/waiting/acme/"),
    ("GET", "/_anteroom/auth"),  # internal: never reachable from outside
]


def token(state: str = ADMITTED, queue: str = QUEUE, tenant: str = "acme", **kw) -> str:
    now = int(time.time())
    fields = {"ticket": 1, "sid": "fuzz-sid-0001", "iat": now, "exp": now + 3600, **kw}
    return SIGNER.dumps(Token(tenant, queue, state, **fields))  # type: ignore[arg-type]


VALID = token()


TENANTS = {"127.0.0.1": "acme", "localhost": "beta"}  # tests/conftest.py's SITE_TOML


def is_valid_place(raw: str, host: str) -> bool:
    """A signed, unexpired token of this site and queue, waiting or admitted."""
    tok = SIGNER.loads(raw)
    return (
        tok is not None
        and tok.tenant == TENANTS.get(host_name(host))
        and tok.queue == QUEUE
        and tok.exp > time.time()
    )


def is_valid_admission(raw: str, host: str) -> bool:
    """What the gate must require: signed by us, admitted, this site and queue, unexpired."""
    tok = SIGNER.loads(raw)
    return (
        tok is not None
        and tok.admitted
        and tok.tenant == TENANTS.get(host_name(host))
        and tok.queue == QUEUE
        and tok.exp > time.time()
    )


# -- raw HTTP over loopback ---------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def send(port: int, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> Reply:
    lines = [method + b" " + target + b" HTTP/1.1"]
    lines += [k + b": " + v for k, v in headers]
    lines += [b"Connection: close", b"Content-Length: 0", b"", b""]
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(b"\r\n".join(lines))
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ")
    assert len(parts) >= 2 and parts[0].startswith("HTTP/1."), raw[:200]
    reply = Reply(int(parts[1]), body=body)
    for line in header_lines:
        k, _, v = line.partition(":")
        reply.headers.append((k.strip(), v.strip()))
    return reply


def on_site(location: str) -> bool:
    """A same-site relative path a browser cannot read as another host."""
    if not location.startswith("/") or location.startswith("//"):
        return False
    if "\\" in location or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in location):
        return False
    parts = urlsplit(location)
    return not parts.scheme and not parts.netloc


# -- strategies --------------------------------------------------------------------

printable = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
latin = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")


def mutate(raw: str) -> st.SearchStrategy[str]:
    return st.one_of(
        st.integers(0, len(raw) - 1).map(lambda i: raw[:i]),
        st.tuples(st.integers(0, len(raw) - 1), printable).map(
            lambda t: raw[: t[0]] + t[1] + raw[t[0] + 1 :]
        ),
        st.text(printable, max_size=20).map(lambda s: raw + s),
        st.just(raw.replace("|a|", "|w|")),
    )


# tokens with ASCII signatures only: a non-ASCII one is a known crash (issue 7, item 3)
tokens = st.one_of(
    st.just(VALID),
    mutate(VALID),
    st.just(token(state=WAITING, epoch="1700000000000000")),  # a place of another epoch
    st.just(token(queue="other")),
    st.just(token(tenant="beta")),
    st.just(token(exp=int(time.time()) - 10)),
    st.just(FOREIGN.dumps(Token("acme", QUEUE, ADMITTED, 1, "x", 0, 2**31))),
    st.just(token(return_to="/" + MARKER)),
    st.text(printable, max_size=64),
    st.text(printable, min_size=4000, max_size=6000),
    st.just('"' + VALID + '"'),
    st.just(""),
)

cookie_headers = st.one_of(
    st.none(),
    tokens.map(lambda t: f"{COOKIE}={t}"),
    tokens.map(lambda t: f"{COOKIE}_{QUEUE}={t}"),
    st.lists(tokens, min_size=2, max_size=4).map(
        lambda ts: "; ".join(f"{COOKIE}_{QUEUE}={t}" for t in ts)
    ),
    st.text(printable, max_size=200),
)
authorization = st.one_of(
    st.none(), tokens.map(lambda t: "Bearer " + t), st.text(latin, max_size=80)
)

# no control characters here: those are a known 500 (issue 7, item 12), tested below
header_values = st.one_of(
    st.text(latin, max_size=100),
    st.text(latin, min_size=7000, max_size=9000),
    st.binary(max_size=60).map(lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F)),
    st.just(MARKER),
)
extra_headers = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "X-Note",
                "X-Anteroom-Queue",
                "X-Original-URI",
                "X-Original-Method",
                "X-Real-IP",
                "X-Forwarded-For",
                "X-Forwarded-Proto",
                "Accept",
                "User-Agent",
                "Referer",
                "Origin",
                "Content-Type",
            ]
        ),
        header_values,
    ),
    max_size=4,
)
hosts = st.one_of(
    st.just("127.0.0.1"),
    st.just("127.0.0.1"),
    st.sampled_from(["localhost", "LOCALHOST.", "127.0.0.1:1", "[::1]", "evil.test"]),
    st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/"), max_size=40
    ),
)
methods = st.one_of(
    st.sampled_from(["GET", "GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    st.text(st.characters(min_codepoint=0x41, max_codepoint=0x5A), min_size=1, max_size=12),
)
# return_to up to 500 characters: longer ones are a known failure (issue 7, item 11)
return_tos = st.one_of(
    st.sampled_from(
        [
            "//evil.test/",
            "/\\evil.test",
            "https://evil.test/",
            "/%2F%2Fevil.test",
            "/\t/evil.test",
            "javascript:alert(1)",
            "/" + MARKER,
            "/q/fuzz/?a=1&b=2",
            "",
            "%00",
            "/caf\u00e9",
        ]
    ),
    st.text(latin, max_size=500),
)
queries = st.one_of(
    st.just(""),
    return_tos.map(lambda r: "return_to=" + quote(r, safe="")),
    return_tos.map(lambda r: "return_to=" + quote(r, safe="/:?&=")),
    st.sampled_from(["queue=" + QUEUE, "queue=" + MARKER, "return_to=/a&return_to=//evil.test"]),
    st.text(printable, max_size=100).map(lambda q: quote(q, safe="=&")),
)
# path suffixes without dot segments or encoded dots/slashes: those are issue 7, item 8
suffixes = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=".%?#/\\"),
    max_size=30,
)


@dataclass
class Attempt:
    method: str
    path: str
    query: str
    host: str
    cookie: str | None
    authorization: str | None
    headers: list[tuple[str, str | bytes]]

    def wire(self) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
        target = self.path + ("?" + self.query if self.query else "")
        headers: list[tuple[bytes, bytes]] = [(b"Host", self.host.encode("latin-1"))]
        if self.cookie is not None:
            headers.append((b"Cookie", self.cookie.encode("latin-1")))
        if self.authorization is not None:
            headers.append((b"Authorization", self.authorization.encode("latin-1")))
        for k, v in self.headers:
            headers.append((k.encode(), v if isinstance(v, bytes) else v.encode("latin-1")))
        return self.method.encode(), target.encode("latin-1"), headers

    def presented_tokens(self) -> list[str]:
        found = []
        if self.cookie:
            found += re.findall(rf"{COOKIE}(?:_{QUEUE})?=([^;]*)", self.cookie)
        if self.authorization and self.authorization.startswith("Bearer "):
            found.append(self.authorization[7:].strip())
        return [t.strip().strip('"') for t in found]


attempts = st.builds(
    Attempt,
    method=methods,
    path=st.one_of(
        suffixes.map(lambda s: GATED + s),
        st.sampled_from([p for _, p in ENDPOINTS]),
    ),
    query=queries,
    host=hosts,
    cookie=cookie_headers,
    authorization=authorization,
    headers=extra_headers,
)


def check(a: Attempt, r: Reply) -> None:
    """The promises, for any request."""
    assert r.status < 500, (r.status, a, r.body[:300])
    gated = a.path.startswith(GATED) and a.method not in ("OPTIONS",)
    if gated and 200 <= r.status < 300:
        assert any(is_valid_admission(t, a.host) for t in a.presented_tokens()), ("admitted", a)
    if gated and r.status == 302:
        # sent to wait: with a place in line (a cookie), unless it already holds one
        holds_place = any(is_valid_place(t, a.host) for t in a.presented_tokens())
        assert holds_place or r.header("Set-Cookie"), ("waiting without a place", a)
    for location in r.header("Location"):
        assert on_site(location), ("off-site Location", location, a)
    content_type = ";".join(r.header("Content-Type"))
    if "json" in content_type and r.body and r.status != 204:
        text = r.body.decode("utf-8", "replace")
        body = json.loads(text[text.find("{") : text.rfind("}") + 1])
        redirect = body.get("redirect") or body.get("location")
        if isinstance(redirect, str):
            assert on_site(redirect), ("off-site redirect", redirect, a)
    if "html" in content_type:
        assert MARKER.encode() not in r.body, ("unescaped in page", a)
    for name, value in r.headers:
        assert MARKER not in value, ("unescaped in header", name, a)


def probe(stack: Stack, counts: Counter[int], a: Attempt) -> None:
    """Sends one attempt through nginx, counts its answer and checks the promises."""
    reply = send(stack.site_port, *a.wire())
    counts[reply.status] += 1
    check(a, reply)


@pytest.fixture(scope="module")
def paused(stack: Stack) -> Iterator[Stack]:
    """The fuzzed queue admits nobody new: any admission must come from a token."""
    with Redis.from_url(stack.redis_url) as r:
        for tenant in TENANTS.values():
            r.hset(queue_keys(tenant, QUEUE).settings, "mode", "paused")
    # the override reaches the sidecar within a refresh; the gate must see it first
    for host in TENANTS:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            reply = send(stack.site_port, b"GET", GATED.encode(), [(b"Host", host.encode())])
            if reply.status == 302:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"the fuzzed queue of {host} did not pause")
    yield stack


def report(name: str, counts: Counter[int]) -> None:
    total = sum(counts.values())
    print(f"\nfuzz {name}: {total} inputs tried; answers {dict(sorted(counts.items()))}")


def test_fuzz_the_edge(paused: Stack) -> None:
    # the oracle works: a valid admitted token passes, nothing else does
    ok = send(
        paused.site_port,
        b"GET",
        GATED.encode(),
        [(b"Host", b"127.0.0.1"), (b"Cookie", f"{COOKIE}_{QUEUE}={VALID}".encode())],
    )
    assert ok.status == 200 and b'data-origin="demo"' in ok.body
    counts: Counter[int] = Counter()

    @FUZZ
    @given(attempts)
    def run(a: Attempt) -> None:
        probe(paused, counts, a)

    run()
    report("edge", counts)
    assert sum(counts.values()) >= 100


# -- the line-integrity findings (issue 7), each fuzzed on its own ------------------


def test_fuzz_control_characters_in_headers(paused: Stack) -> None:
    counts: Counter[int] = Counter()

    @settings(FUZZ, max_examples=40)
    @given(
        st.binary(min_size=1, max_size=30).map(
            lambda b: bytes(c for c in b if c not in (0x0A, 0x0D, 0x00)) or b"\x01"
        ),
        st.sampled_from([GATED, "/_anteroom/status"]),
        st.sampled_from(["X-Note", "Cookie", "Authorization"]),
    )
    def run(value: bytes, path: str, header: str) -> None:
        if header == "Cookie":
            value = f"{COOKIE}_{QUEUE}=".encode() + value
        elif header == "Authorization":
            value = b"Bearer " + value
        a = Attempt("GET", path, "", "127.0.0.1", None, None, [(header, value)])
        probe(paused, counts, a)

    try:
        run()
    finally:
        report("control characters", counts)


def test_fuzz_non_ascii_token_signatures(paused: Stack) -> None:
    counts: Counter[int] = Counter()

    @settings(FUZZ, max_examples=40)
    @given(st.text(latin, min_size=1, max_size=20), st.sampled_from(["cookie", "bearer"]))
    def run(signature: str, where: str) -> None:
        raw = VALID.rpartition("|")[0] + "|" + signature
        cookie = f"{COOKIE}_{QUEUE}={raw}" if where == "cookie" else None
        bearer = "Bearer " + raw if where == "bearer" else None
        a = Attempt("GET", GATED, "", "127.0.0.1", cookie, bearer, [])
        probe(paused, counts, a)

    try:
        run()
    finally:
        report("non-ASCII signatures", counts)


def test_fuzz_long_return_to(paused: Stack) -> None:
    counts: Counter[int] = Counter()

    # up to the 2,048 characters the gate keeps; letters, or %-escapes (3 bytes each)
    @settings(FUZZ, max_examples=30)
    @given(
        st.integers(600, 2030),
        st.sampled_from(["a", "%C3%A9", "%3C"]),
        st.sampled_from(["gate", "status", "continue"]),
    )
    def run(size: int, unit: str, where: str) -> None:
        text = unit * (size // len(unit))
        if where == "gate":
            a = Attempt("GET", GATED + "x", "r=" + text, "127.0.0.1", None, None, [])
        else:
            q = "return_to=" + quote(GATED + "?r=" + text, safe="")
            a = Attempt("GET", "/_anteroom/" + where, q, "127.0.0.1", None, None, [])
        probe(paused, counts, a)

    try:
        run()
    finally:
        report("long return_to", counts)


def test_fuzz_dot_segments(paused: Stack) -> None:
    counts: Counter[int] = Counter()
    tricks = ["..", "%2e%2e", "%2E.", ".%2e", "..;", "./..", "..%2f", "%2e%2e%2f.."]

    @settings(FUZZ, max_examples=30)
    @given(st.sampled_from(tricks), st.sampled_from(["GET", "POST", "HEAD"]), st.integers(1, 3))
    def run(dots: str, method: str, depth: int) -> None:
        # nginx matches the normalised path (ungated) but forwards the raw one: an
        # origin that routes it under /q/fuzz/ serves the gated page
        path = f"{GATED}{'a/' * (depth - 1)}{(dots + '/') * depth}"
        a = Attempt(method, path, "", "127.0.0.1", None, None, [])
        probe(paused, counts, a)

    try:
        run()
    finally:
        report("dot segments", counts)
