"""Migrations on SQLite and TimescaleDB; the schema matches the models; serve checks the revision."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from tests.conftest import clone_template, drop_database
from webmacs.db import head_revision, make_engine, upgrade
from webmacs.models import Base


def test_sqlite_migrates_from_empty(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    engine = make_engine(url)
    names = set(inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= names and "alembic_version" in names
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head_revision()
    engine.dispose()


def _orm_diff(url: str) -> list:
    engine = make_engine(url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": False})
        diff = compare_metadata(ctx, Base.metadata)
    engine.dispose()
    # datapoints is built by hand per backend (no primary key on the hypertable)
    return [d for d in diff if "datapoints" not in repr(d)]


def test_models_match_migrated_schema_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    assert _orm_diff(url) == []


def test_timescaledb_hypertable_created(pg_url):
    assert _orm_diff(pg_url) == []
    engine = make_engine(pg_url)
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT hypertable_name FROM timescaledb_information.hypertables WHERE hypertable_name='datapoints'"
        )).all()
        assert rows == [("datapoints",)]
        dims = conn.execute(text(
            "SELECT column_name FROM timescaledb_information.dimensions WHERE hypertable_name='datapoints'"
        )).scalars().all()
        assert dims == ["time"]
        indexes = {r[0] for r in conn.execute(text(
            "SELECT indexname FROM pg_indexes WHERE tablename='datapoints'"))}
        assert indexes == {"ix_datapoints_event_time"}
    engine.dispose()


def _run(args, env_extra, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBMACS_")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "webmacs", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def test_serve_refuses_unmigrated_postgres(pg_url, tmp_path):
    prefix, _, name = pg_url.rpartition("/")
    fresh = f"{name}_unmigrated"
    admin = create_engine(f"{prefix}/postgres".replace("postgresql://", "postgresql+psycopg2://", 1),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{fresh}"'))
        conn.execute(text(f'CREATE DATABASE "{fresh}"'))
    try:
        proc = _run(["serve", "--port", "65000"], {"WEBMACS_DATABASE_URL": f"{prefix}/{fresh}"}, tmp_path)
        assert proc.returncode == 2
        assert "run `webmacs migrate`" in proc.stderr and "Traceback" not in proc.stderr
    finally:
        drop_database(admin, fresh)
        admin.dispose()


@pytest.mark.parametrize("env, fragment", [
    ({"WEBMACS_TOKEN_TTL_MINUTES": "abc"}, "WEBMACS_TOKEN_TTL_MINUTES"),
    ({"WEBMACS_DB_POOL_SIZE": "0"}, "WEBMACS_DB_POOL_SIZE"),
    ({"WEBMACS_DATABASE_URL": "mysql://x"}, "WEBMACS_DATABASE_URL"),
    ({"WEBMACS_ENV": "production"}, "WEBMACS_SECRET_KEY"),
    ({"WEBMACS_ENV": "production", "WEBMACS_SECRET_KEY": "short"}, "WEBMACS_SECRET_KEY"),
    ({"WEBMACS_INITIAL_ADMIN_EMAIL": "nobody", "WEBMACS_INITIAL_ADMIN_PASSWORD": "password-1"},
     "WEBMACS_INITIAL_ADMIN_EMAIL"),
])
def test_invalid_settings_one_clear_line(tmp_path, env, fragment):
    proc = _run(["serve", "--port", "65000"], env, tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in proc.stderr


def test_dev_secret_persisted_next_to_sqlite(tmp_path):
    from webmacs.config import Settings

    url = f"sqlite:///{tmp_path / 'x.db'}"
    a = Settings.from_env({"WEBMACS_DATABASE_URL": url})
    b = Settings.from_env({"WEBMACS_DATABASE_URL": url})
    assert a.secret_key == b.secret_key and len(a.secret_key) >= 32
    assert (tmp_path / ".webmacs_secret").stat().st_mode & 0o077 == 0


def test_create_user_cli(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    proc = _run(["create-user", "--email", "Ops@Example.com", "--username", "ops", "--password", "password-1",
                 "--role", "operator"], {"WEBMACS_DATABASE_URL": url}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    again = _run(["create-user", "--email", "ops@example.com", "--username", "ops", "--password", "password-1"],
                 {"WEBMACS_DATABASE_URL": url}, tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT role FROM users WHERE email='ops@example.com'")).scalar() == "operator"
    engine.dispose()


def _datapoints_columns(url: str) -> dict[str, bool]:
    """datapoints' columns and whether each is nullable (built by hand per backend, so
    _orm_diff leaves it out). SQLite reports its rowid alias ``id`` as nullable."""
    engine = make_engine(url)
    cols = {c["name"]: c["nullable"] and not (c["name"] == "id" and engine.dialect.name == "sqlite")
            for c in inspect(engine).get_columns("datapoints")}
    engine.dispose()
    return cols


MODEL_DATAPOINTS = {c.name: c.nullable for c in Base.metadata.tables["datapoints"].columns}


def _down_and_up(url: str) -> None:
    """head -> base (nothing but alembic_version) -> head, matching the models again."""
    from alembic import command

    from webmacs.db import alembic_config

    command.downgrade(alembic_config(url), "base")
    engine = make_engine(url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    upgrade(url)
    assert _orm_diff(url) == [] and _datapoints_columns(url) == MODEL_DATAPOINTS


def test_sqlite_downgrade_and_upgrade_again(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    assert _datapoints_columns(url) == MODEL_DATAPOINTS
    _down_and_up(url)


def test_timescaledb_downgrade_and_upgrade_again(pg_url):
    """On a scratch database of its own (the session's database stays migrated)."""
    prefix, _, name = pg_url.rpartition("/")
    scratch = f"{name}_updown"
    admin = create_engine(f"{prefix}/postgres".replace("postgresql://", "postgresql+psycopg2://", 1),
                          isolation_level="AUTOCOMMIT")
    template = os.environ["WEBMACS_TEST_PG_URL"].rpartition("/")[2]
    clone_template(admin, template, scratch)
    url = f"{prefix}/{scratch}"
    try:
        upgrade(url)
        assert _datapoints_columns(url) == MODEL_DATAPOINTS
        _down_and_up(url)
        engine = make_engine(url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM timescaledb_information.hypertables "
                                     "WHERE hypertable_name = 'datapoints'")).scalar() == 1
        engine.dispose()
    finally:
        drop_database(admin, scratch)
        admin.dispose()
