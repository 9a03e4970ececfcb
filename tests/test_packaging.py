"""What ships beside the code: nginx site examples, Dockerfile, compose.yaml, the wheel."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from devstack.stack import NGINX_SNIPPETS, ROOT

NGINX = shutil.which("nginx", path="/usr/sbin:/usr/bin:/usr/local/sbin")


def nginx_t(tmp_path: Path, site: str) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on ``site`` (http-context text) with the shipped snippets."""
    assert NGINX
    (tmp_path / "anteroom").symlink_to(NGINX_SNIPPETS)
    (tmp_path / "tmp").mkdir()
    user = "user root;" if os.geteuid() == 0 else ""
    temp = " ".join(
        f"{kind}_temp_path {tmp_path}/tmp/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"{user}\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
        f"events {{}}\nhttp {{\n{temp}\n{site}\n}}\n"
    )
    return subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True
    )


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed")
def test_example_site_is_valid_nginx(tmp_path: Path) -> None:
    site = (ROOT / "nginx" / "example-site.conf").read_text()
    r = nginx_t(tmp_path, re.sub(r"listen 80\b[^;]*;", "listen 127.0.0.1:1;", site))
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed")
def test_compose_site_is_valid_nginx(tmp_path: Path) -> None:
    site = (ROOT / "nginx" / "compose.conf").read_text()
    # compose's service names only resolve inside compose
    site = re.sub(r"server ([\w-]+):(\d+);", r"server 127.0.0.1:\2;", site)
    r = nginx_t(tmp_path, re.sub(r"listen 8080\b[^;]*;", "listen 127.0.0.1:1;", site))
    assert r.returncode == 0, r.stderr


def test_dockerfile_copies_what_exists() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (.+)$", dockerfile, re.M):
        *sources, _ = line.split()
        for source in sources:
            assert (ROOT / source).exists(), source
    assert re.search(r'^CMD \["python", "-m", "sidecar"\]$', dockerfile, re.M)


def test_wheel_carries_the_lua_scripts_and_themes(tmp_path: Path) -> None:
    """The image installs the package (not editable): scripts and themes are package data."""
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("anteroom-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    lua = {Path(scripts).name for scripts in (ROOT / "sidecar" / "queue" / "lua").glob("*.lua")}
    assert lua and {f"sidecar/queue/lua/{name}" for name in lua} <= set(names)
    folder = ROOT / "sidecar" / "control" / "templates"
    templates = {p.name for p in folder.iterdir() if p.is_file()}
    assert {"dashboard.html", "login.html", "dashboard.js", "dashboard.css"} <= templates
    assert {f"sidecar/control/templates/{name}" for name in templates} <= set(names)
    themes = {
        "sidecar/theme_assets/" + str(p.relative_to(ROOT / "theme_assets"))
        for p in (ROOT / "theme_assets").rglob("*")
        if p.is_file()
    }
    assert themes and themes <= set(names)
    # the local stack (demo, test origin) is development tooling, never shipped
    assert not [n for n in names if n.startswith(("devstack/", "tests/"))]


def test_systemd_files_name_real_settings() -> None:
    """Every variable of the shipped environment file is a documented setting, and
    the unit reads that file."""
    env = (ROOT / "deploy" / "systemd" / "anteroom.env").read_text()
    names = set(re.findall(r"^#?(ANTEROOM_[A-Z_]+)=", env, re.M))
    documented = set(
        re.findall(r"`(ANTEROOM_[A-Z_]+)`", (ROOT / "docs" / "configuration.md").read_text())
    )
    assert names and names <= documented, names - documented
    unit = (ROOT / "deploy" / "systemd" / "anteroom.service").read_text()
    assert "EnvironmentFile=/etc/anteroom/anteroom.env" in unit
    assert re.search(r"^ExecStart=\S+/python -m sidecar$", unit, re.M)


def test_every_folder_of_package_data_is_a_listed_package() -> None:
    """setuptools warns at install about a data folder that is not a listed package."""
    import tomllib

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setup["packages"])
    folders = {
        "sidecar." + ".".join(p.relative_to(ROOT / "sidecar").parts)
        for p in (ROOT / "sidecar").rglob("*")
        if p.is_dir() and p.name != "__pycache__"
    }
    folders |= {
        "sidecar.theme_assets." + ".".join(p.relative_to(ROOT / "theme_assets").parts)
        for p in (ROOT / "theme_assets").rglob("*")
        if p.is_dir()
    }
    assert folders - listed == set(), "add these to [tool.setuptools] packages"


def build_warnings(output: str) -> list[str]:
    return [line for line in output.splitlines() if "Warning" in line or "absent from" in line]


def test_wheel_build_prints_no_warnings(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert build_warnings(r.stdout + r.stderr) == []


def test_editable_install_prints_no_warnings(tmp_path: Path) -> None:
    """The Makefile's editable install, in a venv of its own (no dependencies)."""
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    make = (ROOT / "Makefile").read_text()
    editable = re.search(r'^EDITABLE := (\w+)="([^"]*)" \$\(PY\) -m pip install (.+)$', make, re.M)
    assert editable, "Makefile: no EDITABLE line"
    env = {**os.environ, editable.group(1): editable.group(2)}
    pip = [str(tmp_path / "venv" / "bin" / "python"), "-m", "pip", "install"]
    subprocess.run([*pip, "-q", "--upgrade", "pip"], check=True, env=env)
    r = subprocess.run(
        [*pip, "--no-deps", *editable.group(3).split(), str(ROOT)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert build_warnings(r.stdout + r.stderr) == []
