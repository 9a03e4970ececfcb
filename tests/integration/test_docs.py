"""The documentation, executed: every shell command and config block of README.md
and docs/*.md runs here, so a doc cannot drift from the product.

How a fenced block is checked, by its language:

| fence | check |
|---|---|
| ```` ```sh ```` (``bash``, ``shell``) | bash ``-euo pipefail``; one shell per file, in order |
| ```` ```nginx ```` | ``nginx -t`` inside ``http {}`` with the shipped snippets |
| ```` ```toml ```` | loaded by the sidecar's own config loader (``ANTEROOM_CONFIG``) |
| ```` ```json ```` / ```` ```python ```` / ```` ```jinja ```` | parsed |
| ```` ``` ```` (no language) | output or a diagram: not run |

A block whose language is not in this table fails the test. An HTML comment on
the line right before a fence changes how it is checked (several may stack):

- ``<!-- doc-test: illustrative: REASON -->``: not run; the reason (shown to
  readers of the Markdown source) says why, e.g. "needs a Kubernetes cluster".
  Use it only for what this machine cannot do (Docker, a cluster, AWS, a
  foreground process); the reason may name the test that covers it instead.
- ``<!-- doc-test: http-errors-ok -->``: a shell block whose ``curl`` calls are
  expected to answer 4xx/5xx (elsewhere every ``curl`` fails on them).
- ``<!-- doc-test: file PATH -->``: a config block that is a file's content;
  it is written to PATH before the next shell block of the same file runs (and
  checked by what that shell block does, e.g. ``nginx -t``).

What the test fills in (placeholders): the fixed demo addresses
(``127.0.0.1:8080`` site, ``:8081`` sidecar, ``:9091`` control room) become
the free ports of a stack started here; ``your-admin-token`` its admin token;
``https://shop.example.com`` the site (curl connects it to the local nginx).
Shell blocks run as root in a mount namespace with copy-on-write overlays on
/etc, /opt, /var and /run, so ``useradd``, ``/etc/anteroom``, ``/opt/anteroom``
and ``/etc/nginx`` are real yet leave the machine untouched. ``sudo`` runs the
command (``-u USER`` as that user), ``sudoedit FILE`` makes the edit the doc
asks for, ``systemctl``/``journalctl`` are tests/integration/units.py (no
systemd here). docs/nginx.md runs from start to end as an operator would:
non-editable install, systemd unit, snippets, site, reload, upgrade, fast pass.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import pytest

from devstack.stack import ROOT, Stack, free_port, wait_for_port
from sidecar.config import load
from tests.conftest import ADMIN_TOKEN, FAST
from tests.test_packaging import NGINX

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces and useradd need root"),
]

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"sh", "bash", "shell"}
PARSED = {"nginx", "toml", "json", "python", "jinja", ""}
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[ \t]*$")
MARK = re.compile(r"^\s*<!--\s*doc-test:\s*(?P<mark>.*?)\s*-->\s*$")
BIN = Path(sys.executable).parent
OVERLAID = ("/etc", "/opt", "/var", "/run")
SECURE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Block:
    path: Path
    line: int
    lang: str
    text: str
    marks: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def illustrative(self) -> bool:
        return any(m.startswith("illustrative") for m in self.marks)

    @property
    def file(self) -> str | None:
        return next((m.split(None, 1)[1] for m in self.marks if m.startswith("file ")), None)


def blocks(path: Path) -> list[Block]:
    found: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, start = fence["indent"], i
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i].removeprefix(indent))
            i += 1
        marks: list[str] = []
        j = start - 1
        # marks stack with other HTML comments (e.g. another test's `tested:` marker)
        while j >= 0 and lines[j].lstrip().startswith("<!--"):
            if m := MARK.match(lines[j]):
                marks.insert(0, m["mark"])
            j -= 1
        found.append(Block(path, start + 1, fence["lang"], "\n".join(body) + "\n", marks))
        i += 1
    return found


ALL = [b for path in DOCS for b in blocks(path)]


def test_every_block_is_checked_or_says_why_not() -> None:
    assert len(ALL) > 40, "no blocks found: the fence pattern is wrong"
    for b in ALL:
        assert b.lang in SHELL | PARSED, f"{b.where}: no check for ```{b.lang}"
        for mark in b.marks:
            kind = mark.split(":")[0].split()[0]
            assert kind in ("illustrative", "http-errors-ok", "file"), f"{b.where}: {mark}"
            if kind == "illustrative":
                assert len(mark.split(":", 1)[1].strip()) > 10, f"{b.where}: say why"


# -- config blocks ---------------------------------------------------------------


def checked(*langs: str) -> list[Block]:
    return [b for b in ALL if b.lang in langs and not b.illustrative and b.file is None]


def elided(text: str) -> str:
    """Lines that are only "…" stand for the reader's own text."""
    return "\n".join(line for line in text.splitlines() if line.strip() not in ("…", "..."))


@pytest.mark.parametrize("block", checked("toml"), ids=lambda b: b.where)
def test_toml_block_loads_as_configuration(block: Block, tmp_path: Path) -> None:
    path = tmp_path / "anteroom.toml"
    path.write_text(block.text)
    if "[tenants." in block.text:
        themes = tmp_path / "themes"
        shutil.copytree(ROOT / "theme_assets", themes)
        for theme in re.findall(r'^theme = "([\w-]+)"', block.text, re.M):
            (themes / theme).mkdir(exist_ok=True)  # a theme the reader makes
        load({**FAST, "ANTEROOM_CONFIG": str(path), "ANTEROOM_THEMES": str(themes)})
    else:
        tomllib.loads(block.text)


@pytest.mark.parametrize("block", checked("json", "python", "jinja"), ids=lambda b: b.where)
def test_json_python_and_templates_parse(block: Block) -> None:
    if block.lang == "json":
        json.loads(block.text)
    elif block.lang == "python":
        compile(block.text, block.where, "exec")
    else:
        jinja2.Environment().parse(block.text)


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed")
@pytest.mark.parametrize("block", checked("nginx"), ids=lambda b: b.where)
def test_nginx_block_passes_nginx_t(block: Block, tmp_path: Path) -> None:
    text = elided(block.text)
    text = re.sub(r"listen [^;]*;", "listen 127.0.0.1:1;", text)
    text = text.replace("proxy_pass http://app;", "proxy_pass http://127.0.0.1:1;")
    if "server {" in text and "http {" not in text and "upstream anteroom_sidecar" not in text:
        text = "upstream anteroom_sidecar { server 127.0.0.1:1; }\n" + text
    if text.lstrip().startswith("http {"):
        text = text.lstrip().removeprefix("http {").rstrip().removesuffix("}")
        text = "upstream anteroom_sidecar { server 127.0.0.1:1; }\n" + text
    text = re.sub(r"server ([\w.-]+\.com):443;", r"server 127.0.0.1:1;", text)
    # nginx -t creates the cache folders it names: inside the sandbox's overlays
    box = Sandbox(tmp_path / "box")
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "tmp").mkdir()
    (conf / "anteroom").symlink_to(ROOT / "nginx" / "anteroom")
    temp = " ".join(f"{k}_temp_path {conf}/tmp/{k};" for k in ("client_body", "proxy"))
    (conf / "nginx.conf").write_text(
        f"user root;\npid {conf}/nginx.pid;\nerror_log {conf}/error.log;\n"
        f"events {{}}\nhttp {{\n{temp}\n{text}\n}}\n"
    )
    box.run(f"echo '::doc-test:: {block.where}'\nnginx -t -q -p {conf} -c {conf}/nginx.conf", ROOT)


# -- shell blocks ----------------------------------------------------------------


@dataclass
class Sandbox:
    """A folder for one file's shell session: overlays, shims, curl settings."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    connect: dict[str, int] = field(default_factory=dict)  # host -> local port for curl
    edits: dict[str, str] = field(default_factory=dict)  # sudoedit FILE -> sed script

    def __post_init__(self) -> None:
        shims = self.root / "shims"
        shims.mkdir(parents=True)
        units = f"PYTHONPATH={ROOT} {sys.executable} -m tests.integration.units"
        scripts = {
            # sudo's secure_path (a user's own python, e.g. pyenv's, is not root's)
            "sudo": f"export PATH={shims}:{SECURE_PATH}\n"
            'user=""\nwhile [ $# -gt 0 ]; do case $1 in -u) user=$2; shift 2;; '
            "-E|-H|-n) shift;; *) break;; esac; done\n"
            '[ -z "$user" ] && exec "$@"\n'
            'exec setpriv --reuid="$user" --regid="$user" --init-groups -- "$@"',
            "sudoedit": f'exec sed -i -f "{self.root}/edits/$(basename "$1").sed" "$1"',
            "systemctl": f'exec env {units} systemctl "$@"',
            "journalctl": f'exec env {units} journalctl "$@"',
        }
        for name, body in scripts.items():
            (shims / name).write_text(f"#!/bin/bash\n{body}\n")
            (shims / name).chmod(0o755)
        (self.root / "edits").mkdir()

    def curlrc(self, strict: bool) -> Path:
        folder = self.root / ("curl-strict" if strict else "curl-lenient")
        folder.mkdir(exist_ok=True)
        lines = ["fail-with-body"] if strict else []
        lines += [f"connect-to = {h}:80:127.0.0.1:{p}" for h, p in self.connect.items()]
        (folder / ".curlrc").write_text("\n".join(lines) + "\n")
        return folder

    def run(self, script: str, cwd: Path, prepare: str = "", timeout: float = 400) -> str:
        for name, sed in self.edits.items():
            (self.root / "edits" / f"{name}.sed").write_text(sed)
        mounts = []
        for top in OVERLAID:
            upper, work = self.root / "upper" / top[1:], self.root / "work" / top[1:]
            upper.mkdir(parents=True, exist_ok=True)
            work.mkdir(parents=True, exist_ok=True)
            mounts.append(
                f"mount -t overlay overlay -o lowerdir={top},upperdir={upper},workdir={work} {top}"
            )
        (self.root / "script.sh").write_text(script)
        prelude = "\n".join(["set -e", "mount --make-rprivate /", *mounts, prepare])
        prelude += f"\ncd {cwd}\nexec bash -euo pipefail {self.root}/script.sh"
        env = {
            **os.environ,
            "PATH": f"{self.root / 'shims'}:{BIN}:{os.environ['PATH']}",
            "DOC_TEST_UNITS": str(self.root / "units"),
            **self.env,
        }
        for key in [k for k in env if k.startswith("ANTEROOM_")]:
            if key not in self.env:
                del env[key]
        r = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "bash", "-c", prelude],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        out = r.stdout + r.stderr
        if r.returncode:
            where = re.findall(r"^::doc-test:: (.+)$", out, re.M)
            raise AssertionError(
                f"{where[-1] if where else 'the shell'}: exit {r.returncode}\n{out[-4000:]}"
            )
        return out


def session(sandbox: Sandbox, path: Path, fill: dict[str, str]) -> str:
    """One bash script of a file's shell blocks (and its `file` blocks), in order."""
    parts = []
    for b in blocks(path):
        if b.illustrative:
            continue
        text = b.text
        for old, new in fill.items():
            text = text.replace(old, new)
        if b.file:
            parts.append(
                f"mkdir -p $(dirname {b.file})\n"
                f"cat > {b.file} <<'DOC_TEST_EOF'\n{text}DOC_TEST_EOF\n"
            )
        elif b.lang in SHELL:
            curl = sandbox.curlrc(strict="http-errors-ok" not in b.marks)
            parts.append(
                f"printf '\\n::doc-test:: %s\\n' '{b.where}'\nexport CURL_HOME={curl}\n{text}"
            )
    return "\n".join(parts)


# -- docs/nginx.md: the operator's walk -------------------------------------------


def checkout(into: Path) -> Path:
    """The repository as a fresh clone has it (no .venv, no build output)."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / name.decode()
        if source.is_file():
            (into / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name.decode())
    return into


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(workdir=tmp_path / "redis")
    stack.workdir.mkdir()
    stack.start_redis()
    yield stack
    stack.stop()


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    argv = [sys.executable, "-m", "devstack.origin", "--port", str(port)]
    proc = subprocess.Popen(argv, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wait_for_port(port, proc, "origin", tmp_path / "origin.log")
    yield port
    proc.terminate()
    proc.wait()


def ready(url: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def kill_pidfile(path: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(path.read_text()), 15)


def test_nginx_md_walks_from_install_to_fast_pass(
    tmp_path: Path, redis_server: Stack, origin: int
) -> None:
    site, sidecar, admin = free_port(), free_port(), free_port()
    box = Sandbox(tmp_path / "box")
    box.connect["shop.example.com"] = site
    box.edits["anteroom.env"] = (
        f"s|^ANTEROOM_REDIS_URL=.*|ANTEROOM_REDIS_URL={redis_server.redis_url}|\n"
        f"s|^ANTEROOM_LISTEN=.*|ANTEROOM_LISTEN=127.0.0.1:{sidecar}|\n"
        f"s|^ANTEROOM_ADMIN_LISTEN=.*|ANTEROOM_ADMIN_LISTEN=127.0.0.1:{admin}|\n"
    )
    fill = {
        "https://shop.example.com": "http://shop.example.com",
        "127.0.0.1:8081": f"127.0.0.1:{sidecar}",
        "listen 443 ssl": f"listen 127.0.0.1:{site}",
        "# ... your existing directives stay ...": "root /var/www/shop;",
    }
    # the site nginx served before Anteroom: its app, its files, its site file enabled
    prepare = f"""
rm -f /etc/nginx/sites-enabled/default
echo 'upstream app {{ server 127.0.0.1:{origin}; }}' > /etc/nginx/conf.d/app.conf
ln -sf /etc/nginx/sites-available/shop /etc/nginx/sites-enabled/shop
mkdir -p /var/www/shop/tickets && echo '<p>tickets</p>' > /var/www/shop/tickets/index.html
"""
    script = session(box, ROOT / "docs" / "nginx.md", fill)
    try:
        out = box.run(script, cwd=checkout(tmp_path / "checkout"), prepare=prepare)
        # the site as a visitor sees it, once the last restart's sidecar is ready
        ready(f"http://127.0.0.1:{sidecar}/readyz")
        request = urllib.request.Request(
            f"http://127.0.0.1:{site}/tickets/", headers={"Host": "shop.example.com"}
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            assert r.status == 200
            cookies = r.headers.get_all("Set-Cookie") or []
        assert any(c.startswith("anteroom_tickets=") for c in cookies), cookies
        pid = int((box.root / "units" / "anteroom.pid").read_text())
        status = Path(f"/proc/{pid}/status").read_text()
        passwd = (box.root / "upper" / "etc" / "passwd").read_text()
        uid = re.search(r"^anteroom:x:(\d+):", passwd, re.M)
        assert uid and re.search(rf"^Uid:\s+{uid[1]}\s", status, re.M), status
        assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)
        assert re.search(r"^CapBnd:\s+0+$", status, re.M)
    finally:
        kill_pidfile(box.root / "units" / "anteroom.pid")
        kill_pidfile(box.root / "upper" / "run" / "nginx.pid")
    # the non-editable install is quiet (setuptools warned about package data before)
    assert "BuildBackendWarning" not in out and "absent from the" not in out, out[-3000:]


# -- the other files: against a local stack ---------------------------------------

STACK_TOML = """
[tenants.default]
hosts = ["*"]

[tenants.acme]
hosts = ["acme.test"]
title = "Acme Tickets"

# the queues the docs' commands name (a queue must be configured or visited first)
[tenants.acme.queues.checkout]
[tenants.acme.queues.presale]
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("docs-stack")
    (workdir / "anteroom.toml").write_text(STACK_TOML)
    env = {**FAST, "ANTEROOM_CONFIG": str(workdir / "anteroom.toml")}
    env |= {"ANTEROOM_CAPACITY": "2", "ANTEROOM_SESSION_TTL": "30", "ANTEROOM_GRACE": "30"}
    s = Stack(workdir=workdir, env=env, inherit_env=False).start()
    yield s
    s.stop()


SHELL_FILES = [p for p in DOCS if p.name != "nginx.md" and any(b.lang in SHELL for b in blocks(p))]


@pytest.mark.parametrize("path", SHELL_FILES, ids=lambda p: p.name)
def test_shell_blocks_run_against_a_stack(path: Path, stack: Stack, tmp_path: Path) -> None:
    subprocess.run(
        ["redis-cli", "-u", stack.redis_url, "FLUSHALL"], check=True, capture_output=True
    )
    # the queue "shop" has had a visitor (the README's API example says so)
    with urllib.request.urlopen(stack.url + "/shop/", timeout=10) as r:
        assert r.status == 200
    box = Sandbox(tmp_path / "box")
    box.env = {
        "ANTEROOM_ADMIN_URL": stack.admin_url,
        "ANTEROOM_ADMIN_TOKEN": ADMIN_TOKEN,
    }
    sidecar_env = stack.sidecar_env()
    env_file = "\n".join(
        f"{k}={sidecar_env[k]}"
        for k in ("ANTEROOM_SECRETS", "ANTEROOM_REDIS_URL", "ANTEROOM_ADMIN_TOKEN")
    )
    prepare = f"""
mkdir -p /etc/anteroom
cp {stack.workdir / "anteroom.toml"} /etc/anteroom/anteroom.toml
cat > /etc/anteroom/anteroom.env <<'EOF'
{env_file}
ANTEROOM_CONFIG=/etc/anteroom/anteroom.toml
ANTEROOM_THEMES={ROOT / "theme_assets"}
EOF
"""
    fill = {
        "http://127.0.0.1:8080": stack.url,
        "127.0.0.1:8081": f"127.0.0.1:{stack.sidecar_port}",
        "http://127.0.0.1:9091": stack.admin_url,
        "your-admin-token": ADMIN_TOKEN,
    }
    box.run(session(box, path, fill), cwd=ROOT, prepare=prepare, timeout=120)
    # the stack is still whole afterwards (nothing the docs did broke it)
    time.sleep(0)
    with urllib.request.urlopen(stack.url + "/", timeout=10) as r:
        assert r.status == 200


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_unit_is_rated_ok() -> None:
    """The unit's sandboxing as systemd rates it (the walk above runs the same unit)."""
    assert SYSTEMD_ANALYZE
    unit = ROOT / "deploy" / "systemd" / "anteroom.service"
    r = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
    )
    score = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", r.stdout + r.stderr)
    assert score, r.stdout + r.stderr
    assert float(score[1]) <= 2.0 and score[2] == "OK", score[0]


def test_demo_tickets_without_slash_redirects(stack: Stack) -> None:
    """/tickets/ is a folder nginx serves with try_files: /tickets is sent there."""

    class Keep(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    opener = urllib.request.build_opener(Keep)
    with pytest.raises(urllib.error.HTTPError) as answer:
        opener.open(stack.url + "/tickets", timeout=10)
    assert answer.value.code == 301
    assert answer.value.headers["Location"].endswith("/tickets/")
