"""The shipped example site is valid nginx, with the shipped snippets."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sidecar.demo import NGINX_SNIPPETS, ROOT


@pytest.mark.skipif(shutil.which("nginx", path="/usr/sbin:/usr/bin") is None, reason="no nginx")
def test_example_site_passes_nginx_t(tmp_path: Path) -> None:
    (tmp_path / "anteroom").symlink_to(NGINX_SNIPPETS)
    (tmp_path / "tmp").mkdir()
    site = (
        (ROOT / "nginx" / "example-site.conf")
        .read_text()
        .replace("listen 80;", "listen 127.0.0.1:1;")
    )
    user = "user root;" if os.geteuid() == 0 else ""
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"""{user}
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{}}
http {{
    client_body_temp_path {tmp_path}/tmp/1; proxy_temp_path {tmp_path}/tmp/2;
    fastcgi_temp_path {tmp_path}/tmp/3; uwsgi_temp_path {tmp_path}/tmp/4;
    scgi_temp_path {tmp_path}/tmp/5;
    {site}
}}
"""
    )
    nginx = shutil.which("nginx", path="/usr/sbin:/usr/bin")
    assert nginx
    r = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
