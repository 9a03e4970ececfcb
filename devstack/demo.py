"""``make demo``: Redis, the sidecar, nginx and the demo origin (``devstack.origin``).

``python -m devstack.demo`` runs Redis, the sidecar, nginx and the origin in the
foreground at http://127.0.0.1:8080/ until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from devstack.stack import ROOT, S3Server, Stack, free_port, port_in_use

# -- make demo -----------------------------------------------------------------

DEMO_PORTS = {"site": 8080, "sidecar": 8081, "origin": 8082, "redis": 6390, "admin": 9091}
DEMO_S3_PORT = 8083  # ANTEROOM_DEMO_S3=1: the local S3 server
# three sites on one deployment; *.localhost resolves to 127.0.0.1 in browsers
DEMO_TOML = """\
[tenants.default]
hosts = ["*"]
title = "Demo shop"

[tenants.shop]
hosts = ["shop.localhost", "*.shop.localhost"]
title = "Corner Shop"

[tenants.concerts]
hosts = ["concerts.localhost", "*.concerts.localhost"]
title = "Concert Hall"
theme = "tickets"
"""
DEMO_DEFAULTS = {
    "ANTEROOM_DEMO": "1",
    "ANTEROOM_CAPACITY": "3",
    "ANTEROOM_SESSION_TTL": "60",
    "ANTEROOM_GRACE": "30",
    "ANTEROOM_COOKIE_SECURE": "0",
    "ANTEROOM_LOG_FORMAT": "text",
}


def _bool_env(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def kill_leftovers(workdir: Path) -> None:
    """A demo killed hard (terminal closed) leaves processes behind; end them."""
    pidfile = workdir / "pids"
    if not pidfile.exists():
        return
    for line in pidfile.read_text().split():
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.killpg(int(line), signal.SIGTERM)
    time.sleep(0.5)
    pidfile.unlink()


def write_pids(stack: Stack, workdir: Path) -> None:
    procs = [*stack.procs.values(), *([stack.s3.proc] if stack.s3 and stack.s3.proc else [])]
    (workdir / "pids").write_text(" ".join(str(p.pid) for p in procs))


@contextlib.contextmanager
def demo_stack(workdir: Path, ports: Mapping[str, int] = DEMO_PORTS) -> Iterator[Stack]:
    kill_leftovers(workdir)
    with_s3 = _bool_env("ANTEROOM_DEMO_S3")
    ports = {**ports, **({"s3": DEMO_S3_PORT} if with_s3 else {})}
    busy = [f"{name} 127.0.0.1:{p}" for name, p in ports.items() if port_in_use(p)]
    if busy:
        raise SystemExit(
            f"anteroom: port already in use: {', '.join(busy)}. "
            "Stop whatever listens there (another demo?) and retry."
        )
    env = {k: os.environ.get(k, v) for k, v in DEMO_DEFAULTS.items()}
    # the control room's token: the operator's own, or one made up for this run
    env["ANTEROOM_ADMIN_TOKEN"] = os.environ.get("ANTEROOM_ADMIN_TOKEN") or (
        "demo:" + secrets.token_urlsafe(18)
    )
    fast_pass = os.environ.get("ANTEROOM_FAST_PASS", "0") == "1"
    if fast_pass:  # nginx admits holders of a valid pass itself
        env["ANTEROOM_FAST_PASS_SECRET"] = os.environ.get(
            "ANTEROOM_FAST_PASS_SECRET", secrets.token_hex(24)
        )
    if "ANTEROOM_CONFIG" not in os.environ:
        # one tenant for every host, with a name on its waiting page
        workdir.mkdir(parents=True, exist_ok=True)
        toml = workdir / "anteroom.toml"
        toml.write_text(DEMO_TOML)
        env["ANTEROOM_CONFIG"] = str(toml)
    s3 = S3Server(workdir, port=DEMO_S3_PORT).start() if with_s3 else None
    stack = Stack(
        workdir=workdir,
        s3=s3,
        site_port=ports["site"],
        sidecar_port=ports["sidecar"],
        origin_port=ports["origin"],
        redis_port=ports["redis"],
        admin_port=ports["admin"] if "admin" in ports else free_port(),
        env=env,
        nginx_workers="auto",
        access_log=True,
        fast_pass=fast_pass,
    )
    try:
        stack.start()
        write_pids(stack, workdir)
        yield stack
    finally:
        stack.stop()
        if s3 is not None:
            s3.stop()
        with contextlib.suppress(FileNotFoundError):
            (workdir / "pids").unlink()


class Supervisor:
    """Watches the demo's processes. Redis dying is a failure worth watching, so it
    is brought back on the same port with a backoff, as systemd or Docker would,
    while nginx, the sidecar and the origin stay up; any other exit stops the demo."""

    FIRST_DELAY = 1.0
    MAX_DELAY = 30.0
    STABLE_AFTER = 60.0  # up this long: the next failure starts the backoff over

    def __init__(self, stack: Stack, workdir: Path, say: Callable[[str], None] = print) -> None:
        self.stack = stack
        self.workdir = workdir
        self.say = say
        self.delay = self.FIRST_DELAY
        self.restart_at: float | None = None
        self.up_since = time.monotonic()
        self.restarts = 0

    def check(self) -> str | None:
        """One look at the processes: why the demo must stop, or None."""
        now = time.monotonic()
        for name, proc in self.stack.procs.items():
            if proc.poll() is None:
                continue
            if name != "redis":
                return f"{name} exited (status {proc.returncode}); see {self.workdir}/{name}.log"
            if self.restart_at is None:
                if now - self.up_since >= self.STABLE_AFTER:
                    self.delay = self.FIRST_DELAY
                self.restart_at = now + self.delay
                self.say(
                    f"anteroom: redis exited (status {proc.returncode}); "
                    f"restarting in {self.delay:g}s. Admitted visitors keep going, "
                    "newcomers are sent to the waiting page meanwhile."
                )
        if self.restart_at is not None and now >= self.restart_at:
            self._restart(now)
        return None

    def _restart(self, now: float) -> None:
        self.restart_at = None
        self.delay = min(self.delay * 2, self.MAX_DELAY)
        try:
            self.stack.start_redis()
        except RuntimeError as e:
            self.restart_at = now + self.delay
            self.say(f"anteroom: redis did not start ({e}); retrying in {self.delay:g}s")
            return
        self.restarts += 1
        self.up_since = time.monotonic()
        write_pids(self.stack, self.workdir)
        self.say(
            f"anteroom: redis is back on port {self.stack.redis_port} "
            "(the demo keeps no data: the lines start over)"
        )


def run_demo(ports: Mapping[str, int] = DEMO_PORTS, workdir: Path = ROOT / ".demo") -> None:
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with demo_stack(workdir, ports) as stack:
        env = stack.sidecar_env()
        cap, ttl = env["ANTEROOM_CAPACITY"], env["ANTEROOM_SESSION_TTL"]
        grace, rate = env["ANTEROOM_GRACE"], env.get("ANTEROOM_ADMIT_PER_MINUTE", "0")
        if stack.s3 is not None:
            pages = (
                f"published to {stack.s3.endpoint}/{stack.s3.bucket}/{stack.s3_prefix}/, "
                "served through nginx/anteroom/pages-s3.conf"
            )
        else:
            pages = f"{workdir}/pages/, served through nginx/anteroom/pages-local.conf"
        token = admin_token(env["ANTEROOM_ADMIN_TOKEN"])
        made_up = "" if os.environ.get("ANTEROOM_ADMIN_TOKEN") else "  (made up for this run)"
        print(
            f"""
  Anteroom demo is running.

    Site (never queued)   {stack.url}/
    Queued shop           {stack.url}/shop/
    Queued static pages   {stack.url}/tickets/
    Waiting page          {stack.url}/_anteroom/waiting/default/
    Status JSON           {stack.url}/_anteroom/status

    Control room          {stack.admin_url}/
    Admin token           {token}{made_up}
    Metrics               curl -H 'Authorization: Bearer {token}' {stack.admin_url}/metrics
    CLI                   ANTEROOM_ADMIN_TOKEN={token} {sys.executable} -m sidecar queues list

    Two more sites, same paths, own queues, cookies and themes:
      http://shop.localhost:{stack.site_port}/shop/       (tenant "shop", default theme)
      http://concerts.localhost:{stack.site_port}/shop/   (tenant "concerts", tickets theme)
    Waiting pages: {pages}

  Capacity {cap} active sessions, session TTL {ttl}s, grace {grace}s,
  admissions per minute {rate} (0 = no limit).
  Fast pass {"on" if stack.fast_pass else "off"} (ANTEROOM_FAST_PASS=1 make demo turns it on).
  Open {stack.url}/shop/ in {int(cap) + 1} private windows to see the line form.
  Stop Redis to watch the failure behaviour (redis-cli -p {stack.redis_port} shutdown
  nosave): the site stays up and the demo brings Redis back.
  Logs: {workdir}/sidecar.log, nginx: {workdir}/nginx/. Press Ctrl-C to stop.
""",
            flush=True,
        )
        supervisor = Supervisor(stack, workdir, lambda line: print(line, flush=True))
        while not stopping:
            failed = supervisor.check()
            if failed:
                print(f"anteroom: {failed}; stopping the demo", flush=True)
                break
            time.sleep(0.3)
        print("\n  Stopping…", flush=True)


def admin_token(raw: str) -> str:
    """The first token of ANTEROOM_ADMIN_TOKEN, without its name."""
    from sidecar.config import admin_tokens_from

    return admin_tokens_from(raw)[0][1]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devstack.demo")
    parser.parse_args()
    try:
        run_demo()
    except RuntimeError as e:  # a process did not start: say why, no traceback
        print(f"anteroom: demo could not start: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
