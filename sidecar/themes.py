"""Renders each tenant's waiting page from ``theme_assets/`` to static files.

A tenant theme folder overrides any file of ``default/`` (templates end in
``.j2``; other files are copied). Output layout, ready for a local folder or
an S3 bucket: ``OUT/_anteroom/waiting/<tenant>/{index.html,waiting.css,...}``.
"""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, select_autoescape

from .config import Config, ConfigError, Tenant

API = "/_anteroom"


def themes_dir() -> Path:
    """``ANTEROOM_THEMES``, else the themes shipped in the installed package
    (``sidecar/theme_assets/``), else ``theme_assets/`` of a source checkout."""
    env = os.environ.get("ANTEROOM_THEMES")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    shipped = here / "theme_assets"
    return shipped if shipped.is_dir() else here.parent / "theme_assets"


def _strings(folders: list[Path], language: str) -> dict[str, str]:
    merged: dict[str, str] = {}
    for folder in reversed(folders):  # default first, the tenant's theme on top
        for lang in ("en", language):
            path = folder / "strings" / f"{lang}.toml"
            if path.is_file():
                with path.open("rb") as f:
                    merged.update(tomllib.load(f))
    return merged


def render_tenant(tenant: Tenant, out: Path, root: Path | None = None) -> list[Path]:
    root = root or themes_dir()
    folders = (
        [root / tenant.theme, root / "default"] if tenant.theme != "default" else [root / "default"]
    )
    for folder in folders:
        if not folder.is_dir():
            raise ConfigError(f"tenants.{tenant.name}.theme: no theme folder {folder}")
    env = Environment(
        loader=ChoiceLoader([FileSystemLoader(str(f)) for f in folders]),
        autoescape=select_autoescape(["html.j2"]),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )
    context = {
        "tenant": tenant.name,
        "title": tenant.title,
        "language": tenant.language,
        "strings": _strings(folders, tenant.language),
        "api": API,
    }
    dest = out / "_anteroom" / "waiting" / tenant.name
    dest.mkdir(parents=True, exist_ok=True)
    names: set[str] = set()
    for folder in folders:
        names |= {
            str(p.relative_to(folder))
            for p in folder.rglob("*")
            if p.is_file() and p.relative_to(folder).parts[0] != "strings"
        }
    written = []
    for name in sorted(names):
        if name.endswith(".j2"):
            target = dest / name[:-3]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(env.get_template(name).render(context))
        else:
            source = next(f / name for f in folders if (f / name).is_file())
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        written.append(target)
    return written


def build_pages(config: Config, out: str | Path) -> dict[str, list[Path]]:
    """Every tenant's pages, by tenant name."""
    return {tenant.name: render_tenant(tenant, Path(out)) for tenant in config.tenants}
