"""`webmacs` command line: serve, migrate, create-user, controller."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys
import threading
import time


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _setup_logging() -> None:
    from webmacs.config import ConfigError

    level = (os.environ.get("WEBMACS_LOG_LEVEL") or "INFO").strip().upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"WEBMACS_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {level.lower()!r}")
    logging.basicConfig(level=getattr(logging, level), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _port(raw: str) -> int:
    from webmacs.config import ConfigError

    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(f"--port must be an integer, got {raw!r}") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port must be between 1 and 65535, got {port}")
    return port


def _fail(message: str) -> int:
    print(f"webmacs: error: {message}", file=sys.stderr)
    return 2


def cmd_serve(args) -> int:
    from webmacs.app import run_server
    from webmacs.config import Settings

    port = _port(args.port)
    config = Settings.from_env()
    asyncio.run(run_server(config, args.host, port))
    # Everything acknowledged is committed by now. A database call that still hangs
    # (database unreachable) must not hold the exit past the shutdown bound: the
    # interpreter would join its thread. Leave without waiting for it.
    deadline = time.monotonic() + 1.0
    stuck = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    for t in stuck:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [t for t in stuck if t.is_alive()]
    if stuck:
        logging.getLogger("webmacs").warning("exiting with %d database call(s) still blocked", len(stuck))
        logging.shutdown()
        os._exit(0)
    return 0


def cmd_migrate(args) -> int:
    from webmacs.config import Settings
    from webmacs.db import upgrade

    config = Settings.from_env()
    upgrade(config.database_url, config.chunk_interval_hours)
    print("database is at the latest schema revision")
    return 0


def cmd_create_user(args) -> int:
    from sqlalchemy.exc import IntegrityError

    from webmacs.config import Settings
    from webmacs.db import Database, current_revision, head_revision, upgrade
    from webmacs.models import User
    from webmacs.security import hash_password

    config = Settings.from_env()
    password = args.password or getpass.getpass("password: ")
    if len(password) < 8:
        return _fail("password must be at least 8 characters")
    db = Database(config.database_url, 1)
    try:
        if current_revision(db.engine) != head_revision():
            if not config.is_sqlite:
                return _fail("database is not migrated: run `webmacs migrate` first")
            upgrade(config.database_url, config.chunk_interval_hours)
        with db.Session() as session:
            session.add(User(email=args.email.lower(), username=args.username,
                             password_hash=hash_password(password), role=args.role))
            try:
                session.commit()
            except IntegrityError:
                return _fail("a user with this email or username already exists")
    finally:
        db.close()
    print(f"created {args.role} {args.username} <{args.email}>")
    return 0


def cmd_controller(args) -> int:
    from webmacs.controller.main import main as controller_main

    return controller_main()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="webmacs", description="WebMACS telemetry server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", default="8000")
    serve.set_defaults(fn=cmd_serve)
    migrate = sub.add_parser("migrate", help="upgrade the database schema (alembic upgrade head)")
    migrate.set_defaults(fn=cmd_migrate)
    cu = sub.add_parser("create-user", help="create a user")
    cu.add_argument("--email", required=True)
    cu.add_argument("--username", required=True)
    cu.add_argument("--password", help="prompted for when omitted")
    cu.add_argument("--role", choices=("admin", "operator", "viewer"), default="viewer")
    cu.set_defaults(fn=cmd_create_user)
    ctl = sub.add_parser("controller", help="run the controller client (configured from WEBMACS_* env)")
    ctl.set_defaults(fn=cmd_controller)
    return parser


def main(argv: list[str] | None = None) -> int:
    from webmacs.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        _setup_logging()
        return args.fn(args)
    except ConfigError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - one clear line, never a traceback
        if os.environ.get("WEBMACS_DEBUG"):
            raise
        name = type(exc).__name__
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return _fail(f"{name}: {first}")
