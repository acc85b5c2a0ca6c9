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
    # WEBMACS_WORKERS: server processes `webmacs serve` starts on its one port (the
    # --workers option wins); 0 = one per CPU core. More than 1 needs PostgreSQL
    # (see docs/scale-out.md).
    workers: int = 1
    # WEBMACS_CHUNK_INTERVAL_HOURS: TimescaleDB chunk interval for datapoints,
    # applied by `webmacs migrate` when the hypertable is created.
    chunk_interval_hours: int = 24
    # WEBMACS_BROADCAST_INTERVAL_MS: the spec's per-event throttle: a dashboard gets a
    # frame with a given event at most this often (always ending on its latest value);
    # a reading after a quiet spell goes out within one 20 ms tick (webmacs.broadcast).
    broadcast_interval_ms: int = 200
    # WEBMACS_STREAM_COMPRESSION_LEVEL: zlib level (1-9) of permessage-deflate on
    # /ws/datapoints/stream when the client offers it (browsers do); 0 turns it off.
    # Each broadcast frame is compressed once for every subscriber (benchmarks/README.md).
    stream_compression_level: int = 1
    # WEBMACS_SHUTDOWN_TIMEOUT: seconds a SIGTERM stop takes at most, in total; batches
    # not stored by then are answered "retry".
    shutdown_timeout: float = 10.0
    # WEBMACS_INGEST_QUEUE_PATH: directory of the durable ingest queue, the local
    # write-ahead log between telemetry sockets and the database (docs/ingest-queue.md).
    # Default: an ``ingest-queue`` folder next to the SQLite file, or
    # ``./webmacs-data/ingest-queue`` for PostgreSQL. Put it on a local disk.
    ingest_queue_path: str = ""
    # WEBMACS_INGEST_QUEUE_MAX_MB: accepted readings not yet in the database the queue
    # holds at most (1..1048576 MB, default 256; ~20 bytes a reading plus ~60 a batch).
    # A full queue refuses batches ("Server overloaded: batch not stored").
    ingest_queue_max_mb: int = 256
    # WEBMACS_WEBHOOK_WORKERS: concurrent outgoing webhook requests.
    webhook_workers: int = 10
    # WEBMACS_WEBHOOK_QUEUE: deliveries waiting for a worker before new ones are
    # recorded as failed ("dropped: overload") instead of queued.
    webhook_queue: int = 1000
    # WEBMACS_WEBHOOK_RETRY_BASE: seconds before the 2nd attempt; doubles after.
    webhook_retry_base: float = 2.0
    # WEBMACS_SENSOR_READING_THROTTLE: seconds between sensor.reading webhooks per event.
    sensor_reading_throttle: float = 5.0
    # --- single sign-on (OpenID Connect), see docs/sso.md ---------------------
    # Each is read from WEBMACS_OIDC_<NAME> or, so an existing WebMACS .env works,
    # from OIDC_<NAME>; when both are set the WEBMACS_ one wins.
    # OIDC_ENABLED: turn SSO on (true/false, default false).
    oidc_enabled: bool = False
    # OIDC_PROVIDER_NAME: shown on the login button ("Sign in with <name>").
    oidc_provider_name: str = "SSO"
    # OIDC_ISSUER_URL: the IdP's issuer; discovery is read from
    # <issuer>/.well-known/openid-configuration. Required when enabled.
    oidc_issuer_url: str = ""
    # OIDC_CLIENT_ID / OIDC_CLIENT_SECRET: this server's confidential client at
    # the IdP. Required when enabled. The secret is never logged.
    oidc_client_id: str = ""
    oidc_client_secret: str = field(default="", repr=False)
    # OIDC_SCOPES: space-separated scopes; must include "openid".
    oidc_scopes: str = "openid email profile"
    # OIDC_REDIRECT_URI: https://<host>/api/v1/auth/sso/callback, exactly as
    # registered at the IdP. Required when enabled.
    oidc_redirect_uri: str = ""
    # OIDC_DEFAULT_ROLE: role of users created on their first SSO login.
    oidc_default_role: str = "viewer"
    # OIDC_AUTO_CREATE_USERS: create unknown users on first login (default true).
    oidc_auto_create_users: bool = True
    # OIDC_FRONTEND_URL: where the browser goes after the callback
    # (<url>/sso-callback?code=...). Empty: this server's own page.
    oidc_frontend_url: str = ""
    # OIDC_HTTP_TIMEOUT: seconds for each request to the IdP (discovery, token, keys).
    oidc_http_timeout: float = 10.0
    # OIDC_DISCOVERY_TTL: seconds the discovery document and key set are cached.
    oidc_discovery_ttl: float = 3600.0
    # OIDC_JWKS_REFRESH_COOLDOWN: minimum seconds between key set refreshes caused
    # by an unknown key id (a rotated key); bounds what forged tokens can trigger.
    oidc_jwks_refresh_cooldown: float = 30.0
    # WEBMACS_PLUGIN_PACKAGES_DIR: where uploaded plugin wheels are kept (created
    # when missing); controllers download and install them from here.
    plugin_packages_dir: str = "./plugin-packages"
    # WEBMACS_PLUGIN_MAX_UPLOAD_MB: largest plugin wheel accepted (1..1024 MB, default 50).
    plugin_max_upload_mb: int = 50
    # WEBMACS_OTA_STORAGE_DIR: where uploaded OTA firmware files are kept (one file
    # per update record). Default: an ``ota`` folder next to the SQLite file, or
    # ``./webmacs-data/ota`` for PostgreSQL. Created on first upload.
    ota_storage_dir: str = ""
    # WEBMACS_OTA_MAX_FILE_MB: largest firmware file an upload may send (1..102400 MB);
    # bigger uploads are refused with 413.
    ota_max_file_mb: int = 512
    # WEBMACS_OTA_MAX_BUNDLE_MB: largest update bundle (``.tar.gz``) that
    # ``POST /api/v1/ota/upload`` takes (1..102400 MB, default 500 as in WebMACS);
    # bigger uploads are refused with 413 and leave nothing on disk.
    ota_max_bundle_mb: int = 500
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
    # WEBMACS_RETENTION_DAYS: days datapoints recorded outside any experiment are
    # kept; the hourly housekeeping removes older ones (docs/retention.md).
    # 0 or empty (the default): kept forever.
    retention_days: int = 0
    # WEBMACS_EXPERIMENT_RETENTION_DAYS: days datapoints of an experiment are kept,
    # counted from each reading's time. 0 or empty (the default): kept forever.
    experiment_retention_days: int = 0
    # WEBMACS_METRICS_TOKEN: bearer token Prometheus must send to GET /metrics
    # (at least 16 characters; see docs/metrics.md). Empty (default): no token.
    metrics_token: str = field(default="", repr=False)
    # WEBMACS_METRICS_PUBLIC: with no token, serve /metrics to anyone who reaches the
    # port (true/false, default false). With neither set, /metrics answers 404.
    metrics_public: bool = False
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
        s.workers = _int(env, "WEBMACS_WORKERS", s.workers, 0, 256)
        s.chunk_interval_hours = _int(env, "WEBMACS_CHUNK_INTERVAL_HOURS", s.chunk_interval_hours, 1, 24 * 365)
        s.broadcast_interval_ms = _int(env, "WEBMACS_BROADCAST_INTERVAL_MS", s.broadcast_interval_ms, 10, 10000)
        s.stream_compression_level = _int(env, "WEBMACS_STREAM_COMPRESSION_LEVEL", s.stream_compression_level, 0, 9)
        s.shutdown_timeout = _float(env, "WEBMACS_SHUTDOWN_TIMEOUT", s.shutdown_timeout, 0.1, 600)
        s.ingest_queue_path = ((env.get("WEBMACS_INGEST_QUEUE_PATH") or "").strip()
                               or _data_dir(s.database_url, "ingest-queue"))
        s.ingest_queue_max_mb = _int(env, "WEBMACS_INGEST_QUEUE_MAX_MB", s.ingest_queue_max_mb, 1, 1024 * 1024)
        s.webhook_workers = _int(env, "WEBMACS_WEBHOOK_WORKERS", s.webhook_workers, 1, 100)
        s.webhook_queue = _int(env, "WEBMACS_WEBHOOK_QUEUE", s.webhook_queue, 1, 1_000_000)
        s.webhook_retry_base = _float(env, "WEBMACS_WEBHOOK_RETRY_BASE", s.webhook_retry_base, 0.0, 3600)
        s.sensor_reading_throttle = _float(
            env, "WEBMACS_SENSOR_READING_THROTTLE", s.sensor_reading_throttle, 0.0, 3600
        )
        _read_oidc(env, s)
        s.plugin_packages_dir = (env.get("WEBMACS_PLUGIN_PACKAGES_DIR") or "").strip() or s.plugin_packages_dir
        s.plugin_max_upload_mb = _int(env, "WEBMACS_PLUGIN_MAX_UPLOAD_MB", s.plugin_max_upload_mb, 1, 1024)
        s.ota_storage_dir = (env.get("WEBMACS_OTA_STORAGE_DIR") or "").strip() or _data_dir(s.database_url, "ota")
        s.ota_max_file_mb = _int(env, "WEBMACS_OTA_MAX_FILE_MB", s.ota_max_file_mb, 1, 102400)
        s.ota_max_bundle_mb = _int(env, "WEBMACS_OTA_MAX_BUNDLE_MB", s.ota_max_bundle_mb, 1, 102400)
        s.max_connections = _int(env, "WEBMACS_MAX_CONNECTIONS", s.max_connections, 1, 1_000_000)
        s.http_header_timeout = _float(env, "WEBMACS_HTTP_HEADER_TIMEOUT", s.http_header_timeout, 0.1, 3600)
        s.http_body_timeout = _float(env, "WEBMACS_HTTP_BODY_TIMEOUT", s.http_body_timeout, 0.1, 3600)
        s.trusted_proxies = _networks(env, "WEBMACS_TRUSTED_PROXIES", s.trusted_proxies)
        s.rate_limit = _int(env, "WEBMACS_RATE_LIMIT", s.rate_limit, 0, 1_000_000)
        s.rate_limit_exempt = _networks(env, "WEBMACS_RATE_LIMIT_EXEMPT", s.rate_limit_exempt)
        s.login_max_failures = _int(env, "WEBMACS_LOGIN_MAX_FAILURES", s.login_max_failures, 0, 1_000_000)
        s.login_failure_window = _float(env, "WEBMACS_LOGIN_FAILURE_WINDOW", s.login_failure_window, 1, 86400)
        s.password_hash_workers = _int(env, "WEBMACS_PASSWORD_HASH_WORKERS", s.password_hash_workers, 1, 16)
        s.retention_days = _int(env, "WEBMACS_RETENTION_DAYS", s.retention_days, 0, 365 * 1000)
        s.experiment_retention_days = _int(env, "WEBMACS_EXPERIMENT_RETENTION_DAYS",
                                           s.experiment_retention_days, 0, 365 * 1000)
        s.metrics_token = (env.get("WEBMACS_METRICS_TOKEN") or "").strip()
        if s.metrics_token and len(s.metrics_token) < 16:
            raise ConfigError("WEBMACS_METRICS_TOKEN must be at least 16 characters")
        s.metrics_public = _bool(env, "WEBMACS_METRICS_PUBLIC", s.metrics_public)
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


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _oidc_env(env: Mapping[str, str]) -> dict[str, str]:
    """OIDC_* values with WEBMACS_OIDC_* taking precedence, keyed by the name used
    in error messages (the variable that was actually set)."""
    out = {key: value for key, value in env.items() if key.startswith("OIDC_") and value.strip() != ""}
    for key, value in env.items():
        if key.startswith("WEBMACS_OIDC_") and value.strip() != "":
            out[key[len("WEBMACS_"):]] = value
    return out


def _read_oidc(env: Mapping[str, str], s: "Settings") -> None:
    from webmacs.models import ROLES

    o = _oidc_env(env)
    s.oidc_enabled = _bool(o, "OIDC_ENABLED", s.oidc_enabled)
    s.oidc_provider_name = (o.get("OIDC_PROVIDER_NAME") or s.oidc_provider_name).strip()[:100]
    s.oidc_issuer_url = (o.get("OIDC_ISSUER_URL") or "").strip()
    s.oidc_client_id = (o.get("OIDC_CLIENT_ID") or "").strip()
    s.oidc_client_secret = (o.get("OIDC_CLIENT_SECRET") or "").strip()
    s.oidc_scopes = " ".join((o.get("OIDC_SCOPES") or s.oidc_scopes).split())
    s.oidc_redirect_uri = (o.get("OIDC_REDIRECT_URI") or "").strip()
    s.oidc_default_role = (o.get("OIDC_DEFAULT_ROLE") or s.oidc_default_role).strip().lower()
    s.oidc_auto_create_users = _bool(o, "OIDC_AUTO_CREATE_USERS", s.oidc_auto_create_users)
    s.oidc_frontend_url = (o.get("OIDC_FRONTEND_URL") or "").strip().rstrip("/")
    s.oidc_http_timeout = _float(o, "OIDC_HTTP_TIMEOUT", s.oidc_http_timeout, 0.5, 120)
    s.oidc_discovery_ttl = _float(o, "OIDC_DISCOVERY_TTL", s.oidc_discovery_ttl, 0, 86400)
    s.oidc_jwks_refresh_cooldown = _float(o, "OIDC_JWKS_REFRESH_COOLDOWN", s.oidc_jwks_refresh_cooldown, 0, 3600)
    if s.oidc_default_role not in ROLES:
        raise ConfigError(f"OIDC_DEFAULT_ROLE must be one of {', '.join(ROLES)}, got {s.oidc_default_role!r}")
    if not s.oidc_enabled:
        return
    for name in ("OIDC_ISSUER_URL", "OIDC_CLIENT_ID", "OIDC_CLIENT_SECRET", "OIDC_REDIRECT_URI"):
        if not o.get(name, "").strip():
            raise ConfigError(f"{name} (or WEBMACS_{name}) must be set when OIDC_ENABLED is true")
    for name, url in (("OIDC_ISSUER_URL", s.oidc_issuer_url), ("OIDC_REDIRECT_URI", s.oidc_redirect_uri),
                      ("OIDC_FRONTEND_URL", s.oidc_frontend_url)):
        if url and not _is_http_url(url):
            raise ConfigError(f"{name} must be an http:// or https:// URL, got {url!r}")
    if not s.oidc_redirect_uri.split("?")[0].endswith("/api/v1/auth/sso/callback"):
        raise ConfigError("OIDC_REDIRECT_URI must end with /api/v1/auth/sso/callback "
                          f"(this server's callback), got {s.oidc_redirect_uri!r}")
    if "openid" not in s.oidc_scopes.split():
        raise ConfigError(f"OIDC_SCOPES must include openid, got {s.oidc_scopes!r}")


def _is_http_url(url: str) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and not parts.fragment
def _data_dir(database_url: str, name: str) -> str:
    """A data folder next to the SQLite file, else ``./webmacs-data/<name>``."""
    if database_url.startswith("sqlite:///") and database_url != "sqlite:///:memory:":
        return str(Path(database_url[len("sqlite:///"):]).expanduser().resolve().parent / name)
    return str(Path("webmacs-data", name).resolve())
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
