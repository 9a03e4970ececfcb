"""The import layers, read from the code (``ast``), so an upward arrow fails here."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIDECAR = ROOT / "sidecar"


def imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative ones resolved)."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    if path.name == "__init__.py":
        package = path.relative_to(ROOT).parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def modules(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def offending(folder: Path, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for path in modules(folder):
        hits = sorted(
            m for m in imports(path) if any(m == f or m.startswith(f + ".") for f in forbidden)
        )
        if hits:
            bad[str(path.relative_to(ROOT))] = hits
    return bad


def test_the_walk_sees_relative_and_absolute_imports() -> None:
    """A check that cannot fail is none: the walker itself finds both kinds."""
    web = SIDECAR / "web" / "gate.py"
    found = imports(web)
    assert "sidecar.queue" in found and "sidecar.web.visitors" in found and "aiohttp" in found


def test_queue_imports_no_web_framework_nor_the_layers_above() -> None:
    assert (
        offending(SIDECAR / "queue", ("aiohttp", "sidecar.web", "sidecar.control", "sidecar.pages"))
        == {}
    )


def test_web_and_control_do_not_import_each_other() -> None:
    assert offending(SIDECAR / "web", ("sidecar.control",)) == {}
    assert offending(SIDECAR / "control", ("sidecar.web",)) == {}


def test_pages_stand_alone() -> None:
    assert offending(SIDECAR / "pages", ("sidecar.web", "sidecar.control", "sidecar.queue")) == {}


def test_the_shipped_package_never_imports_dev_tooling_or_tests() -> None:
    assert offending(SIDECAR, ("devstack", "tests")) == {}
