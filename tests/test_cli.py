"""The real ``webmacs`` console script: --version, --help of every subcommand, quiet migrations."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import webmacs
from webmacs import config as config_module
from webmacs.controller import main as controller_main

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "webmacs"
SUBCOMMANDS = ("serve", "migrate", "create-user", "controller", "openapi")


def run(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    assert SCRIPT.exists(), f"console script not installed at {SCRIPT}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("WEBMACS_")}
    base.update(env or {})
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=base, capture_output=True, text=True, timeout=60)


def read_vars(source: str) -> set[str]:
    return set(re.findall(r'"(WEBMACS_[A-Z_]+)"', source))


def test_version_matches_package_and_setup_py():
    proc = run("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"webmacs {webmacs.__version__}"
    setup_version = re.search(r'version="([^"]+)"', (REPO / "setup.py").read_text()).group(1)
    assert setup_version == webmacs.__version__


def test_top_level_help_lists_every_subcommand():
    proc = run("--help")
    assert proc.returncode == 0, proc.stderr
    for name in SUBCOMMANDS:
        assert re.search(rf"^\s+{name}\b", proc.stdout, re.M), name
    assert "--version" in proc.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_a_sentence_and_an_environment_list(name):
    proc = run(name, "--help")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith(f"usage: webmacs {name}")
    description = out.split("\n\n", 2)[1]
    assert len(description.split()) >= 8 and "." in description, description
    assert "environment" in out and "WEBMACS_LOG_LEVEL" in out


def test_serve_help_shows_defaults_and_every_server_setting():
    out = " ".join(run("serve", "--help").stdout.split())
    assert "(default: 127.0.0.1)" in out and "(default: 8000)" in out
    names = read_vars(Path(config_module.__file__).read_text())
    assert len(names) >= 15
    for var in sorted(names):
        # WEBMACS_INITIAL_ADMIN_EMAIL / _USERNAME / _PASSWORD share one line
        assert var in out or f"/ _{var.rsplit('_', 1)[1]}" in out, f"{var} missing from serve --help"
    assert "(default 1440)" in out  # token TTL


def test_controller_help_lists_its_settings():
    out = run("controller", "--help").stdout
    names = read_vars(Path(controller_main.__file__).read_text())
    assert {"WEBMACS_SERVER_URL", "WEBMACS_API_TOKEN", "WEBMACS_SPOOL_PATH"} <= names
    for var in sorted(names):
        assert var in out, f"{var} missing from controller --help"
    assert "default 1.0" in out  # poll interval


def test_create_user_help_shows_the_role_default():
    out = " ".join(run("create-user", "--help").stdout.split())
    assert "(default: viewer)" in out and "--password" in out


def test_migrate_is_quiet_and_idempotent(tmp_path):
    env = {"WEBMACS_DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}"}
    first = run("migrate", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert "upgrading database schema from nothing to" in first.stderr
    second = run("migrate", cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stderr
    assert "latest schema revision" in second.stdout
    assert second.stderr == "", second.stderr  # no alembic INFO lines at head
    assert "alembic" not in first.stderr


def test_create_user_then_duplicate_is_one_clear_line(tmp_path):
    env = {"WEBMACS_DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}"}
    args = ("create-user", "--email", "Ann@Example.com", "--username", "ann", "--password", "secret-pass-1",
            "--role", "operator")
    ok = run(*args, cwd=tmp_path, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "created operator ann <Ann@Example.com>" in ok.stdout
    dup = run(*args, cwd=tmp_path, env=env)
    assert dup.returncode == 2
    assert dup.stderr.strip().splitlines()[-1] == "webmacs: error: a user with this email or username already exists"
    assert "Traceback" not in dup.stderr


def test_a_bad_setting_is_one_line_naming_the_variable(tmp_path):
    proc = run("serve", "--port", "65000", cwd=tmp_path, env={"WEBMACS_DB_POOL_SIZE": "lots"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == "webmacs: error: WEBMACS_DB_POOL_SIZE must be an integer, got 'lots'"
