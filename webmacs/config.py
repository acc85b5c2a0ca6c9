"""Server settings, read once from the environment.

Every setting is declared here with its variable, default and meaning; the
README and ``conf/webmacs.env.example`` list the same variables. An invalid
value raises :class:`ConfigError` with one line naming the variable, which the
CLI prints instead of a traceback.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping


class ConfigError(Exception):
    """A setting is invalid; the message names the variable."""


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


@dataclass
class Settings:
    # WEBMACS_DATABASE_URL: SQLAlchemy URL. The default is an SQLite file in the
    # working directory, so `webmacs serve` runs with nothing else installed.
    # `postgresql://...` selects PostgreSQL; the datapoints table becomes a
    # TimescaleDB hypertable when the extension is available.
    database_url: str = "sqlite:///./webmacs.db"
    # WEBMACS_ENV: "development" (default) or "production". Production refuses
    # to start without a WEBMACS_SECRET_KEY of at least 32 bytes.
    env: str = "development"
    # WEBMACS_SECRET_KEY: JWT signing key (HS256). Unset in development: one is
    # generated and kept in `.webmacs_secret` beside the SQLite file (or in the
    # working directory) so tokens survive a restart.
    secret_key: str = ""
    # WEBMACS_TOKEN_TTL_MINUTES: lifetime of a login token (1..525600).
    token_ttl_minutes: int = 1440
    # WEBMACS_INITIAL_ADMIN_EMAIL / _USERNAME / _PASSWORD: when the users table
    # is empty at start and email and password are set, this admin is created.
    initial_admin_email: str | None = None
    initial_admin_username: str = "admin"
    initial_admin_password: str | None = None
    # WEBMACS_DB_POOL_SIZE: threads in the database executor, and connections in
    # the pool (every blocking database call runs on one of these threads).
    db_pool_size: int = 8
    # WEBMACS_CHUNK_INTERVAL_HOURS: TimescaleDB chunk interval for datapoints,
    # applied by `webmacs migrate` when the hypertable is created.
    chunk_interval_hours: int = 24
    # WEBMACS_BROADCAST_INTERVAL_MS: how often the coalescing buffer is flushed
    # to dashboards (the spec's 200 ms per-event throttle).
    broadcast_interval_ms: int = 200
    # WEBMACS_SHUTDOWN_TIMEOUT: seconds SIGTERM waits for in-flight batches.
    shutdown_timeout: float = 10.0
    # WEBMACS_WEBHOOK_WORKERS: concurrent outgoing webhook requests.
    webhook_workers: int = 10
    # WEBMACS_WEBHOOK_QUEUE: deliveries waiting for a worker before new ones are
    # recorded as failed ("dropped: overload") instead of queued.
    webhook_queue: int = 1000
    # WEBMACS_WEBHOOK_RETRY_BASE: seconds before the 2nd attempt; doubles after.
    webhook_retry_base: float = 2.0
    # WEBMACS_SENSOR_READING_THROTTLE: seconds between sensor.reading webhooks per event.
    sensor_reading_throttle: float = 5.0
    # WEBMACS_MAX_CONNECTIONS: open HTTP connections at most (WebSockets, once
    # upgraded, do not count). At the cap the connection waiting longest for a request
    # header is closed to make room; when none is waiting, the new one gets 503. Keep it
    # below the open-file limit (`ulimit -n`) minus the DB pool, WebSockets and a margin.
    max_connections: int = 800
    # WEBMACS_HTTP_HEADER_TIMEOUT: seconds a connection may take to send a complete
    # request header, counted from the connection's start or the end of its previous
    # request (so it is also the keep-alive idle timeout). Half-sent headers are closed.
    http_header_timeout: float = 10.0
    # WEBMACS_HTTP_BODY_TIMEOUT: seconds to receive a request body once its header is in.
    http_body_timeout: float = 60.0
    # WEBMACS_TRUSTED_PROXIES: comma-separated addresses/CIDR networks whose
    # X-Real-IP / X-Forwarded-For / X-Forwarded-Proto headers are believed. From any
    # other peer they are ignored. Default: loopback.
    trusted_proxies: str = "127.0.0.1/32,::1/128"
    # WEBMACS_RATE_LIMIT: requests per minute per client address (REST API; /ws/*,
    # /health, /api/v1/ota/* and POST /api/v1/datapoints are exempt); 0 disables.
    rate_limit: int = 300
    # WEBMACS_RATE_LIMIT_EXEMPT: client networks the per-address limit does not
    # apply to (the login failure limit below still does). Default: loopback and
    # the private ranges Docker uses.
    rate_limit_exempt: str = "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16"
    # WEBMACS_LOGIN_MAX_FAILURES: failed logins per account within
    # WEBMACS_LOGIN_FAILURE_WINDOW seconds before further attempts for that account
    # get 429 (from any address); 0 disables.
    login_max_failures: int = 10
    login_failure_window: float = 900.0
    # WEBMACS_PASSWORD_HASH_WORKERS: threads that hash and verify passwords
    # (Argon2, ~50 ms of CPU each), apart from the database threads.
    password_hash_workers: int = 1
    extra: dict = field(default_factory=dict)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        s = cls()
        s.database_url = env.get("WEBMACS_DATABASE_URL", "").strip() or s.database_url
        if not s.database_url.startswith(("sqlite", "postgresql")):
            raise ConfigError(
                "WEBMACS_DATABASE_URL must start with sqlite:// or postgresql://, "
                f"got {s.database_url!r}"
            )
        s.env = (env.get("WEBMACS_ENV") or "development").strip().lower()
        if s.env not in ("development", "production", "test"):
            raise ConfigError(f"WEBMACS_ENV must be development or production, got {s.env!r}")
        s.token_ttl_minutes = _int(env, "WEBMACS_TOKEN_TTL_MINUTES", s.token_ttl_minutes, 1, 525600)
        s.initial_admin_email = env.get("WEBMACS_INITIAL_ADMIN_EMAIL") or None
        s.initial_admin_username = env.get("WEBMACS_INITIAL_ADMIN_USERNAME") or "admin"
        s.initial_admin_password = env.get("WEBMACS_INITIAL_ADMIN_PASSWORD") or None
        if s.initial_admin_email and "@" not in s.initial_admin_email:
            raise ConfigError("WEBMACS_INITIAL_ADMIN_EMAIL must be an email address")
        if s.initial_admin_password is not None and len(s.initial_admin_password) < 8:
            raise ConfigError("WEBMACS_INITIAL_ADMIN_PASSWORD must be at least 8 characters")
        s.db_pool_size = _int(env, "WEBMACS_DB_POOL_SIZE", s.db_pool_size, 1, 64)
        s.chunk_interval_hours = _int(env, "WEBMACS_CHUNK_INTERVAL_HOURS", s.chunk_interval_hours, 1, 24 * 365)
        s.broadcast_interval_ms = _int(env, "WEBMACS_BROADCAST_INTERVAL_MS", s.broadcast_interval_ms, 10, 10000)
        s.shutdown_timeout = _float(env, "WEBMACS_SHUTDOWN_TIMEOUT", s.shutdown_timeout, 0.1, 600)
        s.webhook_workers = _int(env, "WEBMACS_WEBHOOK_WORKERS", s.webhook_workers, 1, 100)
        s.webhook_queue = _int(env, "WEBMACS_WEBHOOK_QUEUE", s.webhook_queue, 1, 1_000_000)
        s.webhook_retry_base = _float(env, "WEBMACS_WEBHOOK_RETRY_BASE", s.webhook_retry_base, 0.0, 3600)
        s.sensor_reading_throttle = _float(
            env, "WEBMACS_SENSOR_READING_THROTTLE", s.sensor_reading_throttle, 0.0, 3600
        )
        s.max_connections = _int(env, "WEBMACS_MAX_CONNECTIONS", s.max_connections, 1, 1_000_000)
        s.http_header_timeout = _float(env, "WEBMACS_HTTP_HEADER_TIMEOUT", s.http_header_timeout, 0.1, 3600)
        s.http_body_timeout = _float(env, "WEBMACS_HTTP_BODY_TIMEOUT", s.http_body_timeout, 0.1, 3600)
        s.trusted_proxies = _networks(env, "WEBMACS_TRUSTED_PROXIES", s.trusted_proxies)
        s.rate_limit = _int(env, "WEBMACS_RATE_LIMIT", s.rate_limit, 0, 1_000_000)
        s.rate_limit_exempt = _networks(env, "WEBMACS_RATE_LIMIT_EXEMPT", s.rate_limit_exempt)
        s.login_max_failures = _int(env, "WEBMACS_LOGIN_MAX_FAILURES", s.login_max_failures, 0, 1_000_000)
        s.login_failure_window = _float(env, "WEBMACS_LOGIN_FAILURE_WINDOW", s.login_failure_window, 1, 86400)
        s.password_hash_workers = _int(env, "WEBMACS_PASSWORD_HASH_WORKERS", s.password_hash_workers, 1, 16)
        key = env.get("WEBMACS_SECRET_KEY") or ""
        if s.env == "production":
            if len(key.encode()) < 32:
                raise ConfigError(
                    "WEBMACS_SECRET_KEY must be set to at least 32 bytes when WEBMACS_ENV=production"
                )
            if _is_placeholder(key):
                raise ConfigError("WEBMACS_SECRET_KEY is the example placeholder: generate one with "
                                  "python3 -c 'import secrets; print(secrets.token_urlsafe(64))'")
        elif not key:
            key = _persistent_dev_key(s.database_url)
        s.secret_key = key
        return s


def _networks(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name)
    raw = default if raw is None else raw
    from webmacs.serving import parse_networks

    try:
        parse_networks(raw, name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return raw


# Secrets published in examples and docs (ours and the WebMACS compose file's).
PLACEHOLDER_SECRETS = ("change-me", "changeme", "replace-me", "your-secret", "secret-key", "example")


def _is_placeholder(key: str) -> bool:
    low = key.lower()
    return any(p in low for p in PLACEHOLDER_SECRETS) or len(set(key)) < 8


def _persistent_dev_key(database_url: str) -> str:
    """A development key kept next to the SQLite file, made on first use."""
    folder = Path(".")
    if database_url.startswith("sqlite:///") and database_url != "sqlite:///:memory:":
        folder = Path(database_url[len("sqlite:///"):]).expanduser().resolve().parent
    path = folder / ".webmacs_secret"
    try:
        key = path.read_text().strip()
        if key:
            return key
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(f"WEBMACS_SECRET_KEY is unset and {path} cannot be read: {exc}") from None
    key = secrets.token_urlsafe(48)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key + "\n")
    except FileExistsError:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"WEBMACS_SECRET_KEY is unset and {path} cannot be written: {exc}") from None
    return key
