"""``python -m sidecar queues …``: the operators' command line, a client of the admin API.

It talks to ``ANTEROOM_ADMIN_URL`` (default ``http://127.0.0.1:9091``) with the
first token of ``ANTEROOM_ADMIN_TOKEN``, so it validates and audits exactly as
the API and the dashboard do (the audit log names that token and its role; the
API refuses what the role may not do).
Exit status: 0 done, 1 the admin listener failed or is unreachable, 2 bad input
or configuration (one line each).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

from ..config import Config, ConfigError


class Failed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def add_parser(sub: Any) -> None:
    queues = sub.add_parser("queues", help="see and steer queues through the admin API")
    qsub = queues.add_subparsers(dest="action", required=True)
    ls = qsub.add_parser("list", help="every queue with its live figures")
    ls.add_argument("--json", action="store_true", help="print the API's JSON")
    show = qsub.add_parser("show", help="one queue: figures and settings")
    show.add_argument("tenant")
    show.add_argument("queue")
    show.add_argument("--json", action="store_true", help="print the API's JSON")
    st = qsub.add_parser("set", help="override settings: capacity=10 mode=paused …")
    st.add_argument("tenant")
    st.add_argument("queue")
    st.add_argument("changes", nargs="*", metavar="key=value")
    st.add_argument(
        "--create", action="store_true", help="the queue is new (else an unknown name is refused)"
    )
    st.add_argument(
        "--end-sessions",
        action="store_true",
        help="with mode=closed: end the admitted sessions now too (admin role)",
    )
    reset = qsub.add_parser("reset", help="back to the configured value (all if no key)")
    reset.add_argument("tenant")
    reset.add_argument("queue")
    reset.add_argument("keys", nargs="*", metavar="key")
    drain = qsub.add_parser("drain", help="admit nobody new; active sessions finish")
    drain.add_argument("tenant")
    drain.add_argument("queue")
    revoke = qsub.add_parser("revoke", help="end a session now (its cookie stops passing)")
    revoke.add_argument("tenant")
    revoke.add_argument("queue")
    revoke.add_argument("session_id")
    forget = qsub.add_parser(
        "forget", help="delete a queue that is not configured: its keys, its place in the list"
    )
    forget.add_argument("tenant")
    forget.add_argument("queue")
    forget.add_argument(
        "--force", action="store_true", help="even with people in line or inside (they lose them)"
    )
    report = qsub.add_parser(
        "report", help="how the sale went, minute by minute (joins, waits, who gave up)"
    )
    report.add_argument("tenant")
    report.add_argument("queue")
    report.add_argument("--format", choices=("csv", "json"), default="csv")
    report.add_argument(
        "--since", default="", help="unix seconds or ISO-8601 with its zone (default: 7 days ago)"
    )
    report.add_argument("--until", default="", help="likewise (default: now)")
    report.add_argument("--output", "-o", default="", help="write to this file (default: stdout)")
    codes = qsub.add_parser(
        "codes", help="one-time access codes: make N links that skip the line, count, withdraw"
    )
    codes.add_argument("tenant")
    codes.add_argument("queue")
    codes.add_argument("count", nargs="?", type=int, help="make this many (none: count unused)")
    codes.add_argument("--expires-in", type=int, default=7 * 86400, help="seconds (7 days)")
    codes.add_argument("--label", default="", help="a name for this batch (audit, counts)")
    codes.add_argument("--path", default="/", help="the gated page the links open")
    codes.add_argument("--withdraw", action="store_true", help="withdraw unused (--label: those)")
    audit = qsub.add_parser("audit", help="recent changes, newest first")
    audit.add_argument("--limit", type=int, default=20)


def run(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    try:
        client = Client.from_config(Config.from_env(env, serving=False))
        print(_dispatch(client, args))
    except ConfigError as e:
        print(f"anteroom: {e}", file=sys.stderr)
        return 2
    except Failed as e:
        print(f"anteroom: {e}", file=sys.stderr)
        return e.code
    return 0


class Client:
    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.token = token

    @classmethod
    def from_config(cls, config: Config) -> Client:
        if not config.admin_tokens:
            raise ConfigError("ANTEROOM_ADMIN_TOKEN: required (a token of the admin listener)")
        return cls(config.admin_url, config.admin_tokens[0][1])

    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        return json.loads(self.fetch(method, path, body))

    def fetch(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> bytes:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return bytes(r.read())
        except urllib.error.HTTPError as e:
            try:
                reply = json.loads(e.read())
            except ValueError:
                reply = {}
            fields = reply.get("fields") or {}
            message = "; ".join(fields.values()) or reply.get("error") or e.reason
            raise Failed(2 if e.code in (400, 404, 409) else 1, f"{e.code}: {message}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise Failed(1, f"admin listener unreachable at {self.url}: {reason}") from None


def _path(tenant: str, queue: str) -> str:
    return f"/api/queues/{quote(tenant, safe='')}/{quote(queue, safe='')}"


def _dispatch(c: Client, a: argparse.Namespace) -> str:
    if a.action == "list":
        queues = c.call("GET", "/api/queues")["queues"]
        return json.dumps(queues, indent=2) if a.json else _table(queues)
    if a.action == "audit":
        entries = c.call("GET", f"/api/audit?limit={a.limit}")["entries"]
        return "\n".join(_audit_line(e) for e in entries) or "no changes recorded"
    path = _path(a.tenant, a.queue)
    if a.action == "show":
        view = c.call("GET", path)
        return json.dumps(view, indent=2) if a.json else _show(view)
    if a.action == "set":
        if not a.changes and not a.create and not a.end_sessions:
            raise ConfigError("set: give at least one key=value (or --create)")
        changes: dict[str, Any] = {"create": True} if a.create else {}
        if a.end_sessions:
            changes["end_sessions"] = True
        for item in a.changes:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"{item!r}: expected key=value, e.g. capacity=50")
            changes[key.strip()] = value.strip()
        return _show(c.call("PATCH", path, changes))
    if a.action == "reset":
        query = f"?keys={','.join(a.keys)}" if a.keys else ""
        return _show(c.call("DELETE", path + "/overrides" + query))
    if a.action == "forget":
        r = c.call("DELETE", path + ("?force=true" if a.force else ""))
        return f"forgot {r['forgotten']} ({r['keys']} keys removed)"
    if a.action == "report":
        query = urlencode({"format": a.format, "since": a.since, "until": a.until})
        body = c.fetch("GET", f"{path}/report?{query}").decode()
        if a.output:
            try:
                with open(a.output, "w", encoding="utf-8") as f:
                    f.write(body)
            except OSError as e:
                raise ConfigError(f"--output: cannot write {a.output!r}: {e.strerror}") from None
            return f"wrote {a.output}"
        return body.rstrip("\n")
    if a.action == "drain":
        return _show(c.call("POST", path + "/drain"))
    if a.action == "codes":
        return _codes(c, path, a)
    if a.action == "revoke":
        r = c.call("DELETE", f"{path}/sessions/{quote(a.session_id, safe='')}")
        return f"revoked {r['revoked']}" + (" (its place is free)" if r["freed"] else "")
    raise ConfigError(f"unknown action {a.action!r}")


def _codes(c: Client, path: str, a: argparse.Namespace) -> str:
    if a.withdraw:
        query = f"?label={quote(a.label, safe='')}" if a.label else ""
        return f"withdrew {c.call('DELETE', path + '/codes' + query)['withdrawn']} unused codes"
    if a.count is None:
        r = c.call("GET", path + "/codes")
        labels = ", ".join(f"{k or '(no label)'}: {n}" for k, n in sorted(r["by_label"].items()))
        return f"{r['unused']} unused codes" + (f" ({labels})" if labels else "")
    body = {"count": a.count, "expires_in": a.expires_in, "label": a.label, "path": a.path}
    r = c.call("POST", path + "/codes", body)
    # one link a line, to hand out; the codes are not stored in clear: keep this output
    return "\n".join(r["links"])


COLUMNS = ("mode", "waiting", "active", "invited", "admitted_last_minute", "serving", "tickets")


def _table(queues: list[dict[str, Any]]) -> str:
    head = ["QUEUE", "MODE", "WAITING", "ACTIVE", "INVITED", "ADMITTED/MIN", "SERVING", "TICKETS"]
    rows = [head]
    for q in queues:
        mode = "draining" if q["draining"] else q["mode"]
        rows.append([f"{q['tenant']}/{q['queue']}", mode, *(str(q[k]) for k in COLUMNS[1:])])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows)


def _show(v: dict[str, Any]) -> str:
    lines = [f"{v['tenant']}/{v['queue']}" + ("  (draining)" if v["draining"] else "")]
    for k in COLUMNS:
        lines.append(f"  {k:<22}{v[k]}")
    eta = v["eta_seconds"]
    lines.append(f"  {'eta_seconds':<22}{'-' if eta is None else eta}")
    lines.append("settings:")
    for k, value in v["settings"].items():
        configured = v["configured"].get(k, "none")  # a message_<lang> may be new
        note = f"  (override; configured {configured})" if k in v["overrides"] else ""
        lines.append(f"  {k:<22}{value}{note}")
    return "\n".join(lines)


def _audit_line(e: dict[str, Any]) -> str:
    where = f" {e['tenant']}/{e['queue']}" if "tenant" in e else ""
    changes = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in e.get("changes", {}).items())
    extra = f" session {e['session']}" if "session" in e else ""
    by = f"{e['by']} ({e['role']})" if "role" in e else e["by"]
    return f"{e.get('when', e['at'])}  {by}  {e['action']}{where}{extra}  {changes}".rstrip()
