"""``python -m sidecar`` serves; ``pages build --out DIR`` (or ``build-pages``) renders
the waiting pages to a folder; ``pages publish`` uploads them to an S3 bucket;
``queues …`` steers running queues through the admin API; ``fastpass-conf`` prints
nginx's fast pass secret include."""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable

from aiohttp import web

from . import logs
from .config import Config, ConfigError, S3Settings
from .control import cli
from .control.admin import start_admin
from .supervisor import Supervisor
from .web import fastpass
from .web.app import create_app

log = logging.getLogger("sidecar")


def serve(config: Config) -> None:
    """Runs ``config.workers`` processes on one port (SO_REUSEPORT): each has its own
    event loop, Redis pool and refresher, and the kernel spreads connections. With
    more than one, this process only supervises them (sidecar/supervisor.py)."""
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # uvloop is optional: faster, not required
        pass
    if config.workers == 1:
        _run(config, 0)
        return
    # workers hand their metrics to worker 0 (which serves /metrics) through this folder
    metrics_dir = tempfile.mkdtemp(prefix="anteroom-metrics-")
    try:
        supervisor = Supervisor(
            config.workers,
            lambda worker: _run(config, worker, metrics_dir),
            stop_within=config.shutdown_timeout + 5,
        )
        code = supervisor.run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    if code:
        sys.exit(code)


def _run(config: Config, worker: int, metrics_dir: str | None = None) -> None:
    log.info(
        "starting",
        extra={
            "listen": f"{config.listen_host}:{config.listen_port}",
            "tenants": [t.name for t in config.tenants],
            "worker": worker,
            "workers": config.workers,
            "demo": config.demo,
        },
    )
    app = create_app(config, worker, metrics_dir, admin=start_admin)
    # SIGTERM or SIGINT: stop listening, let in-flight requests finish for up to
    # shutdown_timeout, then the app's cleanup writes the last heartbeats
    web.run_app(
        app,
        host=config.listen_host,
        port=config.listen_port,
        reuse_port=config.workers > 1,
        backlog=config.backlog,  # a launch burst queues in the kernel instead of being refused
        shutdown_timeout=config.shutdown_timeout,
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
    pages = sub.add_parser("pages", help="build or publish the waiting pages")
    pages_sub = pages.add_subparsers(dest="pages_command", required=True)
    pbuild = pages_sub.add_parser("build", help="render to a folder (same as build-pages)")
    pbuild.add_argument("--out", required=True, help="output folder, as for build-pages")
    publish = pages_sub.add_parser(
        "publish", help="upload to the S3 bucket named by ANTEROOM_S3_* (changed objects only)"
    )
    publish.add_argument("--create-bucket", action="store_true", help="create the bucket first")
    publish.add_argument("--dry-run", action="store_true", help="say what would be uploaded")
    cli.add_parser(sub)
    sub.add_parser(
        "fastpass-conf",
        help="print anteroom/fastpass-secret.conf for nginx from ANTEROOM_FAST_PASS_SECRET",
    )
    args = parser.parse_args(argv)
    command = args.command
    if command == "pages":
        command = "build-pages" if args.pages_command == "build" else "publish"
    if command == "queues":  # a client of the admin API: needs no sidecar settings
        return cli.run(args)
    try:
        return _command(command)(args)
    except ConfigError as e:  # every command: one line naming the setting, no traceback
        print(f"anteroom: invalid configuration: {e}", file=sys.stderr)
        return 2


def _command(name: str | None) -> Callable[[argparse.Namespace], int]:
    commands = {"build-pages": _build_pages, "publish": _publish, "fastpass-conf": _fastpass_conf}
    return commands.get(name or "", _serve)


def _serve(args: argparse.Namespace) -> int:
    config = Config.from_env()
    logs.setup(config.log_level, config.log_format, config.log_levels)
    serve(config)
    return 0


def _publish(args: argparse.Namespace) -> int:
    from .pages.publish import publish
    from .pages.s3 import S3Error

    config = Config.from_env(serving=False)
    logs.setup(config.log_level, config.log_format, config.log_levels)
    settings = config.s3 or S3Settings.from_env({})  # the latter names what is missing
    dry_run = args.dry_run
    try:
        done = publish(
            config, settings, create_bucket=args.create_bucket, dry_run=dry_run, say=print
        )
    except S3Error as e:
        print(f"anteroom: publish failed: {e}", file=sys.stderr)
        return 1
    verb = "to upload" if dry_run else "uploaded"
    where = f"{settings.endpoint}/{settings.bucket}/{settings.prefix}"
    print(f"{where}: {len(done.uploaded)} {verb}, {len(done.unchanged)} unchanged")
    return 0


def _build_pages(args: argparse.Namespace) -> int:
    from .pages.themes import build_pages, themes_dir

    config = Config.from_env(serving=False)
    logs.setup(config.log_level, config.log_format, config.log_levels)
    built = build_pages(config, args.out)
    if not config.config_file:
        print("anteroom: no ANTEROOM_CONFIG: one tenant named 'default' serving every host")
    for tenant, paths in built.items():
        page = f"{args.out.rstrip('/')}/_anteroom/waiting/{tenant}/"
        print(f"anteroom: built tenant {tenant!r}: {len(paths)} files in {page}")
    print(f"anteroom: themes from {themes_dir(config.themes)}")
    return 0


def _fastpass_conf(args: argparse.Namespace) -> int:
    config = Config.from_env(serving=False)
    fast = fastpass.from_config(config)
    if fast is None:
        raise ConfigError("ANTEROOM_FAST_PASS_SECRET: required (e.g. openssl rand -hex 32)")
    sys.stdout.write(fastpass.nginx_conf(fast, config.cookie_name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
