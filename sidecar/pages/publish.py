"""Publishes every tenant's waiting page to an S3 bucket (``pages publish``).

Renders what ``build-pages`` writes and uploads only what changed: an object
is put again when its MD5 (the ETag of a single PUT), Content-Type or
Cache-Control differ from what the bucket holds (one HEAD each). Within a
tenant, assets go up before the pages that link them, so a page never names
a missing file.
Old fingerprinted assets stay (a cached old page may still ask for them);
a bucket lifecycle rule can expire them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path, PurePosixPath

from ..config import Config, S3Settings
from .s3 import S3, ObjectInfo
from .themes import FIXED_NAMES, HASHED_RE, render_tenant, themes_dir

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "application/javascript; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}
# a name with its content hash never changes: cache it for a year
IMMUTABLE = "public, max-age=31536000, immutable"
# pages and keepalive.js keep their names: browsers revalidate every time
REVALIDATE = "no-cache"
PARALLEL = 8  # requests in flight


def content_type(name: str) -> str:
    return CONTENT_TYPES.get(PurePosixPath(name).suffix.lower(), "application/octet-stream")


def cache_control(name: str) -> str:
    if HASHED_RE.search(name) and PurePosixPath(name).name not in FIXED_NAMES:
        return IMMUTABLE
    return REVALIDATE


@dataclass
class Published:
    uploaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def publish(
    config: Config,
    settings: S3Settings,
    root: Path | None = None,
    create_bucket: bool = False,
    dry_run: bool = False,
    say: Callable[[str], None] = lambda line: None,
) -> Published:
    client = S3(settings)
    root = root or themes_dir(config.themes)
    if create_bucket and not dry_run:
        client.create_bucket()
    done = Published()
    # a few requests in flight: a deployment of many tenants publishes in seconds
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        for tenant in config.tenants:
            base = f"{settings.prefix}_anteroom/waiting/{tenant.name}/"
            files = {base + name: data for name, data in render_tenant(tenant, root).items()}
            held = dict(zip(files, pool.map(client.head, files), strict=True))
            changed = [key for key, data in files.items() if not _same(held[key], key, data)]
            done.unchanged += [key for key in files if key not in changed]
            # assets first, then the pages that link them
            for batch in (
                [k for k in changed if not k.endswith(".html")],
                [k for k in changed if k.endswith(".html")],
            ):
                if not dry_run:
                    list(pool.map(_put, repeat(client), batch, [files[k] for k in batch]))
                for key in batch:
                    done.uploaded.append(key)
                    say(f"{'would upload' if dry_run else 'uploaded'} {key}")
    return done


def _same(have: ObjectInfo | None, key: str, data: bytes) -> bool:
    return (
        have is not None
        and have.etag == hashlib.md5(data).hexdigest()
        and have.content_type == content_type(key)
        and have.cache_control == cache_control(key)
    )


def _put(client: S3, key: str, data: bytes) -> None:
    client.put(key, data, content_type(key), cache_control(key))
