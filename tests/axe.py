"""axe-core in a page driven by tests/browser.py: the accessibility check the visitor
pages and the dashboard must pass (no serious or critical violation).

axe-core comes from npm (``make browser-deps`` installs it into ``.axe/``);
ANTEROOM_AXE names another axe.min.js."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.browser import Page

ROOT = Path(__file__).resolve().parent.parent
BLOCKING = ("serious", "critical")


def axe_path() -> Path | None:
    configured = os.environ.get("ANTEROOM_AXE")
    path = Path(configured) if configured else ROOT / ".axe/node_modules/axe-core/axe.min.js"
    return path if path.is_file() else None


async def violations(page: Page, impacts: tuple[str, ...] = BLOCKING) -> list[dict[str, Any]]:
    """axe's violations of the page as it is now, of the given impacts: each
    ``{id, impact, help, targets}`` (empty: the page passes)."""
    path = axe_path()
    if path is None:
        raise RuntimeError("axe-core not found: make browser-deps (npm install axe-core)")
    if not await page.evaluate("typeof window.axe === 'object'"):
        await page.evaluate(path.read_text())
    found = await page.evaluate(
        "axe.run(document, {resultTypes: ['violations']}).then(r => r.violations.map(v => ("
        "{id: v.id, impact: v.impact, help: v.help,"
        " targets: v.nodes.map(n => n.target.join(' '))})))",
        await_promise=True,
    )
    return [v for v in found if v["impact"] in impacts]
