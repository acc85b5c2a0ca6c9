"""The Tornado application, its services, and the server's life cycle.

``Services`` is made once at start and handed to every handler through
``self.settings["webmacs"]``. All periodic callbacks live in :meth:`Services.start`;
:func:`shutdown` stops them in one place (JupyterHub's order: stop accepting,
stop callbacks, finish in-flight work, close sockets, close the database).
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import delete, text
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.web import Application

from webmacs import accounts
from webmacs.broadcast import ConnectionManager
from webmacs.config import ConfigError, Settings
from webmacs.db import Database, current_revision, head_revision, upgrade
from webmacs.ingest import IngestPipeline
from webmacs.models import IngestBatch, WebhookDelivery

log = logging.getLogger("webmacs")

STATIC_DIR = Path(__file__).resolve().parent / "static"

# 500 datapoints of {"value": -1.2345678901234567e-300, "event_public_id": "<36-char uuid>",
# "timestamp": "2026-01-01T00:00:00.000000+00:00"} are about 55 kB; allow 4x for
# whitespace and longer ids, and refuse anything larger before parsing it.
WEBSOCKET_MAX_MESSAGE_SIZE = 256 * 1024
# Pings from the server find dead peers (a controller that lost power, a closed
# laptop) that TCP alone would keep "open" for hours; 30 s is well inside the
# nginx proxy_read_timeout and common NAT idle timeouts.
WEBSOCKET_PING_INTERVAL = 30
# A peer that has not answered a ping in 20 s is gone; its socket is closed and
# it leaves its group.
WEBSOCKET_PING_TIMEOUT = 20
# Telemetry batch ids are remembered this long (the controller spool resends within it).
BATCH_ID_RETENTION = timedelta(hours=48)
# Finished webhook deliveries (delivered, failed, dead_letter) are kept this long.
DELIVERY_RETENTION = timedelta(days=30)
# Seconds between background database checks (drives system.health_changed).
HEALTH_CHECK_INTERVAL = 10


class Services:
    """Everything handlers depend on, built once per server."""

    def __init__(self, config: Settings):
        self.config = config
        self.db = Database(config.database_url, config.db_pool_size)
        self.hub = ConnectionManager()
        self.pipeline = IngestPipeline(self)
        self.webhooks = None  # webmacs.webhooks.WebhookDispatcher, set in start()
        self.rules = None  # webmacs.rules.RuleEngine, set in start()
        self.started_monotonic = time.monotonic()
        self.health_ok: bool | None = None
        self.accepting = True
        self.inflight = 0  # telemetry batches being processed (SIGTERM waits for them)
        self._callbacks: list[PeriodicCallback] = []
        # test hook: when True, /ws/datapoints/stream refuses upgrades (HTTP 503)
        self.refuse_stream = False

    # --- start / stop -------------------------------------------------------
    def prepare_database(self) -> None:
        """Blocking, before the server listens: schema check, features, first admin."""
        cfg = self.config
        head = head_revision()
        current = current_revision(self.db.engine)
        if current != head:
            if cfg.is_sqlite:
                log.info("migrating embedded SQLite database to %s", head)
                upgrade(cfg.database_url, cfg.chunk_interval_hours)
            else:
                raise ConfigError(
                    f"database schema is at {current or 'nothing'}, expected {head}: run `webmacs migrate` first"
                )
        self.db.detect_features()
        with self.db.Session() as session:
            accounts.ensure_initial_admin(session, cfg.initial_admin_email, cfg.initial_admin_username,
                                          cfg.initial_admin_password)
            session.commit()
            last = session.execute(text("SELECT max(time) FROM datapoints")).scalar()
        if isinstance(last, str):
            last = datetime.fromisoformat(last)
        if last is not None and last.tzinfo is None:
            last = last.replace(tzinfo=timezone.utc)
        self.pipeline.last_time = last

    async def start(self) -> None:
        from webmacs.rules import RuleEngine, server_log
        from webmacs.webhooks import WebhookDispatcher

        self.webhooks = WebhookDispatcher(self)
        self.rules = RuleEngine(self)
        await self.rules.load()
        await self.webhooks.start()
        await server_log(self, "Server started", "info")
        self._every(self.config.broadcast_interval_ms, self.hub.flush)
        self._every(1000, lambda: self.hub.expire_tokens(datetime.now(timezone.utc)))
        self._every(3600 * 1000, self._housekeeping)
        # system.health_changed must fire when the database goes and comes back even
        # if nobody is polling /health.
        self._every(HEALTH_CHECK_INTERVAL * 1000, self._check_health)

    def _every(self, ms: float, fn) -> None:
        cb = PeriodicCallback(fn, ms)
        cb.start()
        self._callbacks.append(cb)

    async def _check_health(self) -> None:
        self.note_health(await self.db.run(self.db.ping))

    async def _housekeeping(self) -> None:
        def prune(session):
            now = datetime.now(timezone.utc)
            accounts.prune_revoked(session)
            session.execute(delete(IngestBatch).where(IngestBatch.created_on < now - BATCH_ID_RETENTION))
            session.execute(delete(WebhookDelivery).where(
                WebhookDelivery.status != "pending", WebhookDelivery.created_on < now - DELIVERY_RETENTION))

        try:
            await self.db.session(prune)
        except Exception:  # noqa: BLE001 - retried next hour
            log.warning("housekeeping failed", exc_info=True)

    def stop_callbacks(self) -> None:
        for cb in self._callbacks:
            cb.stop()
        self._callbacks.clear()

    # --- health ----------------------------------------------------------------
    def note_health(self, ok: bool) -> None:
        """Fire ``system.health_changed`` when the database comes or goes."""
        previous, self.health_ok = self.health_ok, ok
        if previous is not None and previous != ok and self.webhooks is not None:
            status = "ok" if ok else "degraded"
            self.webhooks.emit("system.health_changed", {"status": status, "database": "ok" if ok else "error"})

    def last_datapoint_time(self) -> datetime | None:
        return self.pipeline.last_time


_TOKEN_IN_QUERY = re.compile(r"(token=)[^&\s]+")
access_log = logging.getLogger("tornado.access")


_client_errors: dict[int, object] = {}


def log_request(handler) -> None:
    """Tornado's access log line, with ``?token=...`` redacted (WebSocket URLs carry JWTs).
    Client errors (4xx) are logged once per status per 10 s with a count: a flood of bad
    requests must not become a flood of log lines."""
    from webmacs.serving import _LogEvery

    status = handler.get_status()
    level = logging.INFO if status < 400 else (logging.WARNING if status < 500 else logging.ERROR)
    if not access_log.isEnabledFor(level):
        return
    more = ""
    if 400 <= status < 500:
        suppressed = _client_errors.setdefault(status, _LogEvery()).due()
        if suppressed is None:
            return
        more = f" (and {suppressed} more {status}s in the last 10 s)" if suppressed else ""
    req = handler.request
    uri = _TOKEN_IN_QUERY.sub(r"\1***", req.uri)
    access_log.log(level, "%d %s %s (%s) %.2fms%s", status, req.method, uri, req.remote_ip,
                   1000.0 * req.request_time(), more)


def make_app(services: Services) -> Application:
    from webmacs.handlers import collect_handlers
    from webmacs.health import HealthProbe
    from webmacs.ratelimit import Guards
    from webmacs.serving import SafeStaticFileHandler

    return Application(
        collect_handlers(),
        webmacs=services,
        guards=Guards(services.config),
        health_probe=HealthProbe(services.db),
        static_path=str(STATIC_DIR),
        static_handler_class=SafeStaticFileHandler,
        static_url_prefix="/static/",
        websocket_max_message_size=WEBSOCKET_MAX_MESSAGE_SIZE,
        websocket_ping_interval=WEBSOCKET_PING_INTERVAL,
        websocket_ping_timeout=WEBSOCKET_PING_TIMEOUT,
        compress_response=True,
        log_function=log_request,
    )


async def shutdown(server: HTTPServer, services: Services) -> None:
    """Graceful stop, bounded by ``shutdown_timeout``: stop accepting, finish and
    acknowledge in-flight batches, flush the broadcast buffer, close sockets (1001)."""
    services.accepting = False
    server.stop()
    deadline = time.monotonic() + services.config.shutdown_timeout
    while services.inflight and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    services.stop_callbacks()
    services.hub.flush()
    services.hub.close_all(1001, "Server shutting down")
    from webmacs.rules import server_log

    await server_log(services, "Server stopped", "info")
    if services.webhooks is not None:
        await services.webhooks.stop()
    await asyncio.sleep(0.1)  # let close frames go out
    try:
        await asyncio.wait_for(server.close_all_connections(), timeout=2)
    except asyncio.TimeoutError:
        log.warning("some connections did not close in time")


async def run_server(config: Settings, host: str, port: int) -> None:
    from webmacs.serving import GuardedHTTPServer, install_log_filters, parse_networks

    install_log_filters()
    services = Services(config)
    services.prepare_database()
    accounts.warn_if_no_users(services.db)
    await services.start()
    app = make_app(services)
    server = GuardedHTTPServer(
        app,
        idle_connection_timeout=config.http_header_timeout,  # tornado: also the header timeout
        body_timeout=config.http_body_timeout,
        # Routes check their own (smaller) limit before reading; this bounds the rest.
        max_body_size=256 * 1024,
        max_connections=config.max_connections,
        trusted_proxies=parse_networks(config.trusted_proxies, "WEBMACS_TRUSTED_PROXIES"),
    )
    server.listen(port, host)
    log.info("webmacs listening on http://%s:%d (database: %s)", host, port,
             "sqlite" if config.is_sqlite else ("timescaledb" if services.db.has_timescale else "postgresql"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await shutdown(server, services)
    services.db.close(wait=False)
    log.info("stopped")
