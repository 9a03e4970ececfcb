"""Every client-controlled byte that reaches the sidecar passes one filter (issue
16 item 5): a control character in a header on the public endpoints gets a brief
answer through nginx, never a 400 echoing it nor an error-level traceback per
request in the sidecar's log; sent straight to the sidecar, its log says so at
most once a minute."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from devstack.stack import Stack
from tests.conftest import make_stack

pytestmark = pytest.mark.integration

MARK = b"zq-mark-7"
ENDPOINTS = [
    ("GET", "/_anteroom/status"),
    ("GET", "/_anteroom/status?queue=shop"),
    ("POST", "/_anteroom/join?queue=shop"),
    ("POST", "/_anteroom/leave"),
    ("POST", "/_anteroom/keepalive"),
    ("GET", "/_anteroom/continue?queue=shop&return_to=/shop/"),
]
HEADERS = ["Cookie", "Accept", "Authorization", "User-Agent", "X-Forwarded-For", "Origin"]


@pytest.fixture(scope="module")
def public_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = make_stack(tmp_path_factory.mktemp("public"))
    yield s
    s.stop()


async def raw(port: int, request: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 request as raw bytes (clients refuse to send control characters)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data


def request(method: str, path: str, header: str, value: bytes) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n"
        f"Connection: close\r\n{header}: ".encode()
        + value
        + b"\r\n\r\n"
    )


def errors_in(stack: Stack) -> list[str]:
    log = (stack.workdir / "sidecar.log").read_text(errors="replace")
    return [
        line
        for line in log.splitlines()
        if "Traceback" in line or "Error handling request" in line or '"level": "error"' in line
    ]


@pytest.mark.parametrize("header", HEADERS)
@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_a_control_character_through_nginx_is_never_echoed_nor_logged(
    public_stack: Stack, method: str, path: str, header: str
) -> None:
    before = len(errors_in(public_stack))
    value = b"anteroom_shop=<" + MARK + b">\x01\x7f"
    status, answer = await raw(public_stack.site_port, request(method, path, header, value))
    assert status and status < 500 and status != 400, answer[:300]
    assert MARK not in answer
    assert len(errors_in(public_stack)) == before, errors_in(public_stack)[before:]


@pytest.mark.parametrize(
    "path",
    [
        "/_anteroom/status?queue=%01%0d%0aX:%20" + MARK.decode(),
        "/_anteroom/continue?queue=shop&return_to=%0d%0aLocation:%20//evil.example/",
        "/_anteroom/leave?return_to=//evil.example/",
        "/_anteroom/status?queue=" + "a" * 5000,
    ],
)
async def test_odd_query_strings_get_a_plain_answer(public_stack: Stack, path: str) -> None:
    before = len(errors_in(public_stack))
    method = "POST" if "leave" in path else "GET"
    status, answer = await raw(public_stack.site_port, request(method, path, "X-A", b"1"))
    head = answer.split(b"\r\n\r\n", 1)[0]
    assert status and status < 500, answer[:300]
    assert b"evil.example" not in head and MARK not in head
    assert len(errors_in(public_stack)) == before, errors_in(public_stack)[before:]


async def test_straight_to_the_sidecar_the_log_says_it_once_a_minute(
    public_stack: Stack,
) -> None:
    before = len(errors_in(public_stack))
    log = public_stack.workdir / "sidecar.log"
    lines_before = len(log.read_text(errors="replace").splitlines())
    for _ in range(20):
        status, _answer = await raw(
            public_stack.sidecar_port,
            request("GET", "/_anteroom/status", "Cookie", b"a=<" + MARK + b">\x01"),
        )
        assert status == 400
    new = log.read_text(errors="replace").splitlines()[lines_before:]
    assert len(errors_in(public_stack)) == before, errors_in(public_stack)[before:]
    noted = [line for line in new if "malformed requests refused" in line]
    assert len(noted) <= 1, noted
    assert not any(MARK.decode() in line for line in new)
