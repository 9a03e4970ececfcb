"""The README's API client, as written there, against a local stack: it joins with
``POST /_anteroom/join``, waits on ``/_anteroom/status`` with its Bearer token while
a browser holds the only slot, and then reaches the gated API."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from devstack.stack import ROOT
from tests.conftest import make_stack

pytestmark = pytest.mark.integration


def readme_client() -> str:
    """The first Python block of the README's "API clients" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## API clients", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README.md: no Python example under 'API clients'"
    return match.group(1)


def test_readme_api_client_waits_its_turn_then_reaches_the_api(tmp_path: Path) -> None:
    code = readme_client()
    site = 'SITE, QUEUE, API = "http://127.0.0.1:8080", "shop", "/shop/"'
    assert site in code  # the example targets the demo
    # confirm window 3 s: the browser below never comes back, so its slot frees
    stack = make_stack(tmp_path / "stack", ANTEROOM_CAPACITY="1", ANTEROOM_SESSION_TTL="30")
    try:
        # a browser takes the only slot; nginx has now seen the queue "shop"
        with urllib.request.urlopen(stack.url + "/shop/", timeout=10) as r:
            assert r.status == 200
        script = tmp_path / "client.py"
        script.write_text(code.replace(site, site.replace("http://127.0.0.1:8080", stack.url)))
        run = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=50
        )
    finally:
        stack.stop()
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert lines[0] == "waiting, position 1"  # the browser was first
    assert lines[-1] == "API answered 200"


def test_readme_proof_of_work_client_gets_a_place(tmp_path: Path) -> None:
    """The README's proof-of-work example, as written, against a queue with a check."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split('### Queues with a browser check (`challenge = "pow"`)', 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README.md: no Python example under the browser check"
    code = match.group(1)
    site = 'SITE, QUEUE = "http://127.0.0.1:8080", "shop"'
    assert site in code
    stack = make_stack(
        tmp_path / "stack", ANTEROOM_CHALLENGE="pow", ANTEROOM_CHALLENGE_DIFFICULTY="12"
    )
    try:
        # nginx sends a newcomer to the page (no place): now it knows the queue
        with urllib.request.urlopen(stack.url + "/shop/", timeout=10) as r:
            assert r.url.split("#")[0].startswith(stack.url + "/_anteroom/waiting/")
        script = tmp_path / "client.py"
        script.write_text(code.replace(site, site.replace("http://127.0.0.1:8080", stack.url)))
        run = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=50
        )
    finally:
        stack.stop()
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines() == ["admitted token"]
