"""Database engine, the bounded executor every blocking call runs on, and migrations.

Nothing touches SQLAlchemy on the IOLoop thread: ``await db.session(fn, ...)``
runs ``fn(session, ...)`` on one of the executor's threads with a short-lived
session committed before the await returns; ``await db.run(fn, ...)`` runs a plain
blocking call there (no session).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Callable, TypeVar

import psycopg2
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

log = logging.getLogger("webmacs.db")
T = TypeVar("T")

# What a failing database raises, through SQLAlchemy or from a raw DB-API cursor
# (COPY, executemany). Anything else is a bug, not an outage.
DATABASE_ERRORS = (SQLAlchemyError, psycopg2.Error, sqlite3.Error)


# Alembic logs its plugin set-up and "Context impl ..." at INFO on every revision check,
# i.e. on every start. Keep it to warnings; upgrade() logs what it does itself. With
# WEBMACS_LOG_LEVEL=DEBUG everything shows.
if os.environ.get("WEBMACS_LOG_LEVEL", "").strip().upper() != "DEBUG":
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _migrations_dir() -> Path:
    """``migrations/`` of the checkout, installed as the package ``webmacs.migrations``."""
    import importlib.util

    spec = importlib.util.find_spec("webmacs.migrations")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(__file__).resolve().parent.parent / "migrations"


MIGRATIONS_DIR = _migrations_dir()


def make_engine(url: str, pool_size: int = 8) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url[len("postgresql://"):]
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=4,
        pool_pre_ping=True,
        pool_recycle=3600,
        connect_args={"connect_timeout": 5, "application_name": "webmacs"},
    )


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


# pg_advisory_lock key held while migrating: concurrent `webmacs migrate` runs take
# turns (the second finds the schema at head and does nothing).
MIGRATION_LOCK_KEY = 0x7765626D  # "webm"


def upgrade(url: str, chunk_interval_hours: int = 24) -> None:
    """`alembic upgrade head` on ``url`` (on PostgreSQL under an advisory lock, so two
    concurrent runs take turns); nothing, and no log line, when already at head."""
    from alembic import command

    engine = make_engine(url, 1)
    try:
        current = current_revision(engine)
    finally:
        engine.dispose()
    head = head_revision()
    if current == head:
        return
    log.info("upgrading database schema from %s to %s", current or "nothing", head)
    cfg = alembic_config(url)
    cfg.attributes["chunk_interval_hours"] = chunk_interval_hours
    if not url.startswith("postgresql"):
        command.upgrade(cfg, "head")
        return
    engine = make_engine(url, 1)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            try:
                command.upgrade(cfg, "head")
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
    finally:
        engine.dispose()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


class Database:
    """The engine, a session factory and the bounded executor, made once at start."""

    def __init__(self, url: str, pool_size: int = 8):
        self.url = url
        self.engine = make_engine(url, pool_size)
        self.Session = sessionmaker(self.engine, expire_on_commit=False)
        # Bounded: at most pool_size database calls run at once; the rest queue
        # here instead of opening more connections than the pool holds.
        self.executor = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="webmacs-db")
        self.is_postgres = self.engine.dialect.name == "postgresql"
        self.has_timescale = False

    def detect_features(self) -> None:
        if not self.is_postgres:
            return
        with self.engine.connect() as conn:
            self.has_timescale = bool(
                conn.execute(text("SELECT count(*) FROM pg_extension WHERE extname='timescaledb'")).scalar()
            )
        if not self.has_timescale:
            log.warning("TimescaleDB extension not present: datapoints are a plain PostgreSQL table")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the executor (no session)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, partial(fn, *args))

    async def session(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(session, *args)`` in a transaction committed before returning."""
        return await self.run(self._in_session, fn, *args)

    def _in_session(self, fn: Callable[..., T], *args: Any) -> T:
        with self.Session() as session:
            result = fn(session, *args)
            session.commit()
            return result

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:  # noqa: BLE001 - any failure means "not reachable"
            return False

    def close(self, wait: bool = True) -> None:
        """Stop the executor; ``wait=False`` leaves a hung call behind (process exit)."""
        self.executor.shutdown(wait=wait, cancel_futures=not wait)
        self.engine.dispose()
