"""Renders each tenant's waiting page from ``theme_assets/`` to static files.

A tenant theme folder overrides any file of ``default/`` (templates end in
``.j2``; other files are copied) and any string of ``strings/<lang>.toml``.
Output, ready for a local folder or an S3 bucket:
``OUT/_anteroom/waiting/<tenant>/``, holding

- ``index.html`` in the tenant's language and ``index.<lang>.html`` for every
  language the theme has strings for (nginx picks one from Accept-Language);
- assets with a content hash in their name (``waiting.<hash>.css``), so a new
  theme never mixes with cached old files and they can be cached for a year;
- ``keepalive.js`` under its plain name: the site's own pages link to it.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, select_autoescape

from ..config import LANGUAGE_RE, Config, ConfigError, Tenant

API = "/_anteroom"
FIXED_NAMES = frozenset({"keepalive.js"})  # linked from the site by this name
HASHED_RE = re.compile(r"\.[0-9a-f]{10}\.[A-Za-z0-9]+\Z")  # also in nginx/anteroom/pages-*.conf


def themes_dir(configured: str = "") -> Path:
    """``configured`` (``ANTEROOM_THEMES``), else the themes shipped in the installed
    package (``sidecar/theme_assets/``), else ``theme_assets/`` of a source checkout."""
    if configured:
        return Path(configured)
    package = Path(__file__).resolve().parent.parent
    shipped = package / "theme_assets"
    return shipped if shipped.is_dir() else package.parent / "theme_assets"


def fingerprinted(name: str, data: bytes) -> str:
    """``img/logo.svg`` -> ``img/logo.<10 hex of sha256>.svg``."""
    p = PurePosixPath(name)
    digest = hashlib.sha256(data).hexdigest()[:10]
    return str(p.with_name(f"{p.stem}.{digest}{p.suffix}"))


def theme_folders(tenant: Tenant, root: Path) -> list[Path]:
    """The tenant's theme first, ``default/`` last."""
    names = [tenant.theme, "default"] if tenant.theme != "default" else ["default"]
    folders = [root / n for n in names]
    for folder in folders:
        if not folder.is_dir():
            raise ConfigError(f"tenants.{tenant.name}.theme: no theme folder {folder}")
    return folders


def languages(folders: list[Path]) -> list[str]:
    """Every language some folder of the theme has strings for."""
    found: set[str] = set()
    for folder in folders:
        for path in (folder / "strings").glob("*.toml"):
            if not LANGUAGE_RE.match(path.stem):
                raise ConfigError(f"{path}: strings files are named <language>.toml, e.g. fr.toml")
            found.add(path.stem)
    return sorted(found)


def strings(folders: list[Path], language: str) -> dict[str, str]:
    """English under everything, then ``language``; the theme over ``default/``."""
    merged: dict[str, str] = {}
    for lang in dict.fromkeys(("en", language)):
        for folder in reversed(folders):
            path = folder / "strings" / f"{lang}.toml"
            if path.is_file():
                try:
                    with path.open("rb") as f:
                        merged.update(tomllib.load(f))
                except tomllib.TOMLDecodeError as e:
                    raise ConfigError(f"{path}: {e}") from None
    return merged


def render_tenant(tenant: Tenant, root: Path | None = None) -> dict[str, bytes]:
    """The tenant's files, name -> content, assets before the pages that link them."""
    root = root or themes_dir()
    folders = theme_folders(tenant, root)
    langs = languages(folders)
    if tenant.language not in langs:
        raise ConfigError(
            f"tenants.{tenant.name}.language: theme {tenant.theme!r} has no strings for "
            f"{tenant.language!r} (it has {', '.join(langs)})"
        )
    env = Environment(
        # the root last: a theme template may {% extends "default/waiting.css.j2" %}
        loader=ChoiceLoader([FileSystemLoader(str(f)) for f in [*folders, root]]),
        autoescape=select_autoescape(["html.j2"]),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )
    names: set[str] = set()
    for folder in folders:
        names |= {
            p.relative_to(folder).as_posix()
            for p in folder.rglob("*")
            if p.is_file() and p.relative_to(folder).parts[0] != "strings"
        }
    files: dict[str, bytes] = {}
    assets: dict[str, str] = {}  # name in the theme -> name served

    def add(name: str, data: bytes) -> None:
        served = name if name in FIXED_NAMES else fingerprinted(name, data)
        assets[name] = served
        files[served] = data

    def context(language: str) -> dict[str, object]:
        return {
            "tenant": tenant.name,
            "title": tenant.title,
            "language": language,
            "languages": langs,
            "strings": strings(folders, language),
            "api": API,
            "assets": assets,
        }

    # plain files first, then templates that may link them, pages last
    for name in sorted(n for n in names if not n.endswith(".j2")):
        source = next(f / name for f in folders if (f / name).is_file())
        add(name, source.read_bytes())
    templates = sorted(n[:-3] for n in names if n.endswith(".j2"))
    for name in (n for n in templates if not n.endswith(".html")):
        add(name, env.get_template(name + ".j2").render(context(tenant.language)).encode())
    for name in (n for n in templates if n.endswith(".html")):
        template = env.get_template(name + ".j2")
        stem = name[: -len(".html")]
        for lang in langs:
            files[f"{stem}.{lang}.html"] = template.render(context(lang)).encode()
        files[name] = template.render(context(tenant.language)).encode()
    return files


def write_tenant(files: Mapping[str, bytes], dest: Path) -> list[Path]:
    """Writes ``files`` to ``dest`` (assets first, each file replaced atomically),
    then removes what an older build left there."""
    written = []
    for name, data in files.items():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
        written.append(target)
    keep = set(written)
    for old in dest.rglob("*"):
        if old.is_file() and old not in keep:
            old.unlink()
    return written


def build_pages(config: Config, out: str | Path, root: Path | None = None) -> dict[str, list[Path]]:
    """Every tenant's pages, written under ``out``, by tenant name."""
    built = {}
    root = root or themes_dir(config.themes)
    for tenant in config.tenants:
        dest = Path(out) / "_anteroom" / "waiting" / tenant.name
        built[tenant.name] = write_tenant(render_tenant(tenant, root), dest)
    return built
