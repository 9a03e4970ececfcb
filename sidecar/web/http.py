"""What the endpoints read from a request and the plain answers they give.

Shared by the auth endpoint (gate) and the public endpoints (status): the
client address nginx passes, the Host as the tenant table knows it, the
same-site return path, and answers that are never cached.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import web

from ..config import NAME_RE

NO_STORE = {"Cache-Control": "no-store"}
# return_to travels %-escaped in the cookie and again in the Location header;
# bounded so both fit nginx's default 4 KB header buffer with room to spare.
MAX_RETURN_TO = 1024
# An access code rides on the gated link (…?anteroom_code=…): nginx passes the
# whole URI in X-Original-URI. Codes are secrets.token_urlsafe(16): 22 characters.
CODE_PARAM = "anteroom_code"
CODE_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}\Z")


def safe_path(value: str | None) -> str | None:
    """``value`` if it is a same-site relative path, else None (no open redirects).

    Refuses scheme-relative (``//host``), backslash tricks (``/\\host``, which
    browsers read as ``//host``), control characters and spaces (browsers drop
    tabs and newlines, turning ``/\\t/host`` into ``//host``) and non-ASCII.
    A path too long to carry is cut to its path, or to ``/``.
    """
    if not value or value[0] != "/" or value.startswith("//"):
        return None
    if "\\" in value or not all(0x21 <= ord(c) <= 0x7E for c in value):
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return None
    if len(quote(value, safe="")) > MAX_RETURN_TO:
        value = parts.path if len(quote(parts.path, safe="")) <= MAX_RETURN_TO else "/"
    return value


def original_path(request: web.Request) -> str:
    """Where an auth subrequest's visitor wanted to go (nginx's X-Original-URI),
    without an access code: a used code must not travel on in return_to."""
    return safe_path(without_code(request.headers.get("X-Original-URI", ""))) or "/"


def _code_parts(uri: str) -> tuple[str, list[str], list[str]]:
    """(path, the query's parts without codes, the codes' values as sent)."""
    path, sep, query = uri.partition("?")
    if not sep:
        return uri, [], []
    kept: list[str] = []
    codes: list[str] = []
    for part in query.split("&"):
        name, _, value = part.partition("=")
        (codes if name == CODE_PARAM else kept).append(value if name == CODE_PARAM else part)
    return path, kept, codes


def without_code(uri: str) -> str:
    """``uri`` without its ``anteroom_code`` parameters (the rest left as sent)."""
    if CODE_PARAM not in uri:
        return uri
    path, kept, _ = _code_parts(uri)
    return path + ("?" + "&".join(kept) if kept else "")


def access_code(request: web.Request) -> str | None:
    """The access code on the gated link, if one is there; "" for a malformed one."""
    uri = request.headers.get("X-Original-URI", "")
    if CODE_PARAM not in uri:
        return None
    codes = _code_parts(uri)[2]
    if not codes:
        return None
    return codes[0] if CODE_RE.match(codes[0]) else ""


def plain_query(target: str) -> dict[str, str] | None:
    """Each name's first value in a request target's query, as sent: the waiting
    page's poll (queue, return_to, lang) without the full parse, which costs more
    than the rest of its answer. None when a name needs decoding (an escape or
    ``+``) or the target is not a path. A value with an escape or ``+`` is as sent:
    callers that need it decoded ask request.query (see :func:`decoded`)."""
    if not target.startswith("/"):
        return None
    _, sep, query = target.partition("#")[0].partition("?")  # a "?" after "#" is no query
    params: dict[str, str] = {}
    if sep:
        for pair in query.split("&"):
            key, _, value = pair.partition("=")
            if "%" in key or "+" in key:
                return None
            params.setdefault(key, value)
    return params


def decoded(value: str) -> bool:
    """Whether a value from :func:`plain_query` reads the same decoded."""
    return "%" not in value and "+" not in value


def query_value(request: web.Request, name: str) -> str | None:
    """``request.query.get(name)``, read with :func:`plain_query` when it can be."""
    params = plain_query(request.raw_path)
    value = None if params is None else params.get(name)
    if params is None or (value is not None and not decoded(value)):
        return request.query.get(name)
    return value


def return_param(request: web.Request, default: str) -> str:
    """A public endpoint's ``?return_to=`` if same-site, else ``default``."""
    return safe_path(query_value(request, "return_to")) or default


def queue_param(request: web.Request) -> str | None:
    """``?queue=`` if it is a valid queue name."""
    return queue_name(query_value(request, "queue"))


def queue_name(value: str | None) -> str | None:
    """``value`` if it is a valid queue name."""
    return value if value and NAME_RE.match(value) else None


def client_address(request: web.Request) -> str:
    """The address nginx saw (X-Real-IP), as the join budget counts it: an IPv4
    address, or the /64 of an IPv6 one (one subscriber's usual share). "" if
    missing or malformed: no budget applies then."""
    raw = request.headers.get("X-Real-IP", "")
    try:
        ip = ipaddress.ip_address(raw.strip())
    except ValueError:
        return ""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False).network_address) + "/64"
    return str(ip)


def session_address(request: web.Request) -> str:
    """nginx's $remote_addr as the shared-cookie check records it (45 characters
    hold any IPv6 address; a comma would split the stored list)."""
    return request.headers.get("X-Real-IP", "")[:45].replace(",", "")


def host_name(host: str) -> str:
    """Host header without port, lower-case (``[::1]:8080`` -> ``[::1]``)."""
    host = host.lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.partition(":")[0].rstrip(".")  # "shop.example." is "shop.example"


def answer(status: int) -> web.Response:
    """An empty answer no cache keeps."""
    return web.Response(status=status, headers=NO_STORE)


def json_answer(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/json",
        headers={**NO_STORE, **(headers or {})},
    )
