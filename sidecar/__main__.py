"""``python -m sidecar`` serves; ``python -m sidecar build-pages --out DIR`` renders themes."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from aiohttp import web

from . import logs
from .app import create_app
from .config import Config, ConfigError

log = logging.getLogger("sidecar")


def serve(config: Config) -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # uvloop is optional: faster, not required
        pass
    log.info(
        "starting",
        extra={
            "listen": f"{config.listen_host}:{config.listen_port}",
            "tenants": [t.name for t in config.tenants],
            "demo": config.demo,
        },
    )
    web.run_app(
        create_app(config),
        host=config.listen_host,
        port=config.listen_port,
        access_log=None,
        print=None,
        handler_cancellation=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anteroom", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the sidecar (default)")
    build = sub.add_parser("build-pages", help="render every tenant's waiting page")
    build.add_argument("--out", required=True, help="output folder (served as /_anteroom/waiting/)")
    args = parser.parse_args(argv)
    try:
        config = Config.from_env(serving=args.command != "build-pages")
        logs.setup(config.log_level, config.log_format, os.environ)
    except ConfigError as e:
        print(f"anteroom: invalid configuration: {e}", file=sys.stderr)
        return 2
    if args.command == "build-pages":
        from .themes import build_pages

        for path in build_pages(config, args.out):
            print(path)
        return 0
    serve(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
