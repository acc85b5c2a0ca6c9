"""`webmacs` command line: serve, migrate, create-user, controller."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import re
import sys
import textwrap


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
    from webmacs.config import ConfigError, Settings
    from webmacs.workers import serve_one, serve_workers, worker_count

    port = _port(args.port)
    config = Settings.from_env()
    if args.workers is not None and args.workers < 0:
        raise ConfigError(f"--workers must be 0 (one per core) or more, got {args.workers}")
    workers = worker_count(config.workers if args.workers is None else args.workers)
    if workers > 1:
        return serve_workers(config, args.host, port, workers, demo=args.demo)
    return serve_one(config, args.host, port, demo=args.demo)


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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default and keeps the environment lists in the epilog as written."""

    def _get_help_string(self, action):
        if action.default is None or action.required:
            return action.help
        return super()._get_help_string(action)


def _settings_help() -> str:
    """The server's environment variables, read from the comments in webmacs/config.py
    (each setting is documented where it is declared, so this list cannot drift)."""
    import inspect

    from webmacs import config

    lines: list[str] = []
    comment: list[str] = []
    try:
        source = inspect.getsource(config.Settings)
    except (OSError, TypeError):  # installed without sources
        return "  see conf/webmacs.env.example"
    for raw in source.splitlines():
        line = raw.strip()
        if line.startswith("# WEBMACS_") or (line.startswith("#") and comment):
            comment.append(line.lstrip("# ").strip())
            continue
        match = re.match(r"(\w+): [^=]+= (.+)$", line)
        if comment and match:
            default = match.group(2)
            text = " ".join(comment)
            if default not in ('""', "None") and "default" not in text.lower():
                text += f" (default {default.strip(chr(34))})"
            lines.append(text)
        comment = []
    return "\n".join(textwrap.fill(t, 88, initial_indent="  ", subsequent_indent="      ") for t in lines)


def _controller_help() -> str:
    """The ``Environment`` list of webmacs/controller/main.py's docstring."""
    from webmacs.controller import main as controller

    doc = (controller.__doc__ or "").split("\nEnvironment", 1)[-1]
    items = [line.strip()[2:] for line in doc.splitlines() if line.strip().startswith("- ``WEBMACS_")]
    return "\n".join("  " + item.replace("``", "") for item in items)


def _para(text: str) -> str:
    return textwrap.fill(text, 88)


LOG_HELP = ("  WEBMACS_LOG_LEVEL  DEBUG, INFO (default), WARNING or ERROR\n"
            "  WEBMACS_DEBUG      set to 1 to see a traceback instead of the one-line error")


def build_parser() -> argparse.ArgumentParser:
    from webmacs import __version__

    parser = argparse.ArgumentParser(
        prog="webmacs", formatter_class=_HelpFormatter,
        description=_para("webmacs: lab telemetry server (Tornado, TimescaleDB or SQLite) and its controller client."),
        epilog="Run `webmacs COMMAND --help` for a command's options and the environment variables it reads.")
    parser.add_argument("--version", action="version", version=f"webmacs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve", help="run the HTTP/WebSocket server", formatter_class=_HelpFormatter,
        description=_para("Run the server: REST API under /api/v1, WebSockets under /ws/, the dashboard at /. "
                    "An embedded SQLite database is migrated at start; PostgreSQL must be migrated first "
                    "with `webmacs migrate`. SIGTERM stops it gracefully."),
        epilog="environment (all optional):\n" + _settings_help() + "\n" + LOG_HELP)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", default="8000", help="TCP port to listen on (1-65535)")
    serve.add_argument("--workers", type=int, default=None,
                       help="server processes on this one port (pre-forked, SO_REUSEPORT); 0: one per CPU "
                            "core; more than 1 needs PostgreSQL (default: WEBMACS_WORKERS, else 1)")
    serve.add_argument("--demo", action="store_true",
                       help="first-run demo: create a simulated plugin instance with linked events if there is "
                            "no instance yet, and run the controller client beside the server (stopped with "
                            "it), so the dashboard shows live data. Needs an admin (WEBMACS_INITIAL_ADMIN_*)")
    serve.set_defaults(fn=cmd_serve)

    migrate = sub.add_parser(
        "migrate", help="upgrade the database schema (alembic upgrade head)", formatter_class=_HelpFormatter,
        description=_para("Upgrade the database named by WEBMACS_DATABASE_URL to the latest schema revision "
                    "(alembic upgrade head). Safe to run again: a database at the latest revision is left "
                    "as it is. On TimescaleDB the first run makes datapoints a hypertable."),
        epilog="environment:\n"
               "  WEBMACS_DATABASE_URL          database to migrate (default sqlite:///./webmacs.db)\n"
               "  WEBMACS_CHUNK_INTERVAL_HOURS  hypertable chunk interval when it is created (default 24)\n"
               + LOG_HELP)
    migrate.set_defaults(fn=cmd_migrate)

    cu = sub.add_parser(
        "create-user", help="create a user", formatter_class=_HelpFormatter,
        description=_para("Create a user directly in the database (no server needed), e.g. the first admin. "
                    "An embedded SQLite database is migrated first if needed."),
        epilog="environment:\n"
               "  WEBMACS_DATABASE_URL  database to write to (default sqlite:///./webmacs.db)\n" + LOG_HELP)
    cu.add_argument("--email", required=True, help="login email (stored lower-case)")
    cu.add_argument("--username", required=True, help="display name, unique")
    cu.add_argument("--password", help="at least 8 characters; prompted for when omitted")
    cu.add_argument("--role", choices=("admin", "operator", "viewer"), default="viewer",
                    help="viewer reads, operator also writes and pushes telemetry, admin also manages users")
    cu.set_defaults(fn=cmd_create_user)

    ctl = sub.add_parser(
        "controller", help="run the controller client (configured from WEBMACS_* env)",
        formatter_class=_HelpFormatter,
        description=_para("Run the controller client: fetch the plugin instances and channel mappings from the "
                    "server, read the drivers, spool every reading locally and send it until the server "
                    "acknowledges it. SIGTERM/SIGINT sends what it can, then exits."),
        epilog="environment:\n" + _controller_help() + "\n" + LOG_HELP)
    ctl.set_defaults(fn=cmd_controller)

    api = sub.add_parser(
        "openapi", help="print the OpenAPI 3.1 document of the REST API", formatter_class=_HelpFormatter,
        description=_para("Print the OpenAPI 3.1 document the server serves at /api/v1/openapi.json, built "
                    "from the handlers' own field specs (no server or database needed)."),
        epilog="environment: none is read.\n" + LOG_HELP)
    api.add_argument("--markdown", action="store_true", help="print docs/rest.md (made from the document) instead")
    api.set_defaults(fn=cmd_openapi)
    return parser


def cmd_openapi(args) -> int:
    from webmacs.openapi import main as openapi_main

    return openapi_main(["--markdown"] if args.markdown else [])


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
